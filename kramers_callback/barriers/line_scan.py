"""Line scans for barriers along escape directions (docs/theory.md section 3.1).

Pure maths on a function of one real variable, ``φ(s) = L(x₀ + s·v)``: no torch here. The
caller builds ``φ`` (for instance with :meth:`kramers_callback._probe.ProbeLoss.loss_along`)
and chooses the threshold ``κ·T_v`` and the first step (:func:`initial_step_for`).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from scipy.optimize import minimize_scalar

from kramers_callback._validation import (
    check_finite,
    check_in_range,
    check_non_negative,
    check_positive,
    check_positive_int,
)


class PathwayStatus(str, enum.Enum):
    """What the line scan along one escape direction found."""

    BARRIER = "barrier"
    """A local maximum was bracketed and refined: ``barrier``, ``barrier_curvature`` are set."""
    NO_BARRIER_WITHIN_REACH = "no_barrier_within_reach"
    """The loss rose by more than ``κ·T_v`` before any maximum: no escape on any horizon."""
    DOWNHILL = "downhill"
    """The loss fell by more than ``κ·T_v`` before any barrier (or was still below its start when
    the budget ran out), as along ``λ₀ ≤ 0``: no activated escape, not a Kramers rate."""
    SCAN_LIMIT = "scan_limit"
    """The scan used its evaluation budget without bracketing a maximum or passing ``κ·T_v``."""
    NON_FINITE = "non_finite"
    """The loss was NaN (or ``−inf``) at the start or along the scan: nothing can be said."""
    NOT_SCANNED = "not_scanned"
    """No scan was asked for (``estimate(scan_barriers=False)``: a descending walker has no
    barrier question): an unmeasured pathway, not a zero rate."""


# Refinement of one bracketed maximum: bounded Brent on −φ, then a Richardson-extrapolated
# second difference with step halvings. Their cost comes on top of ``max_evals`` (see
# ``scan_for_barrier``); these caps keep it bounded.
_REFINE_MAX_ITER = 40
_CURVATURE_MAX_HALVINGS = 6
_CURVATURE_FIRST_STEP = 0.25  # of the bracket width
MAX_REFINE_EVALS = _REFINE_MAX_ITER + 1 + 2 * (_CURVATURE_MAX_HALVINGS + 1)
"""At most this many evaluations of ``φ`` refine one bracketed maximum."""


@dataclass(frozen=True)
class LineScanResult:
    """What :func:`scan_for_barrier` found along one direction.

    ``distance``, ``barrier``, ``barrier_curvature`` and ``curvature_error`` are set only when
    ``status`` is :attr:`PathwayStatus.BARRIER`.
    """

    status: PathwayStatus
    distance: float | None
    """``s*``: the barrier top is at ``x₀ + s*·v``."""
    barrier: float | None
    """``ΔL = φ(s*) − φ(0) > 0``."""
    barrier_curvature: float | None
    """``λ_b = φ''(s*) < 0``."""
    num_evals: int
    """Evaluations of ``φ`` (each is one forward pass over the probe set); ``len(profile)``."""
    profile: list[tuple[float, float]]
    """Every ``(s, φ(s))`` evaluated, sorted by ``s`` (the committor integrates over it)."""
    curvature_error: float | None = None
    """Error estimate of ``barrier_curvature``: spread of successive Richardson estimates."""
    message: str = ""
    """One line on why the scan stopped, for logs."""

    @property
    def start_loss(self) -> float:
        """``φ(0)``."""
        return dict(self.profile)[0.0]


class _CachedPhi:
    """``φ`` evaluated at most once per ``s``; remembers every value and any NaN/−inf seen."""

    def __init__(self, phi: Callable[[float], Any]) -> None:
        self._phi = phi
        self.values: dict[float, float] = {}
        self.invalid_at: float | None = None

    def __call__(self, s: float) -> float:
        s = float(s)
        value = self.values.get(s)
        if value is None:
            value = float(self._phi(s))
            self.values[s] = value
            if self.invalid_at is None and (math.isnan(value) or value == -math.inf):
                self.invalid_at = s
        return value

    def __len__(self) -> int:
        return len(self.values)

    def profile(self) -> list[tuple[float, float]]:
        return sorted(self.values.items())


def initial_step_for(*, temperature: float, curvature: float, default: float = 1e-3) -> float:
    r"""First step of a line scan: the thermal length along ``v``.

    .. math::

        \ell = \sqrt{T_v / |\lambda_0|}

    At distance ``ℓ`` from a quadratic minimum the loss has risen by ``λ₀ℓ²/2 = T_v/2``, so the
    first step resolves the region the noise explores. For ``λ₀ < 0`` the same length scales
    the descent. ``default`` is returned when the ratio is not usable: ``λ₀ = 0`` (no curvature
    scale) or ``T_v = 0`` (no noise scale); the geometric growth of the steps then finds the
    scale of the profile on its own.

    Source: the Gaussian width of the Boltzmann density ``exp(−λ₀s²/(2T_v))`` (docs/theory.md
    section 3.1).
    Cost: none (closed form).

    Args:
        temperature: directional temperature ``T_v ≥ 0``.
        curvature: ``λ₀ = vᵀHv`` (finite, any sign).
        default: the step returned when ``T_v = 0`` or ``λ₀ = 0``; ``> 0``.
    """
    t = check_non_negative("temperature", temperature)
    lam = check_finite("curvature", curvature)
    fallback = check_positive("default", default)
    if t == 0 or lam == 0:
        return fallback
    step = math.sqrt(t / abs(lam))
    return step if math.isfinite(step) and step > 0 else fallback


def untilted(phi: Callable[[float], Any], slope: float) -> Callable[[float], float]:
    r"""``φ`` with a linear tilt removed: ``φ_c(s) = φ(s) − s·slope``.

    .. math::

        \varphi_c(s) = \varphi(s) - s\,\sigma,\qquad
        \varphi_c(s^*) - \varphi_c(0) = \Delta L - s^*\sigma,\qquad
        \varphi_c'' = \varphi''

    With ``slope = φ'(0)`` measured on the probe, the scan starts from a point of zero slope:
    the probe's mean gradient along ``v``, which differs from the full-data gradient by
    sampling noise, no longer tilts the barrier (``docs/theory.md`` section 3.1). Curvatures,
    hence ``λ_b``, are unchanged. ``slope = 0`` returns ``φ`` itself.

    Cost: none beyond ``φ``.
    """
    sigma = check_finite("slope", slope)
    if sigma == 0:
        return phi

    def centred(s: float) -> float:
        return float(phi(s)) - s * sigma

    return centred


def _second_derivative(
    f: Callable[[float], float], s: float, first_step: float, rtol: float
) -> tuple[float, float]:
    """``φ''(s)`` by Richardson-extrapolated central differences, and an error estimate.

    ``D(h) = (φ(s+h) − 2φ(s) + φ(s−h))/h² = φ'' + h²φ''''/12 + O(h⁴)``, so
    ``R(h) = (4D(h/2) − D(h))/3`` is accurate to ``O(h⁴)``. Halve ``h`` until two successive
    ``R`` agree to ``rtol`` (or the halvings run out, when rounding starts to dominate), and
    return the ``R`` whose change was smallest.
    """
    f0 = f(s)
    h = first_step
    plain = [(f(s + h) - 2.0 * f0 + f(s - h)) / (h * h)]
    best_value, best_error = math.nan, math.inf
    previous: float | None = None
    for _ in range(_CURVATURE_MAX_HALVINGS):
        h /= 2.0
        plain.append((f(s + h) - 2.0 * f0 + f(s - h)) / (h * h))
        extrapolated = (4.0 * plain[-1] - plain[-2]) / 3.0
        # With one extrapolation only, its distance to the plain difference bounds the error.
        reference = plain[-1] if previous is None else previous
        error = abs(extrapolated - reference)
        if error < best_error or not math.isfinite(best_error):
            best_value, best_error = extrapolated, error
        if error <= rtol * abs(extrapolated):
            break
        previous = extrapolated
    return best_value, best_error


def _refine_maximum(
    f: _CachedPhi, a: float, b: float, c: float, rel_tol: float
) -> tuple[float, float, float, float]:
    """Refine a maximum bracketed by ``a < b < c``: ``(s*, φ(s*), φ''(s*), error of φ'')``."""
    minimize_scalar(
        lambda s: -f(s),
        bounds=(a, c),
        method="bounded",
        options={"xatol": rel_tol * b, "maxiter": _REFINE_MAX_ITER},
    )
    # The best point evaluated in the bracket, whatever the optimizer reports.
    s_top, f_top = max(((s, v) for s, v in f.values.items() if a <= s <= c), key=lambda p: p[1])
    curvature, error = _second_derivative(f, s_top, _CURVATURE_FIRST_STEP * (c - a), rel_tol)
    return s_top, f_top, curvature, error


def scan_for_barrier(
    phi: Callable[[float], float],
    *,
    threshold: float,
    initial_step: float,
    growth: float = 1.5,
    max_evals: int = 60,
    rel_tol: float = 1e-4,
) -> LineScanResult:
    r"""Walk out from ``s = 0`` along ``φ(s) = L(x₀ + s·v)`` until a barrier, a wall or a descent.

    The walk visits ``s_k = h (g^k − 1)/(g − 1)`` (step ``h·g^k`` grows geometrically by
    ``g = growth``). After each new point it checks, in this order:

    1. ``φ(s_k)`` is NaN or ``−inf`` → :attr:`~PathwayStatus.NON_FINITE`. (``+inf`` counts as
       a rise above the threshold: an overflowing loss is a wall.)
    2. ``φ(s_k) − φ(0) > threshold`` → :attr:`~PathwayStatus.NO_BARRIER_WITHIN_REACH`.
    3. ``φ(s_k) − φ(0) < −threshold`` → :attr:`~PathwayStatus.DOWNHILL`: a point lower by more
       than ``κT_v`` is reached without climbing, so ``x₀`` is not metastable along ``v``.
    4. ``φ(s_{k−1}) ≥ φ(s_{k−2})``, ``φ(s_{k−1}) > φ(s_k)`` and ``φ(s_{k−1}) > φ(0)``: a maximum
       is bracketed. It is refined (bounded Brent on ``−φ`` to ``|Δs| ≲ rel_tol·s_{k−1}``),
       then

       .. math::

           \Delta L = \varphi(s^*) - \varphi(0), \qquad
           \lambda_b = \varphi''(s^*) \approx \tfrac{4D(h/2) - D(h)}{3},\quad
           D(h) = \frac{\varphi(s^*+h) - 2\varphi(s^*) + \varphi(s^*-h)}{h^2},

       with ``h`` starting at a quarter of the bracket width and halved until successive
       Richardson estimates agree to ``rel_tol``. It is a :attr:`~PathwayStatus.BARRIER` when
       ``λ_b < −(its error estimate)`` and ``0 < ΔL ≤ threshold`` (a refined top above the
       threshold gives ``NO_BARRIER_WITHIN_REACH``, as rule 2 would). A maximum without
       resolvable negative curvature (a flat top, or a ripple of rounding noise) is not a
       barrier: the walk goes on past it. Maxima not above ``φ(0)`` are crossed without
       climbing, so they are not barriers either.

    When ``max_evals`` evaluations are used without a decision: ``DOWNHILL`` if the last point
    is below ``φ(0)``, :attr:`~PathwayStatus.SCAN_LIMIT` otherwise. A non-finite ``φ(0)`` gives
    ``NON_FINITE`` after one evaluation; the function never raises on non-finite losses, so the
    caller can flag the direction and keep its last good estimate.

    ``ΔL`` is measured from ``φ(0)`` (docs/theory.md section 3.1), not from the lowest point before
    the barrier: away from a minimum the walk may first descend, and ``profile`` holds that dip.

    Source: docs/theory.md section 3.1; the rate of section 1.2 needs ``ΔL`` and ``λ_b``
    (``ω_b = √|λ_b|``).
    Assumptions: ``φ`` is smooth near the barrier top (for a kink, ``λ_b`` scales like
    ``1/h`` and is only a lower bound on the sharpness); the barrier nearest to ``x₀`` along
    ``v`` is the one that matters; the steps resolve it. Far out each step is a fraction
    ``(g − 1)/g`` of the distance walked (1/3 for ``g = 1.5``), so a barrier whose top and the
    well behind it both fit inside one step can be stepped over; a smaller ``growth`` or
    ``initial_step`` resolves it at the price of more evaluations.
    Cost: ``num_evals`` evaluations of ``φ`` (forward passes over the probe set), at most
    ``max_evals`` for the walk plus :data:`MAX_REFINE_EVALS` for the refinement of the
    maximum that ends it; memory ``O(num_evals)``.

    Args:
        phi: ``φ(s)``; any return value ``float()`` accepts.
        threshold: ``κ·T_v > 0`` (default ``κ = 20``, docs/theory.md section 3.1).
        initial_step: first step ``h > 0`` (see :func:`initial_step_for`).
        growth: step ratio ``g > 1``.
        max_evals: evaluation budget of the walk, counting ``φ(0)``; ``≥ 3``.
        rel_tol: relative tolerance of ``s*`` and of ``λ_b``, in ``(0, 1)``.

    Returns:
        A :class:`LineScanResult`.
    """
    if not callable(phi):
        raise ValueError(f"phi must be callable, got {phi!r}")
    threshold = check_positive("threshold", threshold)
    step = check_positive("initial_step", initial_step)
    growth = check_in_range("growth", growth, 1.0, math.inf, low_open=True, high_open=True)
    max_evals = check_positive_int("max_evals", max_evals, minimum=3)
    rel_tol = check_in_range("rel_tol", rel_tol, 0.0, 1.0, low_open=True, high_open=True)

    f = _CachedPhi(phi)
    rejected = 0

    def result(status: PathwayStatus, message: str, **barrier: float) -> LineScanResult:
        if rejected and status is not PathwayStatus.BARRIER:
            message += f" ({rejected} maxima without resolvable negative curvature passed)"
        return LineScanResult(
            status=status,
            distance=barrier.get("distance"),
            barrier=barrier.get("barrier"),
            barrier_curvature=barrier.get("barrier_curvature"),
            num_evals=len(f),
            profile=f.profile(),
            curvature_error=barrier.get("curvature_error"),
            message=message,
        )

    def non_finite() -> LineScanResult:
        where = f.invalid_at
        return result(PathwayStatus.NON_FINITE, f"loss is {f.values[where]} at s = {where:.4g}")

    phi0 = f(0.0)
    if not math.isfinite(phi0):
        return result(PathwayStatus.NON_FINITE, f"loss is {phi0} at s = 0")
    walk = [(0.0, phi0)]
    s = 0.0
    while len(f) < max_evals:
        s += step
        step *= growth
        value = f(s)
        walk.append((s, value))
        if f.invalid_at is not None:
            return non_finite()
        rise = value - phi0
        if rise > threshold:
            return result(
                PathwayStatus.NO_BARRIER_WITHIN_REACH,
                f"loss rose by {rise:.4g} > threshold {threshold:.4g} at s = {s:.4g}",
            )
        if rise < -threshold:
            return result(
                PathwayStatus.DOWNHILL,
                f"loss fell by {-rise:.4g} > threshold {threshold:.4g} at s = {s:.4g}",
            )
        if len(walk) < 3:
            continue
        (a, fa), (b, fb), (c, fc) = walk[-3:]
        if not (fb >= fa and fb > fc and fb > phi0):
            continue
        s_top, f_top, curvature, error = _refine_maximum(f, a, b, c, rel_tol)
        if f.invalid_at is not None:
            return non_finite()
        barrier = f_top - phi0
        if barrier > threshold:
            return result(
                PathwayStatus.NO_BARRIER_WITHIN_REACH,
                f"maximum at s = {s_top:.4g} is {barrier:.4g} > threshold {threshold:.4g} high",
            )
        if math.isfinite(curvature) and curvature < -error and barrier > 0:
            return result(
                PathwayStatus.BARRIER,
                f"barrier {barrier:.6g} at s = {s_top:.6g}, "
                f"curvature {curvature:.6g} ± {error:.2g}",
                distance=s_top,
                barrier=barrier,
                barrier_curvature=curvature,
                curvature_error=error,
            )
        rejected += 1
    if walk[-1][1] < phi0:
        return result(
            PathwayStatus.DOWNHILL,
            f"budget of {max_evals} evaluations used, loss still below its start",
        )
    return result(
        PathwayStatus.SCAN_LIMIT,
        f"budget of {max_evals} evaluations used without a maximum or the threshold",
    )

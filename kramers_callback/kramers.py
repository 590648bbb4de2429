"""Closed forms of Kramers escape theory for SGD (docs/theory.md sections 1, 3, 4).

Pure maths: no model, no autograd graph of a network, no random numbers. Every function is
evaluated in the array library of its inputs:

- plain numbers in, ``float`` out (and the numbers are validated: a bad one raises
  ``ValueError("<argument> must be <rule>, got <value>")``);
- a :class:`torch.Tensor` anywhere in the inputs, a tensor out (broadcast, differentiable,
  on the first tensor's device; plain numbers among the inputs are still validated, the
  tensors are not checked elementwise);
- otherwise a :class:`numpy.ndarray` anywhere, a numpy result.

Units (docs/theory.md section 0): time is counted in optimizer steps, so every rate is *per step*,
and ``lr`` is the effective step size ``η_eff = η / (1 − β)``. See ``docs/theory.md`` for the
derivations.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Sequence
from types import ModuleType
from typing import Any

import numpy as np
import scipy.optimize
import torch
from torch import Tensor

from kramers_callback._validation import (
    check_finite,
    check_non_negative,
    check_positive,
    check_positive_int,
)

__all__ = [
    "annealed_lr",
    "annealed_temperature",
    "attempt_frequency",
    "boltzmann_cumulative",
    "committor",
    "critical_temperature",
    "critical_temperature_scale",
    "escape_probability",
    "escape_rate",
    "langer_rate",
    "mean_escape_time",
    "optimal_batch_size",
    "parallel_rate",
    "path_action",
    "sequential_rate",
    "should_stop",
    "survival_probability",
    "temperature_for_rate",
]

Value = float | Tensor | np.ndarray
"""A plain number, a tensor or a numpy array; results come back in the same kind."""

_TWO_PI = 2.0 * math.pi


# -- backend plumbing ----------------------------------------------------------------------------
def _is_array(value: Any) -> bool:
    return isinstance(value, (Tensor, np.ndarray))


def _checked(name: str, value: Any, check: Callable[[str, Any], Any]) -> Any:
    """Validate plain numbers; tensors and arrays pass unchecked (no elementwise validation)."""
    return value if _is_array(value) else check(name, value)


def _backend(*values: Any) -> tuple[ModuleType, tuple[Any, ...]]:
    """The library to compute in (``torch``, ``numpy`` or ``math``) and the inputs converted to it.

    Tensors win over arrays so that a mixed call keeps its autograd graph and device; all tensor
    inputs are promoted to one floating dtype (integers become the default dtype).
    """
    tensors = [v for v in values if isinstance(v, Tensor)]
    if tensors:
        dtype = functools.reduce(torch.promote_types, (t.dtype for t in tensors))
        if not dtype.is_floating_point:
            dtype = torch.get_default_dtype()
        device = tensors[0].device
        return torch, tuple(torch.as_tensor(v, dtype=dtype, device=device) for v in values)
    if any(isinstance(v, np.ndarray) for v in values):
        arrays = [np.asarray(v) for v in values]
        return np, tuple(a.astype(np.result_type(a, np.float64), copy=False) for a in arrays)
    return math, tuple(float(v) for v in values)


def _minimum(a: Any, b: Any, xp: ModuleType) -> Any:
    if xp is math:
        return min(a, b)
    return xp.minimum(a, b)


def _nan_unless(condition: Any, value: Any, xp: ModuleType) -> Any:
    """``value`` where ``condition`` holds, ``nan`` elsewhere (array backends only)."""
    if xp is torch:
        return torch.where(condition, value, torch.full_like(value, math.nan))
    return np.where(condition, value, np.nan)


def _arrhenius(barrier: Any, temperature: Any, xp: ModuleType) -> Any:
    """``exp(−ΔL/T)``, continued to ``T = 0`` by its limit ``T → 0⁺`` (0, or 1 when ``ΔL = 0``)."""
    if xp is math:
        if temperature == 0.0:
            return 1.0 if barrier == 0.0 else 0.0
        return math.exp(-barrier / temperature)
    if xp is torch:
        safe = torch.where(temperature == 0, torch.ones_like(temperature), temperature)
        factor = torch.exp(-barrier / safe)
        cold = torch.where(barrier == 0, torch.ones_like(factor), torch.zeros_like(factor))
        return torch.where(temperature == 0, cold, factor)
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.exp(-barrier / temperature)
    return np.where(temperature == 0, np.where(barrier == 0, 1.0, 0.0), factor)


def _check_escape_possible(horizon: float, attempt_frequency: float) -> None:
    """``τ·A > 1``: below it even ``T → ∞`` expects fewer than one escape in the horizon."""
    product = horizon * attempt_frequency
    if not product > 1.0:
        raise ValueError(
            "horizon * attempt_frequency must be > 1 (τ·A > 1: otherwise no temperature gives "
            f"one expected escape within the horizon), got horizon={horizon!r}, "
            f"attempt_frequency={attempt_frequency!r} (τ·A = {product!r})"
        )


def _check_at_least_one(name: str, value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        out = math.nan
    if not (out >= 1.0 and math.isfinite(out)):
        raise ValueError(f"{name} must be a finite number ≥ 1, got {value!r}")
    return out


def _plain_list(name: str, values: Any) -> list[float]:
    """A 1-D sequence, array or tensor as a list of floats (for structural checks)."""
    if isinstance(values, Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of numbers, got shape {array.shape}")
    return array.tolist()


# -- rates ---------------------------------------------------------------------------------------
def attempt_frequency(*, lr: Value, omega_0: Value, omega_b: Value) -> Value:
    r"""Attempt frequency of one escape pathway, per optimizer step.

    .. math::

        A = \frac{\eta\,\omega_0\,\omega_b}{2\pi},
        \qquad \omega_0 = \sqrt{\lambda_0},\ \omega_b = \sqrt{|\lambda_b|}

    Source: the prefactor of the overdamped Kramers rate (Kramers 1940; corrected as in
    docs/theory.md section 1.2: ``η`` multiplies, because SGD runs the Langevin time ``s = η t``).

    Args:
        lr: effective step size ``η_eff > 0``.
        omega_0: ``√λ₀ > 0``, square root of the well curvature along the escape direction.
        omega_b: ``√|λ_b| > 0``, square root of the barrier-top curvature magnitude.

    Cost: O(1).
    """
    lr = _checked("lr", lr, check_positive)
    omega_0 = _checked("omega_0", omega_0, check_positive)
    omega_b = _checked("omega_b", omega_b, check_positive)
    _, (lr, omega_0, omega_b) = _backend(lr, omega_0, omega_b)
    return lr * omega_0 * omega_b / _TWO_PI


def escape_rate(
    *, lr: Value, omega_0: Value, omega_b: Value, barrier: Value, temperature: Value
) -> Value:
    r"""Kramers escape rate of SGD over one barrier, in escapes per optimizer step.

    .. math::

        k = \frac{\eta\,\omega_0\,\omega_b}{2\pi}\,\exp\!\left(-\frac{\Delta L}{T}\right)

    Source: Kramers (1940), "Brownian motion in a field of force"; docs/theory.md section 1.2.
    **Departure from the seed**, which writes ``ω₀ω_b/(2πη)``: the overdamped Kramers rate of
    ``dθ = −∇L ds + √(2T) dW`` is ``ω₀ω_b/(2π)·exp(−ΔL/T)`` per unit of the Langevin time ``s``,
    and SGD with step ``η``, ``θ ← θ − η∇L + √(2ηT) ξ``, advances ``s`` by ``η`` per step
    (``s = η t``). So the rate per step carries ``η`` as a factor; the seed's divisor is off by
    ``η²``. A Langevin simulation of the double well ``x⁴ − 3x²`` confirms the factor
    (``tests/test_kramers.py``).

    Assumptions: overdamped dynamics, a parabolic well and barrier top along the escape
    direction, ``ΔL ≫ T`` (the error is ``O(T/ΔL)``; about 10% at ``ΔL/T ≈ 4``), ``η λ₀ ≪ 1``
    and ``T`` the temperature along the escape direction (``T_v`` of docs/theory.md section 2.2).

    Args:
        lr: effective step size ``η_eff > 0``.
        omega_0: ``√λ₀ > 0``.
        omega_b: ``√|λ_b| > 0``.
        barrier: ``ΔL = L(θ*) − L(θ₀) ≥ 0``.
        temperature: ``T ≥ 0``; ``T = 0`` gives its limit (no escape over a positive barrier).

    Cost: O(1).
    """
    barrier = _checked("barrier", barrier, check_non_negative)
    temperature = _checked("temperature", temperature, check_non_negative)
    prefactor = attempt_frequency(lr=lr, omega_0=omega_0, omega_b=omega_b)
    xp, (prefactor, barrier, temperature) = _backend(prefactor, barrier, temperature)
    return prefactor * _arrhenius(barrier, temperature, xp)


def langer_rate(
    *,
    lr: Value,
    well_eigenvalues: Sequence[float] | Tensor | np.ndarray,
    saddle_eigenvalues: Sequence[float] | Tensor | np.ndarray,
    barrier: Value,
    temperature: Value,
) -> Value:
    r"""Multi-dimensional (Eyring–Kramers / Langer) escape rate, per optimizer step.

    .. math::

        k = \frac{\eta\,|\lambda_b|}{2\pi}
            \sqrt{\frac{\det H_0}{|\det H^*|}}\,\exp\!\left(-\frac{\Delta L}{T}\right)

    with ``H₀`` the Hessian at the minimum, ``H*`` the Hessian at the saddle and ``λ_b`` its
    single negative eigenvalue. The determinants run over the subspace the caller resolves
    (the same number of eigenvalues on both sides); they are combined as a sum of logarithms,
    so thousands of eigenvalues do not overflow. In one dimension this is :func:`escape_rate`.

    Source: Langer (1969), Berglund "Kramers' law: validity, derivations and generalisations"
    (2013); docs/theory.md section 1.4, with ``η`` as a factor as in section 1.2. Assumptions:
    isotropic temperature ``T`` over the resolved subspace, a non-degenerate minimum and an index-1
    saddle, ``ΔL ≫ T``.

    Args:
        lr: effective step size ``η_eff > 0``.
        well_eigenvalues: eigenvalues of ``H₀`` (all ``> 0``), 1-D.
        saddle_eigenvalues: eigenvalues of ``H*``, 1-D, exactly one ``< 0`` and the rest ``> 0``.
        barrier: ``ΔL ≥ 0``.
        temperature: ``T ≥ 0``.

    Raises:
        ValueError: on empty or unequal-length eigenvalue lists, a non-positive well eigenvalue,
            or a saddle that is not index 1.

    Cost: O(d) for d eigenvalues.
    """
    lr = _checked("lr", lr, check_positive)
    barrier = _checked("barrier", barrier, check_non_negative)
    temperature = _checked("temperature", temperature, check_non_negative)
    well = _plain_list("well_eigenvalues", well_eigenvalues)
    saddle = _plain_list("saddle_eigenvalues", saddle_eigenvalues)
    if not well or len(well) != len(saddle):
        raise ValueError(
            "well_eigenvalues and saddle_eigenvalues must be non-empty and of equal length, "
            f"got lengths {len(well)} and {len(saddle)}"
        )
    if not all(v > 0 for v in well):
        raise ValueError(f"well_eigenvalues must be all > 0, got {well!r}")
    if sum(v < 0 for v in saddle) != 1 or any(v == 0 or math.isnan(v) for v in saddle):
        raise ValueError(
            f"saddle_eigenvalues must have exactly one entry < 0 and the rest > 0, got {saddle!r}"
        )
    inputs = (lr, well_eigenvalues, saddle_eigenvalues, barrier, temperature)
    if not any(_is_array(v) for v in inputs):
        # Sums of logarithms: determinants of many eigenvalues would overflow.
        log_ratio = math.fsum(math.log(v) for v in well) - math.fsum(
            math.log(abs(v)) for v in saddle
        )
        return (
            lr
            * -min(saddle)
            / _TWO_PI
            * math.exp(0.5 * log_ratio)
            * _arrhenius(barrier, temperature, math)
        )
    xp, (lr, well_t, saddle_t, barrier, temperature) = _backend(
        lr, well_eigenvalues, saddle_eigenvalues, barrier, temperature
    )
    log_ratio = xp.log(well_t).sum() - xp.log(xp.abs(saddle_t)).sum()
    return (
        lr
        * -saddle_t.min()
        / _TWO_PI
        * xp.exp(0.5 * log_ratio)
        * _arrhenius(barrier, temperature, xp)
    )


def _rates_of(rates: Iterable[Any]) -> tuple[ModuleType, Any]:
    if isinstance(rates, Tensor):
        return torch, rates
    if isinstance(rates, np.ndarray):
        return np, rates
    checked = [check_non_negative(f"rates[{i}]", r, allow_inf=True) for i, r in enumerate(rates)]
    return math, checked


def parallel_rate(rates: Iterable[Any]) -> Value:
    r"""Total rate of independent escape pathways (docs/theory.md section 1.5).

    .. math::

        k_{\text{total}} = \sum_i k_i

    Assumptions: the pathways compete (escape by any one of them ends the wait) and do not
    interact. An empty collection gives ``0.0``. Cost: O(n).
    """
    xp, values = _rates_of(rates)
    if xp is math:
        return math.fsum(values)
    return values.sum()


def sequential_rate(rates: Iterable[Any]) -> Value:
    r"""Effective rate of barriers crossed one after the other (docs/theory.md section 1.5).

    .. math::

        \frac{1}{k_{\text{eff}}} = \sum_i \frac{1}{k_i}

    Mean waiting times add: the stages are crossed in order, each once, and the result is the
    inverse mean total time (not the rate of an exponential law). Any zero rate gives ``0.0``
    (that stage is never passed); infinite rates contribute no waiting time.

    Raises:
        ValueError: on an empty collection (no stage: the effective rate is undefined).

    Cost: O(n).
    """
    xp, values = _rates_of(rates)
    size = len(values) if xp is math else values.size if xp is np else values.numel()
    if size == 0:
        raise ValueError(f"rates must be a non-empty collection, got {list(values)!r}")
    if xp is math:
        if any(v == 0.0 for v in values):
            return 0.0
        total = math.fsum(1.0 / v for v in values)
        return math.inf if total == 0.0 else 1.0 / total
    # Array libraries already follow 1/0 = inf, 1/inf = 0, which is the rule above.
    with np.errstate(divide="ignore"):
        return 1.0 / (1.0 / values).sum()


# -- escape-time law (docs/theory.md section 1.5) --------------------------------------------------
def survival_probability(*, rate: Value, steps: Value) -> Value:
    r"""Probability that no escape has happened after ``t`` steps (docs/theory.md section 1.5).

    .. math::

        P(t_{\text{escape}} > t) = e^{-k t}

    Assumptions: escapes form a Poisson process (valid once ``ΔL ≫ T``: the walker forgets its
    entry point long before it escapes). Args: ``rate`` ``k ≥ 0`` per step, ``steps`` ``t ≥ 0``.
    Cost: O(1).
    """
    rate = _checked("rate", rate, check_non_negative)
    steps = _checked("steps", steps, check_non_negative)
    xp, (rate, steps) = _backend(rate, steps)
    return xp.exp(-rate * steps)


def escape_probability(*, rate: Value, steps: Value) -> Value:
    r"""Probability of at least one escape within the next ``t`` steps
    (docs/theory.md section 1.5).

    .. math::

        P(t_{\text{escape}} \le t) = 1 - e^{-k t}

    Computed as ``−expm1(−k t)`` so that small probabilities keep their digits. Same
    assumptions as :func:`survival_probability`. Cost: O(1).
    """
    rate = _checked("rate", rate, check_non_negative)
    steps = _checked("steps", steps, check_non_negative)
    xp, (rate, steps) = _backend(rate, steps)
    return -xp.expm1(-rate * steps)


def mean_escape_time(rate: Value) -> Value:
    r"""Mean number of steps to the first escape (docs/theory.md section 1.5).

    .. math::

        \langle t_{\text{escape}} \rangle = \frac{1}{k}

    ``inf`` for ``k = 0``. Cost: O(1).
    """
    rate = _checked("rate", rate, check_non_negative)
    xp, (rate,) = _backend(rate)
    if xp is math:
        return math.inf if rate == 0.0 else 1.0 / rate
    with np.errstate(divide="ignore"):
        return 1.0 / rate


# -- critical temperature and annealing (docs/theory.md sections 4.1, 4.2) -------------------------
def critical_temperature(*, barrier: Value, horizon: Value, attempt_frequency: Value) -> Value:
    r"""Temperature at which one escape is expected within the horizon (docs/theory.md section 4.1).

    .. math::

        k(T_c)\,\tau = 1 \iff T_c = \frac{\Delta L}{\ln(\tau A)}

    The seed writes ``ln(τω₀)``; its ``ω₀`` is read as the attempt frequency per step
    ``A = η ω₀ ω_b / 2π`` (docs/theory.md section 4.1), the only reading that makes ``k(T_c) τ = 1``
    hold. Below ``T_c`` the barrier is effectively never crossed within ``τ`` steps.

    Args:
        barrier: ``ΔL ≥ 0``.
        horizon: ``τ > 0`` steps.
        attempt_frequency: ``A > 0`` per step.

    Raises:
        ValueError: if ``τ·A ≤ 1`` (plain numbers); for tensors and arrays those entries
            are ``nan``.

    Cost: O(1).
    """
    barrier = _checked("barrier", barrier, check_non_negative)
    horizon = _checked("horizon", horizon, check_positive)
    attempt_frequency = _checked("attempt_frequency", attempt_frequency, check_positive)
    xp, (barrier, horizon, frequency) = _backend(barrier, horizon, attempt_frequency)
    if xp is math:
        _check_escape_possible(horizon, frequency)
        return barrier / math.log(horizon * frequency)
    log_attempts = xp.log(horizon * frequency)
    with np.errstate(divide="ignore", invalid="ignore"):
        return _nan_unless(log_attempts > 0, barrier / log_attempts, xp)


def critical_temperature_scale(
    *,
    barriers: Sequence[float] | Tensor | np.ndarray,
    temperatures: Sequence[float] | Tensor | np.ndarray,
    attempt_frequencies: Sequence[float] | Tensor | np.ndarray,
    horizon: float,
) -> float:
    r"""Common temperature multiplier ``m`` at which one escape is expected within the horizon.

    .. math::

        \tau \sum_i A_i \exp\!\left(-\frac{\Delta L_i}{m\,T_i}\right) = 1

    All directional temperatures ``T_i`` scale together with ``η/B`` (docs/theory.md section 2.2),
    so the controller's critical point is ``m·T_i`` on every pathway. The left side increases
    monotonically in ``m`` from ``τ Σ_{ΔL_i=0} A_i`` (at ``m → 0``) to ``τ Σ_i A_i`` (at
    ``m → ∞``); the root is bracketed by the single-barrier solutions
    ``c_min / ln(τ'ΣA) ≤ m ≤ c_max / ln(τ'ΣA)`` with ``c_i = ΔL_i / T_i`` and solved by Brent's
    method on ``ln m`` with a log-sum-exp left side (no overflow for large ``c_i``). With one
    pathway ``m·T = ΔL / ln(τA)`` = :func:`critical_temperature` (closed form, no solve).
    Returns ``0.0`` when the zero-barrier pathways alone give ``τ Σ A ≥ 1``.

    Source: docs/theory.md section 4.1 (pathways add, section 1.5).

    Args:
        barriers: ``ΔL_i ≥ 0``.
        temperatures: ``T_i > 0`` at the current setting (``m = 1`` is the current state).
        attempt_frequencies: ``A_i ≥ 0`` per step.
        horizon: ``τ > 0`` steps.

    Raises:
        ValueError: on empty or unequal-length inputs, an invalid entry, or ``τ Σ A_i ≤ 1``.

    Cost: O(n) per Brent iteration, about 10–40 iterations. Returns a float.
    """
    horizon = check_positive("horizon", horizon)
    barrier_list = _plain_list("barriers", barriers)
    temperature_list = _plain_list("temperatures", temperatures)
    frequency_list = _plain_list("attempt_frequencies", attempt_frequencies)
    lengths = {len(barrier_list), len(temperature_list), len(frequency_list)}
    if len(lengths) != 1 or not barrier_list:
        raise ValueError(
            "barriers, temperatures and attempt_frequencies must be non-empty and of equal "
            f"length, got lengths {len(barrier_list)}, {len(temperature_list)} and "
            f"{len(frequency_list)}"
        )
    for i, (b, t, a) in enumerate(zip(barrier_list, temperature_list, frequency_list, strict=True)):
        check_non_negative(f"barriers[{i}]", b)
        check_positive(f"temperatures[{i}]", t)
        check_non_negative(f"attempt_frequencies[{i}]", a)
    total = math.fsum(frequency_list)
    if not horizon * total > 1.0:
        raise ValueError(
            "horizon * sum(attempt_frequencies) must be > 1 (τ·ΣA > 1: otherwise no "
            f"temperature gives one expected escape within the horizon), got horizon={horizon!r}, "
            f"sum(attempt_frequencies)={total!r} (τ·ΣA = {horizon * total!r})"
        )
    # Zero barriers escape at any temperature: they use up part of the one expected escape.
    free = horizon * math.fsum(
        a for b, a in zip(barrier_list, frequency_list, strict=True) if b == 0.0
    )
    if free >= 1.0:
        return 0.0
    effective_horizon = horizon / (1.0 - free)
    pairs = [
        (b / t, a)
        for b, t, a in zip(barrier_list, temperature_list, frequency_list, strict=True)
        if b > 0.0 and a > 0.0
    ]
    costs = np.array([c for c, _ in pairs])
    log_weights = np.log(effective_horizon * np.array([a for _, a in pairs]))
    log_attempts = math.log(effective_horizon * math.fsum(a for _, a in pairs))
    low, high = float(costs.min()) / log_attempts, float(costs.max()) / log_attempts
    if len(pairs) == 1 or high <= low * (1.0 + 1e-14):
        return high

    def log_expected_escapes(log_m: float) -> float:
        return float(np.logaddexp.reduce(log_weights - costs * math.exp(-log_m)))

    # In exact arithmetic the expected escapes are ≤ 1 at `low` and ≥ 1 at `high` (see the
    # docstring); rounding can break the sign change only when the root sits at an end.
    log_low, log_high = math.log(low), math.log(high)
    if log_expected_escapes(log_low) >= 0.0:
        return low
    if log_expected_escapes(log_high) <= 0.0:
        return high
    root = scipy.optimize.brentq(
        log_expected_escapes, log_low, log_high, xtol=1e-15, rtol=4 * np.finfo(float).eps
    )
    return math.exp(root)


def _annealing_factor(step: Any, horizon: Any, attempt_frequency: Any) -> tuple[ModuleType, Any]:
    step = _checked("step", step, _check_at_least_one)
    horizon = _checked("horizon", horizon, check_positive)
    attempt_frequency = _checked("attempt_frequency", attempt_frequency, check_positive)
    xp, (step, horizon, frequency) = _backend(step, horizon, attempt_frequency)
    if xp is math:
        _check_escape_possible(horizon, frequency)
    held = _minimum(step, horizon, xp)
    factor = (1.0 + xp.log(horizon / held)) / xp.log(horizon * frequency)
    if xp is not math:
        factor = _nan_unless(horizon * frequency > 1, factor, xp)
    return xp, factor


def annealed_temperature(
    *, step: Value, horizon: Value, critical_temperature: Value, attempt_frequency: Value
) -> Value:
    r"""Target temperature of the annealing schedule at step ``t`` (docs/theory.md section 4.2).

    .. math::

        T(t) = T_c\,\frac{1 + \ln(\tau / t)}{\ln(\tau A)}, \qquad 1 \le t \le \tau

    with the seed's ``ω₀`` read as the attempt frequency per step ``A`` (docs/theory.md section
    4.1). Past the horizon the value at ``t = τ``, ``T_c / ln(τA)``, is held: the seed's formula
    would keep falling and turn negative for ``t > e·τ``. The schedule is the seed's, not
    normalised: ``T(1) = T_c (1 + ln τ) / ln(τA)``, which exceeds ``T_c`` when ``A < e``.

    Args:
        step: ``t ≥ 1`` (1-based optimizer step).
        horizon: ``τ > 0`` steps.
        critical_temperature: ``T_c ≥ 0``.
        attempt_frequency: ``A > 0`` per step, with ``τ·A > 1``.

    Raises:
        ValueError: on ``step < 1`` or ``τ·A ≤ 1`` (plain numbers; arrays give ``nan``).

    Cost: O(1).
    """
    critical_temperature = _checked(
        "critical_temperature", critical_temperature, check_non_negative
    )
    xp, factor = _annealing_factor(step, horizon, attempt_frequency)
    if xp is torch:
        critical_temperature = torch.as_tensor(
            critical_temperature, dtype=factor.dtype, device=factor.device
        )
    return critical_temperature * factor


def annealed_lr(*, step: Value, horizon: Value, base_lr: Value, attempt_frequency: Value) -> Value:
    r"""Learning rate of the annealing schedule at step ``t`` (docs/theory.md section 4.2).

    .. math::

        \eta(t) = \eta_0\,\frac{1 + \ln(\tau / t)}{\ln(\tau A)}, \qquad 1 \le t \le \tau

    Since ``T ∝ η`` at fixed batch size, this is :func:`annealed_temperature` with ``T_c``
    replaced by ``η₀``. Held at its ``t = τ`` value, ``η₀ / ln(τA)``, past the horizon (the
    seed's formula would turn negative for ``t > e·τ``). ``η(1) = η₀ (1 + ln τ)/ln(τA)`` is not
    ``η₀`` in general: ``η₀`` is the scale of the schedule, as in the seed.

    Args:
        step: ``t ≥ 1``.
        horizon: ``τ > 0`` steps.
        base_lr: ``η₀ > 0``.
        attempt_frequency: ``A > 0`` per step, with ``τ·A > 1``.

    Raises:
        ValueError: on ``step < 1`` or ``τ·A ≤ 1`` (plain numbers; arrays give ``nan``).

    Cost: O(1).
    """
    base_lr = _checked("base_lr", base_lr, check_positive)
    xp, factor = _annealing_factor(step, horizon, attempt_frequency)
    if xp is torch:
        base_lr = torch.as_tensor(base_lr, dtype=factor.dtype, device=factor.device)
    return base_lr * factor


def temperature_for_rate(*, rate: Value, attempt_frequency: Value, barrier: Value) -> Value:
    r"""Temperature at which one pathway escapes at a given rate: the inverse of the Arrhenius law.

    .. math::

        k = A\,e^{-\Delta L / T} \iff T = \frac{\Delta L}{\ln(A / k)}, \qquad 0 < k < A

    Source: inverts :func:`escape_rate` (docs/theory.md section 1.2), as needed by the optimal batch
    size of docs/theory.md section 4.4.

    Raises:
        ValueError: unless ``0 < rate < attempt_frequency`` (plain numbers; arrays give ``nan``):
            no temperature reaches a rate at or above the attempt frequency.

    Cost: O(1).
    """
    rate = _checked("rate", rate, check_positive)
    attempt_frequency = _checked("attempt_frequency", attempt_frequency, check_positive)
    barrier = _checked("barrier", barrier, check_non_negative)
    xp, (rate, frequency, barrier) = _backend(rate, attempt_frequency, barrier)
    if xp is math:
        if not rate < frequency:
            raise ValueError(
                f"rate must be in (0, attempt_frequency) = (0, {frequency!r}), got {rate!r}"
            )
        return barrier / math.log(frequency / rate)
    log_ratio = xp.log(frequency / rate)
    with np.errstate(divide="ignore", invalid="ignore"):
        return _nan_unless((log_ratio > 0) & (rate > 0), barrier / log_ratio, xp)


# -- batch size and stopping (docs/theory.md sections 4.4, 4.5) ------------------------------------
def optimal_batch_size(
    *,
    lr: Value,
    noise_trace: Value,
    dim: int,
    target_temperature: Value,
    dataset_size: int | None = None,
) -> Value:
    r"""Batch size that sets the SGD temperature to a target (docs/theory.md section 4.4).

    With replacement ``T = η tr Σ₁ / (2dB)``, so

    .. math::

        B = K, \qquad K = \frac{\eta\,\operatorname{tr}\Sigma_1}{2 d\,T^*}.

    Without replacement from ``N`` samples ``T = η tr Σ₁ (N − B) / (B (N − 1)) / (2d)``;
    solving ``T = T*`` for ``B``:

    .. math::

        B = \frac{K N}{N - 1 + K} \;\le N.

    The directional form (docs/theory.md section 2.2: ``T_v = η vᵀΣ_B v / 2``) is the same call with
    ``noise_trace = vᵀΣ₁v`` and ``dim = 1``. For a target rate ``k*`` first get ``T*`` from
    :func:`temperature_for_rate`. The seed's literal ``η⟨‖g_B − g‖²⟩ / (2dkΔL)`` is
    dimensionally inconsistent (a rate times a loss in the denominator where a temperature,
    a loss, belongs, and the batch noise ``⟨‖g_B − g‖²⟩`` already depends on ``B``); this is
    the inversion of the temperature (docs/theory.md section 2.1) that it stands for.

    Args:
        lr: effective step size ``η_eff > 0``.
        noise_trace: ``tr Σ₁ ≥ 0`` (per-sample gradient covariance trace).
        dim: ``d ≥ 1`` parameters (``1`` for the directional form).
        target_temperature: ``T* > 0``.
        dataset_size: ``N ≥ 2`` for sampling without replacement, ``None`` for with.

    Returns:
        A real number; the caller rounds and clamps it.

    Cost: O(1).
    """
    lr = _checked("lr", lr, check_positive)
    noise_trace = _checked("noise_trace", noise_trace, check_non_negative)
    dim = check_positive_int("dim", dim)
    target_temperature = _checked("target_temperature", target_temperature, check_positive)
    if dataset_size is not None:
        dataset_size = check_positive_int("dataset_size", dataset_size, minimum=2)
    _, (lr, noise_trace, target_temperature) = _backend(lr, noise_trace, target_temperature)
    with_replacement = lr * noise_trace / (2.0 * dim * target_temperature)
    if dataset_size is None:
        return with_replacement
    return with_replacement * dataset_size / (dataset_size - 1 + with_replacement)


def should_stop(*, rate: float, remaining_steps: float, compute_cost: float) -> bool:
    r"""Termination rule of docs/theory.md section 4.5.

    .. math::

        \text{stop} \iff k < \frac{1}{R\,c} \iff k\,R\,c < 1

    i.e. fewer than ``1/c`` escapes are expected in the remaining ``R`` steps. ``c = 0`` never
    stops; ``R ≤ 0`` stops whenever ``c > 0``. The guards (minimum epochs, patience, a stalled
    validation metric) belong to the caller.

    Args:
        rate: ``k ≥ 0`` escapes per step (``inf`` never stops).
        remaining_steps: ``R`` steps left in the budget (finite).
        compute_cost: ``c ≥ 0``.

    Cost: O(1).
    """
    rate = check_non_negative("rate", rate, allow_inf=True)
    remaining_steps = check_finite("remaining_steps", remaining_steps)
    compute_cost = check_non_negative("compute_cost", compute_cost)
    if compute_cost == 0.0:
        return False
    if remaining_steps <= 0.0:
        return True
    return rate * remaining_steps * compute_cost < 1.0


# -- profiles along a reaction coordinate (docs/theory.md section 3.3) ---------------------------
def _profile(positions: Any, losses: Any, temperature: Any) -> tuple[ModuleType, Any, Any, float]:
    temperature = check_positive("temperature", temperature)
    if isinstance(positions, Tensor) or isinstance(losses, Tensor):
        xp, (q, loss) = _backend(positions, losses)
    else:
        xp = np
        q, loss = np.asarray(positions, dtype=np.float64), np.asarray(losses, dtype=np.float64)
    if q.ndim != 1 or q.shape[0] < 2:
        raise ValueError(
            f"positions must be a 1-D sequence of at least 2 numbers, got shape {tuple(q.shape)}"
        )
    if loss.shape != q.shape:
        raise ValueError(
            f"losses must have the shape of positions {tuple(q.shape)}, got {tuple(loss.shape)}"
        )
    if not bool((q[1:] > q[:-1]).all()):
        raise ValueError(f"positions must be strictly increasing, got {q.tolist()!r}")
    if not bool(xp.isfinite(loss).all()):
        raise ValueError(f"losses must be all finite, got {loss.tolist()!r}")
    return xp, q, loss, temperature


def _normalised_cumulative_trapezoid(q: Any, log_integrand: Any, xp: ModuleType) -> Any:
    """``∫_{q₀}^{q} f / ∫_{q₀}^{q_n} f`` with ``f = exp(log_integrand)``, trapezoid rule.

    Every panel is formed in log space and accumulated with log-sum-exp, so integrands that
    span hundreds of orders of magnitude (``exp(±L/T)`` with ``ΔL/T`` large) neither overflow
    nor lose the small tail values.
    """
    if xp is torch:
        log_panels = torch.log((q[1:] - q[:-1]) / 2) + torch.logaddexp(
            log_integrand[:-1], log_integrand[1:]
        )
        log_cumulative = torch.logcumsumexp(log_panels, dim=0)
        ratio = torch.exp(log_cumulative - log_cumulative[-1])
        return torch.cat([torch.zeros_like(ratio[:1]), ratio])
    log_panels = np.log((q[1:] - q[:-1]) / 2) + np.logaddexp(log_integrand[:-1], log_integrand[1:])
    log_cumulative = np.logaddexp.accumulate(log_panels)
    return np.concatenate([[0.0], np.exp(log_cumulative - log_cumulative[-1])])


def committor(
    positions: Sequence[float] | Tensor | np.ndarray,
    losses: Sequence[float] | Tensor | np.ndarray,
    *,
    temperature: float,
) -> Tensor | np.ndarray:
    r"""Committor of overdamped dynamics along a scanned 1-D loss profile
    (docs/theory.md section 3.3).

    .. math::

        p(q) = \frac{\int_a^q e^{L(q')/T}\,dq'}{\int_a^b e^{L(q')/T}\,dq'}

    the probability that a walker started at ``q`` reaches ``b = positions[-1]`` (the far
    basin) before ``a = positions[0]`` (the start basin). It solves the backward equation
    ``p'' − L' p' / T = 0`` with ``p(a) = 0``, ``p(b) = 1``; the weight ``e^{+L/T}`` is
    largest at the barrier top, so ``p`` jumps from 0 to 1 across the barrier and ``p = 1/2``
    marks the transition state. Evaluated by the cumulative trapezoid rule in log space.

    This is docs/theory.md section 3.3's correction of the seed, whose ``∫e^{−βL}/Z`` is the
    cumulative Boltzmann weight (:func:`boltzmann_cumulative`): the equilibrium mass below ``q``,
    which is dominated by the wells, not an escape probability.

    Assumptions: overdamped 1-D dynamics along the coordinate with temperature ``T`` (the
    directional ``T_v``), the transverse directions equilibrated.

    Args:
        positions: strictly increasing ``q`` (at least 2).
        losses: ``L(q)``, finite, same length.
        temperature: ``T > 0``.

    Returns:
        ``p`` at every position (tensor for tensor input, else numpy), ``p[0] = 0``, ``p[-1] = 1``.

    Cost: O(n) for n positions; no loss evaluations beyond the given profile.
    """
    xp, q, loss, temperature = _profile(positions, losses, temperature)
    return _normalised_cumulative_trapezoid(q, loss / temperature, xp)


def boltzmann_cumulative(
    positions: Sequence[float] | Tensor | np.ndarray,
    losses: Sequence[float] | Tensor | np.ndarray,
    *,
    temperature: float,
) -> Tensor | np.ndarray:
    r"""The seed's committor formula: cumulative Boltzmann weight along a profile
    (docs/theory.md section 3.3).

    .. math::

        P(q) = \frac{\int_a^q e^{-L(q')/T}\,dq'}{Z}, \qquad Z = \int_a^b e^{-L(q')/T}\,dq'

    The equilibrium probability of finding the walker below ``q``. Its weight is largest in
    the wells, so across a high barrier it stays flat, near the start basin's share of ``Z``:
    it is a population, not the probability of committing to the far basin. Offered as the
    named alternative to :func:`committor`. Same arguments, cost and numerics.
    """
    xp, q, loss, temperature = _profile(positions, losses, temperature)
    return _normalised_cumulative_trapezoid(q, -loss / temperature, xp)


# -- transition-path action (docs/theory.md section 3.4) ------------------------------------
def path_action(
    trajectory: Tensor | np.ndarray | Sequence[Sequence[float]],
    gradients: Tensor | np.ndarray | Sequence[Sequence[float]],
    *,
    lr: float,
    temperature: float,
    dt: float = 1.0,
) -> Value:
    r"""Onsager–Machlup action of a recorded trajectory (docs/theory.md section 3.4, discretised).

    .. math::

        S = \sum_{k=0}^{n-1}
            \frac{\big\| (\theta_{k+1} - \theta_k)/\Delta t + \eta \nabla L(\theta_k) \big\|^2}
                 {4 \eta T}\,\Delta t,
        \qquad P[\theta] \propto e^{-S}

    For ``dθ = −η∇L dt + √(2ηT) dW`` the increment over ``Δt`` is Gaussian with variance
    ``2ηT Δt`` per coordinate, so ``S`` is its negative log-density (Euler–Maruyama). With
    ``Δt = 1`` and SGD steps ``θ_{k+1} = θ_k − η∇L + √(2ηT) ξ_k`` each term is ``‖ξ_k‖²/2``;
    noiseless gradient descent has ``S = 0``. A diagnostic utility, not used by the controller.

    Args:
        trajectory: ``[n + 1, d]`` points ``θ_0 … θ_n`` (``[n + 1]`` is read as ``d = 1``).
        gradients: ``∇L(θ_k)``, ``[n + 1, d]`` (the last row is unused) or ``[n, d]``.
        lr: ``η > 0``.
        temperature: ``T > 0``.
        dt: ``Δt > 0`` per recorded step.

    Returns:
        ``S`` (a 0-d tensor for tensor input, else a float).

    Cost: O(n d).
    """
    lr = check_positive("lr", lr)
    temperature = check_positive("temperature", temperature)
    dt = check_positive("dt", dt)
    if isinstance(trajectory, Tensor) or isinstance(gradients, Tensor):
        xp, (path, grads) = _backend(trajectory, gradients)
    else:
        xp = np
        path = np.asarray(trajectory, dtype=np.float64)
        grads = np.asarray(gradients, dtype=np.float64)
    if path.ndim == 1:
        path = path.reshape(-1, 1)
    if grads.ndim == 1:
        grads = grads.reshape(-1, 1)
    if path.ndim != 2 or path.shape[0] < 2:
        raise ValueError(
            f"trajectory must have shape [n + 1, d] with n ≥ 1, got {tuple(path.shape)}"
        )
    n, d = path.shape[0] - 1, path.shape[1]
    if tuple(grads.shape) not in ((n + 1, d), (n, d)):
        raise ValueError(
            f"gradients must have shape [{n + 1}, {d}] or [{n}, {d}] (one per trajectory "
            f"point), got {tuple(grads.shape)}"
        )
    residual = (path[1:] - path[:-1]) / dt + lr * grads[:n]
    action = (residual**2).sum() * dt / (4.0 * lr * temperature)
    return action if xp is torch else float(action)

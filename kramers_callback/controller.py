r"""The policy decision: from measured and target temperature to a new learning rate and batch size.

Pure maths (SPEC section 5): no Lightning, no model, no autograd. The callback measures, this
module decides, the callback applies.

The temperature the controller steers is the seed's isotropic ``T`` (seed 000 section 3.1,
SPEC 2), as a function of the two knobs ``η`` and ``B``:

.. math::

    T(\eta, B) = \frac{\eta_{\text{eff}}\,\operatorname{tr}\Sigma_1}{2d}\,g(B),
    \qquad \eta_{\text{eff}} = \frac{\eta}{1 - \beta},
    \qquad g(B) = \frac{N - B}{B (N - 1)} \ \text{(or } 1/B \text{ with replacement)}.

Every directional temperature ``T_v`` has the same ``η_eff·g(B)`` factor, so steering ``T``
steers all of them by the same ratio (the common multiplier of
:func:`kramers_callback.kramers.critical_temperature_scale`).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from kramers_callback._validation import (
    all_finite,
    check_in_range,
    check_positive,
    check_positive_int,
)
from kramers_callback.kramers import (
    annealed_temperature,
    attempt_frequency,
    critical_temperature_scale,
)
from kramers_callback.noise.temperature import effective_lr, isotropic_temperature

__all__ = [
    "ControlLimits",
    "Decision",
    "Policy",
    "Target",
    "TargetFn",
    "annealing_target",
    "decide",
    "stability_limit",
]


class Policy(str, enum.Enum):
    """Which knobs the controller may turn (SPEC 5)."""

    OBSERVE = "observe"
    """Measure and log; change nothing."""
    LR = "lr"
    """Change the learning rate only."""
    BATCH = "batch"
    """Change the batch size only (seed 000 section 6.2)."""
    HYBRID = "hybrid"
    """Cool by growing the batch size up to ``batch_max`` first, then lowering the learning
    rate ("increase the batch size instead of decaying the learning rate", Smith et al. 2018);
    heat in the reverse order: raise the learning rate up to its bound first, then shrink the
    batch."""


@dataclass(frozen=True)
class ControlLimits:
    """The clamps of SPEC 5 that every decision respects.

    Args:
        lr_min, lr_max: bounds on the learning rate ``η`` (``0 < lr_min ≤ lr_max``).
        batch_min, batch_max: bounds on the samples per optimizer step ``B``.
        batch_multiple: ``B`` is always a multiple of this (loader multiple × world size, or
            the loader batch × world size when the batch grows by gradient accumulation).
        max_change: the largest factor by which ``η`` or ``B`` may move in one decision
            (``> 1``; ``2`` means at most doubling or halving).
    """

    lr_min: float
    lr_max: float
    batch_min: int
    batch_max: int
    batch_multiple: int = 1
    max_change: float = 2.0

    def __post_init__(self) -> None:
        check_positive("lr_min", self.lr_min)
        check_positive("lr_max", self.lr_max)
        if self.lr_max < self.lr_min:
            raise ValueError(f"lr_max must be ≥ lr_min = {self.lr_min!r}, got {self.lr_max!r}")
        check_positive_int("batch_min", self.batch_min)
        check_positive_int("batch_max", self.batch_max)
        if self.batch_max < self.batch_min:
            raise ValueError(
                f"batch_max must be ≥ batch_min = {self.batch_min!r}, got {self.batch_max!r}"
            )
        check_positive_int("batch_multiple", self.batch_multiple)
        check_in_range("max_change", self.max_change, 1.0, math.inf, low_open=True, high_open=True)


@dataclass(frozen=True)
class Decision:
    """What the controller chose, and why.

    ``lr`` and ``batch_size`` are the settings to apply (equal to the inputs when nothing
    changes). ``limited_by`` names every clamp that bound a knob: ``"lr_min"``, ``"lr_max"``,
    ``"stability"``, ``"batch_min"``, ``"batch_max"``, ``"max_change"``.
    """

    lr: float
    batch_size: int
    temperature: float
    """``T(η, B)`` at the current settings."""
    target_temperature: float
    """``T*`` at the current settings."""
    predicted_temperature: float
    """``T(lr, batch_size)`` at the new settings."""
    changed: bool
    reason: str
    """``"observe"``, ``"on_target"``, ``"cool"``, ``"heat"``, ``"no_target"`` or
    ``"non_finite"``."""
    limited_by: tuple[str, ...] = field(default=())


def stability_limit(*, lambda_max: float, momentum: float = 0.0) -> float:
    r"""Largest stable learning rate on a quadratic with top curvature ``λ_max``.

    .. math::

        \eta < \frac{2 (1 + \beta)}{\lambda_{\max}}

    Source: gradient descent on ``½ λ x²`` contracts iff ``|1 − ηλ| < 1`` (SPEC 5:
    ``η < 2/λ_max``); heavy-ball momentum ``β`` widens this to ``2(1 + β)/λ`` (Polyak 1964).
    With ``β = 0`` it is SPEC's ``2/λ_max``. ``inf`` when ``λ_max ≤ 0`` (no unstable
    direction). Assumptions: the top eigenvalue governs stability (locally quadratic loss).
    Cost: O(1).
    """
    if not lambda_max > 0:
        return math.inf
    return 2.0 * (1.0 + momentum) / lambda_max


TargetFn = Callable[[float, int], float]
"""``T*(η, B)``: the target temperature if the learning rate were ``η`` and the batch ``B``
(``nan`` where no temperature reaches the target, e.g. ``τ·A ≤ 1``)."""


class _Knobs:
    """The temperature model ``T(η, B)``, the target ``T*(η, B)`` and the clamped moves.

    Both moves solve ``T = T*`` along one knob inside its clamp window. The gap
    ``ln T − ln T*`` increases with ``η`` (``T ∝ η``; ``T*`` falls as the attempt frequency
    ``A ∝ η`` grows) and decreases with ``B`` (``T`` falls; ``T*`` rises as the step budget
    ``τ = samples/B`` shrinks), so each solve is a bisection on a monotone function. A target
    that is undefined (``nan``: no escape reachable) counts as "too cold".
    """

    def __init__(
        self,
        *,
        target: TargetFn,
        noise_trace: float,
        dim: int,
        dataset_size: int | None,
        momentum: float,
        lambda_max: float,
        limits: ControlLimits,
    ) -> None:
        self.target = target
        self.noise_trace = noise_trace
        self.dim = dim
        self.dataset_size = dataset_size
        self.momentum = momentum
        self.limits = limits
        self.stability = stability_limit(lambda_max=lambda_max, momentum=momentum)
        self.limited_by: list[str] = []

    def temperature(self, lr: float, batch_size: int) -> float:
        return isotropic_temperature(
            lr=effective_lr(lr=lr, momentum=self.momentum),
            noise_trace=self.noise_trace,
            dim=self.dim,
            batch_size=batch_size,
            dataset_size=self.dataset_size,
        )

    def gap(self, lr: float, batch_size: int) -> float:
        """``ln T(η, B) − ln T*(η, B)``: positive means too hot."""
        target = float(self.target(lr, batch_size))
        if not (math.isfinite(target) and target > 0):
            return -math.inf
        temperature = self.temperature(lr, batch_size)
        return math.log(temperature) - math.log(target) if temperature > 0 else -math.inf

    def _note(self, name: str) -> None:
        if name not in self.limited_by:
            self.limited_by.append(name)

    def cap_lr(self, lr: float) -> float:
        """``η`` brought strictly under the stability limit, which beats every other clamp:
        no target is worth an unstable step size."""
        if lr >= self.stability:
            self._note("stability")
            return math.nextafter(self.stability, 0.0)
        return lr

    def move_lr(self, lr: float, batch_size: int) -> tuple[float, bool]:
        """``η'`` solving ``T = T*`` at fixed ``B`` within the clamps, and whether it sits at
        its upper bound (``lr_max`` or the stability limit), where heating turns to ``B``."""
        limits = self.limits
        low, low_name = max((lr / limits.max_change, "max_change"), (limits.lr_min, "lr_min"))
        high, high_name = min((lr * limits.max_change, "max_change"), (limits.lr_max, "lr_max"))
        if high >= self.stability:
            high, high_name = math.nextafter(self.stability, 0.0), "stability"
        if low > high:  # the stability limit is below every allowed η
            self._note("stability")
            return high, True
        if self.gap(low, batch_size) >= 0:
            new = low
            if low < lr:
                self._note(low_name)
        elif self.gap(high, batch_size) <= 0:
            new = high
            if high > lr or high_name == "stability":
                self._note(high_name)
        else:
            a, b = math.log(low), math.log(high)
            for _ in range(80):  # relative precision ~ 2^-80 of the window: far below float
                mid = 0.5 * (a + b)
                if self.gap(math.exp(mid), batch_size) > 0:
                    b = mid
                else:
                    a = mid
            new = math.exp(0.5 * (a + b))
        at_upper = new == high and high_name in ("lr_max", "stability")
        return new, at_upper

    def move_batch(self, lr: float, batch_size: int) -> tuple[int, bool]:
        """``B'`` on a multiple of the unit nearest (in ``|ln T − ln T*|``) to ``T = T*`` at
        fixed ``η`` within the clamps, and whether it sits at ``batch_max`` (growing) or
        ``batch_min`` (shrinking)."""
        limits = self.limits
        unit = limits.batch_multiple
        low = max(limits.batch_min, batch_size / limits.max_change)
        high = min(limits.batch_max, batch_size * limits.max_change)
        first, last = math.ceil(low / unit), math.floor(high / unit)
        if first > last:  # no multiple of the unit inside the window: hold
            return batch_size, False
        gap = lambda k: self.gap(lr, k * unit)  # noqa: E731 — decreasing in k
        if gap(first) <= 0:
            k = first
            if gap(first) < 0 and first * unit < batch_size:
                self._note("batch_min" if low == limits.batch_min else "max_change")
        elif gap(last) >= 0:
            k = last
            if gap(last) > 0 and last * unit > batch_size:
                self._note("batch_max" if high == limits.batch_max else "max_change")
        else:
            a, b = first, last  # gap(a) > 0 ≥ gap(b)
            while b - a > 1:
                mid = (a + b) // 2
                a, b = (mid, b) if gap(mid) > 0 else (a, mid)
            k = a if abs(gap(a)) < abs(gap(b)) else b
        new = k * unit
        growing = new > batch_size or (new == batch_size and self.gap(lr, new) > 0)
        at_bound = new + unit > limits.batch_max if growing else new - unit < limits.batch_min
        return new, at_bound


def decide(
    policy: Policy | str,
    *,
    target_temperature: float | TargetFn,
    lr: float,
    batch_size: int,
    noise_trace: float,
    dim: int,
    lambda_max: float,
    limits: ControlLimits,
    momentum: float = 0.0,
    dataset_size: int | None = None,
) -> Decision:
    r"""Choose ``(η', B')`` that moves the temperature toward its target within the clamps.

    The temperature follows ``T ∝ η_eff g(B)`` (module docstring); the target may itself
    depend on the knobs (:func:`annealing_target`: a larger ``B`` leaves fewer steps, a larger
    ``η`` more attempts per step), so each move solves, along one knob,

    .. math::

        T(\eta', B) = T^*(\eta', B) \quad	ext{or}\quad T(\eta, B') = T^*(\eta, B').

    For a constant target this is ``η' = η T*/T`` and
    ``B' = KN/(N − 1 + K)``, ``K = η_eff tr Σ₁/(2dT*)``
    (:func:`~kramers_callback.kramers.optimal_batch_size`, seed 000 section 6.2). Then SPEC 5's
    clamps: each knob moves by at most ``max_change`` per decision; ``η`` stays in
    ``[lr_min, lr_max]`` and strictly below the stability limit ``2(1 + β)/λ_max``
    (:func:`stability_limit`; stability wins over ``lr_min``); ``B`` stays in
    ``[batch_min, batch_max]`` on a multiple of ``batch_multiple`` (the multiple nearest the
    solution in ``|ln T − ln T*|``).

    Policies (:class:`Policy`): ``observe`` returns the inputs; ``lr`` moves ``η``; ``batch``
    moves ``B``; ``hybrid`` cools by ``B`` first and lowers ``η`` only once ``B`` has reached
    ``batch_max`` (the part of the change that the per-decision limit holds back is left to the
    next decision, not handed to ``η``), and heats by ``η`` first, then shrinks ``B`` once ``η``
    has reached ``lr_max`` or the stability limit. A non-finite or non-positive input, or an
    undefined target at the current settings, holds every setting (SPEC 5: never act on a
    non-finite estimate).

    Args:
        policy: a :class:`Policy` or its string value.
        target_temperature: ``T* > 0``, or ``T*(η, B)`` as a function (:data:`TargetFn`).
        lr: the current learning rate ``η`` (of the reference parameter group).
        batch_size: the current samples per optimizer step ``B``.
        noise_trace: ``tr Σ₁`` (per-sample gradient covariance trace).
        dim: ``d``, number of trainable parameters.
        lambda_max: the top Hessian eigenvalue (for the stability limit).
        limits: the clamps.
        momentum: ``β`` of heavy-ball SGD (``η_eff = η/(1 − β)``).
        dataset_size: ``N`` for the finite-population factor, ``None`` for with replacement.

    Returns:
        A :class:`Decision`.

    Cost: O(1) evaluations of the target per bisection step, about 80 for ``η`` and
    ``log₂(window/unit)`` for ``B``.
    """
    policy = Policy(policy)
    target = (
        target_temperature
        if callable(target_temperature)
        else (lambda _lr, _b, value=target_temperature: value)
    )
    current_target = float(target(lr, batch_size)) if all_finite(lr) else math.nan
    measured = (lr, noise_trace, lambda_max, momentum)
    if not all_finite(*measured) or not (lr > 0 and noise_trace > 0):
        return Decision(
            lr=lr,
            batch_size=batch_size,
            temperature=math.nan,
            target_temperature=current_target,
            predicted_temperature=math.nan,
            changed=False,
            reason="non_finite",
        )
    knobs = _Knobs(
        target=target,
        noise_trace=noise_trace,
        dim=dim,
        dataset_size=dataset_size,
        momentum=momentum,
        lambda_max=lambda_max,
        limits=limits,
    )
    if not (math.isfinite(current_target) and current_target > 0):
        # No target (no barrier within reach, or τ·A ≤ 1) is no reason to keep an unstable
        # step size: the stability clamp still holds wherever the policy owns η.
        new_lr = knobs.cap_lr(lr) if policy in (Policy.LR, Policy.HYBRID) else lr
        return Decision(
            lr=new_lr,
            batch_size=batch_size,
            temperature=math.nan,
            target_temperature=current_target,
            predicted_temperature=math.nan,
            changed=new_lr != lr,
            reason="no_target",
            limited_by=tuple(knobs.limited_by),
        )
    temperature = knobs.temperature(lr, batch_size)
    new_lr, new_batch = lr, batch_size
    if policy is Policy.OBSERVE:
        reason = "observe"
    elif current_target == temperature:
        reason = "on_target"
        if policy is not Policy.BATCH:
            new_lr = knobs.cap_lr(lr)
    else:
        cooling = current_target < temperature
        reason = "cool" if cooling else "heat"
        if policy is Policy.LR:
            new_lr, _ = knobs.move_lr(lr, batch_size)
        elif policy is Policy.BATCH:
            new_batch, _ = knobs.move_batch(lr, batch_size)
        elif cooling:
            new_batch, at_max = knobs.move_batch(lr, batch_size)
            if at_max and knobs.gap(lr, new_batch) > 0:
                new_lr, _ = knobs.move_lr(lr, new_batch)
            else:
                new_lr = knobs.cap_lr(lr)
        else:
            new_lr, at_upper = knobs.move_lr(lr, batch_size)
            if at_upper and knobs.gap(new_lr, batch_size) < 0:
                new_batch, _ = knobs.move_batch(new_lr, batch_size)
    return Decision(
        lr=new_lr,
        batch_size=new_batch,
        temperature=temperature,
        target_temperature=current_target,
        predicted_temperature=knobs.temperature(new_lr, new_batch),
        changed=(new_lr != lr or new_batch != batch_size),
        reason=reason,
        limited_by=tuple(knobs.limited_by),
    )


@dataclass(frozen=True)
class Target:
    """The annealing target at one step, and the quantities it came from."""

    critical_temperature: float
    """``T_c`` in the units of the isotropic ``T``: the temperature at which one escape is
    expected within the horizon."""
    temperature: float
    """``T*(t)``, seed 000 section 5.2."""
    attempt_frequency: float
    """``A = Σ_i A_i`` per step."""


def annealing_target(
    *,
    barriers: list[float],
    curvatures: list[float],
    barrier_curvatures: list[float],
    directional_temperatures: list[float],
    temperature: float,
    lr: float,
    step: float,
    horizon: float,
) -> Target:
    r"""Critical temperature and the annealed target temperature at step ``t`` (SPEC 5).

    .. math::

        A_i = \frac{\eta_{\text{eff}}\sqrt{\lambda_{0,i}\,|\lambda_{b,i}|}}{2\pi},\qquad
        \tau \sum_i A_i\,e^{-\Delta L_i / (m T_{v,i})} = 1,\qquad
        T_c = m\,T,\qquad
        T^*(t) = T_c\,\frac{1 + \ln(\tau/t)}{\ln(\tau A)},\quad A = \sum_i A_i.

    All directional temperatures scale together with ``η/B`` (SPEC 2), so the critical point
    is one multiplier ``m`` of the current state
    (:func:`~kramers_callback.kramers.critical_temperature_scale`, seed 000 sections 5.1 and
    7.1), expressed as the isotropic ``T`` the controller steers. The schedule is
    :func:`~kramers_callback.kramers.annealed_temperature` (seed 5.2, ``ω₀`` read as ``A``).

    Args:
        barriers, curvatures, barrier_curvatures: ``ΔL_i``, ``λ₀ᵢ > 0``, ``λ_bᵢ < 0`` of every
            pathway with a barrier.
        directional_temperatures: ``T_vᵢ`` at the current settings.
        temperature: the isotropic ``T`` at the current settings.
        lr: ``η_eff`` at the current settings.
        step: ``t ≥ 1``; horizon: ``τ`` (steps).

    Raises:
        ValueError: with no pathway, or when ``τ·A ≤ 1`` (no temperature gives an escape
            within the horizon; SPEC 5: say so, do not divide by a non-positive log).

    Cost: O(number of pathways) per root-finding iteration.
    """
    if not barriers:
        raise ValueError("barriers must hold at least one pathway with a barrier, got none")
    frequencies = [
        float(attempt_frequency(lr=lr, omega_0=math.sqrt(lam0), omega_b=math.sqrt(abs(lamb))))
        for lam0, lamb in zip(curvatures, barrier_curvatures, strict=True)
    ]
    scale = critical_temperature_scale(
        barriers=barriers,
        temperatures=directional_temperatures,
        attempt_frequencies=frequencies,
        horizon=horizon,
    )
    total = math.fsum(frequencies)
    critical = scale * temperature
    target = float(
        annealed_temperature(
            step=max(step, 1.0),
            horizon=horizon,
            critical_temperature=critical,
            attempt_frequency=total,
        )
    )
    return Target(critical_temperature=critical, temperature=target, attempt_frequency=total)

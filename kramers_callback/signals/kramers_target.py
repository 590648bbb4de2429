r"""The annealing target: the temperature ``T*`` that gives about one escape in the budget left.

Seed 000 sections 5.1 and 5.2 (docs/theory.md sections 4.1 and 4.2): the critical temperature
``T_c`` at which ``τ Σ_i A_i e^{−ΔL_i/T_{v,i}} = 1``, annealed as
``T*(t) = T_c (1 + ln(τ/t))/ln(τA)``. :func:`annealing_target` is the formula at one setting;
:class:`KramersTargetSignal` carries the last good estimate's pathways to any knobs ``(η, B)``,
so a policy can solve ``T(η, B) = T*(η, B)`` along its knob (docs/theory.md section 4.3).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from kramers_callback.kramers import (
    annealed_temperature,
    attempt_frequency,
    critical_temperature_scale,
)
from kramers_callback.noise.temperature import effective_lr
from kramers_callback.observation import Knobs, Observation, temperature_at

__all__ = ["KramersTarget", "KramersTargetSignal", "Target", "annealing_target"]


@dataclass(frozen=True)
class Target:
    """The annealing target at one step, and the quantities it came from."""

    critical_temperature: float
    """``T_c`` in the units of the isotropic ``T``: the temperature at which one escape is
    expected within the horizon."""
    temperature: float
    """``T*(t)``, docs/theory.md section 4.2."""
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
    r"""Critical temperature and the annealed target temperature at step ``t`` (docs/theory.md
    sections 4.1, 4.2).

    .. math::

        A_i = \frac{\eta_{\text{eff}}\sqrt{\lambda_{0,i}\,|\lambda_{b,i}|}}{2\pi},\qquad
        \tau \sum_i A_i\,e^{-\Delta L_i / (m T_{v,i})} = 1,\qquad
        T_c = m\,T,\qquad
        T^*(t) = T_c\,\frac{1 + \ln(\tau/t)}{\ln(\tau A)},\quad A = \sum_i A_i.

    All directional temperatures scale together with ``η/B`` (docs/theory.md section 2), so
    the critical point is one multiplier ``m`` of the current state
    (:func:`~kramers_callback.kramers.critical_temperature_scale`, docs/theory.md sections 4.1
    and 1.5), expressed as the isotropic ``T`` the controller steers. The schedule is
    :func:`~kramers_callback.kramers.annealed_temperature` (docs/theory.md section 4.2, ``ω₀``
    read as ``A``).

    Args:
        barriers, curvatures, barrier_curvatures: ``ΔL_i``, ``λ₀ᵢ > 0``, ``λ_bᵢ < 0`` of every
            pathway with a barrier.
        directional_temperatures: ``T_vᵢ`` at the current settings.
        temperature: the isotropic ``T`` at the current settings.
        lr: ``η_eff`` at the current settings.
        step: ``t ≥ 1``; horizon: ``τ`` (steps).

    Raises:
        ValueError: with no pathway, or when ``τ·A ≤ 1`` (no temperature gives an escape
            within the horizon: say so, do not divide by a non-positive log).

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


@dataclass(frozen=True)
class KramersTarget:
    """The reading of :class:`KramersTargetSignal`: the target as a function of the knobs."""

    function: Callable[[float, int], Target | None]
    """``(η, B) ↦`` the :class:`Target` at those settings (``None``: undefined, e.g. no
    pathway with a barrier or ``τ·A ≤ 1``)."""
    now: Target | None
    """The target at the current settings."""

    no_target_reason = (
        "no annealing target (no pathway with a barrier, or τ·A ≤ 1: no temperature gives one "
        "escape in the budget)"
    )
    """What the history records when a policy finds no target at the current settings."""

    def temperature(self, lr: float, batch_size: int) -> float:
        """``T*(η, B)``, ``nan`` where undefined: the target a policy solves against."""
        found = self.function(lr, batch_size)
        return math.nan if found is None else found.temperature


class KramersTargetSignal:
    """The annealing target of the last good estimate, carried to any knobs ``(η, B)``.

    Every ``T_v`` scales with the isotropic ``T`` (docs/theory.md section 2), every attempt
    frequency with ``η_eff`` (section 3), and ``t``, ``τ`` are re-expressed in steps of ``B``
    (:meth:`~kramers_callback.observation.Horizon.clock`); the temperature at ``(η, B)`` is
    that of the estimate's noise ``tr Σ₁``, the one :func:`~kramers_callback.regime.choose`
    gives the policy in the trapped phase. Needs
    ``observation.last_good``; read only when
    :meth:`~kramers_callback.observation.Observation.hold_reason` is ``None``.
    Cost: one :func:`annealing_target` per evaluation of the function.
    """

    def read(self, observation: Observation) -> KramersTarget:
        good = observation.last_good
        if good is None:
            raise ValueError("observation.last_good must be an estimate summary, got None")
        momentum = observation.knobs.momentum
        # The estimate's own noise: T_c and T* do not depend on which noise is read (every T_v
        # scales with it), and the policy compares T* with the temperature of this noise.
        noise_trace = good.noise_trace
        dataset_size = observation.dataset_size

        def target(lr: float, batch: int) -> Target | None:
            lr_eff = effective_lr(lr=lr, momentum=momentum)
            temperature = temperature_at(
                Knobs(lr, batch, momentum=momentum),
                noise_trace,
                dim=good.dim,
                dataset_size=dataset_size,
            )
            if not (temperature > 0 and good.temperature > 0):
                return None
            scale = temperature / good.temperature
            clock = observation.horizon.clock(batch)
            try:
                return annealing_target(
                    barriers=list(good.pathway_barriers),
                    curvatures=list(good.pathway_curvatures),
                    barrier_curvatures=list(good.pathway_barrier_curvatures),
                    directional_temperatures=[t * scale for t in good.pathway_temperatures],
                    temperature=temperature,
                    lr=lr_eff,
                    step=clock.step,
                    horizon=max(clock.horizon, 1.0),
                )
            except ValueError:
                return None

        knobs = observation.knobs
        return KramersTarget(function=target, now=target(knobs.lr, knobs.batch_size))

r"""The controller's regimes: descending, thermalized, trapped, stalled; what cooling is worth.

Pure logic (docs/theory.md section "The equilibrium regime"), no Lightning. The callback reads
the signals (:mod:`kramers_callback.signals.equilibrium`, the Kramers target and, with
``cooling_patience``, :mod:`kramers_callback.signals.monitor_plateau`), this module
names the phase and says whether a cooling step is worth its compute, and the policy turns the
resulting target temperature into ``η`` and ``B``:

- **descending**: the training loss still falls by more than its noise and by more than a
  cooling step would give. Hold ``η`` and ``B`` (the stability clamp still applies).
- **trapped**: some pathway has a barrier within reach, so it has a Kramers rate; the seed's
  annealing target ``T*(t)`` from ``T_c`` applies.
- **thermalized**: stationary, and no barrier within reach: cool by
  :data:`~kramers_callback.noise.floor.COOLING_FACTOR` (once per equilibrium: the dwell starts
  again after every change), while the floor that cooling can still remove is worth it.
- **stalled** (only with a ``monitor`` and ``cooling_patience``): the training loss still
  falls, but the monitored metric has stopped improving at this temperature
  (:mod:`kramers_callback.signals.monitor_plateau`): the descent fits the sample, not the
  task, so it is treated as thermalized: cool, and stop once cooling is not worth it.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, replace

from kramers_callback._validation import check_non_negative
from kramers_callback.controller import decide
from kramers_callback.limits import ControlLimits
from kramers_callback.observation import DecisionRecord, Observation, temperature_at
from kramers_callback.policies import PolicyRule
from kramers_callback.signals.equilibrium import EquilibriumReading
from kramers_callback.signals.kramers_target import KramersTarget
from kramers_callback.signals.monitor_plateau import MonitorReading
from kramers_callback.stopping import StopReason

__all__ = [
    "CoolingValue",
    "Phase",
    "RegimeDecision",
    "choose",
    "classify_phase",
    "coldest_temperature",
    "cooling_value",
]


class Phase(enum.IntEnum):
    """The controller's phase, logged as ``kramers/phase`` by its integer value."""

    DESCENDING = 0
    THERMALIZED = 1
    TRAPPED = 2
    STALLED = 3

    @property
    def settled(self) -> bool:
        """Whether staying at this temperature buys nothing a cooling step would not."""
        return self in (Phase.THERMALIZED, Phase.STALLED)


def classify_phase(*, trapped: bool, thermalized: bool, stalled: bool = False) -> Phase:
    """``TRAPPED`` when a pathway has a Kramers rate (a barrier in reach decides the schedule
    whatever the loss does), else ``THERMALIZED`` by the equilibrium test, else ``STALLED`` by
    the monitor's plateau test, else ``DESCENDING``."""
    if trapped:
        return Phase.TRAPPED
    if thermalized:
        return Phase.THERMALIZED
    return Phase.STALLED if stalled else Phase.DESCENDING


@dataclass(frozen=True)
class CoolingValue:
    """What cooling can still buy at the current temperature."""

    removable: float
    """``F(T) − F(T_min)``: the floor that cooling down to the coldest allowed setting removes."""
    relative: float
    """``removable / L``: as a fraction of the current training loss."""
    at_coldest: bool
    """The temperature is already at the coldest setting the limits allow."""
    worth_it: bool
    """``c = 0`` (compute is free) or ``c · relative ≥ 1``, and not at the coldest setting."""


def cooling_value(
    *,
    floor: float,
    temperature: float,
    coldest_temperature: float,
    loss: float,
    compute_cost: float,
) -> CoolingValue:
    r"""Whether cooling is still worth its compute.

    .. math::

        \Delta F = F\,\Big(1 - \frac{T_{\min}}{T}\Big),\qquad
        \text{worth it} \iff T > T_{\min}
            \ \wedge\ \big(c = 0\ \vee\ c\,\Delta F / L \ge 1\big)

    The floor scales with the temperature (``F = d·T/2``), so cooling to the coldest setting
    the limits allow, ``T_min``, removes ``ΔF``. The seed's stop rule values an escape at ``c``
    budgets of compute (fewer than ``1/c`` expected escapes are not worth continuing); the same
    weight applied to cooling asks that what cooling can still remove be at least ``1/c`` of
    the training loss ``L``. ``c = 0`` values compute at nothing: cool down to ``T_min``.

    Args:
        floor: ``F`` at the current temperature
            (:func:`~kramers_callback.noise.floor.noise_floor`).
        temperature, coldest_temperature: ``T`` now and ``T_min`` (same units).
        loss: the mean training loss over the equilibrium window.
        compute_cost: ``c ≥ 0``.

    Cost: ``O(1)``. Undefined inputs (non-finite) give "not worth it".
    """
    compute_cost = check_non_negative("compute_cost", compute_cost)
    at_coldest = not temperature > coldest_temperature * (1.0 + 1e-9)
    if not all(math.isfinite(v) for v in (floor, temperature, coldest_temperature, loss)):
        return CoolingValue(math.nan, math.nan, at_coldest, False)
    removable = 0.0
    if temperature > 0:
        removable = max(0.0, floor * (1.0 - coldest_temperature / temperature))
    relative = removable / loss if loss > 0 else math.inf
    worth = not at_coldest and (compute_cost == 0 or compute_cost * relative >= 1.0)
    return CoolingValue(removable, relative, at_coldest, worth)


def coldest_temperature(
    observation: Observation, *, rule: PolicyRule, limits: ControlLimits
) -> float:
    """``T_min``: the temperature at the coldest knobs the policy may reach (``lr_min`` where it
    owns ``η``, ``batch_max`` where it owns ``B``; the current value of a knob it does not own),
    at the observation's noise. Cost: ``O(1)``."""
    knobs = observation.knobs
    # Never warmer than now: a bound above the current knob (lr_min > η) is not a cooling.
    lr = min(limits.lr_min, knobs.lr) if rule.owns_lr else knobs.lr
    batch = max(limits.batch_max, knobs.batch_size) if rule.owns_batch else knobs.batch_size
    return temperature_at(
        replace(knobs, lr=lr, batch_size=batch),
        observation.noise_trace,
        dim=observation.dim,
        dataset_size=observation.dataset_size,
    )


@dataclass(frozen=True)
class RegimeDecision:
    """One epoch's regime, the decision it led to, and what the stop rule needs from it."""

    record: DecisionRecord
    phase: Phase
    equilibrium: EquilibriumReading
    cooling: CoolingValue
    coldest_temperature: float
    settled: StopReason | None
    """Why nothing is left to gain from cooling (thermalized or stalled, and at the coldest
    setting or with cooling not worth it), or ``None``."""
    observation: Observation | None = None
    """The observation the decision read, where it differs from the one given: in the trapped
    phase, its temperature from the last good estimate's noise (:func:`choose`)."""
    monitor: MonitorReading | None = None
    """The monitor's plateau test (``None`` without ``cooling_patience``)."""


def choose(
    observation: Observation,
    *,
    rule: PolicyRule,
    limits: ControlLimits,
    equilibrium: EquilibriumReading,
    target: KramersTarget | None,
    compute_cost: float,
    factor: float,
    monitor: MonitorReading | None = None,
) -> RegimeDecision:
    """The regime's target temperature and the policy's decision, one at a time.

    - trapped (``target.now`` exists): the annealing target ``T*(η, B)``;
    - thermalized, cooling worth it (:func:`cooling_value`): the constant target ``r·T``, which
      the policy reaches within ``max_change`` (hybrid: ``B`` first, toward ``batch_max``);
    - stalled (``monitor`` says so, and the equilibrium test has a window whose floor and loss
      value a cooling): as thermalized;
    - otherwise (descending, or nothing worth cooling for): no target, so the policy holds
      every knob but the stability clamp.

    A non-finite training loss holds everything (its reason first: it is also why an estimate
    fails); so does a non-finite estimate or no finite temperature
    (:meth:`~kramers_callback.observation.Observation.hold_reason`). Cost: that of
    :func:`~kramers_callback.controller.decide`.
    """
    trapped = target is not None and target.now is not None
    given = observation
    good = observation.last_good
    if trapped and good is not None and observation.noise_source != "estimate":
        # The target is the estimate's (its pathways, carried to the knobs), so the temperature
        # it is compared with is too: between estimates the running noise can read ×100 off at
        # a large B (an epoch then holds one or two two-batch pairs), and a move by T*/T would
        # chase that noise by up to max_change each epoch (docs/theory.md section 4.3).
        observation = observation.with_noise(good.noise_trace, "last_estimate")
    # Without the equilibrium window's floor and loss what cooling buys is unknown: a stalled
    # monitor alone then holds.
    stalled = (
        monitor is not None
        and monitor.stalled
        and equilibrium.gain > 0
        and math.isfinite(equilibrium.loss)
    )
    phase = classify_phase(trapped=trapped, thermalized=equilibrium.thermalized, stalled=stalled)
    coldest = coldest_temperature(observation, rule=rule, limits=limits)
    value = cooling_value(
        floor=equilibrium.floor,
        temperature=observation.temperature,
        coldest_temperature=coldest,
        loss=equilibrium.loss,
        compute_cost=compute_cost,
    )
    settled = None
    # From the signals, not the phase: a trapped walker that is also thermalized with nothing
    # worth cooling for may stop once its escapes are not worth waiting for (k·R·c < 1).
    if (equilibrium.thermalized or stalled) and not value.worth_it:
        settled = StopReason.COLDEST_SETTING if value.at_coldest else StopReason.COOLING_NOT_WORTH

    def regime(record: DecisionRecord) -> RegimeDecision:
        used = None if observation is given else observation
        return RegimeDecision(record, phase, equilibrium, value, coldest, settled, used, monitor)

    now = target.now if target is not None else None
    critical = math.nan if now is None else now.critical_temperature
    target_now = math.nan if now is None else now.temperature
    if not observation.loss_finite:  # the cause of a failed estimate too: name it first
        return regime(DecisionRecord("non-finite training loss", critical, target_now))
    hold = observation.hold_reason()
    if hold is not None:
        return regime(DecisionRecord(reason=hold))
    if trapped:
        assert target is not None
        goal, why = target.temperature, None
    elif phase.settled:
        name = phase.name.lower()
        removable = f"{value.relative:.1%} of the loss removable"
        stall = [monitor.reason] if phase is Phase.STALLED and monitor is not None else []
        goal = factor * observation.temperature if value.worth_it else math.nan
        if value.worth_it:
            details = "; ".join([f"floor {equilibrium.floor:.3g}, {removable}", *stall])
            why = f"{name}: cool by {factor:g} ({details})"
            target_now = goal
        elif value.at_coldest:
            why = f"{name} at the coldest setting the limits allow"
            why += "".join(f" ({s})" for s in stall)
        else:
            why = f"{name}: cooling not worth it ({'; '.join([removable, *stall])})"
    else:
        goal, why = math.nan, f"descending: hold ({equilibrium.reason})"
    knobs = observation.knobs
    decision = decide(
        rule,
        target_temperature=goal,
        lr=knobs.lr,
        batch_size=knobs.batch_size,
        noise_trace=observation.noise_trace,
        dim=observation.dim,
        # Without a curvature estimate no stability limit is known; cooling only lowers η.
        lambda_max=good.lambda_max if good is not None else 0.0,
        limits=limits,
        momentum=knobs.momentum,
        dataset_size=observation.dataset_size,
    )
    if why is None:
        why = target.no_target_reason if decision.reason == "no_target" else decision.reason
    fresh = observation.fresh
    if fresh is not None and not fresh.ok:
        why = f"{why} (estimate not converged: its curvature is not used)"
    return regime(DecisionRecord(why, critical, target_now, decision))

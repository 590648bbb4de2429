"""What one epoch-end decision sees, and what it chose: typed records between the parts.

The callback builds an :class:`Observation` from the Trainer (Lightning glue); signals
(:mod:`kramers_callback.signals`) read it, policies (:mod:`kramers_callback.policies`) turn the
readings into a :class:`Decision`, the actuators apply it and :mod:`kramers_callback.metrics`
logs both. Everything here is plain numbers: broadcastable across ranks and checkpointable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

from kramers_callback._validation import all_finite
from kramers_callback.barriers.line_scan import PathwayStatus
from kramers_callback.estimate import KramersEstimate
from kramers_callback.noise.temperature import effective_lr, isotropic_temperature

__all__ = [
    "DECISION_SOLVERS",
    "Clock",
    "Decision",
    "DecisionRecord",
    "EstimateSummary",
    "Horizon",
    "Knobs",
    "Observation",
    "RunningNoise",
    "epochs_left",
    "observe",
    "sampling_size",
    "temperature_at",
    "usable_running_noise",
]

DECISION_SOLVERS = ("top", "min")
"""Iterative routines whose results decisions use (λ_max for the stability clamp, the escape
directions for the barriers; ``"min"`` only where the estimate scanned for barriers); the
trace is only logged."""


def _decision_solvers(scanned: bool) -> tuple[str, ...]:
    # Without line scans the bottom eigenvector is only logged: no decision reads it.
    return DECISION_SOLVERS if scanned else DECISION_SOLVERS[:1]


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else float(value)


@dataclass(frozen=True)
class EstimateSummary:
    """The plain-number part of a :class:`~kramers_callback.estimate.KramersEstimate` that
    decisions and logs use.

    ``status`` is ``"ok"`` (finite, and the eigensolvers of :data:`DECISION_SOLVERS`
    converged), ``"non_finite"`` or ``"not_converged"``; only an ``"ok"`` estimate's numbers
    are used, and a ``"non_finite"`` one holds the decision (:meth:`Observation.hold_reason`).
    ``measured`` is false for an estimate that stopped at a non-finite probe loss, which has
    no numbers but its ``work``. The ``pathway_*`` tuples list the pathways with a barrier.
    """

    status: str
    work: float = 0.0
    """Counted estimation work in sample-passes (:func:`kramers_callback._budget.estimate_work`)."""
    seconds: float = math.nan
    measured: bool = True
    scanned: bool = True
    """Whether the estimate scanned for barriers (then its bottom eigenvector was used)."""
    probe_size: int = 0
    temperature: float = math.nan
    noise_trace: float = math.nan
    noise_scale: float = math.nan
    lambda_max: float = math.nan
    lambda_min: float = math.nan
    hessian_trace: float = math.nan
    escape_rate: float = math.nan
    escape_time: float = math.nan
    barrier: float = math.nan
    lr_eff: float = math.nan
    batch_size: int = 0
    dim: int = 0
    finite: bool = False
    converged: dict[str, bool] = field(default_factory=dict)
    num_hvp: int = 0
    num_forward: int = 0
    num_samples: int = 0
    pathway_barriers: tuple[float, ...] = ()
    pathway_curvatures: tuple[float, ...] = ()
    pathway_barrier_curvatures: tuple[float, ...] = ()
    pathway_temperatures: tuple[float, ...] = ()
    unmeasured_pathways: int = 0
    """Escape directions without a Kramers rate (no barrier within reach of ``κ·T_v``,
    downhill, the scan's limit, or not scanned): unmeasured pathways, not zero rates."""

    @classmethod
    def from_estimate(cls, est: KramersEstimate, *, work: float) -> EstimateSummary:
        """The summary of ``est``, its ``status`` from its finiteness and convergence."""
        scanned = any(p.status is not PathwayStatus.NOT_SCANNED for p in est.pathways)
        if not est.finite:
            status = "non_finite"
        elif any(not est.converged.get(k, True) for k in _decision_solvers(scanned)):
            status = "not_converged"
        else:
            status = "ok"
        barrier = [p for p in est.pathways if p.rate is not None]
        return cls(
            status=status,
            scanned=scanned,
            work=float(work),
            seconds=float(est.seconds),
            probe_size=int(est.num_samples),
            temperature=float(est.temperature),
            noise_trace=float(est.noise_trace),
            noise_scale=float(est.noise_scale),
            lambda_max=float(est.lambda_max),
            lambda_min=float(est.lambda_min),
            hessian_trace=_nan_if_none(est.hessian_trace),
            escape_rate=float(est.escape_rate),
            escape_time=float(est.escape_time),
            barrier=_nan_if_none(est.barrier),
            lr_eff=float(est.lr),
            batch_size=int(est.batch_size),
            dim=int(est.dim),
            finite=bool(est.finite),
            converged={k: bool(v) for k, v in est.converged.items()},
            num_hvp=int(est.num_hvp),
            num_forward=int(est.num_forward),
            num_samples=int(est.num_samples),
            pathway_barriers=tuple(float(p.barrier) for p in barrier),  # type: ignore[arg-type]
            pathway_curvatures=tuple(float(p.curvature) for p in barrier),
            pathway_barrier_curvatures=tuple(float(p.barrier_curvature) for p in barrier),  # type: ignore[arg-type]
            pathway_temperatures=tuple(float(p.temperature) for p in barrier),
            unmeasured_pathways=len(est.pathways) - len(barrier),
        )

    @classmethod
    def failed(cls, *, work: float) -> EstimateSummary:
        """An estimate that stopped at a non-finite probe loss: only its work counts."""
        return cls(status="non_finite", work=float(work), measured=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def failed_solvers(self) -> list[str]:
        """The solvers of :data:`DECISION_SOLVERS` that decisions used and that did not
        converge, sorted."""
        solvers = _decision_solvers(self.scanned)
        return sorted(k for k in solvers if not self.converged.get(k, True))

    def to_state(self) -> dict[str, Any]:
        """Plain Python numbers, lists and dicts (loadable with ``weights_only=True``)."""
        state: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            state[f.name] = (
                list(value)
                if isinstance(value, tuple)
                else dict(value)
                if isinstance(value, dict)
                else value
            )
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EstimateSummary:
        """Inverse of :meth:`to_state`; also reads the ``last_good`` dict of checkpoints
        written before this class (no ``work``; unknown keys are ignored)."""
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for name, value in state.items():
            if name not in known:
                continue
            if name.startswith("pathway_"):
                value = tuple(float(v) for v in value)
            elif name == "converged":
                value = {str(k): bool(v) for k, v in value.items()}
            values[name] = value
        return cls(**values)


@dataclass(frozen=True)
class LossBlock:
    """Mean per-batch training loss over a run of consecutive batches."""

    mean: float
    position: float
    """Mean of the samples-seen counter over the block's batches (the x of the trend)."""
    samples: int
    noise_trace: float = math.nan
    """The running ``tr Σ₁`` of the block's epoch (:func:`usable_running_noise`; ``nan``
    where there was none), for the floor over a window of blocks."""


@dataclass(frozen=True)
class Clock:
    """``t``, ``τ`` and ``R`` in optimizer steps of one batch size ``B``."""

    step: float
    """``t = samples seen / B`` (at least 1)."""
    horizon: float
    """``τ = t + R``."""
    remaining: float
    """``R``: steps left."""


@dataclass(frozen=True)
class Horizon:
    """The training budget in samples and steps, from which a :class:`Clock` at any ``B``
    follows (the budget is counted in samples, so ``t``, ``τ``, ``R`` stay right when ``B``
    changes; docs/theory.md section 4.3).

    ``samples_left`` comes from ``max_epochs`` (``inf`` without), ``steps_left`` from
    ``max_steps`` (``inf`` without); the tighter one wins. Where ``max_steps`` wins, the clock
    counts optimizer steps (``steps_done``, Lightning's ``global_step``): an epoch's last,
    smaller batch is a whole step, so ``samples seen / B`` would fall short of the steps taken
    and ``τ`` below ``max_steps``.
    """

    samples_seen: int
    samples_left: float = math.inf
    steps_left: float = math.inf
    steps_done: float | None = None
    """Optimizer steps taken (``None``: count in samples only)."""

    def clock(self, batch_size: int) -> Clock:
        r""":math:`R = \max(0, \min(S_\text{left}/B, \text{steps left}))`,
        :math:`t = \max(S_\text{seen}/B, 1)`, :math:`\tau = t + R`; where the steps bound
        is the tighter one and ``steps_done`` is known, :math:`t = \max(\text{steps done}, 1)`
        (so :math:`\tau` = ``max_steps``). Cost: O(1)."""
        by_samples = self.samples_left / batch_size
        remaining = max(min(by_samples, self.steps_left), 0.0)
        if self.steps_done is not None and self.steps_left < by_samples:
            step = max(float(self.steps_done), 1.0)
        else:
            step = max(self.samples_seen / batch_size, 1.0)
        return Clock(step=step, horizon=step + remaining, remaining=remaining)

    @classmethod
    def of_run(
        cls,
        *,
        samples_seen: int,
        samples_per_epoch: int,
        epoch: int,
        max_epochs: int | None,
        global_step: int,
        max_steps: int | None,
    ) -> Horizon:
        """The budget left after epoch ``epoch`` (0-based) of a Trainer's ``max_epochs`` and
        ``max_steps`` (``None`` or negative: no bound). Cost: O(1)."""
        samples_left, steps_left = math.inf, math.inf
        epochs = epochs_left(epoch, max_epochs)
        if math.isfinite(epochs):
            samples_left = epochs * samples_per_epoch
        if max_steps is not None and max_steps >= 0:
            steps_left = float(max_steps - global_step)
        return cls(samples_seen, samples_left, steps_left, global_step)


def epochs_left(epoch: int, max_epochs: int | None) -> float:
    """Whole epochs of ``max_epochs`` after epoch ``epoch`` (0-based); ``inf`` without a bound
    (``None`` or negative). Cost: O(1)."""
    if max_epochs is None or max_epochs < 0:
        return math.inf
    return float(max(max_epochs - (epoch + 1), 0))


@dataclass(frozen=True)
class RunningNoise:
    """One epoch's running two-batch noise
    (:class:`~kramers_callback.noise.running.RunningNoiseEstimator`); ``nan`` where no window
    was sampled, and ``noise_trace`` ``nan`` where a decision may not use it
    (:func:`usable_running_noise`, applied once, where the epoch's statistics are read)."""

    noise_trace: float = math.nan
    noise_scale: float = math.nan


@dataclass(frozen=True)
class Knobs:
    """The settings a decision may turn, as decisions see them."""

    lr: float
    """``η``: the reference parameter group's learning rate × ``1 − dampening`` of its
    heavy-ball form (SGD's dampening; ``β₁`` for the Adam family)."""
    batch_size: int
    """``B``: samples per optimizer step."""
    momentum: float = 0.0
    """``β`` (``η_eff = η/(1 − β)``); Adam's ``β₁``."""
    damping: float = 1.0
    """``1 − dampening`` (Adam: ``1 − β₁``): the optimizer's own learning rate is
    ``lr / damping``."""


@dataclass(frozen=True)
class Observation:
    """What one epoch-end decision sees.

    The temperature now comes from this epoch's estimate (``noise_source="estimate"``), else
    the running two-batch noise (``"running"``), else the last good estimate's noise rescaled
    to the current knobs (``"last_estimate"``), else none (``"none"``, ``temperature`` nan).
    A new signal that needs more than this (e.g. statistics accumulated over the training
    steps) adds one typed field here, next to :attr:`fresh`, filled by the callback.
    """

    epoch: int
    clock: Clock
    horizon: Horizon
    knobs: Knobs
    temperature: float
    noise_trace: float
    noise_source: str
    noise_scale: float
    dim: int
    dataset_size: int | None
    """``N`` for the finite-population factor; ``None`` with replacement (or ``B > N``)."""
    fresh: EstimateSummary | None
    """This epoch's estimate (``None``: deferred)."""
    last_good: EstimateSummary | None
    """The last estimate with ``status == "ok"`` (this epoch's, if it is)."""
    loss_finite: bool = True
    """Whether every training loss of the epoch was finite (on every rank)."""
    monitor: float | None = None
    """The stop rule's monitored metric, if one is configured and logged."""
    monitor_dwell: tuple[float, ...] = ()
    """The monitored values at the dwell's epoch ends, oldest first (this one's last, where
    it was logged), for :class:`~kramers_callback.signals.monitor_plateau.MonitorPlateauSignal`."""
    loss_blocks: tuple[LossBlock, ...] = ()
    """The training-loss blocks since the temperature last changed (the dwell), for the
    equilibrium signal."""
    epoch_blocks: int = 0
    """How many of :attr:`loss_blocks` this epoch added: without them, the dwell is what the
    previous epoch end tested. ``0`` (the default of a hand-built observation): no previous
    test, so the first dwell settles only on
    :data:`~kramers_callback.signals.equilibrium.FIRST_DWELL_FLOOR_SHARE`."""
    first_dwell: bool = True
    """Whether the walker is still in its descent from the initialisation (no change of ``η``
    or ``B`` yet from a thermalized, trapped or stalled phase; a stability clamp while
    descending does not end it)."""
    burn_in_samples: float = 0.0
    """The samples seen by the callback's first epoch end: the first dwell's burn-in, the
    transient from the initialisation."""
    running_noise_trace: float = math.nan
    """The epoch's running two-batch ``tr Σ₁``, an average over the steps it sampled along the
    trajectory (``nan`` where none was sampled, or where :func:`usable_running_noise` refused
    it: after a non-finite training loss, or at or below zero)."""
    dwell_knobs: Knobs | None = None
    """The knobs the dwell's blocks were trained at, the equilibrium floor's (``None``:
    :attr:`knobs`). They differ from :attr:`knobs` at the epoch end where a scheduler outside
    the callback has just stepped."""

    def with_noise(self, noise_trace: float, source: str) -> Observation:
        """This observation with its temperature taken at ``noise_trace``, named ``source``."""
        temperature = temperature_at(
            self.knobs, noise_trace, dim=self.dim, dataset_size=self.dataset_size
        )
        return replace(self, noise_trace=noise_trace, noise_source=source, temperature=temperature)

    def hold_reason(self) -> str | None:
        """Why the measurements give nothing to decide from (never act on a non-finite
        estimate, docs/theory.md section 4.3), or ``None``. A non-finite training loss is
        checked after the signals have read the observation, so their targets are still
        logged. The equilibrium regime needs no curvature estimate (only the noise); the
        trapped regime needs :attr:`last_good`. An estimate whose eigensolver did not converge
        is not a reason to hold: its curvature is not used, and the epoch decides as one
        between estimates, from :attr:`last_good` (a budget-shrunk estimate that stops short
        of convergence would otherwise hold every decision it coincides with)."""
        if self.fresh is not None and self.fresh.status == "non_finite":
            return "estimate non finite"
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            return "no finite temperature"
        return None


@dataclass(frozen=True)
class Decision:
    """What a policy chose, and why.

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


@dataclass(frozen=True)
class DecisionRecord:
    """One epoch's decision as history records it: why (a readable ``reason``), the targets
    the signals gave, and the :class:`Decision` (``None`` where the observation held every
    knob, :meth:`Observation.hold_reason`)."""

    reason: str
    critical_temperature: float = math.nan
    target_temperature: float = math.nan
    decision: Decision | None = None


def sampling_size(dataset_size: int | None, batch_size: int) -> int | None:
    """``N`` for the finite-population factor of ``B`` draws without replacement, or ``None``
    where it does not apply (unknown or single-sample data, or ``B > N``)."""
    if dataset_size is not None and 1 < dataset_size and batch_size <= dataset_size:
        return dataset_size
    return None


def temperature_at(
    knobs: Knobs, noise_trace: float, *, dim: int, dataset_size: int | None
) -> float:
    """The isotropic ``T`` at ``knobs`` and ``noise_trace``, with the finite-population factor
    of ``dataset_size`` where it applies (:func:`sampling_size`); ``nan`` without a usable
    noise. Cost: ``O(1)``."""
    if not (all_finite(noise_trace) and noise_trace >= 0):
        return math.nan
    return isotropic_temperature(
        lr=effective_lr(lr=knobs.lr, momentum=knobs.momentum),
        noise_trace=noise_trace,
        dim=dim,
        batch_size=knobs.batch_size,
        dataset_size=sampling_size(dataset_size, knobs.batch_size),
    )


def usable_running_noise(noise_trace: float, *, loss_finite: bool) -> float:
    """An epoch's running ``tr Σ₁`` where a decision may use it, else ``nan``."""
    # After a NaN loss older numbers would read as current: no running noise then.
    ok = loss_finite and all_finite(noise_trace) and noise_trace > 0
    return noise_trace if ok else math.nan


def observe(
    *,
    epoch: int,
    horizon: Horizon,
    knobs: Knobs,
    fresh: EstimateSummary | None,
    running: RunningNoise,
    last_good: EstimateSummary | None,
    dataset_size: int | None,
    dim: int,
    loss_finite: bool = True,
    monitor: float | None = None,
    monitor_dwell: tuple[float, ...] = (),
    loss_blocks: tuple[LossBlock, ...] = (),
    epoch_blocks: int = 0,
    first_dwell: bool = True,
    burn_in_samples: float = 0.0,
    dwell_knobs: Knobs | None = None,
) -> Observation:
    """The :class:`Observation` of one epoch end. The noise ``tr Σ₁`` now: a fresh estimate,
    else (after a non-finite training loss: none) the running two-batch noise (``running``),
    else the last good estimate's; the temperature
    is :func:`~kramers_callback.noise.temperature.isotropic_temperature` of it at ``knobs``.
    ``running`` must already be filtered by :func:`usable_running_noise` (its ``noise_trace``
    ``nan`` where no decision may use it), as
    :meth:`~kramers_callback._step_statistics.StepStatistics.read_epoch` returns it.
    Cost: O(1)."""
    batch = knobs.batch_size
    size = sampling_size(dataset_size, batch)
    running_noise = running.noise_trace
    if fresh is not None and fresh.ok:
        noise_trace, source = fresh.noise_trace, "estimate"
    elif not loss_finite:
        noise_trace, source = math.nan, "none"
    elif math.isfinite(running_noise):
        noise_trace, source = running_noise, "running"
    elif last_good is not None:
        noise_trace, source = last_good.noise_trace, "last_estimate"
    else:
        noise_trace, source = math.nan, "none"
    temperature = temperature_at(knobs, noise_trace, dim=dim, dataset_size=size)
    return Observation(
        epoch=epoch,
        clock=horizon.clock(batch),
        horizon=horizon,
        knobs=knobs,
        temperature=temperature,
        noise_trace=noise_trace,
        noise_source=source,
        noise_scale=fresh.noise_scale
        if fresh is not None and fresh.measured
        else running.noise_scale,
        dim=dim,
        dataset_size=size,
        fresh=fresh,
        last_good=last_good,
        loss_finite=loss_finite,
        monitor=monitor,
        monitor_dwell=monitor_dwell,
        loss_blocks=loss_blocks,
        epoch_blocks=epoch_blocks,
        first_dwell=first_dwell,
        burn_in_samples=burn_in_samples,
        running_noise_trace=running_noise,
        dwell_knobs=dwell_knobs,
    )

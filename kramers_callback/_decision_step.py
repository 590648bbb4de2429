"""One epoch end's decision: the observation, the regime and the policy's move, and this rank's
answer to the stop rule.

The glue between the measurements and the actuators, free of the Trainer: the callback hands
in the numbers (knobs, horizon, this epoch's estimate and step statistics), and applies,
reduces and logs what comes back. :class:`DecisionStep` keeps what the decisions carry from one
epoch end to the next (checkpointed by :mod:`kramers_callback._callback_state`).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_warn

from kramers_callback import _optimizer as optim_io
from kramers_callback._arguments import CallbackArguments
from kramers_callback._batch_size import BatchLayout
from kramers_callback._loss_blocks import Dwell
from kramers_callback._step_statistics import EpochStatistics
from kramers_callback.limits import ControlLimits, control_limits
from kramers_callback.noise.floor import cooling_factor
from kramers_callback.noise.temperature import effective_lr
from kramers_callback.observation import (
    EstimateSummary,
    Horizon,
    Knobs,
    Observation,
    observe,
)
from kramers_callback.policies import PolicyRule
from kramers_callback.regime import Phase, RegimeDecision, choose
from kramers_callback.signals import (
    EquilibriumSignal,
    KramersTargetSignal,
    MonitorPlateauSignal,
)
from kramers_callback.stopping import TerminationRule

__all__ = ["DecisionStep", "knobs_of"]


def knobs_of(optimizer: torch.optim.Optimizer, batch_size: int) -> Knobs:
    """The :class:`~kramers_callback.observation.Knobs` of ``optimizer`` at ``batch_size``."""
    momentum, damping = optim_io.momentum_of(optimizer)
    lr = optim_io.lr_of(optimizer) * damping
    return Knobs(lr, batch_size, momentum=momentum, damping=damping)


class DecisionStep:
    """The signals, the stop rule and the state the decisions of one fit share.

    Args:
        arguments: the callback's arguments (the bounds, the stop rule's, ``check_finite``).
        rule: the policy's rule.

    Attributes:
        termination: the :class:`~kramers_callback.stopping.TerminationRule`.
        initial_lr, initial_batch: the first fit's knobs, the default bounds.
        last_good: the last estimate with ``status == "ok"``.
        dwell: the loss blocks since the temperature last changed, and the monitored values
            at its epoch ends.
        dwell_knobs: the knobs the dwell was trained at, the floor's (``None`` right after a
            change by the callback until the next epoch end, and from a checkpoint that
            predates them).
        epoch_knobs: those of the epoch in progress, read at its first batch (checkpointed:
            a resume inside the epoch does not read them again).
        first_dwell: whether the walker is still in its descent from the initialisation: no
            change of ``η`` or ``B`` yet from a thermalized, trapped or stalled phase (a
            stability clamp while descending starts a new dwell but not a settled one).
        first_epoch_samples: the samples seen by this callback at its first epoch end (the
            first dwell's burn-in); ``None`` before it.
        loss_sign_warned: whether the warning for a loss below 0 under a compute cost was
            given (checkpointed, so a resumed run does not repeat it).
    """

    def __init__(self, arguments: CallbackArguments, rule: PolicyRule) -> None:
        self.arguments = arguments
        self.rule = rule
        self.cooling_factor = cooling_factor(max_change=arguments.max_change)
        self.target_signal = KramersTargetSignal()
        self.equilibrium_signal = EquilibriumSignal(factor=self.cooling_factor)
        self.monitor_signal = None
        if arguments.cooling_patience is not None:
            self.monitor_signal = MonitorPlateauSignal(
                patience=arguments.cooling_patience,
                min_delta=arguments.min_delta,
                mode=arguments.mode,
            )
        self.termination = TerminationRule(
            compute_cost=arguments.compute_cost,
            min_epochs=arguments.min_epochs,
            patience=arguments.patience,
            min_delta=arguments.min_delta,
            mode=arguments.mode,
            use_monitor=arguments.monitor is not None,
        )
        self.initial_lr: float | None = None
        self.initial_batch: int | None = None
        self.dataset_size: int | None = None
        self.dim = 0
        self.last_good: EstimateSummary | None = None
        self.dwell = Dwell()
        self.dwell_knobs: Knobs | None = None
        self.epoch_knobs: Knobs | None = None
        self.first_dwell = True
        self.first_epoch_samples: int | None = None
        self.loss_sign_warned = False

    def start(self, *, lr: float, batch_size: int, dataset_size: int, dim: int) -> None:
        """At train start: the knobs (kept from the first fit on a resume), the training-set
        size and the trainable dimension."""
        if self.initial_lr is None:
            self.initial_lr = lr
        if self.initial_batch is None:
            self.initial_batch = batch_size
        self.dataset_size = dataset_size
        self.dim = dim

    def note_epoch_knobs(self, knobs: Knobs) -> None:
        """At the epoch's first training batch (while :attr:`epoch_knobs` is ``None``): the
        knobs it trains at, once every epoch-start hook (a GradientAccumulationScheduler's, the
        module's) has run and before a scheduler steps at its last batch; kept until
        :meth:`add_epoch`."""
        self.epoch_knobs = knobs

    def add_epoch(
        self,
        fresh: EstimateSummary | None,
        statistics: EpochStatistics,
        monitor: float | None = None,
    ) -> None:
        """Add the epoch's loss blocks, with its running noise, and its monitored value (where
        it measured one, for the plateau test of ``cooling_patience``) to the dwell (a new
        dwell where the epoch trained at other knobs than the dwell's), and ``fresh`` (if good)
        as the last good."""
        trained, dwell = self.epoch_knobs, self.dwell_knobs
        if trained is not None:
            if dwell is not None and not _same_temperature(dwell, trained):
                # Changed from outside the callback (an LR scheduler under the batch or
                # observe policy): the earlier blocks sampled another temperature's state.
                self.dwell.reset()
            self.dwell_knobs = trained
        self.epoch_knobs = None
        noise = statistics.running.noise_trace
        self.dwell.extend(replace(b, noise_trace=noise) for b in statistics.loss_blocks)
        if monitor is not None and self.monitor_signal is not None:
            self.dwell.monitored.append(monitor)
        if fresh is not None and fresh.ok:
            self.last_good = fresh

    def observe(
        self,
        *,
        epoch: int,
        horizon: Horizon,
        knobs: Knobs,
        fresh: EstimateSummary | None,
        statistics: EpochStatistics,
        monitor: float | None,
    ) -> Observation:
        """This epoch end's :class:`~kramers_callback.observation.Observation` (after
        :meth:`add_epoch`)."""
        if self.first_epoch_samples is None:
            # Recorded, not averaged over the epochs: a short epoch (max_steps) or a callback
            # that joins a resumed run would otherwise move the burn-in's end.
            self.first_epoch_samples = horizon.samples_seen
        return observe(
            epoch=epoch,
            horizon=horizon,
            knobs=knobs,
            fresh=fresh,
            running=statistics.running,
            last_good=self.last_good,
            dataset_size=self.dataset_size,
            dim=self.dim,
            loss_finite=statistics.loss_finite,
            monitor=monitor,
            monitor_dwell=tuple(self.dwell.monitored),
            loss_blocks=tuple(self.dwell.blocks),
            epoch_blocks=min(len(statistics.loss_blocks), len(self.dwell.blocks)),
            first_dwell=self.first_dwell,
            burn_in_samples=self.first_epoch_samples,
            dwell_knobs=self.dwell_knobs,
        )

    def limits(
        self,
        knobs: Knobs,
        layout: BatchLayout,
        *,
        samples_per_epoch: int,
        pinned: bool,
        cap: int | None,
    ) -> ControlLimits:
        """The clamps of this decision (:func:`kramers_callback.limits.control_limits`)."""
        assert self.initial_lr is not None and self.initial_batch is not None
        arguments = self.arguments
        return control_limits(
            initial_lr=self.initial_lr,
            initial_batch=self.initial_batch,
            lr_min=arguments.lr_min,
            lr_max=arguments.lr_max,
            batch_min=arguments.batch_min,
            batch_max=arguments.batch_max,
            max_change=arguments.max_change,
            samples_per_epoch=samples_per_epoch,
            unit=layout.unit,
            samples_per_step=layout.samples_per_step,
            damping=knobs.damping,
            pinned=pinned,
            cap=cap,
        )

    def choose(self, observation: Observation, limits: ControlLimits) -> RegimeDecision:
        """The signals' readings, the phase and the policy's decision, or why the knobs are
        held (:func:`kramers_callback.regime.choose`)."""
        target = None
        if observation.last_good is not None and observation.hold_reason() is None:
            target = self.target_signal.read(observation)
        regime = choose(
            observation,
            rule=self.rule,
            limits=limits,
            equilibrium=self.equilibrium_signal.read(observation),
            target=target,
            monitor=None if self.monitor_signal is None else self.monitor_signal.read(observation),
            compute_cost=self.arguments.compute_cost,
            factor=self.cooling_factor,
        )
        loss, cost = regime.equilibrium.loss, self.arguments.compute_cost
        # A loss of exactly 0 (a memorised set) is no sign of a loss unbounded below.
        if cost > 0 and loss < 0 and not self.loss_sign_warned:
            self.loss_sign_warned = True
            rank_zero_warn(
                f"KramersCallback: compute_cost={cost:g} weighs what cooling can remove as a "
                "share of the training loss, which needs a loss bounded below by 0; the mean "
                f"training loss over the equilibrium window is {loss:.4g}, so cooling counts as "
                "worth it down to the coldest setting (docs/theory.md, section 7.5)."
            )
        if not observation.loss_finite and not self.arguments.check_finite:
            rank_zero_warn(
                f"KramersCallback: non-finite training loss in epoch {observation.epoch}: "
                "decision skipped, keeping the last good settings."
            )
        return regime

    def note_applied(self, regime: RegimeDecision) -> None:
        """Note the decision the actuators applied, and the phase it was made in."""
        decision = regime.record.decision
        if decision is not None and decision.changed:
            # A new temperature: the next equilibrium is a new dwell.
            self.dwell.reset()
            self.dwell_knobs = None
            # Only a move from a settled walker (a cooling, an annealing step) ends the descent
            # from the initialisation; a stability clamp while descending does not. A stalled
            # monitor's cooling does: the first dwell guards against an early pause of the
            # descent, and p epochs of a stalled validation metric say that the descent worth
            # having is over (kept, the guard cost about 3 points with label noise).
            if regime.phase is not Phase.DESCENDING:
                self.first_dwell = False

    def stop(self, observation: Observation, regime: RegimeDecision) -> bool:
        """This rank's answer: seed 6.3's rule on the measured pathways, once nothing is left
        to gain from cooling (docs/theory.md, "The equilibrium regime"), or a non-finite
        training loss under ``check_finite``."""
        termination = self.termination
        if self.arguments.check_finite and not observation.loss_finite:
            termination.stop_non_finite(observation.epoch + 1)
            return True
        if observation.hold_reason() is None and observation.loss_finite:
            good = observation.last_good
            return termination.check(
                rate=good.escape_rate if good is not None else 0.0,
                remaining_steps=observation.clock.remaining,
                epochs_completed=observation.epoch + 1,
                settled=regime.settled,
                monitor_value=observation.monitor,
                settled_as=(
                    "stalled on the monitor" if regime.phase is Phase.STALLED else "thermalized"
                ),
            )
        return False


def _same_temperature(a: Knobs, b: Knobs) -> bool:
    """The same effective ``η = η/(1 − β)`` (to rounding) and the same ``B``."""
    lr_a = effective_lr(lr=a.lr, momentum=a.momentum)
    lr_b = effective_lr(lr=b.lr, momentum=b.momentum)
    return a.batch_size == b.batch_size and abs(lr_a - lr_b) <= 1e-9 * max(lr_a, lr_b)

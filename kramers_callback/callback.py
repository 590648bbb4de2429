"""``KramersCallback``: the regime (descending, thermalized, trapped) sets η and B and stops.

Lightning hooks and state only; each hook hands its work to one part: the training steps to
:mod:`~kramers_callback._step_statistics`, the estimates to
:mod:`~kramers_callback._estimate_schedule`, the observation, regime, policy decision and stop
rule to :mod:`~kramers_callback._decision_step`, the batch layout to
:mod:`~kramers_callback._batch_control` and the actuators, the logs to
:mod:`kramers_callback.metrics`, the checkpoint to :mod:`~kramers_callback._callback_state`.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities.rank_zero import rank_zero_info, rank_zero_warn

from kramers_callback import _optimizer as optim_io
from kramers_callback import _setup_checks as checks
from kramers_callback._arguments import CallbackArguments
from kramers_callback._batch_control import BatchControl
from kramers_callback._budget import OverheadBudget
from kramers_callback._callback_state import (
    adopt_legacy_key,
    callback_state,
    load_callback_state,
)
from kramers_callback._decision_step import DecisionStep, knobs_of
from kramers_callback._estimate_schedule import EstimateSchedule
from kramers_callback._probe import LossFn
from kramers_callback._step_statistics import SKIPPED_WINDOWS_NOTE, StepStatistics
from kramers_callback.estimate import KramersEstimate
from kramers_callback.metrics import METRICS, record_epoch
from kramers_callback.observation import Horizon, Observation
from kramers_callback.policies import policy_rule
from kramers_callback.regime import RegimeDecision
from kramers_callback.report_loggers import log_report_figure
from kramers_callback.step_loss import LossPath, resolve_loss, training_step_warning
from kramers_callback.stopping import StopReason, TerminationRule

__all__ = ["METRICS", "KramersCallback"]

_FIELDS = tuple(f.name for f in fields(CallbackArguments) if f.init)


class KramersCallback(Callback):
    r"""Set SGD's temperature by its regime: anneal, cool, and stop when nothing is left to gain.

    **Every training step** (no extra pass): the batch loss goes into device-side blocks, and on
    a few sampled windows a running two-batch estimate of ``tr Σ₁`` reads the gradient.
    **Every epoch end**, in order:

    1. *Estimate* when the overhead budget allows, on a fixed seeded probe set: ``T``, the top-k
       and smallest Hessian eigenvalues, the trace and, after a thermalized or trapped epoch
       end, barriers and their Kramers rates (:func:`kramers_callback.estimate`; float32 or
       the model's float64, no autocast, eval mode, probe batches converted as training
       batches are; the model is left exactly as found).
    2. *Test equilibrium* (:class:`~kramers_callback.signals.EquilibriumSignal`): has the
       training loss stopped falling by more than its noise and than a cooling step would buy
       (the floor from the running noise over the test's window; never in the first epoch)?
    3. *Choose the regime* (:func:`kramers_callback.regime.choose`, docs/theory.md section 7):
       **trapped**: the annealing target ``T*(t)``; **thermalized** (or, with
       ``cooling_patience``, **stalled** on the monitor) with cooling worth ``1/c`` of the
       loss: cool by ``r = 1/2`` (``hybrid``: ``B`` first, then ``η``); otherwise hold
       (stability clamp ``η < 2(1+β)/λ_max``); always within the bounds and ``max_change``.
    4. *Stop* (:class:`~kramers_callback.stopping.TerminationRule`) when fewer than ``1/c``
       escapes are expected in the remaining budget **and** no cooling is worth it, for
       ``patience`` epochs; a non-finite training loss stops with its own reason.
    5. *Log* :data:`METRICS` (``trainer.callback_metrics``, every logger, the progress bar) and
       one :attr:`history` entry; at fit end the report figure goes to the image loggers.

    ``τ`` is ``max_epochs`` or ``max_steps``, whichever ends first. ``B`` moves through
    ``batch_size_attr`` where ``train_dataloader()`` reads it, else ``accumulate_grad_batches``;
    ``η`` by one factor for every parameter group. A resume continues the run, also from
    inside an epoch (README).

    Args:
        policy: ``"observe"``, ``"lr"``, ``"batch"`` or ``"hybrid"``
            (:class:`~kramers_callback.policies.Policy`).
        loss_fn: ``loss_fn(model, batch) -> Tensor[n]``; default: the LightningModule's
            ``per_sample_loss(batch)``, else its ``training_step`` (README, "Use").
        probe_size: probe samples (capped at the training set), drawn once with ``probe_seed``;
            a budget-shrunk estimate uses a prefix of the same draw.
        probe_batch_size: probe samples per forward pass.
        probe_seed: seeds the probe draw and the estimators' private generators.
        top_k, max_products, compute_trace, max_trace_samples, max_scan_evals: the full
            estimate size (:func:`kramers_callback.estimate`); the budget may shrink it.
        estimate_options: more keywords for :func:`kramers_callback.estimate` (``noise``,
            ``micro_batch_size``, ``backend``, ``kappa``, ``tol``, ``trace_tol``, ``centre_probe``).
        overhead_budget: estimation time as a fraction of the measured training time
            (``inf``: every epoch at full size).
        compute_cost: ``c ≥ 0`` of the stop rule (``0`` never stops): fewer than ``1/c``
            expected escapes, and cooling that removes under ``1/c`` of the loss, are not worth it.
        min_epochs, patience, monitor, min_delta, mode: guards of the stop rule; ``monitor``
            names a metric of ``trainer.callback_metrics`` that must have stopped improving.
        cooling_patience: with a ``monitor``, also cool (and let the stop rule act) once the
            monitored value has not improved for this many epoch ends at one temperature,
            though the training loss still falls (phase "stalled", docs/theory.md section
            7.7); ``None``: the monitor guards the stop only.
        lr_min, lr_max: bounds on ``η`` (default ``initial_lr / 1000`` and ``initial_lr``).
        batch_min, batch_max: bounds on ``B`` (default the initial ``B`` and an epoch's samples).
        batch_multiple: loader batches stay multiples of this.
        max_change: largest factor of change per decision for ``η`` and for ``B``.
        batch_size_attr: the attribute that sizes the train dataloader.
        noise_window, noise_stride: the running noise estimator reads ``noise_window``
            consecutive optimizer steps out of every ``noise_window · noise_stride``, ``O(d)`` each.
        check_finite: stop at the end of an epoch with a NaN or infinite training loss, as
            EarlyStopping does; ``False``: keep the last good settings (one warning per epoch).
        strict: with a ``monitor``, raise a ``RuntimeError`` at the first validation end (or,
            without validation, epoch end) that lacks it; ``False``: warn once.
        report_at_estimates: also hand the report figure to the image loggers after every good
            estimate (about a second of drawing each time).
        verbose: log each estimate and each deferral at INFO level.

    Attributes:
        policy, compute_cost, …: every argument, read-only (fixed at construction).
        history: one dict per epoch end: what was measured, decided and why.
        stop_reason: a :class:`~kramers_callback.stopping.StopReason`.
        termination: the :class:`~kramers_callback.stopping.TerminationRule`.
        budget: the :class:`~kramers_callback._budget.OverheadBudget` spacing the estimates.
        last_estimate: this process's last :class:`~kramers_callback.estimate.KramersEstimate`
            (``None`` before the first, and after a resume until the next).
    """

    def __init__(
        self,
        policy: str = "hybrid",
        *,
        loss_fn: LossFn | None = None,
        probe_size: int = 256,
        probe_batch_size: int = 64,
        probe_seed: int = 0,
        top_k: int = 3,
        max_products: int = 300,
        compute_trace: bool = True,
        max_trace_samples: int = 100,
        max_scan_evals: int = 60,
        estimate_options: dict[str, Any] | None = None,
        overhead_budget: float = 0.05,
        compute_cost: float = 0.0,
        min_epochs: int = 0,
        patience: int = 1,
        monitor: str | None = None,
        cooling_patience: int | None = None,
        min_delta: float = 0.0,
        mode: str = "min",
        lr_min: float | None = None,
        lr_max: float | None = None,
        batch_min: int | None = None,
        batch_max: int | None = None,
        batch_multiple: int = 1,
        max_change: float = 2.0,
        batch_size_attr: str = "batch_size",
        noise_window: int = 2,
        noise_stride: int = 16,
        check_finite: bool = True,
        strict: bool = True,
        report_at_estimates: bool = False,
        verbose: bool = True,
    ) -> None:
        super().__init__()
        # The signature stays spelled out for LightningCLI and the docs; validation is the
        # record's (as ``save_hyperparameters`` does, read the arguments from the frame).
        arguments = CallbackArguments(**{k: v for k, v in locals().items() if k in _FIELDS})
        self._arguments = arguments
        # Public attributes, as Lightning's callbacks expose their arguments.
        for name in _FIELDS:
            setattr(self, name, getattr(arguments, name))
        self.full_size = arguments.full_size
        self._rule = policy_rule(self.policy)
        self._fitted = False
        self._reset_fit_state()
        self._constructed = True

    def __setattr__(self, name: str, value: Any) -> None:
        # The parts hold the validated arguments: a reassigned one would be read by nothing.
        if name in _FIELDS and getattr(self, "_constructed", False):
            raise AttributeError(
                f"KramersCallback.{name} is fixed at construction (got {value!r} to assign): "
                f"pass it as KramersCallback({name}=...); a resume from a checkpoint takes the "
                "new instance's arguments"
            )
        super().__setattr__(name, value)

    # -- state -------------------------------------------------------------------------------
    def _reset_fit_state(self) -> None:
        """Everything one fit accumulates: a new fit starts from here, a resume from the
        checkpoint's state (``load_state_dict`` runs after ``setup``)."""
        self.history: list[dict[str, Any]] = []
        self._estimates = EstimateSchedule(self._arguments)
        self._steps = StepStatistics(noise_window=self.noise_window, noise_stride=self.noise_stride)
        self._batches = BatchControl(
            self._rule, attribute=self.batch_size_attr, multiple=self.batch_multiple
        )
        self._decision = DecisionStep(self._arguments, self._rule)
        self._adaptive = False
        self._adaptive_warned = False
        self._monitor = checks.MonitorCheck(self.monitor, strict=self.strict)

    @property
    def termination(self) -> TerminationRule:
        return self._decision.termination

    @property
    def stop_reason(self) -> StopReason:
        return self.termination.reason

    @property
    def budget(self) -> OverheadBudget:
        return self._estimates.budget

    @property
    def last_estimate(self) -> KramersEstimate | None:
        return self._estimates.last_estimate

    # The state key is Lightning's default, the class name: stable across arguments, so a
    # resume with changed arguments finds its state (README, "Checkpoints and resume").
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Called before load_state_dict, on the same dict: a 0.x key is renamed in time.
        adopt_legacy_key(checkpoint, self.state_key)

    def state_dict(self) -> dict[str, Any]:
        """Plain Python values and tensors only, so it loads under ``weights_only=True``."""
        return callback_state(self)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        load_callback_state(self, state_dict)

    # -- setup -------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if self._fitted:
            # A second fit of this instance starts afresh (its history, budget, stop rule and
            # probe), unless it resumes: load_state_dict then restores them after setup.
            self._reset_fit_state()
        checks.check_fit_loop(trainer, pl_module)
        self._batches.setup(trainer, pl_module)
        checks.check_top_k_fits(pl_module, self.full_size.top_k)
        resolved = resolve_loss(self.loss_fn, pl_module)
        self._estimates.loss = resolved.loss_fn
        checks.check_noise_option(self.estimate_options, resolved.loss_fn)
        if resolved.path is LossPath.TRAINING_STEP:
            rank_zero_warn(
                training_step_warning(
                    num_samples=self.probe_size,
                    micro_batch_size=self.estimate_options.get("micro_batch_size"),
                )
            )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fitted = True
        kind = checks.check_optimizer(trainer)
        self._adaptive = kind == optim_io.ADAPTIVE
        if self._adaptive and not self._adaptive_warned:
            rank_zero_warn(checks.adaptive_warning(trainer.optimizers[0]))
            self._adaptive_warned = True
        checks.check_schedule(trainer, self._rule)
        self._batches.restore(trainer, pl_module)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loader = checks.check_train_loader(trainer.train_dataloader)
        dataset_size = len(loader.dataset)  # type: ignore[arg-type]
        self._estimates.start(trainer, pl_module, loader, adaptive=self._adaptive)
        layout = self._batches.start(trainer, pl_module, loader)
        params = optim_io.trainable_parameters(pl_module)
        self._decision.start(
            lr=optim_io.lr_of(trainer.optimizers[0]),
            batch_size=layout.samples_per_step,
            dataset_size=dataset_size,
            dim=sum(p.numel() for p in params),
        )
        self._steps.start_fit(
            dataset_size=dataset_size,
            world_size=trainer.world_size,
            params=params,
            adaptive=self._adaptive,
            num_batches=trainer.num_training_batches,
            device=pl_module.device,
        )

    # -- per step ----------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._batches.layout is None:
            return
        layout = self._batches.start_epoch(trainer, pl_module)
        self._steps.start_epoch(trainer.num_training_batches, layout, pl_module.device)
        self._estimates.start_epoch()
        self._monitor.start_epoch()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._estimates.start_validation()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._estimates.end_validation()
        self._monitor.end_validation(trainer)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.budget.add_training(self._steps.count_batch(batch))
        if self._decision.epoch_knobs is None and self._batches.layout is not None:
            layout = self._batches.in_force(trainer)
            self._decision.note_epoch_knobs(
                knobs_of(trainer.optimizers[0], layout.samples_per_step)
            )

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._steps.add_loss(outputs, batch_idx)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        self._steps.optimizer_step(trainer.optimizers[0])

    # -- per epoch ---------------------------------------------------------------------------
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self._batches.layout is None or self._steps.running is None:
            return
        optimizer = trainer.optimizers[0]
        knobs = knobs_of(optimizer, self._batches.in_force(trainer).samples_per_step)
        # A descending (or stalled) walker has no barrier question: scan once the phase asks.
        scan = bool(self.history) and self.history[-1].get("phase") in ("thermalized", "trapped")
        fresh = self._estimates.at_epoch_end(trainer, pl_module, knobs=knobs, scan=scan)
        statistics = self._steps.read_epoch(
            # Every rank's block sums, averaged: one synchronisation per epoch.
            mean=lambda sums: trainer.strategy.reduce(sums, reduce_op="mean"),
        )
        monitored = self._monitor.epoch_values(trainer)
        self._decision.add_epoch(fresh, statistics, monitored.this_epoch)
        # Observe → signals → policy → actuators → stop rule → metrics and history.
        steps, batches, epoch = self._steps, self._batches, trainer.current_epoch
        observation = self._decision.observe(
            epoch=epoch,
            horizon=Horizon.of_run(
                samples_seen=steps.samples_seen,
                samples_per_epoch=steps.samples_per_epoch,
                epoch=epoch,
                max_epochs=trainer.max_epochs,
                global_step=trainer.global_step,
                max_steps=trainer.max_steps,
            ),
            knobs=knobs,
            fresh=fresh,
            statistics=statistics,
            monitor=monitored.latest,
        )
        limits = self._decision.limits(
            knobs,
            batches.layout,
            samples_per_epoch=steps.samples_per_epoch,
            pinned=batches.pinned,
            cap=batches.cap(trainer),
        )
        regime = self._decision.choose(observation, limits)
        if regime.observation is not None:  # the trapped phase's temperature, from the estimate
            observation = regime.observation
        decision = regime.record.decision
        layout = batches.apply(trainer, pl_module, optimizer, knobs=knobs, decision=decision)
        stop = self._stop(trainer, observation, regime)
        self._decision.note_applied(regime)
        entry = record_epoch(
            trainer,
            observation,
            regime,
            lr=optim_io.lr_of(optimizer),
            batch_size=layout.samples_per_step,
            stop=stop,
            budget=self.budget,
        )
        self.history.append(entry)
        if self.report_at_estimates and fresh is not None and fresh.ok:
            self._log_report(trainer)

    def _stop(self, trainer: pl.Trainer, observation: Observation, regime: RegimeDecision) -> bool:
        """The stop rule (:meth:`~kramers_callback._decision_step.DecisionStep.stop`); any
        rank stopping stops all."""
        stop = self._decision.stop(observation, regime)
        stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop and not trainer.should_stop:
            trainer.should_stop = True
            if self.termination.message:
                rank_zero_info(self.termination.message)
        return bool(stop)

    def _log_report(self, trainer: pl.Trainer) -> None:
        log_report_figure(
            trainer,
            self.history,
            stop_reason=self.stop_reason.value,
            config={
                "trainer": {"max_epochs": trainer.max_epochs},
                "kramers": {"compute_cost": self.compute_cost},
            },
        )

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        try:
            if self.history:
                self._log_report(trainer)
            if self._steps.skipped and self.verbose:
                rank_zero_info(SKIPPED_WINDOWS_NOTE)
        finally:
            # Ranks leave the fit together, also when rank 0's report (drawn on rank 0 alone,
            # for image loggers) takes time or fails. Under ddp_spawn on gloo, without this
            # wait, rank 1 aborted at exit (SIGABRT) in 7 of 22 fits on one machine, with no
            # report drawn (none of 25 with it), and in none of 38 on another: a teardown race
            # whose cause was not found.
            trainer.strategy.barrier("KramersCallback.on_fit_end")

"""When the callback estimates, and the estimate itself: the overhead budget's plan at each epoch
end, the timed estimate on the probe set with its warm start, and its record or deferral.

Torch and Lightning plumbing around :class:`~kramers_callback._budget.OverheadBudget` (which
decides in measured seconds) and :func:`kramers_callback.estimate`: the device is synchronised
only at an estimate's boundaries, validation time is left out of the training time, and under
DDP every rank follows rank 0's times and estimate (broadcast), so ranks decide alike.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader

from kramers_callback import _optimizer as optim_io
from kramers_callback._arguments import CallbackArguments
from kramers_callback._budget import EstimateSize, OverheadBudget
from kramers_callback._callback_state import WarmStart
from kramers_callback._estimate_report import (
    estimate_message,
    summarise_estimate,
    warn_rough_trace,
)
from kramers_callback._probe import LossFn, batch_size_of
from kramers_callback._probe_set import ProbeSet, training_conversion
from kramers_callback.estimate import KramersEstimate, NonFiniteLossError
from kramers_callback.estimate import estimate as run_estimate
from kramers_callback.observation import EstimateSummary, Knobs, epochs_left, sampling_size

__all__ = ["EstimateSchedule"]


def _synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a wall-clock reading is the device's time."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EstimateSchedule:
    """The budget, the probe set and the estimates of one fit.

    Args:
        arguments: the callback's arguments (the budget, the probe and the estimate's
            options and seed).

    Attributes:
        budget: the :class:`~kramers_callback._budget.OverheadBudget`.
        probe: the :class:`~kramers_callback._probe_set.ProbeSet`.
        num_estimates: estimates made (each seeds the next one's generators).
        last_estimate: this process's last :class:`~kramers_callback.estimate.KramersEstimate`.
        warm: the last finite estimate's eigenvectors (converged or not), which the next one
            starts from.
    """

    def __init__(self, arguments: CallbackArguments) -> None:
        self.arguments = arguments
        self.budget = OverheadBudget(arguments.overhead_budget, arguments.full_size)
        self.probe = ProbeSet(arguments.probe_size, arguments.probe_seed)
        self.num_estimates = 0
        self.last_estimate: KramersEstimate | None = None
        self.warm: WarmStart | KramersEstimate | None = None
        self.trace_warned = False
        self.loss: LossFn | None = None
        """The probe loss, resolved at setup (:func:`kramers_callback.step_loss.resolve_loss`)."""
        self.dataset_size: int | None = None
        self.adaptive = False
        self.epoch_started: float | None = None
        self.validation_started: float | None = None
        self.validation_seconds = 0.0

    def start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        loader: DataLoader,
        *,
        adaptive: bool,
    ) -> None:
        """Read the probe samples from the train ``loader``; ``adaptive``: precondition the
        estimates as the Adam family's steps are."""
        self.adaptive = adaptive
        self.dataset_size = len(loader.dataset)  # type: ignore[arg-type]
        self.probe.build(loader, training_conversion(trainer, pl_module))
        if isinstance(self.warm, WarmStart):  # restored from a checkpoint, maybe on the CPU
            self.warm = self.warm.to(pl_module.device)

    # -- the clock: training time outside validation ------------------------------------------
    def start_epoch(self) -> None:
        self.epoch_started = time.perf_counter()
        self.validation_seconds = 0.0

    def start_validation(self) -> None:
        self.validation_started = time.perf_counter()

    def end_validation(self) -> None:
        # Validation inside an epoch is not training time: keep it out of the budget's base.
        if self.validation_started is not None:
            self.validation_seconds += time.perf_counter() - self.validation_started

    # -- the epoch end ------------------------------------------------------------------------
    def at_epoch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *, knobs: Knobs, scan: bool
    ) -> EstimateSummary | None:
        """Account the epoch's training time, then estimate if the budget's plan says so at
        the current ``knobs`` (``scan``: with the line scans for barriers); ``None``:
        deferred."""
        epoch = trainer.current_epoch
        broadcast = trainer.strategy.broadcast
        # The estimate's boundary: synchronise once, so the epoch's time is the device's.
        _synchronize(pl_module.device)
        now = time.perf_counter()
        started = self.epoch_started
        seconds = 0.0 if started is None else max(now - started - self.validation_seconds, 0.0)
        # Every rank plans (and accounts its budget) on rank 0's numbers: identical decisions
        # and schedules by construction.
        self.budget.add_training_seconds(broadcast(seconds, src=0))
        plan = self.budget.plan(
            epochs_done=epoch + 1, epochs_left=epochs_left(epoch, trainer.max_epochs)
        )
        fresh: EstimateSummary | None = None
        if broadcast(plan.run, src=0):
            fresh = self._estimate(pl_module, trainer.optimizers[0], plan.size, knobs, scan)
            _synchronize(pl_module.device)
            fresh = replace(fresh, seconds=time.perf_counter() - now)
        fresh = broadcast(fresh, src=0)
        if fresh is not None:
            spent = fresh.seconds if math.isfinite(fresh.seconds) else 0.0
            self.budget.record(plan, fresh.work, spent)
        else:
            self.budget.defer()
            if self.arguments.verbose:
                rank_zero_info(
                    f"KramersCallback: estimate at epoch {epoch} deferred: {plan.reason}"
                )
        return fresh

    def _estimate(
        self,
        pl_module: pl.LightningModule,
        optimizer: torch.optim.Optimizer,
        size: EstimateSize,
        knobs: Knobs,
        scan: bool,
    ) -> EstimateSummary:
        """One estimate at ``knobs``, summarised with its ``status`` and ``work``."""
        assert self.loss is not None
        arguments = self.arguments
        batches = self.probe.batches(size)
        params = optim_io.trainable_parameters(pl_module)
        preconditioner = optim_io.preconditioner(optimizer, params) if self.adaptive else None
        epoch = pl_module.current_epoch
        try:
            # Estimation runs in float32 (or the parameters' float64), never under autocast.
            with torch.autocast(device_type=pl_module.device.type, enabled=False):
                est = run_estimate(
                    pl_module,
                    self.loss,
                    batches,
                    lr=knobs.lr,
                    batch_size=knobs.batch_size,
                    momentum=knobs.momentum,
                    dataset_size=sampling_size(self.dataset_size, knobs.batch_size),
                    top_k=size.top_k,
                    max_products=size.max_products,
                    compute_trace=size.compute_trace,
                    max_trace_samples=size.max_trace_samples,
                    max_scan_evals=size.max_scan_evals,
                    scan_barriers=scan,
                    warm_start=self.warm,  # type: ignore[arg-type]
                    preconditioner=preconditioner,
                    seed=arguments.probe_seed + self.num_estimates,
                    **arguments.estimate_options,  # type: ignore[arg-type]
                )
        except NonFiniteLossError as err:
            rank_zero_warn(
                f"KramersCallback: no estimate at epoch {epoch}: {err}. Keeping the last good "
                "settings; training goes on."
            )
            return EstimateSummary.failed(work=float(sum(batch_size_of(b) for b in batches)))
        self.num_estimates += 1
        self.last_estimate = est
        summary = summarise_estimate(est, num_batches=len(batches), size=size, epoch=epoch)
        if est.finite:
            # Unconverged Ritz vectors are still the best start: a budget-shrunk eigensolver
            # then carries its progress from one estimate to the next.
            self.warm = est
        if not est.converged.get("trace", True) and not self.trace_warned:
            self.trace_warned = True
            warn_rough_trace(epoch, size)
        if arguments.verbose:
            rank_zero_info(
                estimate_message(est, work=summary.work, epoch=epoch, budget=self.budget)
            )
        return summary

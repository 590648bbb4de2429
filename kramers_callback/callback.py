"""``KramersCallback``: the regime (descending, thermalized, trapped) sets η and B and stops.

Lightning hooks and state only. Each epoch end builds an
:class:`~kramers_callback.observation.Observation`, reads the signals
(:mod:`kramers_callback.signals`), picks the regime (:func:`kramers_callback.regime.choose`)
and the policy's decision (:mod:`kramers_callback.policies`), applies it
(:mod:`kramers_callback.actuators`), checks the stop rule
(:class:`kramers_callback.stopping.TerminationRule`, docs/theory.md section 7.6) and logs
(:mod:`kramers_callback.metrics`). The measurements are :func:`kramers_callback.estimate`
(spaced by :class:`kramers_callback._budget.OverheadBudget`) and
:class:`kramers_callback.noise.RunningNoiseEstimator`.
"""

from __future__ import annotations

import math
import time
from dataclasses import fields, replace
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, GradientAccumulationScheduler
from pytorch_lightning.utilities.model_helpers import is_overridden
from pytorch_lightning.utilities.parsing import lightning_getattr
from pytorch_lightning.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.utils.data import DataLoader

from kramers_callback import _optimizer as optim_io
from kramers_callback import _setup_checks as checks
from kramers_callback._arguments import CallbackArguments
from kramers_callback._batch_size import (
    BatchLayout,
    BatchMechanism,
    data_from_module,
    detect_mechanism,
)
from kramers_callback._budget import EstimateSize, OverheadBudget
from kramers_callback._callback_state import (
    WarmStart,
    callback_state,
    layout_from_state,
    load_callback_state,
    restore_epoch_state,
)
from kramers_callback._estimate_report import (
    estimate_message,
    summarise_estimate,
    warn_rough_trace,
)
from kramers_callback._loss_blocks import Dwell, LossBlocks
from kramers_callback._probe import LossFn, batch_size_of
from kramers_callback._probe_set import ProbeSet, training_conversion
from kramers_callback._validation import (
    all_finite,
)
from kramers_callback.actuators import apply_decision, apply_layout, fall_back_to_accumulation
from kramers_callback.estimate import (
    KramersEstimate,
    NonFiniteLossError,
)
from kramers_callback.estimate import estimate as run_estimate
from kramers_callback.limits import ControlLimits, control_limits, loop_cap
from kramers_callback.metrics import METRICS, epoch_metrics, history_entry, publish
from kramers_callback.noise.floor import cooling_factor
from kramers_callback.noise.running import RunningNoiseEstimator
from kramers_callback.observation import (
    EstimateSummary,
    Horizon,
    Knobs,
    Observation,
    observe,
    sampling_size,
)
from kramers_callback.policies import policy_rule
from kramers_callback.regime import RegimeDecision, choose
from kramers_callback.report_loggers import log_report_figure
from kramers_callback.signals import EquilibriumSignal, KramersTargetSignal
from kramers_callback.step_loss import LossPath, resolve_loss, training_step_warning
from kramers_callback.stopping import StopReason, TerminationRule

__all__ = ["METRICS", "KramersCallback"]


def _synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a wall-clock reading is the device's time."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)

def _validates(trainer: pl.Trainer) -> bool:
    """Whether this fit can run a validation loop (a ``validation_step`` and batches to run)."""
    module = trainer.lightning_module
    return bool(trainer.limit_val_batches) and is_overridden("validation_step", module)


_FIELDS = tuple(f.name for f in fields(CallbackArguments) if f.init)


class KramersCallback(Callback):
    r"""Set SGD's temperature by its regime: anneal, cool, and stop when nothing is left to gain.

    **Every training step** (no extra pass): the batch loss goes into device-side blocks, and on
    a few sampled windows a running two-batch estimate of ``tr Σ₁`` reads the gradient.
    **Every epoch end**, in order:

    1. *Estimate* when the overhead budget allows (below): on a fixed seeded probe set, the
       temperature ``T``, the top-k and smallest Hessian eigenvalues (one warm-started Lanczos
       run), the trace, and — once the phase is no longer descending — line scans for barriers
       and their Kramers rates (:func:`kramers_callback.estimate`; float32, or float64 for a
       float64 model, outside autocast, eval mode, model left exactly as found; probe batches
       go through the precision plugin's ``convert_input`` as training batches do).
    2. *Test equilibrium* (:class:`~kramers_callback.signals.EquilibriumSignal`): has the
       training loss stopped falling by more than its noise and by more than a cooling step
       would buy, ``G = (1 − r)F`` with the noise floor ``F = η_eff tr Σ_B / 4``?
    3. *Choose the regime* (:func:`kramers_callback.regime.choose`, docs/theory.md section 7):
       **trapped** (a pathway has a Kramers rate): the annealing target ``T*(t)`` from ``T_c``
       (sections 4.1–4.4); **thermalized** with cooling still worth ``1/c`` of the loss: cool by
       ``r = 1/2`` (``hybrid``: ``B`` first, up to ``batch_max``, then ``η``); otherwise
       (**descending**, or nothing worth cooling for) hold, with the stability clamp
       ``η < 2(1+β)/λ_max``. Every move stays within the LR and batch bounds and ``max_change``.
    4. *Stop* (:class:`~kramers_callback.stopping.TerminationRule`, sections 4.5 and 7.6) when
       fewer than ``1/c`` escapes are expected on the measured pathways in the remaining
       budget **and** the walker is thermalized with no cooling worth it, for ``patience``
       epochs (after ``min_epochs``; with a ``monitor``, only while it does not improve). A run
       that still descends never stops by the rule; ``compute_cost=0`` never stops. A
       non-finite training loss stops with its own reason (``check_finite``).
    5. *Log* :data:`METRICS` into ``trainer.callback_metrics`` (also with ``logger=False``),
       every logger and the progress bar, and append one entry to :attr:`history`; at fit end
       the report figure goes to every logger that takes images.

    **Budget and time.** ``τ`` comes from ``max_epochs`` (as samples) or ``max_steps``,
    whichever ends first, expressed in steps of the current ``B``. Estimates are spaced and
    sized (:class:`kramers_callback._budget.OverheadBudget`) so that their measured time stays
    within ``overhead_budget`` of the measured training time (the device is synchronised only
    at the estimates' boundaries): the first comes by the end of epoch 2, at the smallest size
    if need be, then at least every 3 epochs where the smallest size fits. Measured time makes
    the schedule depend on the machine's load; under DDP every rank follows rank 0's times and
    estimate (broadcast), so ranks decide alike.

    **Batch size.** ``B = loader batch × accumulate_grad_batches × world size``. Where the data
    come from a ``train_dataloader()`` of the LightningModule or DataModule that reads the
    attribute ``batch_size_attr``, the callback sets it and the loader is rebuilt at the next
    epoch; otherwise (or when the rebuilt loader ignores it, with one warning) it sets
    ``trainer.accumulate_grad_batches`` at epoch boundaries. ``"observe"`` and ``"lr"`` never
    write the accumulation; a ``GradientAccumulationScheduler`` is refused where ``"batch"`` or
    ``"hybrid"`` would need it; an integer ``val_check_interval`` caps the loader batch.

    **Learning rate.** Changes scale every parameter group of the one optimizer by the same
    factor; where the policy owns ``η`` a Lightning LR scheduler is refused at setup. SGD
    (``η_eff = η(1−dampening)/(1−β)``) exactly; the Adam family through the diagonal
    preconditioner of docs/theory.md section 5, with one warning.

    **Losses.** ``loss_fn``, else the module's ``per_sample_loss``, else ``training_step``
    (micro-batch noise, one warning; docs/theory.md section 2.5).

    **Checkpoints** (``state_dict``, loadable with ``torch.load(weights_only=True)``, keyed by
    the class name whatever the arguments) hold the probe indices, the batch layout, the
    budget, the stop rule, the dwell of loss blocks, the history, the warm-start eigenvectors
    and the epoch in progress, so a resume continues the run, also from a checkpoint written
    inside an epoch. A resume refuses a changed ``probe_size``, ``monitor`` or ``mode``
    (``MisconfigurationException``), keeps the stored probe set for a changed ``probe_seed``
    (one warning), and applies every other changed argument (``policy``, ``top_k``, the bounds,
    ``overhead_budget``, …) from the resume on (README, "Checkpoints and resume"). A second
    ``fit`` of one instance without ``ckpt_path`` starts afresh.

    Assumptions: one optimizer, automatic optimization, a map-style train dataset read by one
    DataLoader with a ``batch_size``, parameters replicated on every rank (no FSDP/DeepSpeed).

    Cost: per step ``O(1)`` (one indexed addition on the device), plus ``O(d)`` on the steps of
    a sampled noise window; per estimate see :func:`kramers_callback.estimate`; memory: the
    probe samples and ``(top_k + 1)·d`` floats of warm-start eigenvectors (checkpointed).

    Args:
        policy: ``"observe"``, ``"lr"``, ``"batch"`` or ``"hybrid"``
            (:class:`~kramers_callback.policies.Policy`).
        loss_fn: ``loss_fn(model, batch) -> Tensor[n]``; default: the LightningModule's
            ``per_sample_loss(batch)``.
        probe_size: probe samples (capped at the training-set size), drawn once with
            ``probe_seed`` and kept in the checkpoint; a budget-shrunk estimate uses a prefix of
            the same draw.
        probe_batch_size: probe samples per forward pass.
        probe_seed: seeds the probe draw and the estimators' private generators.
        top_k, max_products, compute_trace, max_trace_samples, max_scan_evals: the full
            estimate size (see :func:`kramers_callback.estimate`); the budget may shrink it.
        estimate_options: more keywords for :func:`kramers_callback.estimate`, among
            ``noise``, ``micro_batch_size``, ``backend``, ``kappa``, ``tol``, ``trace_tol``,
            ``centre_probe``; checked at construction.
        overhead_budget: estimation time as a fraction of the measured training time
            (``inf``: every epoch at full size).
        compute_cost: ``c ≥ 0`` of the stop rule (``0`` never stops): fewer than ``1/c``
            expected escapes, and a cooling step removing less than ``1/c`` of the training
            loss, are not worth continuing.
        min_epochs, patience, monitor, min_delta, mode: guards of the stop rule
            (:class:`~kramers_callback.stopping.TerminationRule`); ``monitor`` names a metric
            in ``trainer.callback_metrics`` that must have stopped improving.
        lr_min, lr_max: learning-rate bounds (default ``initial_lr / 1000`` and ``initial_lr``).
        batch_min, batch_max: bounds on ``B`` (default the initial ``B`` and the samples per
            epoch).
        batch_multiple: loader batches stay multiples of this.
        max_change: largest factor of change per decision for ``η`` and for ``B``.
        batch_size_attr: the attribute that sizes the train dataloader.
        noise_window: consecutive optimizer steps per window of the running noise estimator.
        noise_stride: the running estimator takes one window out of every ``noise_stride``
            (``1``: every step). Its per-step cost is ``O(d)``, small but not free next to a
            tiny model's step; a few windows per epoch are enough between estimates.
        check_finite: stop training (:attr:`~kramers_callback.stopping.StopReason.NON_FINITE_LOSS`)
            at the end of an epoch with a NaN or infinite training loss, as EarlyStopping's
            ``check_finite`` does; ``False``: keep training at the last good settings (one
            warning per such epoch). Either way that epoch's estimate metrics are NaN, its
            temperature too, and its history entry's ``reason`` is "non-finite training loss".
        strict: with a ``monitor``, raise a ``RuntimeError`` naming the metrics available at
            the first validation end (or, without validation, epoch end) that lacks it;
            ``False``: warn once and let the stop rule run without the monitor's guard.
        report_at_estimates: also hand the report figure to the image-capable loggers after
            every good estimate (it is always handed over at fit end). About a second of
            drawing each time, and only where a logger takes images.
        verbose: log each estimate and each deferral at INFO level.

    Attributes:
        history: one dict per epoch end: what was measured, decided and why.
        stop_reason: a :class:`~kramers_callback.stopping.StopReason`.
        last_estimate: the last :class:`~kramers_callback.estimate.KramersEstimate` of this
            process (``None`` before the first, and after a resume until the next).
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
        self._target_signal = KramersTargetSignal()
        self._cooling_factor = cooling_factor(max_change=self.max_change)
        self._equilibrium_signal = EquilibriumSignal(factor=self._cooling_factor)
        self._fitted = False
        self._reset_fit_state()

    # -- state -------------------------------------------------------------------------------
    def _reset_fit_state(self) -> None:
        """Everything one fit accumulates: a new fit starts from here, a resume from the
        checkpoint's state (``load_state_dict`` runs after ``setup``)."""
        self.termination = TerminationRule(
            compute_cost=self.compute_cost,
            min_epochs=self.min_epochs,
            patience=self.patience,
            min_delta=self.min_delta,
            mode=self.mode,
            use_monitor=self.monitor is not None,
        )
        self.budget = OverheadBudget(self.overhead_budget, self.full_size)
        self.history: list[dict[str, Any]] = []
        self.last_estimate: KramersEstimate | None = None
        self._reset_run_state()

    def _reset_run_state(self) -> None:
        self._loss: LossFn | None = None
        self._probe = ProbeSet(self.probe_size, self.probe_seed)
        self._mechanism: BatchMechanism | None = None
        self._layout: BatchLayout | None = None
        self._restored_layout: dict[str, Any] | None = None
        self._initial_lr: float | None = None
        self._initial_batch: int | None = None
        self._dataset_size: int | None = None
        self._epoch_samples = 0
        self._samples_per_epoch = 0
        self._samples_seen = 0
        self._batch_samples = 0
        self._step_samples = 0
        self._num_estimates = 0
        self._last_good: EstimateSummary | None = None
        self._warm: WarmStart | KramersEstimate | None = None
        self._adaptive = False
        self._adaptive_warned = False
        self._loss_sum: Tensor | None = None
        self._params: list[nn.Parameter] = []
        self._epoch_steps = 0
        self._world_size = 1
        self._running: RunningNoiseEstimator | None = None
        self._running_skipped = False
        self._trace_warned = False
        self._monitor_warned = False
        self._restored_epoch: dict[str, Any] | None = None
        self._external_accumulation = False
        self._reload_pending = False
        self._batch_pinned = False
        self._loader_samples: int | None = None
        self._loader_drop_last = False
        self._blocks = LossBlocks()
        self._dwell = Dwell()
        self._first_dwell = True
        self._epoch_started: float | None = None
        self._validation_started: float | None = None
        self._validation_seconds = 0.0

    @property
    def stop_reason(self) -> StopReason:
        return self.termination.reason

    # The state key is Lightning's default, the class name: stable across arguments, so a
    # resume with changed arguments finds its state (see the class docstring for which apply).
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Read a checkpoint written under the 0.x key ``KramersCallback{'policy': ...,
        'probe_seed': ...}`` (called before ``load_state_dict``, on the same dict)."""
        states = checkpoint.get("callbacks")
        if not isinstance(states, dict) or self.state_key in states:
            return
        legacy = [k for k in states if isinstance(k, str) and k.startswith(self.state_key + "{")]
        if len(legacy) == 1:
            states[self.state_key] = states.pop(legacy[0])

    def state_dict(self) -> dict[str, Any]:
        """Plain Python values and tensors only, so it loads under ``weights_only=True``."""
        return callback_state(self)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        load_callback_state(self, state_dict)

    def _restore_epoch_state(self) -> None:
        restore_epoch_state(self)

    # -- setup -------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if self._fitted:
            # A second fit of this instance starts afresh (its history, budget, stop rule and
            # probe), unless it resumes: load_state_dict then restores them after setup.
            self._reset_fit_state()
        checks.check_fit_loop(trainer, pl_module)
        self._external_accumulation = any(
            isinstance(c, GradientAccumulationScheduler) for c in trainer.callbacks
        )
        mechanism = detect_mechanism(
            pl_module, self.batch_size_attr, from_module=data_from_module(trainer)
        )
        if self._external_accumulation and mechanism is BatchMechanism.ACCUMULATION:
            checks.check_accumulation_owner(self._rule, self.batch_size_attr)
        checks.check_top_k_fits(pl_module, self.full_size.top_k)
        resolved = resolve_loss(self.loss_fn, pl_module)
        self._loss = resolved.loss_fn
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
            rank_zero_warn(
                f"KramersCallback: {type(trainer.optimizers[0]).__name__} is outside the seed's "
                "SGD theory; estimates use the diagonal-preconditioner approximation "
                "P = 1/(sqrt(v̂)+ε) from the optimizer's exp_avg_sq (docs/theory.md)."
            )
            self._adaptive_warned = True
        checks.check_schedule(trainer, self._rule)
        self._mechanism = detect_mechanism(
            pl_module, self.batch_size_attr, from_module=data_from_module(trainer)
        )
        restored = self._restored_layout
        if restored is not None:
            mechanism = BatchMechanism(restored["mechanism"])
            if mechanism is BatchMechanism.LOADER and self._mechanism is BatchMechanism.LOADER:
                if self._rule.owns_batch:  # observe and lr never changed it
                    layout = layout_from_state(restored, self.batch_multiple)
                    apply_layout(trainer, pl_module, layout, self.batch_size_attr)
            else:
                # An accumulation run stays one (also after falling back from the loader).
                self._mechanism = BatchMechanism.ACCUMULATION
                if self._owns_accumulation:
                    trainer.accumulate_grad_batches = int(restored["accumulation"])

    @property
    def _owns_accumulation(self) -> bool:
        """Whether the callback sets ``trainer.accumulate_grad_batches``; otherwise it only
        reads the factor in force (``"observe"`` and ``"lr"`` never write it; a
        GradientAccumulationScheduler owns it, and is refused at setup where the callback
        would need it)."""
        return self._rule.owns_batch and not self._external_accumulation

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loader = checks.check_train_loader(trainer.train_dataloader)
        self._dataset_size = len(loader.dataset)  # type: ignore[arg-type]
        self._probe.build(loader, training_conversion(trainer, pl_module))
        world = self._world_size = trainer.world_size
        self._note_loader(loader)
        mechanism = self._mechanism or BatchMechanism.ACCUMULATION
        if mechanism is BatchMechanism.LOADER:
            attr = lightning_getattr(pl_module, self.batch_size_attr)
            if attr != loader.batch_size:
                checks.check_unread_batch_attribute(
                    self.batch_size_attr,
                    attr,
                    loader.batch_size,
                    refuse=self._external_accumulation and self._rule.owns_batch,
                )
                mechanism = BatchMechanism.ACCUMULATION
        self._mechanism = mechanism
        self._layout = BatchLayout(
            mechanism=mechanism,
            loader_batch=int(loader.batch_size),  # type: ignore[arg-type]
            accumulation=int(trainer.accumulate_grad_batches),
            world_size=world,
            multiple=self.batch_multiple,
        )
        if self._initial_lr is None:
            self._initial_lr = optim_io.lr_of(trainer.optimizers[0])
        if self._initial_batch is None:
            self._initial_batch = self._layout.samples_per_step
        self._running = RunningNoiseEstimator(
            window=self.noise_window, dataset_size=self._dataset_size
        ).to(pl_module.device)
        self._loss_sum = torch.zeros((), dtype=torch.float32, device=pl_module.device)
        # A resume inside an epoch gets no on_train_epoch_start: set the blocks up here too.
        self._blocks.start_epoch(trainer.num_training_batches, pl_module.device)
        self._restore_epoch_state()
        self._params = optim_io.trainable_parameters(pl_module)
        if isinstance(self._warm, WarmStart):  # restored from a checkpoint, maybe on the CPU
            self._warm = self._warm.to(pl_module.device)

    def _note_loader(self, loader: DataLoader) -> None:
        """One rank's samples per epoch and ``drop_last``: what Lightning's batch count (and
        so the largest loader batch an integer ``val_check_interval`` allows) depends on."""
        sampler = loader.sampler
        self._loader_samples = len(sampler) if hasattr(sampler, "__len__") else None  # type: ignore[arg-type]
        self._loader_drop_last = bool(loader.drop_last)

    # -- per step ----------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        layout = self._layout
        if layout is None:
            return
        if layout.mechanism is BatchMechanism.LOADER:
            loader = trainer.train_dataloader
            if isinstance(loader, DataLoader) and loader.batch_size is not None:
                self._note_loader(loader)
                actual = int(loader.batch_size)
                if self._reload_pending and actual != layout.loader_batch:
                    self._layout, pinned = fall_back_to_accumulation(
                        trainer,
                        pl_module,
                        layout,
                        actual,
                        self.batch_size_attr,
                        owns_accumulation=self._owns_accumulation,
                    )
                    self._batch_pinned = self._batch_pinned or pinned
                    self._mechanism = self._layout.mechanism
                else:
                    self._layout = replace(layout, loader_batch=actual)
            self._reload_pending = False
            layout = self._layout
        if layout.mechanism is BatchMechanism.ACCUMULATION and self._owns_accumulation:
            trainer.accumulate_grad_batches = layout.accumulation
        batches = trainer.num_training_batches
        per_epoch = self._dataset_size or 0
        if all_finite(batches):
            per_epoch = min(per_epoch, int(batches) * layout.loader_batch * layout.world_size)
        self._samples_per_epoch = max(per_epoch, 1)
        self._blocks.start_epoch(batches, pl_module.device)
        self._epoch_started = time.perf_counter()
        self._validation_seconds = 0.0
        self._epoch_samples = 0
        self._step_samples = 0
        self._epoch_steps = 0

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validation_started = time.perf_counter()


    def _epochs_left(self, trainer: pl.Trainer) -> float:
        max_epochs = trainer.max_epochs
        if max_epochs is None or max_epochs < 0:
            return math.inf
        return float(max(max_epochs - trainer.current_epoch - 1, 0))

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        samples = self._batch_samples = batch_size_of(batch) * self._world_size
        self._step_samples += samples
        self._epoch_samples += samples
        self._samples_seen += samples
        self.budget.add_training(samples)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, Tensor) and self._loss_sum is not None:
            # A NaN or inf anywhere makes the sum non-finite: one addition per step, read once
            # per epoch (no host-device synchronisation per step).
            self._loss_sum.add_(loss.detach())
            self._blocks.add(
                loss,
                batch_idx=batch_idx,
                samples=self._batch_samples,  # counted by on_train_batch_start
                position=self._samples_seen,
            )

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        samples, self._step_samples = self._step_samples, 0
        step, self._epoch_steps = self._epoch_steps, self._epoch_steps + 1
        running = self._running
        if running is None or samples <= 0:
            return
        if (step // self.noise_window) % self.noise_stride:
            return  # between sampled windows (counted from the epoch start: resumable)
        if self._dataset_size is not None and samples * self.noise_window > self._dataset_size:
            self._running_skipped = True  # a window would span more than the data set
            return
        scale = None
        if self._adaptive:
            p = optim_io.preconditioner(trainer.optimizers[0], self._params)
            scale = None if p is None else p.sqrt()
        running.update(optim_io.flat_gradient(self._params, scale), samples)

    # -- per epoch ---------------------------------------------------------------------------
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self._layout is None or self._running is None:
            return
        if not (self._layout.mechanism is BatchMechanism.ACCUMULATION and self._owns_accumulation):
            # B counts the accumulation factor in force, whoever set it.
            self._layout = replace(self._layout, accumulation=int(trainer.accumulate_grad_batches))
        epoch = trainer.current_epoch
        optimizer = trainer.optimizers[0]
        # The estimate's boundary: synchronise once, so the epoch's time is the device's.
        _synchronize(pl_module.device)
        now = time.perf_counter()
        started = self._epoch_started
        seconds = 0.0 if started is None else max(now - started - self._validation_seconds, 0.0)
        # Every rank plans (and accounts its budget) on rank 0's numbers: identical decisions
        # and schedules by construction.
        self.budget.add_training_seconds(trainer.strategy.broadcast(seconds, src=0))
        plan = self.budget.plan(epochs_done=epoch + 1, epochs_left=self._epochs_left(trainer))
        fresh: EstimateSummary | None = None
        if trainer.strategy.broadcast(plan.run, src=0):
            fresh = self._estimate(pl_module, optimizer, plan.size)
            _synchronize(pl_module.device)
            fresh = replace(fresh, seconds=time.perf_counter() - now)
        fresh = trainer.strategy.broadcast(fresh, src=0)
        if fresh is not None:
            spent = fresh.seconds if math.isfinite(fresh.seconds) else 0.0
            self.budget.record(plan, fresh.work, spent)
        else:
            self.budget.defer()
            if self.verbose:
                rank_zero_info(
                    f"KramersCallback: estimate at epoch {epoch} deferred: {plan.reason}"
                )
        if self._running.update_called:
            running = {k: float(v) for k, v in self._running.compute().items()}
        else:
            running = dict.fromkeys(("noise_trace", "gradient_norm_sq", "noise_scale"), math.nan)
        self._running.reset()
        loss_bad = self._loss_sum is not None and not bool(torch.isfinite(self._loss_sum))
        if self._loss_sum is not None:
            self._loss_sum = torch.zeros_like(self._loss_sum)
        loss_bad = trainer.strategy.reduce_boolean_decision(loss_bad, all=False)
        # Every rank's block means, averaged: one synchronisation per epoch.
        self._dwell.extend(
            self._blocks.read(lambda t: trainer.strategy.reduce(t, reduce_op="mean"))
        )
        if fresh is not None and fresh.ok:
            self._last_good = fresh
        self._decide(trainer, pl_module, optimizer, fresh, running, not loss_bad)

    def _estimate(
        self, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer, size: EstimateSize
    ) -> EstimateSummary:
        """One estimate at the current settings, summarised with its ``status`` and ``work``."""
        assert self._layout is not None and self._loss is not None
        batches = self._probe.batches(size)
        knobs = self._knobs(optimizer)
        params = optim_io.trainable_parameters(pl_module)
        preconditioner = optim_io.preconditioner(optimizer, params) if self._adaptive else None
        epoch = pl_module.current_epoch
        try:
            # Estimation runs in float32 (or the parameters' float64), never under autocast.
            with torch.autocast(device_type=pl_module.device.type, enabled=False):
                est = run_estimate(
                    pl_module,
                    self._loss,
                    batches,
                    lr=knobs.lr,
                    batch_size=knobs.batch_size,
                    momentum=knobs.momentum,
                    dataset_size=sampling_size(self._dataset_size, knobs.batch_size),
                    top_k=size.top_k,
                    max_products=size.max_products,
                    compute_trace=size.compute_trace,
                    max_trace_samples=size.max_trace_samples,
                    max_scan_evals=size.max_scan_evals,
                    # A descending walker has no barrier question: scan once the phase asks.
                    scan_barriers=bool(self.history)
                    and self.history[-1].get("phase", "descending") != "descending",
                    warm_start=self._warm,  # type: ignore[arg-type]
                    preconditioner=preconditioner,
                    seed=self.probe_seed + self._num_estimates,
                    **self.estimate_options,
                )
        except NonFiniteLossError as err:
            rank_zero_warn(
                f"KramersCallback: no estimate at epoch {epoch}: {err}. Keeping the last good "
                "settings; training goes on."
            )
            return EstimateSummary.failed(work=float(sum(batch_size_of(b) for b in batches)))
        self._num_estimates += 1
        self.last_estimate = est
        summary = summarise_estimate(est, num_batches=len(batches), size=size, epoch=epoch)
        if est.finite:
            # Unconverged Ritz vectors are still the best start: a budget-shrunk eigensolver
            # then carries its progress from one estimate to the next.
            self._warm = est
        if not est.converged.get("trace", True) and not self._trace_warned:
            self._trace_warned = True
            warn_rough_trace(epoch, size)
        if self.verbose:
            rank_zero_info(
                estimate_message(est, work=summary.work, epoch=epoch, budget=self.budget)
            )
        return summary

    # -- the decision: observe → signals → policy → actuators → stop rule → metrics ----------
    def _decide(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        optimizer: torch.optim.Optimizer,
        fresh: EstimateSummary | None,
        running: dict[str, float],
        loss_finite: bool,
    ) -> None:
        assert self._layout is not None
        observation = self._observe(trainer, optimizer, fresh, running, loss_finite)
        regime = self._choose(trainer, observation)
        record = regime.record
        layout = apply_decision(
            trainer,
            pl_module,
            optimizer,
            rule=self._rule,
            knobs=observation.knobs,
            decision=record.decision,
            layout=self._layout,
            attribute=self.batch_size_attr,
        )
        if layout is not self._layout:
            self._layout = layout
            self._reload_pending = layout.mechanism is BatchMechanism.LOADER
        stop = self._stop(trainer, observation, regime)
        lr, batch = optim_io.lr_of(optimizer), layout.samples_per_step
        if record.decision is not None and record.decision.changed:
            # A new temperature: the next equilibrium is a new dwell.
            self._dwell.reset()
            self._first_dwell = False
        metrics = epoch_metrics(
            observation,
            regime,
            lr=lr,
            batch_size=batch,
            estimate_work=self.budget.estimate_work,
            overhead=self.budget.overhead,
            estimates_deferred=self.budget.num_deferred,
        )
        publish(trainer, metrics)
        entry = history_entry(
            observation,
            regime,
            step=trainer.global_step,
            estimate="deferred" if fresh is None else fresh.status,
            lr_before=observation.knobs.lr / observation.knobs.damping,
            lr=lr,
            batch_size=batch,
            stop=stop,
            metrics=metrics,
        )
        self.history.append(entry)
        if self.report_at_estimates and fresh is not None and fresh.ok:
            self._log_report(trainer)

    def _knobs(self, optimizer: torch.optim.Optimizer) -> Knobs:
        assert self._layout is not None
        momentum, damping = optim_io.momentum_of(optimizer)
        lr = optim_io.lr_of(optimizer) * damping
        return Knobs(lr, self._layout.samples_per_step, momentum=momentum, damping=damping)

    def _observe(
        self,
        trainer: pl.Trainer,
        optimizer: torch.optim.Optimizer,
        fresh: EstimateSummary | None,
        running: dict[str, float],
        loss_finite: bool,
    ) -> Observation:
        """What this epoch end's decision sees (:func:`kramers_callback.observation.observe`)."""
        monitor = None
        if self.monitor is not None:
            value = trainer.callback_metrics.get(self.monitor)
            monitor = None if value is None else float(value)
            if value is None and not _validates(trainer):
                self._check_monitor(trainer, "training epoch")
        horizon = Horizon.of_run(
            samples_seen=self._samples_seen,
            samples_per_epoch=self._samples_per_epoch,
            epoch=trainer.current_epoch,
            max_epochs=trainer.max_epochs,
            global_step=trainer.global_step,
            max_steps=trainer.max_steps,
        )
        return observe(
            epoch=trainer.current_epoch,
            horizon=horizon,
            knobs=self._knobs(optimizer),
            fresh=fresh,
            running=running,
            last_good=self._last_good,
            dataset_size=self._dataset_size,
            dim=sum(p.numel() for p in self._params),
            loss_finite=loss_finite,
            monitor=monitor,
            loss_blocks=tuple(self._dwell.blocks),
            first_dwell=self._first_dwell,
        )

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        # Validation inside an epoch is not training time: keep it out of the budget's base.
        if self._validation_started is not None:
            self._validation_seconds += time.perf_counter() - self._validation_started
        self._check_monitor(trainer, "validation")

    def _check_monitor(self, trainer: pl.Trainer, where: str) -> None:
        """EarlyStopping's ``strict``: a ``monitor`` that is never logged would leave the stop
        rule's guard silently open, so say so at the first chance, naming what is logged."""
        if self.monitor is None or self.monitor in trainer.callback_metrics:
            return
        if self._monitor_warned:
            return
        available = sorted(trainer.callback_metrics)
        message = (
            f"KramersCallback: monitor={self.monitor!r} is not among the metrics logged by the "
            f"end of this {where} (available: {available}), so the stop rule cannot check it. "
            f"Log it (self.log({self.monitor!r}, ...)) or pass monitor=None"
        )
        if self.strict:
            raise RuntimeError(message + "; strict=False only warns.")
        self._monitor_warned = True
        rank_zero_warn(message + "; until it appears the stop rule runs without it. Warned once.")

    def _choose(self, trainer: pl.Trainer, observation: Observation) -> RegimeDecision:
        """The signals' readings, the phase and the policy's decision, or why the knobs are
        held (:func:`kramers_callback.regime.choose`)."""
        target = None
        if observation.last_good is not None and observation.hold_reason() is None:
            target = self._target_signal.read(observation)
        regime = choose(
            observation,
            rule=self._rule,
            limits=self._limits(trainer, observation.knobs.damping),
            equilibrium=self._equilibrium_signal.read(observation),
            target=target,
            compute_cost=self.compute_cost,
            factor=self._cooling_factor,
        )
        if not observation.loss_finite and not self.check_finite:
            rank_zero_warn(
                f"KramersCallback: non-finite training loss in epoch {observation.epoch}: "
                "decision skipped, keeping the last good settings."
            )
        return regime

    def _stop(self, trainer: pl.Trainer, observation: Observation, regime: RegimeDecision) -> bool:
        """Seed 6.3's rule on the measured pathways, once nothing is left to gain from
        cooling (docs/theory.md, "The equilibrium regime"); any rank stopping stops all."""
        stop = False
        if self.check_finite and not observation.loss_finite:
            self.termination.stop_non_finite(observation.epoch + 1)
            stop = True
        elif observation.hold_reason() is None and observation.loss_finite:
            good = observation.last_good
            stop = self.termination.check(
                rate=good.escape_rate if good is not None else 0.0,
                remaining_steps=observation.clock.remaining,
                epochs_completed=observation.epoch + 1,
                settled=regime.settled,
                monitor_value=observation.monitor,
            )
        stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop and not trainer.should_stop:
            trainer.should_stop = True
            if self.termination.message:
                rank_zero_info(self.termination.message)
        return bool(stop)

    def _limits(self, trainer: pl.Trainer, damping: float) -> ControlLimits:
        assert self._layout is not None
        assert self._initial_lr is not None and self._initial_batch is not None
        layout = self._layout
        cap = loop_cap(
            layout,
            val_check_interval=getattr(trainer, "val_check_interval", None),
            check_val_every_n_epoch=trainer.check_val_every_n_epoch,
            limit_val_batches=trainer.limit_val_batches,
            loader_samples=self._loader_samples,
            drop_last=self._loader_drop_last,
            limit_train_batches=trainer.limit_train_batches,
        )
        return control_limits(
            initial_lr=self._initial_lr,
            initial_batch=self._initial_batch,
            lr_min=self.lr_min,
            lr_max=self.lr_max,
            batch_min=self.batch_min,
            batch_max=self.batch_max,
            max_change=self.max_change,
            samples_per_epoch=self._samples_per_epoch,
            unit=layout.unit,
            samples_per_step=layout.samples_per_step,
            damping=damping,
            pinned=self._batch_pinned,
            cap=cap,
        )

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
        if self.history:
            self._log_report(trainer)
        if self._running_skipped and self.verbose:
            rank_zero_info(
                "KramersCallback: the running noise estimate was skipped at steps whose window "
                "would span more samples than the data set; the last estimate's noise was used."
            )

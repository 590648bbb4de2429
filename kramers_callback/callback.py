"""``KramersCallback``: Kramers estimates drive the annealing, the batch size and the stop rule.

Lightning glue only. The decisions are pure functions elsewhere:
:func:`kramers_callback.controller.decide` and :func:`~kramers_callback.controller.annealing_target`
(SPEC 5), :class:`kramers_callback.stopping.TerminationRule` (seed 000 section 6.3),
:class:`kramers_callback._budget.OverheadBudget` (issue item 5); the measurements are
:func:`kramers_callback.estimate` and :class:`kramers_callback.noise.RunningNoiseEstimator`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, GradientAccumulationScheduler
from pytorch_lightning.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from pytorch_lightning.utilities.parsing import lightning_getattr, lightning_setattr
from pytorch_lightning.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.utils.data import DataLoader

from kramers_callback import _optimizer as optim_io
from kramers_callback._batch_size import (
    BatchLayout,
    BatchMechanism,
    apply_layout,
    data_from_module,
    detect_mechanism,
    max_loader_batch,
)
from kramers_callback._budget import EstimateSize, OverheadBudget, check_budget, estimate_work
from kramers_callback._model_state import _rng_restore, _rng_snapshot
from kramers_callback._probe import LossFn, batch_size_of
from kramers_callback._validation import (
    all_finite,
    check_choice,
    check_in_range,
    check_non_negative,
    check_positive,
    check_positive_int,
)
from kramers_callback.controller import (
    ControlLimits,
    Policy,
    Target,
    annealing_target,
    decide,
)
from kramers_callback.estimate import KramersEstimate, NonFiniteLossError
from kramers_callback.estimate import estimate as run_estimate
from kramers_callback.noise.running import RunningNoiseEstimator
from kramers_callback.noise.temperature import effective_lr, isotropic_temperature
from kramers_callback.stopping import StopReason, TerminationRule

__all__ = ["METRICS", "KramersCallback"]

METRICS = (
    "kramers/temperature",
    "kramers/temperature_target",
    "kramers/critical_temperature",
    "kramers/lr",
    "kramers/batch_size",
    "kramers/lambda_max",
    "kramers/lambda_min",
    "kramers/hessian_trace",
    "kramers/noise_scale",
    "kramers/barrier",
    "kramers/escape_rate",
    "kramers/escape_time",
    "kramers/expected_escapes",
    "kramers/estimate_seconds",
)
"""Logged at every estimate (issue item 4). Between estimates the decision's own metrics
(temperature, target, lr, batch size, noise scale) are logged again."""
_PROGRESS_BAR = ("kramers/temperature", "kramers/escape_rate")
_ESTIMATE_OPTIONS = ("noise", "micro_batch_size", "backend", "kappa", "tol", "trace_tol")
_STATE_VERSION = 1
_RUNNING_STATES = ("noise_trace_sum", "gradient_norm_sq_sum", "num_pairs", "num_dropped")
"""The :class:`RunningNoiseEstimator` sums, checkpointed mid-epoch as plain floats (float64
tensors hold them exactly). Under DDP every rank feeds it the same all-reduced gradient, so
rank 0's sums are every rank's."""
_SHARDED_STRATEGIES = (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy)
_DECISION_SOLVERS = ("top", "min")
"""Iterative routines whose results decisions use (λ_max for the stability clamp, the escape
directions for the barriers); the trace is only logged."""


def _per_sample_loss_method(model: nn.Module, batch: Any) -> Tensor:
    """``model.per_sample_loss(batch)``: a module-level function, so it pickles (ddp_spawn)."""
    return model.per_sample_loss(batch)  # type: ignore[operator]


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _summary(est: KramersEstimate) -> dict[str, Any]:
    """The plain-number part of an estimate that decisions and logs use (broadcastable,
    checkpointable)."""
    barrier = [p for p in est.pathways if p.rate is not None]
    return {
        "temperature": float(est.temperature),
        "noise_trace": float(est.noise_trace),
        "noise_scale": float(est.noise_scale),
        "lambda_max": float(est.lambda_max),
        "lambda_min": float(est.lambda_min),
        "hessian_trace": _nan_if_none(est.hessian_trace),
        "escape_rate": float(est.escape_rate),
        "escape_time": float(est.escape_time),
        "barrier": _nan_if_none(est.barrier),
        "lr_eff": float(est.lr),
        "batch_size": int(est.batch_size),
        "dim": int(est.dim),
        "finite": bool(est.finite),
        "converged": {k: bool(v) for k, v in est.converged.items()},
        "num_hvp": int(est.num_hvp),
        "num_forward": int(est.num_forward),
        "num_samples": int(est.num_samples),
        "seconds": float(est.seconds),
        "pathway_barriers": [float(p.barrier) for p in barrier],  # type: ignore[arg-type]
        "pathway_curvatures": [float(p.curvature) for p in barrier],
        "pathway_barrier_curvatures": [float(p.barrier_curvature) for p in barrier],  # type: ignore[arg-type]
        "pathway_temperatures": [float(p.temperature) for p in barrier],
    }


def _publish(trainer: pl.Trainer, metrics: dict[str, float]) -> None:
    """Put ``metrics`` in ``trainer.callback_metrics`` (also with ``logger=False``), the
    progress bar (:data:`_PROGRESS_BAR`) and every logger, at the current step.

    ``LightningModule.log`` would do the same through its result collection, at about a
    millisecond per value and epoch, which is several percent of a small model's epoch; the
    values are already identical on every rank (decided from rank 0's estimate), so nothing
    needs reducing. Cost: O(number of metrics).
    """
    trainer.callback_metrics.update(
        {name: torch.tensor(value, dtype=torch.float32) for name, value in metrics.items()}
    )
    trainer.progress_bar_metrics.update({k: metrics[k] for k in _PROGRESS_BAR if k in metrics})
    for logger in trainer.loggers:  # loggers write on rank 0 only
        logger.log_metrics({**metrics, "epoch": trainer.current_epoch}, step=trainer.global_step)
        logger.save()


class _WarmStart:
    """The two fields of a :class:`KramersEstimate` that a warm start reads, restorable from a
    checkpoint without the rest."""

    def __init__(self, eigenvectors: Tensor | None, min_eigenvector: Tensor | None) -> None:
        self.eigenvectors = eigenvectors
        self.min_eigenvector = min_eigenvector


class KramersCallback(Callback):
    r"""Anneal SGD's temperature by the Kramers escape rate; grow the batch; stop when done.

    At the end of each training epoch the callback measures, on a fixed seeded probe set drawn
    from the training data, the batch-noise temperature ``T``, the Hessian's extreme
    eigenvalues and the barriers along the escape directions (:func:`kramers_callback.estimate`,
    warm-started from the previous estimate, in float32 outside autocast, model in eval mode
    and left exactly as found). Between estimates (when the overhead budget spaces them) a
    running two-batch noise estimate from the training gradients keeps ``T`` current. Then:

    .. math::

        T_c:\ \tau\sum_i A_i e^{-\Delta L_i/(m T_{v,i})} = 1,\ T_c = mT;\qquad
        T^*(t) = T_c\,\frac{1 + \ln(\tau/t)}{\ln(\tau A)};\qquad
        T \propto \frac{\eta}{B} \Rightarrow \text{change by } \frac{T^*}{T}

    (SPEC 5; seed 000 sections 5.1, 5.2, 6.2), applied by the policy within the clamps: LR
    bounds, ``η < 2(1+β)/λ_max``, batch bounds and multiples, ``max_change`` per decision.
    The target itself depends on the knobs (a larger ``B`` leaves fewer steps ``τ``, a larger
    ``η`` makes more attempts ``A``), so each move solves ``T(η, B) = T*(η, B)`` along its knob
    (:func:`~kramers_callback.controller.decide`); solving against the target of the current
    settings instead makes batch decisions overshoot and oscillate.
    Training stops when ``k_total·R·c < 1`` (seed 6.3) held for ``patience`` estimates.

    **Budget and time.** ``τ`` comes from the Trainer's ``max_epochs`` (as samples:
    ``max_epochs × samples per epoch``) or ``max_steps``, whichever ends first. It is counted
    in samples and expressed in steps of the *current* batch size ``B``: ``t = samples seen / B``
    and ``R = samples left / B``, so the remaining steps stay right when ``B`` changes.

    **Batch size.** ``B = loader batch × accumulate_grad_batches × world size``. If the train
    data comes from the LightningModule's or DataModule's ``train_dataloader()`` and they have
    an attribute ``batch_size_attr`` that it reads, the callback sets it and the loader is
    rebuilt at the next epoch start (``B`` in steps of ``batch_multiple × accumulation ×
    world``); if the rebuilt loader does not have the batch size set, it warns once and goes
    on as below. Otherwise (also for a DataLoader passed to ``Trainer.fit``, which Lightning
    cannot rebuild) it sets ``trainer.accumulate_grad_batches`` at epoch boundaries (steps of
    ``loader batch × world``), which needs nothing from the user. With ``policy="observe"``
    or ``"lr"`` it never writes ``accumulate_grad_batches`` and counts the factor in force. A
    ``GradientAccumulationScheduler`` is refused at setup where ``"batch"`` or ``"hybrid"``
    would need accumulation; beside the loader mechanism its factor multiplies the loader
    batch. With an integer ``val_check_interval`` (validation per epoch) the loader batch
    stays small enough for an epoch to hold that many batches, as Lightning requires.

    **Learning rate.** Changes scale every parameter group of the one optimizer by the same
    factor. With ``policy="lr"`` or ``"hybrid"`` the callback owns the learning rate, so a
    Lightning LR scheduler is refused at setup (use ``policy="batch"`` or ``"observe"`` to keep
    one, or :class:`kramers_callback.KramersAnnealingLR` without this callback).

    **Optimizers.** SGD (momentum: ``η_eff = η(1−dampening)/(1−β)``) exactly; the Adam
    family through SPEC 1's diagonal-preconditioner approximation, with one warning.

    **Overhead.** Estimates are spaced and sized (:class:`kramers_callback._budget.OverheadBudget`)
    so that their counted work (Hessian-vector products and forward passes, in sample-passes)
    stays within ``overhead_budget`` of the counted training work; deterministic, so two runs
    from one seed decide alike. Deferred estimates are logged with the reason.

    **Metrics** (:data:`METRICS`, written at each epoch end into ``trainer.callback_metrics``,
    which holds them even with ``logger=False``, into every logger and, for temperature and
    escape rate, the progress bar): the estimate's numbers at an estimate; between
    estimates the decision's own (temperature, target, critical temperature, lr, batch size,
    noise scale). ``kramers/lr`` and ``kramers/batch_size`` are the settings after the
    decision. Also ``kramers/converged`` (1 when the eigensolvers that decisions use
    converged), ``kramers/trace_converged`` (the Hutchinson trace, which no decision uses),
    ``kramers/estimate_work``, ``kramers/overhead`` and ``kramers/estimates_deferred``. Under
    DDP every rank decides from rank 0's estimate (broadcast) and the running noise estimate is
    a synced torchmetrics ``Metric``.

    Assumptions: one optimizer, automatic optimization, a map-style train dataset read by one
    DataLoader with a ``batch_size``, parameters replicated on every rank (no FSDP/DeepSpeed).

    **Checkpoints** (``state_dict``, loadable with ``torch.load(weights_only=True)``) hold the
    probe indices, the batch layout, the budget, the stop rule, the history, the warm-start
    eigenvectors and the state of the epoch in progress (sample counts, loss sum, running noise
    sums), so a resume decides as the uninterrupted run would, also from a checkpoint written
    inside an epoch (e.g. by a ModelCheckpoint after a ``val_check_interval`` validation).

    Cost: per optimizer step ``O(1)``, plus ``O(d)`` on the steps of a sampled noise window;
    per estimate see :func:`kramers_callback.estimate` (kept within ``overhead_budget`` of the
    training work); memory: the probe samples and one set of warm-start eigenvectors
    (``(top_k + 1)·d`` floats, also saved in checkpoints so a resume decides alike).

    Args:
        policy: ``"observe"``, ``"lr"``, ``"batch"`` or ``"hybrid"`` (:class:`Policy`).
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
            ``noise``, ``micro_batch_size``, ``backend``, ``kappa``, ``tol``, ``trace_tol``.
        overhead_budget: estimation work as a fraction of training work (``inf``: every
            epoch at full size).
        compute_cost: ``c ≥ 0`` of the stop rule (``0`` never stops).
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
        patience: int = 3,
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
        verbose: bool = True,
    ) -> None:
        super().__init__()
        self.policy = Policy(check_choice("policy", policy, [p.value for p in Policy]))
        if loss_fn is not None and not callable(loss_fn):
            raise ValueError(f"loss_fn must be callable as loss_fn(model, batch), got {loss_fn!r}")
        self.loss_fn = loss_fn
        self.probe_size = check_positive_int("probe_size", probe_size, minimum=2)
        self.probe_batch_size = check_positive_int("probe_batch_size", probe_batch_size)
        self.probe_seed = check_positive_int("probe_seed", probe_seed, minimum=0)
        self.full_size = EstimateSize(
            probe_size=self.probe_size,
            probe_batch_size=min(self.probe_batch_size, self.probe_size),
            top_k=check_positive_int("top_k", top_k),
            max_products=check_positive_int("max_products", max_products, minimum=2),
            compute_trace=bool(compute_trace),
            max_trace_samples=check_positive_int("max_trace_samples", max_trace_samples, minimum=2),
            max_scan_evals=check_positive_int("max_scan_evals", max_scan_evals, minimum=3),
        )
        options = dict(estimate_options or {})
        unknown = sorted(set(options) - set(_ESTIMATE_OPTIONS))
        if unknown:
            raise ValueError(
                f"estimate_options must have keys among {list(_ESTIMATE_OPTIONS)}, got {unknown}"
            )
        self.estimate_options = options
        self.overhead_budget = check_budget("overhead_budget", overhead_budget)
        self.compute_cost = check_non_negative("compute_cost", compute_cost)
        self.min_epochs = check_positive_int("min_epochs", min_epochs, minimum=0)
        self.patience = check_positive_int("patience", patience)
        if monitor is not None and not isinstance(monitor, str):
            raise ValueError(f"monitor must be a metric name (str) or None, got {monitor!r}")
        self.monitor = monitor
        self.min_delta = check_non_negative("min_delta", min_delta)
        self.mode = check_choice("mode", mode, ("min", "max"))
        self.lr_min = None if lr_min is None else check_positive("lr_min", lr_min)
        self.lr_max = None if lr_max is None else check_positive("lr_max", lr_max)
        if self.lr_min is not None and self.lr_max is not None and self.lr_max < self.lr_min:
            raise ValueError(f"lr_max must be ≥ lr_min = {self.lr_min!r}, got {self.lr_max!r}")
        self.batch_min = None if batch_min is None else check_positive_int("batch_min", batch_min)
        self.batch_max = None if batch_max is None else check_positive_int("batch_max", batch_max)
        if (
            self.batch_min is not None
            and self.batch_max is not None
            and self.batch_max < self.batch_min
        ):
            raise ValueError(
                f"batch_max must be ≥ batch_min = {self.batch_min!r}, got {self.batch_max!r}"
            )
        self.batch_multiple = check_positive_int("batch_multiple", batch_multiple)
        self.max_change = check_in_range(
            "max_change", max_change, 1.0, math.inf, low_open=True, high_open=True
        )
        if not isinstance(batch_size_attr, str) or not batch_size_attr.isidentifier():
            raise ValueError(
                f"batch_size_attr must be an attribute name (identifier), got {batch_size_attr!r}"
            )
        self.batch_size_attr = batch_size_attr
        self.noise_window = check_positive_int("noise_window", noise_window, minimum=2)
        self.noise_stride = check_positive_int("noise_stride", noise_stride)
        self.verbose = bool(verbose)

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

    # -- state -------------------------------------------------------------------------------
    def _reset_run_state(self) -> None:
        self._loss: LossFn | None = None
        self._probe_indices: list[int] | None = None
        self._probe_items: list[Any] | None = None
        self._probe_cache: dict[tuple[int, int], list[Any]] = {}
        self._mechanism: BatchMechanism | None = None
        self._layout: BatchLayout | None = None
        self._restored_layout: dict[str, Any] | None = None
        self._initial_lr: float | None = None
        self._initial_batch: int | None = None
        self._dataset_size: int | None = None
        self._epoch_samples = 0
        self._samples_per_epoch = 0
        self._samples_seen = 0
        self._step_samples = 0
        self._num_estimates = 0
        self._last_good: dict[str, Any] | None = None
        self._warm: _WarmStart | KramersEstimate | None = None
        self._adaptive = False
        self._adaptive_warned = False
        self._loss_sum: Tensor | None = None
        self._params: list[nn.Parameter] = []
        self._epoch_steps = 0
        self._world_size = 1
        self._running: RunningNoiseEstimator | None = None
        self._running_skipped = False
        self._trace_warned = False
        self._restored_epoch: dict[str, Any] | None = None
        self._external_accumulation = False
        self._reload_pending = False
        self._batch_pinned = False
        self._loader_samples: int | None = None
        self._loader_drop_last = False

    @property
    def stop_reason(self) -> StopReason:
        return self.termination.reason

    @property
    def state_key(self) -> str:
        # Lightning reads this at every hook call: build it once.
        key = self.__dict__.get("_state_key")
        if key is None:
            key = self._generate_state_key(policy=self.policy.value, probe_seed=self.probe_seed)
            self.__dict__["_state_key"] = key
        return key

    def state_dict(self) -> dict[str, Any]:
        """Plain Python values and tensors only, so it loads under ``weights_only=True``."""
        layout = self._layout
        warm = self._warm
        return {
            "version": _STATE_VERSION,
            "probe_indices": list(self._probe_indices) if self._probe_indices else None,
            "initial_lr": self._initial_lr,
            "initial_batch": self._initial_batch,
            "layout": None
            if layout is None
            else {
                "mechanism": layout.mechanism.value,
                "loader_batch": layout.loader_batch,
                "accumulation": layout.accumulation,
                "world_size": layout.world_size,
            },
            "samples_seen": self._samples_seen,
            "epoch": self._epoch_state(),
            "batch_pinned": self._batch_pinned,
            "num_estimates": self._num_estimates,
            "last_good": self._last_good,
            "warm_eigenvectors": None if warm is None else warm.eigenvectors,
            "warm_min_eigenvector": None if warm is None else warm.min_eigenvector,
            "adaptive_warned": self._adaptive_warned,
            "budget": self.budget.state_dict(),
            "termination": self.termination.state_dict(),
            "history": [dict(h) for h in self.history],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = state_dict
        indices = state.get("probe_indices")
        self._probe_indices = None if indices is None else [int(i) for i in indices]
        self._initial_lr = state.get("initial_lr")
        self._initial_batch = state.get("initial_batch")
        self._restored_layout = state.get("layout")
        self._samples_seen = int(state.get("samples_seen", 0))
        self._restored_epoch = state.get("epoch")
        self._batch_pinned = bool(state.get("batch_pinned", False))
        self._num_estimates = int(state.get("num_estimates", 0))
        self._last_good = state.get("last_good")
        vectors, minimum = state.get("warm_eigenvectors"), state.get("warm_min_eigenvector")
        self._warm = None if vectors is None else _WarmStart(vectors, minimum)
        self._adaptive_warned = bool(state.get("adaptive_warned", False))
        self.budget.load_state_dict(state.get("budget", {}))
        self.termination.load_state_dict(state.get("termination", {}))
        self.history = [dict(h) for h in state.get("history", [])]

    def _epoch_state(self) -> dict[str, Any] | None:
        """The state of the epoch in progress, which ``on_train_epoch_start`` sets up and which
        Lightning does not set up again when it resumes from a checkpoint written inside an
        epoch (mid-epoch, or at its end before ``on_train_epoch_end``: a ModelCheckpoint
        saving after validation). Plain Python numbers only."""
        running = self._running
        if running is None or self._loss_sum is None:
            return self._restored_epoch  # not started yet: pass a restored state through
        return {
            "samples_per_epoch": self._samples_per_epoch,
            "epoch_samples": self._epoch_samples,
            "epoch_steps": self._epoch_steps,
            "step_samples": self._step_samples,
            "loss_sum": float(self._loss_sum),
            "running": {name: float(getattr(running, name)) for name in _RUNNING_STATES},
        }

    def _restore_epoch_state(self) -> None:
        """Put back a checkpoint's epoch state (once; ``on_train_epoch_start`` overwrites it
        when Lightning starts a new epoch rather than finishing the checkpoint's)."""
        state, self._restored_epoch = self._restored_epoch, None
        if not state or self._running is None or self._loss_sum is None:
            return
        self._samples_per_epoch = int(state.get("samples_per_epoch", self._samples_per_epoch))
        self._epoch_samples = int(state.get("epoch_samples", 0))
        self._epoch_steps = int(state.get("epoch_steps", 0))
        self._step_samples = int(state.get("step_samples", 0))
        self._loss_sum.fill_(float(state.get("loss_sum", 0.0)))
        running = state.get("running") or {}
        device = self._running.device
        self._running.load_state_dict(
            {
                name: torch.tensor(running.get(name, 0.0), dtype=torch.float64, device=device)
                for name in _RUNNING_STATES
            }
        )

    # -- setup checks ------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if isinstance(trainer.strategy, _SHARDED_STRATEGIES):
            raise MisconfigurationException(
                f"KramersCallback does not support the {type(trainer.strategy).__name__}: its "
                "estimates need every parameter on every rank (FSDP and DeepSpeed shard them). "
                "Use strategy='ddp' (or 'ddp_spawn', or one device)."
            )
        if not pl_module.automatic_optimization:
            raise MisconfigurationException(
                "KramersCallback does not support manual optimization: it reads the gradient "
                "at each optimizer step and sets the learning rate and the batch size of "
                "Lightning's loop. Use automatic optimization, or remove the callback."
            )
        self._external_accumulation = any(
            isinstance(c, GradientAccumulationScheduler) for c in trainer.callbacks
        )
        mechanism = detect_mechanism(
            pl_module, self.batch_size_attr, from_module=data_from_module(trainer)
        )
        if (
            self._external_accumulation
            and self._changes_batch
            and mechanism is BatchMechanism.ACCUMULATION
        ):
            raise MisconfigurationException(
                f"KramersCallback(policy={self.policy.value!r}) would change the batch size "
                "through trainer.accumulate_grad_batches (no `"
                f"{self.batch_size_attr}` attribute sizes a train_dataloader() of the "
                "LightningModule or DataModule), which a GradientAccumulationScheduler also "
                "sets. Remove the GradientAccumulationScheduler, or use policy='observe' (or "
                f"'lr'), or give the LightningModule or DataModule a `{self.batch_size_attr}` "
                "attribute that its train_dataloader() reads (and pass the data through it, not "
                "as Trainer.fit(train_dataloaders=...))."
            )
        if self.loss_fn is not None:
            self._loss = self.loss_fn
        elif callable(getattr(pl_module, "per_sample_loss", None)):
            self._loss = _per_sample_loss_method
        else:
            raise MisconfigurationException(
                "KramersCallback needs per-sample losses. Add a method "
                "`per_sample_loss(self, batch) -> Tensor[n]` to your LightningModule, or pass "
                "KramersCallback(loss_fn=lambda model, batch: ...) returning one loss per sample."
            )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizers = trainer.optimizers
        if len(optimizers) != 1:
            raise MisconfigurationException(
                f"KramersCallback supports exactly one optimizer, got {len(optimizers)}. Return "
                "one optimizer (with parameter groups if needed) from configure_optimizers."
            )
        optimizer = optimizers[0]
        kind = optim_io.classify(optimizer)
        if kind is None:
            raise MisconfigurationException(
                f"KramersCallback supports torch.optim.SGD and the Adam family (Adam, AdamW, "
                f"NAdam, RAdam), got {type(optimizer).__name__}."
            )
        self._adaptive = kind == optim_io.ADAPTIVE
        if self._adaptive and not self._adaptive_warned:
            rank_zero_warn(
                f"KramersCallback: {type(optimizer).__name__} is outside the seed's SGD theory; "
                "estimates use the diagonal-preconditioner approximation P = 1/(sqrt(v̂)+ε) "
                "from the optimizer's exp_avg_sq (docs/theory.md)."
            )
            self._adaptive_warned = True
        if self.policy in (Policy.LR, Policy.HYBRID) and trainer.lr_scheduler_configs:
            raise MisconfigurationException(
                f"KramersCallback(policy={self.policy.value!r}) sets the learning rate itself, "
                "so it cannot run with an LR scheduler. Remove the scheduler from "
                "configure_optimizers, or use policy='batch' or 'observe' to keep it."
            )
        if trainer.max_steps == -1 and trainer.max_epochs in (None, -1):
            raise MisconfigurationException(
                "KramersCallback needs a finite training budget τ: set Trainer(max_epochs=...) "
                "or Trainer(max_steps=...)."
            )
        self._mechanism = detect_mechanism(
            pl_module, self.batch_size_attr, from_module=data_from_module(trainer)
        )
        restored = self._restored_layout
        if restored is not None:
            mechanism = BatchMechanism(restored["mechanism"])
            if mechanism is BatchMechanism.LOADER and self._mechanism is BatchMechanism.LOADER:
                if self._changes_batch:  # observe and lr never changed it
                    apply_layout(
                        trainer, pl_module, self._layout_from(restored), self.batch_size_attr
                    )
            else:
                # An accumulation run stays one (also after falling back from the loader).
                self._mechanism = BatchMechanism.ACCUMULATION
                if self._owns_accumulation:
                    trainer.accumulate_grad_batches = int(restored["accumulation"])

    @property
    def _changes_batch(self) -> bool:
        return self.policy in (Policy.BATCH, Policy.HYBRID)

    @property
    def _owns_accumulation(self) -> bool:
        """Whether the callback sets ``trainer.accumulate_grad_batches``; otherwise it only
        reads the factor in force (``"observe"`` and ``"lr"`` never write it; a
        GradientAccumulationScheduler owns it, and is refused at setup where the callback
        would need it)."""
        return self._changes_batch and not self._external_accumulation

    def _layout_from(self, state: dict[str, Any]) -> BatchLayout:
        return BatchLayout(
            mechanism=BatchMechanism(state["mechanism"]),
            loader_batch=int(state["loader_batch"]),
            accumulation=int(state["accumulation"]),
            world_size=int(state["world_size"]),
            multiple=self.batch_multiple,
        )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loader = trainer.train_dataloader
        if not isinstance(loader, DataLoader):
            raise MisconfigurationException(
                "KramersCallback needs one torch DataLoader as the train dataloader, got "
                f"{type(loader).__name__}."
            )
        dataset = loader.dataset
        if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise MisconfigurationException(
                "KramersCallback draws its probe set by index: the train dataset must be "
                f"map-style (with __len__ and __getitem__), got {type(dataset).__name__}."
            )
        if loader.batch_size is None:
            raise MisconfigurationException(
                "KramersCallback needs the train DataLoader's batch_size (got None: a custom "
                "batch_sampler). Pass batch_size to the DataLoader."
            )
        self._dataset_size = len(dataset)  # type: ignore[arg-type]
        self._build_probe(loader)
        world = self._world_size = trainer.world_size
        self._note_loader(loader)
        mechanism = self._mechanism or BatchMechanism.ACCUMULATION
        if mechanism is BatchMechanism.LOADER:
            attr = lightning_getattr(pl_module, self.batch_size_attr)
            if attr != loader.batch_size:
                if self._external_accumulation and self._changes_batch:
                    raise MisconfigurationException(
                        f"KramersCallback: `{self.batch_size_attr}` = {attr!r} does not size "
                        f"the train dataloader (batch_size={loader.batch_size}), and a "
                        "GradientAccumulationScheduler owns trainer.accumulate_grad_batches, so "
                        "the callback cannot change the batch size. Make train_dataloader() "
                        f"read `{self.batch_size_attr}`, or remove the "
                        "GradientAccumulationScheduler, or use policy='observe' or 'lr'."
                    )
                rank_zero_warn(
                    f"KramersCallback: `{self.batch_size_attr}` = {attr!r} does not size the "
                    f"train dataloader (batch_size={loader.batch_size}); changing the batch "
                    "size through trainer.accumulate_grad_batches instead."
                )
                mechanism = BatchMechanism.ACCUMULATION
        self._mechanism = mechanism
        self._layout = BatchLayout(
            mechanism=mechanism,
            loader_batch=int(loader.batch_size),
            accumulation=int(trainer.accumulate_grad_batches),
            world_size=world,
            multiple=self.batch_multiple,
        )
        optimizer = trainer.optimizers[0]
        if self._initial_lr is None:
            self._initial_lr = optim_io.lr_of(optimizer)
        if self._initial_batch is None:
            self._initial_batch = self._layout.samples_per_step
        self._running = RunningNoiseEstimator(
            window=self.noise_window, dataset_size=self._dataset_size
        ).to(pl_module.device)
        self._loss_sum = torch.zeros((), dtype=torch.float32, device=pl_module.device)
        self._restore_epoch_state()
        self._params = optim_io.trainable_parameters(pl_module)
        if isinstance(self._warm, _WarmStart):  # restored from a checkpoint, maybe on the CPU
            self._warm = _WarmStart(
                *(
                    None if v is None else v.to(pl_module.device)
                    for v in (self._warm.eigenvectors, self._warm.min_eigenvector)
                )
            )

    def _note_loader(self, loader: DataLoader) -> None:
        """One rank's samples per epoch and ``drop_last``: what Lightning's batch count (and
        so the largest loader batch an integer ``val_check_interval`` allows) depends on."""
        sampler = loader.sampler
        self._loader_samples = len(sampler) if hasattr(sampler, "__len__") else None  # type: ignore[arg-type]
        self._loader_drop_last = bool(loader.drop_last)

    def _build_probe(self, loader: DataLoader) -> None:
        """Draw (once per run, kept in the state) and collate the probe samples."""
        dataset = loader.dataset
        n = len(dataset)  # type: ignore[arg-type]
        if self._probe_indices is None:
            generator = torch.Generator().manual_seed(self.probe_seed)
            order = torch.randperm(n, generator=generator)[: min(self.probe_size, n)]
            self._probe_indices = [int(i) for i in order]
        # A dataset may draw random augmentations: fix them once, and leave the global RNG as
        # it was (observe must be bit-identical to no callback).
        rng = _rng_snapshot()
        try:
            self._probe_items = [dataset[i] for i in self._probe_indices]
        finally:
            _rng_restore(rng)
        self._collate = loader.collate_fn
        self._probe_cache = {}

    def _probe_batches(self, size: EstimateSize) -> list[Any]:
        assert self._probe_items is not None
        n = min(size.probe_size, len(self._probe_items))
        key = (n, size.probe_batch_size)
        if key not in self._probe_cache:
            items = self._probe_items[:n]
            self._probe_cache[key] = [
                self._collate(items[i : i + size.probe_batch_size])
                for i in range(0, n, size.probe_batch_size)
            ]
        return self._probe_cache[key]

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
                    self._loader_ignored(trainer, pl_module, actual)
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
        self._epoch_samples = 0
        self._step_samples = 0
        self._epoch_steps = 0

    def _loader_ignored(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, actual: int
    ) -> None:
        """The rebuilt train dataloader did not take the loader batch the callback set: warn,
        and change ``B`` through gradient accumulation from now on (or, where a
        GradientAccumulationScheduler owns that, keep ``B`` where it is)."""
        assert self._layout is not None
        intended = self._layout
        # The attribute sizes nothing: put back the value in force, so it does not mislead.
        lightning_setattr(pl_module, self.batch_size_attr, actual)
        world = intended.world_size
        if not self._owns_accumulation:
            self._batch_pinned = True
            self._layout = replace(intended, loader_batch=actual)
            then = (
                "a GradientAccumulationScheduler owns trainer.accumulate_grad_batches, so the "
                f"batch size stays at B = {self._layout.samples_per_step} from now on"
            )
        else:
            accumulation = max(1, round(intended.samples_per_step / (actual * world)))
            self._mechanism = BatchMechanism.ACCUMULATION
            self._layout = BatchLayout(
                BatchMechanism.ACCUMULATION, actual, accumulation, world, intended.multiple
            )
            trainer.accumulate_grad_batches = accumulation
            then = (
                "changing the batch size through trainer.accumulate_grad_batches from now on "
                f"(B = {self._layout.samples_per_step} instead of {intended.samples_per_step})"
            )
        rank_zero_warn(
            f"KramersCallback: the train dataloader was rebuilt with batch_size={actual}, not "
            f"the {intended.loader_batch} set through `{self.batch_size_attr}`: "
            f"train_dataloader() does not read it; {then}."
        )

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        samples = batch_size_of(batch) * self._world_size
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
        record: dict[str, Any] = {"epoch": epoch, "step": trainer.global_step}

        plan = self.budget.plan(epoch_samples=max(self._epoch_samples, 1))
        fresh: dict[str, Any] | None = None
        if plan.run:
            fresh = self._estimate(pl_module, optimizer, plan.size)
        # Every rank decides (and accounts its budget) from rank 0's numbers: identical
        # decisions and schedules by construction.
        fresh = trainer.strategy.broadcast(fresh, src=0)
        if fresh is not None:
            fresh = dict(fresh)
            self.budget.record(plan, fresh.pop("work"))
            record["estimate"] = fresh["status"]
        else:
            self.budget.defer()
            record["estimate"] = "deferred"
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

        if fresh is not None and fresh["status"] == "ok":
            self._last_good = fresh
        self._decide(trainer, pl_module, optimizer, record, fresh, running, loss_bad)
        self.history.append(record)

    def _estimate(
        self, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer, size: EstimateSize
    ) -> dict[str, Any]:
        """One estimate at the current settings; a summary dict with ``status`` and ``work``."""
        assert self._layout is not None and self._loss is not None
        batches = self._probe_batches(size)
        momentum, damping = optim_io.momentum_of(optimizer)
        params = optim_io.trainable_parameters(pl_module)
        preconditioner = optim_io.preconditioner(optimizer, params) if self._adaptive else None
        batch = self._layout.samples_per_step
        dataset_size = self._dataset_size if self._dataset_size and self._dataset_size > 1 else None
        if dataset_size is not None and batch > dataset_size:
            dataset_size = None
        epoch = pl_module.current_epoch
        device_type = pl_module.device.type
        try:
            # Estimation runs in float32 (or the parameters' float64), never under autocast.
            with torch.autocast(device_type=device_type, enabled=False):
                est = run_estimate(
                    pl_module,
                    self._loss,
                    batches,
                    lr=optim_io.lr_of(optimizer) * damping,
                    batch_size=batch,
                    momentum=momentum,
                    dataset_size=dataset_size,
                    top_k=size.top_k,
                    max_products=size.max_products,
                    compute_trace=size.compute_trace,
                    max_trace_samples=size.max_trace_samples,
                    max_scan_evals=size.max_scan_evals,
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
            n = sum(batch_size_of(b) for b in batches)
            return {"status": "non_finite", "work": float(n), "seconds": math.nan}
        self._num_estimates += 1
        self.last_estimate = est
        summary = _summary(est)
        summary["work"] = estimate_work(
            num_hvp=est.num_hvp,
            num_forward=est.num_forward,
            num_samples=est.num_samples,
            num_batches=len(batches),
        )
        summary["probe_size"] = est.num_samples
        if not est.finite:
            summary["status"] = "non_finite"
            rank_zero_warn(
                f"KramersCallback: the estimate at epoch {epoch} is not finite "
                f"(T={est.temperature}, λ_max={est.lambda_max}, rate={est.escape_rate}); not "
                "acted on, keeping the last good settings."
            )
        elif failed := sorted(k for k in _DECISION_SOLVERS if not est.converged.get(k, True)):
            summary["status"] = "not_converged"
            rank_zero_warn(
                f"KramersCallback: the estimate at epoch {epoch} did not converge "
                f"({', '.join(failed)} eigensolver after {est.num_hvp} Hessian-vector products, "
                f"max_products={size.max_products}); not acted on."
            )
        else:
            summary["status"] = "ok"
            self._warm = est
        if not est.converged.get("trace", True) and not self._trace_warned:
            self._trace_warned = True
            rank_zero_warn(
                f"KramersCallback: the Hutchinson trace at epoch {epoch} did not converge within "
                f"{size.max_trace_samples} samples; kramers/hessian_trace is rough (no decision "
                "uses it; kramers/trace_converged flags each estimate). Warned once."
            )
        if self.verbose:
            rank_zero_info(
                f"KramersCallback: estimate at epoch {epoch}: {est.num_hvp} Hessian-vector "
                f"products, {est.num_forward} probe forward passes on {est.num_samples} samples "
                f"= {summary['work']:.3g} sample-passes ({est.seconds:.2f} s); "
                f"counted overhead so far {self._overhead_after(summary['work']):.1%}"
            )
        return summary

    def _overhead_after(self, work: float) -> float:
        training = self.budget.training_work
        return (self.budget.estimate_work + work) / training if training > 0 else math.nan

    def _horizon(self, trainer: pl.Trainer, batch: int) -> tuple[float, float, float]:
        """``(t, τ, R)`` in steps of a batch size ``B``, from counted samples.

        ``max_epochs`` fixes the samples left (``R = samples left / B``); ``max_steps`` the
        steps left; the tighter one wins. ``t = samples seen / B``, ``τ = t + R``.
        """
        remaining = math.inf
        max_epochs = trainer.max_epochs
        if max_epochs is not None and max_epochs >= 0:
            done_epochs = trainer.current_epoch + 1
            remaining = (max_epochs - done_epochs) * self._samples_per_epoch / batch
        if trainer.max_steps is not None and trainer.max_steps >= 0:
            remaining = min(remaining, float(trainer.max_steps - trainer.global_step))
        remaining = max(remaining, 0.0)
        step = max(self._samples_seen / batch, 1.0)
        return step, step + remaining, remaining

    def _target_fn(
        self,
        trainer: pl.Trainer,
        good: dict[str, Any],
        *,
        noise_trace: float,
        momentum: float,
        dataset_size: int | None,
    ) -> Callable[[float, int], Target | None]:
        """The annealing target as a function of the knobs ``(η, B)`` (``None``: undefined).

        The last good estimate's pathways are carried to ``(η, B)``: every ``T_v`` scales
        with the isotropic ``T`` (SPEC 2), every attempt frequency with ``η_eff`` (SPEC 3),
        and ``t``, ``τ`` are re-expressed in steps of ``B``.
        """

        def target(lr: float, batch: int) -> Target | None:
            lr_eff = effective_lr(lr=lr, momentum=momentum)
            temperature = isotropic_temperature(
                lr=lr_eff,
                noise_trace=noise_trace,
                dim=good["dim"],
                batch_size=batch,
                dataset_size=dataset_size if dataset_size and batch <= dataset_size else None,
            )
            if not (temperature > 0 and good["temperature"] > 0):
                return None
            scale = temperature / good["temperature"]
            step, horizon, _ = self._horizon(trainer, batch)
            try:
                return annealing_target(
                    barriers=good["pathway_barriers"],
                    curvatures=good["pathway_curvatures"],
                    barrier_curvatures=good["pathway_barrier_curvatures"],
                    directional_temperatures=[t * scale for t in good["pathway_temperatures"]],
                    temperature=temperature,
                    lr=lr_eff,
                    step=step,
                    horizon=max(horizon, 1.0),
                )
            except ValueError:
                return None

        return target

    def _decide(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        optimizer: torch.optim.Optimizer,
        record: dict[str, Any],
        fresh: dict[str, Any] | None,
        running: dict[str, float],
        loss_bad: bool,
    ) -> None:
        assert self._layout is not None and self._initial_lr is not None
        layout = self._layout
        batch = layout.samples_per_step
        momentum, damping = optim_io.momentum_of(optimizer)
        lr = optim_io.lr_of(optimizer) * damping
        lr_eff = effective_lr(lr=lr, momentum=momentum)
        _, horizon, remaining = self._horizon(trainer, batch)
        good = self._last_good
        size = self._dataset_size
        dataset_size = size if size is not None and 1 < size and batch <= size else None

        # The temperature now: a fresh estimate, else the running two-batch noise, else the
        # last good estimate rescaled to the current η and B.
        if fresh is not None and fresh["status"] == "ok":
            noise_trace, source = fresh["noise_trace"], "estimate"
        elif all_finite(running["noise_trace"]) and running["noise_trace"] > 0:
            noise_trace, source = running["noise_trace"], "running"
        elif good is not None:
            noise_trace, source = good["noise_trace"], "last_estimate"
        else:
            noise_trace, source = math.nan, "none"
        temperature = math.nan
        if all_finite(noise_trace) and noise_trace >= 0:
            temperature = isotropic_temperature(
                lr=lr_eff,
                noise_trace=noise_trace,
                dim=sum(p.numel() for p in self._params),
                batch_size=batch,
                dataset_size=dataset_size,
            )
        noise_scale = fresh["noise_scale"] if fresh is not None and "noise_scale" in fresh else (
            running["noise_scale"]
        )
        record.update(temperature=temperature, noise_source=source, lr_before=lr / damping)
        record.update(batch_before=batch, remaining_steps=remaining, horizon=horizon)

        critical, target = math.nan, math.nan
        target_fn: Callable[[float, int], Target | None] | None = None
        reason = None
        if fresh is not None and fresh["status"] != "ok":
            reason = f"estimate {fresh['status'].replace('_', ' ')}"
        elif good is None:
            reason = "no good estimate yet"
        elif not all_finite(temperature) or temperature <= 0:
            reason = "no finite temperature"
        else:
            target_fn = self._target_fn(
                trainer,
                good,
                noise_trace=noise_trace,
                momentum=momentum,
                dataset_size=dataset_size,
            )
            now = target_fn(lr, batch)
            # Without a target decide() still enforces the stability clamp on η.
            if now is not None:
                critical, target = now.critical_temperature, now.temperature
        if reason is None and loss_bad:
            reason = "non-finite training loss"
            rank_zero_warn(
                f"KramersCallback: non-finite training loss in epoch {record['epoch']}: decision "
                "skipped, keeping the last good settings."
            )

        new_lr, new_batch = lr, batch
        if reason is None:
            assert good is not None
            assert target_fn is not None
            fn = target_fn

            def target_temperature(lr_: float, batch_: int) -> float:
                found = fn(lr_, batch_)
                return math.nan if found is None else found.temperature

            decision = decide(
                self.policy,
                target_temperature=target_temperature,
                lr=lr,
                batch_size=batch,
                noise_trace=noise_trace,
                dim=good["dim"],
                lambda_max=good["lambda_max"],
                limits=self._limits(layout, damping, trainer),
                momentum=momentum,
                dataset_size=dataset_size,
            )
            reason = decision.reason
            if reason == "no_target":
                reason = (
                    "no annealing target (no pathway with a barrier, or τ·A ≤ 1: no temperature "
                    "gives one escape in the budget)"
                )
            record["limited_by"] = list(decision.limited_by)
            if self.policy is not Policy.OBSERVE and decision.changed:
                new_lr, new_batch = decision.lr, decision.batch_size
        record.update(critical_temperature=critical, target=target, reason=reason)
        if new_lr != lr:
            optim_io.scale_lr(optimizer, new_lr / lr)
        if new_batch != batch:
            self._layout = layout.with_samples(new_batch)
            apply_layout(trainer, pl_module, self._layout, self.batch_size_attr)
            self._reload_pending = self._layout.mechanism is BatchMechanism.LOADER
        record.update(lr=optim_io.lr_of(optimizer), batch_size=self._layout.samples_per_step)

        # Stop rule: only on a fresh, good estimate (seed 6.3, SPEC 5 guards).
        stop = False
        if fresh is not None and fresh["status"] == "ok":
            monitor = None
            if self.monitor is not None:
                value = trainer.callback_metrics.get(self.monitor)
                monitor = None if value is None else float(value)
            stop = self.termination.check(
                rate=fresh["escape_rate"],
                remaining_steps=remaining,
                epochs_completed=record["epoch"] + 1,
                monitor_value=monitor,
            )
        stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop and not trainer.should_stop:
            trainer.should_stop = True
            if self.termination.message:
                rank_zero_info(self.termination.message)
        record["stop"] = bool(stop)

        metrics = {
            "kramers/temperature": temperature,
            "kramers/temperature_target": target,
            "kramers/critical_temperature": critical,
            "kramers/lr": record["lr"],
            "kramers/batch_size": float(record["batch_size"]),
            "kramers/noise_scale": noise_scale,
        }
        if fresh is not None and "lambda_max" in fresh:
            rate = fresh["escape_rate"]
            metrics.update(
                {
                    "kramers/lambda_max": fresh["lambda_max"],
                    "kramers/lambda_min": fresh["lambda_min"],
                    "kramers/hessian_trace": fresh["hessian_trace"],
                    "kramers/barrier": fresh["barrier"],
                    "kramers/escape_rate": rate,
                    "kramers/escape_time": fresh["escape_time"],
                    "kramers/expected_escapes": rate * remaining,
                    "kramers/estimate_seconds": fresh["seconds"],
                    # Only the solvers that decisions use; the trace is flagged on its own.
                    "kramers/converged": float(
                        all(fresh.get("converged", {}).get(k, True) for k in _DECISION_SOLVERS)
                    ),
                    "kramers/trace_converged": float(
                        fresh.get("converged", {}).get("trace", True)
                    ),
                    "kramers/estimate_work": float(self.budget.estimate_work),
                }
            )
        metrics["kramers/overhead"] = self.budget.overhead
        metrics["kramers/estimates_deferred"] = float(self.budget.num_deferred)
        record["metrics"] = {k: float(v) for k, v in metrics.items()}
        _publish(trainer, record["metrics"])

    def _limits(
        self, layout: BatchLayout, damping: float, trainer: pl.Trainer | None = None
    ) -> ControlLimits:
        assert self._initial_lr is not None and self._initial_batch is not None
        unit = layout.unit
        lr_max = self.lr_max if self.lr_max is not None else self._initial_lr
        lr_min = self.lr_min if self.lr_min is not None else min(lr_max, self._initial_lr) / 1000
        per_epoch = max(self._samples_per_epoch, unit)
        batch_max = min(self.batch_max or per_epoch, per_epoch)
        batch_min = min(self.batch_min or self._initial_batch, batch_max)
        batch_max = max(batch_max, unit, batch_min)
        cap = self._val_check_cap(layout, trainer)
        if self._batch_pinned:  # the loader ignores the attribute, accumulation is not ours
            batch_min = batch_max = layout.samples_per_step
        elif cap is not None and cap < batch_max:
            # Lightning would refuse a larger loader batch: this wins over batch_min; where no
            # multiple of the unit fits, decide() holds B.
            batch_max = max(cap, 1)
            batch_min = min(batch_min, batch_max)
        return ControlLimits(
            lr_min=lr_min * damping,
            lr_max=lr_max * damping,
            batch_min=max(batch_min, 1),
            batch_max=batch_max,
            batch_multiple=unit,
            max_change=self.max_change,
        )

    def _val_check_cap(self, layout: BatchLayout, trainer: pl.Trainer | None) -> int | None:
        """The largest ``B`` whose loader batch leaves an epoch at least the Trainer's integer
        ``val_check_interval`` batches (Lightning refuses fewer when it validates per epoch);
        ``None`` where nothing limits it (``0`` where even the smallest loader batch fails)."""
        if trainer is None or layout.mechanism is not BatchMechanism.LOADER:
            return None
        interval = getattr(trainer, "val_check_interval", None)
        if (
            not isinstance(interval, int)
            or isinstance(interval, bool)
            or trainer.check_val_every_n_epoch is None
            or not trainer.limit_val_batches
            or self._loader_samples is None
        ):
            return None
        loader_batch = max_loader_batch(
            self._loader_samples,
            interval,
            multiple=layout.multiple,
            drop_last=self._loader_drop_last,
            limit=trainer.limit_train_batches,
        )
        if loader_batch is None:
            return 0
        return loader_batch * layout.accumulation * layout.world_size

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._running_skipped and self.verbose:
            rank_zero_info(
                "KramersCallback: the running noise estimate was skipped at steps whose window "
                "would span more samples than the data set; the last estimate's noise was used."
            )

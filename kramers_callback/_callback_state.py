"""Checkpoint helpers of ``KramersCallback``: plain Python values in, plain values out, so a
checkpoint loads under ``torch.load(weights_only=True)``; and the callback's ``state_dict``
and ``load_state_dict`` themselves, which read and write its fit state."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from kramers_callback._arguments import check_resumed_arguments
from kramers_callback._batch_size import BatchLayout, BatchMechanism
from kramers_callback.noise.running import RunningNoiseEstimator
from kramers_callback.observation import EstimateSummary

if TYPE_CHECKING:
    from kramers_callback.callback import KramersCallback

__all__ = [
    "RUNNING_STATES",
    "STATE_VERSION",
    "WarmStart",
    "callback_state",
    "epoch_state",
    "layout_from_state",
    "layout_to_state",
    "load_callback_state",
    "load_running",
    "restore_epoch_state",
    "running_to_state",
]

STATE_VERSION = 1
RUNNING_STATES = ("noise_trace_sum", "gradient_norm_sq_sum", "num_pairs", "num_dropped")
"""The :class:`RunningNoiseEstimator` sums, checkpointed mid-epoch as plain floats (float64
tensors hold them exactly). Under DDP every rank feeds it the same all-reduced gradient, so
rank 0's sums are every rank's."""


class WarmStart:
    """The two fields of a :class:`~kramers_callback.estimate.KramersEstimate` that a warm
    start reads, restorable from a checkpoint without the rest."""

    def __init__(self, eigenvectors: Tensor | None, min_eigenvector: Tensor | None) -> None:
        self.eigenvectors = eigenvectors
        self.min_eigenvector = min_eigenvector

    def to(self, device: torch.device) -> WarmStart:
        vectors = (self.eigenvectors, self.min_eigenvector)
        return WarmStart(*(None if v is None else v.to(device) for v in vectors))


def layout_to_state(layout: BatchLayout | None) -> dict[str, Any] | None:
    if layout is None:
        return None
    return {
        "mechanism": layout.mechanism.value,
        "loader_batch": layout.loader_batch,
        "accumulation": layout.accumulation,
        "world_size": layout.world_size,
    }


def layout_from_state(state: dict[str, Any], multiple: int) -> BatchLayout:
    return BatchLayout(
        mechanism=BatchMechanism(state["mechanism"]),
        loader_batch=int(state["loader_batch"]),
        accumulation=int(state["accumulation"]),
        world_size=int(state["world_size"]),
        multiple=multiple,
    )


def running_to_state(running: RunningNoiseEstimator) -> dict[str, float]:
    return {name: float(getattr(running, name)) for name in RUNNING_STATES}


def load_running(running: RunningNoiseEstimator, state: dict[str, Any]) -> None:
    """Put back the sums of :func:`running_to_state` (missing ones as zero)."""
    device = running.device
    running.load_state_dict(
        {
            name: torch.tensor(state.get(name, 0.0), dtype=torch.float64, device=device)
            for name in RUNNING_STATES
        }
    )


def callback_state(cb: KramersCallback) -> dict[str, Any]:
    """``KramersCallback.state_dict``: plain Python values and tensors only."""
    warm, good, indices = cb._warm, cb._last_good, cb._probe.indices
    return {
        "version": STATE_VERSION,
        "arguments": cb._arguments.resume_state(),
        "probe_indices": list(indices) if indices else None,
        "initial_lr": cb._initial_lr,
        "initial_batch": cb._initial_batch,
        "layout": layout_to_state(cb._layout),
        "samples_seen": cb._samples_seen,
        "epoch": epoch_state(cb),
        "batch_pinned": cb._batch_pinned,
        "num_estimates": cb._num_estimates,
        "last_good": None if good is None else good.to_state(),
        "warm_eigenvectors": None if warm is None else warm.eigenvectors,
        "warm_min_eigenvector": None if warm is None else warm.min_eigenvector,
        "adaptive_warned": cb._adaptive_warned,
        "budget": cb.budget.state_dict(),
        "termination": cb.termination.state_dict(),
        "dwell": cb._dwell.state_dict(),
        "first_dwell": cb._first_dwell,
        "history": [dict(h) for h in cb.history],
    }


def load_callback_state(cb: KramersCallback, state: dict[str, Any]) -> None:
    """``KramersCallback.load_state_dict``, after the resume's argument checks
    (:func:`~kramers_callback._arguments.check_resumed_arguments`)."""
    indices = state.get("probe_indices")
    check_resumed_arguments(
        state.get("arguments"),
        cb._arguments.resume_state(),
        probe=indices is not None,
        verbose=cb.verbose,
    )
    cb._fitted = False  # the next fit continues this state
    cb._probe.indices = None if indices is None else [int(i) for i in indices]
    cb._initial_lr = state.get("initial_lr")
    cb._initial_batch = state.get("initial_batch")
    cb._restored_layout = state.get("layout")
    cb._samples_seen = int(state.get("samples_seen", 0))
    cb._restored_epoch = state.get("epoch")
    cb._batch_pinned = bool(state.get("batch_pinned", False))
    cb._num_estimates = int(state.get("num_estimates", 0))
    good = state.get("last_good")
    cb._last_good = None if good is None else EstimateSummary.from_state(good)
    vectors, minimum = state.get("warm_eigenvectors"), state.get("warm_min_eigenvector")
    cb._warm = None if vectors is None else WarmStart(vectors, minimum)
    cb._adaptive_warned = bool(state.get("adaptive_warned", False))
    cb.budget.load_state_dict(state.get("budget", {}))
    cb.termination.load_state_dict(state.get("termination", {}))
    cb._dwell.load_state_dict(state.get("dwell"))
    cb._first_dwell = bool(state.get("first_dwell", True))
    cb.history = [dict(h) for h in state.get("history", [])]


def epoch_state(cb: KramersCallback) -> dict[str, Any] | None:
    """The state of the epoch in progress, which ``on_train_epoch_start`` sets up and which
    Lightning does not set up again when it resumes from a checkpoint written inside an
    epoch (mid-epoch, or at its end before ``on_train_epoch_end``: a ModelCheckpoint
    saving after validation). Plain Python numbers only."""
    running = cb._running
    if running is None or cb._loss_sum is None:
        return cb._restored_epoch  # not started yet: pass a restored state through
    return {
        "samples_per_epoch": cb._samples_per_epoch,
        "epoch_samples": cb._epoch_samples,
        "epoch_steps": cb._epoch_steps,
        "step_samples": cb._step_samples,
        "loss_sum": float(cb._loss_sum),
        "running": running_to_state(running),
        "loss_blocks": cb._blocks.state_dict(),
    }


def restore_epoch_state(cb: KramersCallback) -> None:
    """Put back a checkpoint's epoch state (once; ``on_train_epoch_start`` overwrites it
    when Lightning starts a new epoch rather than finishing the checkpoint's)."""
    state, cb._restored_epoch = cb._restored_epoch, None
    if not state or cb._running is None or cb._loss_sum is None:
        return
    cb._samples_per_epoch = int(state.get("samples_per_epoch", cb._samples_per_epoch))
    cb._epoch_samples = int(state.get("epoch_samples", 0))
    cb._epoch_steps = int(state.get("epoch_steps", 0))
    cb._step_samples = int(state.get("step_samples", 0))
    cb._loss_sum.fill_(float(state.get("loss_sum", 0.0)))
    load_running(cb._running, state.get("running") or {})
    cb._blocks.load_state_dict(state.get("loss_blocks"))

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
from kramers_callback.observation import EstimateSummary, Knobs

if TYPE_CHECKING:
    from kramers_callback.callback import KramersCallback

__all__ = [
    "RUNNING_STATES",
    "STATE_VERSION",
    "WarmStart",
    "adopt_legacy_key",
    "callback_state",
    "knobs_from_state",
    "knobs_to_state",
    "layout_from_state",
    "layout_to_state",
    "load_callback_state",
    "load_running",
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


def knobs_to_state(knobs: Knobs | None) -> list[float] | None:
    if knobs is None:
        return None
    return [knobs.lr, float(knobs.batch_size), knobs.momentum, knobs.damping]


def knobs_from_state(state: list[float] | None) -> Knobs | None:
    if state is None:
        return None
    lr, batch, momentum, damping = state
    return Knobs(float(lr), int(batch), momentum=float(momentum), damping=float(damping))


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


def adopt_legacy_key(checkpoint: dict[str, Any], key: str) -> None:
    """File a state written under the 0.x key ``KramersCallback{'policy': ...,
    'probe_seed': ...}`` under ``key``, the class name (in place)."""
    states = checkpoint.get("callbacks")
    if not isinstance(states, dict) or key in states:
        return
    legacy = [k for k in states if isinstance(k, str) and k.startswith(key + "{")]
    if len(legacy) == 1:
        states[key] = states.pop(legacy[0])


def callback_state(cb: KramersCallback) -> dict[str, Any]:
    """``KramersCallback.state_dict``: plain Python values and tensors only."""
    estimates, decision = cb._estimates, cb._decision
    warm, good, indices = estimates.warm, decision.last_good, estimates.probe.indices
    return {
        "version": STATE_VERSION,
        "arguments": cb._arguments.resume_state(),
        "probe_indices": list(indices) if indices else None,
        "initial_lr": decision.initial_lr,
        "initial_batch": decision.initial_batch,
        "layout": layout_to_state(cb._batches.layout),
        "samples_seen": cb._steps.samples_seen,
        "epoch": cb._steps.epoch_state(),
        "batch_pinned": cb._batches.pinned,
        "num_estimates": estimates.num_estimates,
        "last_good": None if good is None else good.to_state(),
        "warm_eigenvectors": None if warm is None else warm.eigenvectors,
        "warm_min_eigenvector": None if warm is None else warm.min_eigenvector,
        "adaptive_warned": cb._adaptive_warned,
        "loss_sign_warned": decision.loss_sign_warned,
        "budget": estimates.budget.state_dict(),
        "termination": cb.termination.state_dict(),
        "dwell": decision.dwell.state_dict(),
        "dwell_monitored": list(decision.dwell.monitored),
        "monitor_measured": cb._monitor.measured,
        "dwell_knobs": knobs_to_state(decision.dwell_knobs),
        "epoch_knobs": knobs_to_state(decision.epoch_knobs),
        "first_dwell": decision.first_dwell,
        "first_epoch_samples": decision.first_epoch_samples,
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
    estimates, decision = cb._estimates, cb._decision
    estimates.probe.indices = None if indices is None else [int(i) for i in indices]
    decision.initial_lr = state.get("initial_lr")
    decision.initial_batch = state.get("initial_batch")
    cb._batches.restored = state.get("layout")
    cb._steps.samples_seen = int(state.get("samples_seen", 0))
    cb._steps.restored = state.get("epoch")
    cb._batches.pinned = bool(state.get("batch_pinned", False))
    estimates.num_estimates = int(state.get("num_estimates", 0))
    good = state.get("last_good")
    decision.last_good = None if good is None else EstimateSummary.from_state(good)
    vectors, minimum = state.get("warm_eigenvectors"), state.get("warm_min_eigenvector")
    estimates.warm = None if vectors is None else WarmStart(vectors, minimum)
    cb._adaptive_warned = bool(state.get("adaptive_warned", False))
    decision.loss_sign_warned = bool(state.get("loss_sign_warned", False))
    estimates.budget.load_state_dict(state.get("budget", {}))
    cb.termination.load_state_dict(state.get("termination", {}))
    decision.dwell.load_state_dict(state.get("dwell"))
    decision.dwell.monitored = [float(v) for v in state.get("dwell_monitored", [])]
    measured = state.get("monitor_measured")
    cb._monitor.measured = None if measured is None else float(measured)
    decision.dwell_knobs = knobs_from_state(state.get("dwell_knobs"))
    decision.epoch_knobs = knobs_from_state(state.get("epoch_knobs"))
    decision.first_dwell = bool(state.get("first_dwell", True))
    first_epoch = state.get("first_epoch_samples")
    decision.first_epoch_samples = None if first_epoch is None else int(first_epoch)
    cb.history = [dict(h) for h in state.get("history", [])]

"""Checkpoint helpers of ``KramersCallback``: plain Python values in, plain values out, so a
checkpoint loads under ``torch.load(weights_only=True)``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from kramers_callback._batch_size import BatchLayout, BatchMechanism
from kramers_callback.noise.running import RunningNoiseEstimator

__all__ = [
    "RUNNING_STATES",
    "STATE_VERSION",
    "WarmStart",
    "layout_from_state",
    "layout_to_state",
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

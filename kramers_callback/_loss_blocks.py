"""Per-batch training losses in blocks, kept on the device: the input of the equilibrium test.

Torch plumbing for :func:`kramers_callback.signals.equilibrium.equilibrium_test`. Each training
batch adds its (already computed) loss to one of ``blocks_per_epoch`` device sums: one indexed
addition per batch, no host-device synchronisation; the sums are read once per epoch. The
block positions and sample counts are host-side integers, identical on every rank.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from kramers_callback.observation import LossBlock

__all__ = ["Dwell", "LossBlocks"]


class LossBlocks:
    """One epoch's per-batch losses, summed into equal runs of consecutive batches.

    Args:
        blocks_per_epoch: blocks an epoch is split into (fewer when the epoch has fewer
            batches); an epoch of unknown length uses blocks of ``fallback_block`` batches.
        fallback_block: batches per block when the epoch length is unknown.
    """

    def __init__(self, blocks_per_epoch: int = 16, fallback_block: int = 16) -> None:
        self.blocks_per_epoch = blocks_per_epoch
        self.fallback_block = fallback_block
        self._sums: Tensor | None = None
        self._batches: list[int] = []
        self._samples: list[int] = []
        self._positions: list[float] = []
        self._num_batches: float = math.inf

    def start_epoch(self, num_batches: float, device: torch.device) -> None:
        self._num_batches = num_batches
        if math.isfinite(num_batches) and num_batches > 0:
            count = int(min(self.blocks_per_epoch, num_batches))
        else:
            count = self.blocks_per_epoch
        self._sums = torch.zeros(count, dtype=torch.float64, device=device)
        self._batches = [0] * count
        self._samples = [0] * count
        self._positions = [0.0] * count

    def _index(self, batch_idx: int) -> int:
        count = len(self._batches)
        if math.isfinite(self._num_batches) and self._num_batches > 0:
            return min(count - 1, int(batch_idx * count // self._num_batches))
        return min(count - 1, batch_idx // self.fallback_block)

    def add(self, loss: Tensor, *, batch_idx: int, samples: int, position: int) -> None:
        """Add one batch: its mean loss (a scalar tensor), its samples (all ranks) and the
        samples-seen counter after it."""
        if self._sums is None:
            return
        i = self._index(batch_idx)
        self._sums[i] += loss.detach().to(torch.float64)
        self._batches[i] += 1
        self._samples[i] += samples
        self._positions[i] += position

    def read(self, reduce_mean: Callable[[Tensor], Tensor] | None = None) -> list[LossBlock]:
        """The epoch's non-empty blocks, with every rank's sums averaged by ``reduce_mean``
        (one synchronisation)."""
        if self._sums is None:
            return []
        sums = self._sums if reduce_mean is None else reduce_mean(self._sums)
        values = sums.tolist()
        return [
            LossBlock(mean=s / b, position=p / b, samples=n)
            for s, b, n, p in zip(
                values, self._batches, self._samples, self._positions, strict=True
            )
            if b > 0
        ]

    def state_dict(self) -> dict[str, Any] | None:
        """Plain numbers (mid-epoch checkpoints); ``None`` before an epoch started."""
        if self._sums is None:
            return None
        return {
            "sums": [float(v) for v in self._sums.tolist()],
            "batches": list(self._batches),
            "samples": list(self._samples),
            "positions": list(self._positions),
        }

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Put back a mid-epoch state into the epoch :meth:`start_epoch` set up."""
        if not state or self._sums is None or len(state["sums"]) != len(self._batches):
            return
        self._sums.copy_(torch.tensor(state["sums"], dtype=torch.float64))
        self._batches = [int(v) for v in state["batches"]]
        self._samples = [int(v) for v in state["samples"]]
        self._positions = [float(v) for v in state["positions"]]


class Dwell:
    """The loss blocks since the temperature last changed, and the monitored values at its
    epoch ends (host side, checkpointed)."""

    def __init__(self) -> None:
        self.blocks: list[LossBlock] = []
        self.monitored: list[float] = []

    def extend(self, blocks: Iterable[LossBlock]) -> None:
        self.blocks.extend(blocks)

    def reset(self) -> None:
        self.blocks = []
        self.monitored = []

    def state_dict(self) -> list[list[float]]:
        return [[b.mean, b.position, float(b.samples), b.noise_trace] for b in self.blocks]

    def load_state_dict(self, state: list[list[float]] | None) -> None:
        # Checkpoints before the blocks carried their epoch's noise have three columns.
        self.blocks = [
            LossBlock(
                mean=float(row[0]),
                position=float(row[1]),
                samples=int(row[2]),
                noise_trace=float(row[3]) if len(row) > 3 else math.nan,
            )
            for row in state or []
        ]

"""The fixed, seeded probe set the estimates measure on: drawn once per run by index from the
train dataset, kept in the checkpoint, collated per estimate size."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from kramers_callback._budget import EstimateSize
from kramers_callback._model_state import _rng_restore, _rng_snapshot

__all__ = ["ProbeSet"]


class ProbeSet:
    """``size`` samples drawn with ``torch.randperm`` under ``seed`` (capped at the data set);
    a budget-shrunk estimate uses a prefix of the same draw. Memory: the probe samples and
    their collated batches per size in use."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.indices: list[int] | None = None
        self._items: list[Any] | None = None
        self._collate: Any = None
        self._cache: dict[tuple[int, int], list[Any]] = {}

    def build(self, loader: DataLoader) -> None:
        """Draw the indices (unless restored) and read the samples once."""
        dataset = loader.dataset
        n = len(dataset)  # type: ignore[arg-type]
        if self.indices is None:
            generator = torch.Generator().manual_seed(self.seed)
            order = torch.randperm(n, generator=generator)[: min(self.size, n)]
            self.indices = [int(i) for i in order]
        # A dataset may draw random augmentations: fix them once, and leave the global RNG as
        # it was (observe must be bit-identical to no callback).
        rng = _rng_snapshot()
        try:
            self._items = [dataset[i] for i in self.indices]
        finally:
            _rng_restore(rng)
        self._collate = loader.collate_fn
        self._cache = {}

    def batches(self, size: EstimateSize) -> list[Any]:
        """The first ``size.probe_size`` samples in collated batches of
        ``size.probe_batch_size`` (cached)."""
        assert self._items is not None
        n = min(size.probe_size, len(self._items))
        key = (n, size.probe_batch_size)
        if key not in self._cache:
            items = self._items[:n]
            self._cache[key] = [
                self._collate(items[i : i + size.probe_batch_size])
                for i in range(0, n, size.probe_batch_size)
            ]
        return self._cache[key]

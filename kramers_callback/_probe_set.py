"""The fixed, seeded probe set the estimates measure on: drawn once per run by index from the
train dataset, kept in the checkpoint, collated per estimate size and converted as training
batches are (the Trainer's precision plugin), then cast to the estimation dtype."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from kramers_callback._budget import EstimateSize
from kramers_callback._model_state import _rng_restore, _rng_snapshot
from kramers_callback._probe import estimation_dtype, move_batch

__all__ = ["ProbeSet", "training_conversion"]

Conversion = Callable[[Any], Any]


def training_conversion(trainer: pl.Trainer, pl_module: pl.LightningModule) -> Conversion:
    """What Lightning's fit loop does to a training batch's dtype
    (``trainer.precision_plugin.convert_input``: float64 under ``"64-true"``, bfloat16 under
    ``"bf16-true"``, nothing under the mixed precisions), then the move to the module's device
    with the floating tensors at the estimation dtype
    (:func:`~kramers_callback._probe.estimation_dtype`): the probe holds the data the model
    trains on, measured in float32 (float64 for a float64 model). The batch-transfer hooks of
    the LightningModule are not applied."""
    params = [p for p in pl_module.parameters() if p.is_floating_point()]
    dtype = estimation_dtype(params[0].dtype) if params else torch.float32
    device = pl_module.device
    plugin = trainer.precision_plugin

    def convert(batch: Any) -> Any:
        return move_batch(plugin.convert_input(batch), device, dtype)

    return convert


class ProbeSet:
    """``size`` samples drawn with ``torch.randperm`` under ``seed`` (capped at the data set);
    a budget-shrunk estimate uses a prefix of the same draw. Memory: the probe samples and
    their collated, converted batches per size in use."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.indices: list[int] | None = None
        self._items: list[Any] | None = None
        self._collate: Any = None
        self._convert: Conversion | None = None
        self._cache: dict[tuple[int, int], list[Any]] = {}

    def build(self, loader: DataLoader, convert: Conversion | None = None) -> None:
        """Draw the indices (unless restored) and read the samples once; ``convert`` (e.g.
        :func:`training_conversion`) is applied to every collated batch."""
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
        self._convert = convert
        self._cache = {}

    def batches(self, size: EstimateSize) -> list[Any]:
        """The first ``size.probe_size`` samples in collated batches of
        ``size.probe_batch_size`` (cached)."""
        assert self._items is not None
        n = min(size.probe_size, len(self._items))
        key = (n, size.probe_batch_size)
        if key not in self._cache:
            items = self._items[:n]
            batches = [
                self._collate(items[i : i + size.probe_batch_size])
                for i in range(0, n, size.probe_batch_size)
            ]
            convert = self._convert
            self._cache[key] = batches if convert is None else [convert(b) for b in batches]
        return self._cache[key]

"""The two ways the callback changes the batch size ``B`` (samples per optimizer step).

``B = b · k · w``: loader batch ``b`` × gradient-accumulation factor ``k`` × data-parallel
world size ``w`` (docs/theory.md section 0).

- :attr:`BatchMechanism.LOADER`: the train data comes from the LightningModule's or its
  DataModule's ``train_dataloader()`` (not from a loader passed to ``Trainer.fit``, which
  Lightning hands back unchanged at every reload), and they have a ``batch_size`` attribute
  (any name, found as Lightning's batch-size finder finds it: the module, its ``hparams``, the
  datamodule, its ``hparams``) that ``train_dataloader()`` reads. The callback sets it and
  makes Lightning rebuild the train dataloader at the next epoch start; ``B`` moves in steps
  of ``batch_multiple · k · w``.
- :attr:`BatchMechanism.ACCUMULATION`: otherwise, ``trainer.accumulate_grad_batches`` is set
  at epoch boundaries (as Lightning's ``GradientAccumulationScheduler`` does); it needs nothing
  from the user, and ``B`` moves in steps of ``b · w``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Any

from pytorch_lightning.utilities.parsing import lightning_hasattr

__all__ = [
    "BatchLayout",
    "BatchMechanism",
    "data_from_module",
    "detect_mechanism",
    "max_loader_batch",
    "num_loader_batches",
]


class BatchMechanism(str, enum.Enum):
    LOADER = "loader"
    ACCUMULATION = "accumulation"


@dataclass(frozen=True)
class BatchLayout:
    """``B = loader_batch · accumulation · world_size`` and how it may change.

    Pure arithmetic: :meth:`with_samples` maps a ``B`` the controller chose (a multiple of
    :attr:`unit`) back to the loader batch or the accumulation factor.
    """

    mechanism: BatchMechanism
    loader_batch: int
    accumulation: int
    world_size: int
    multiple: int = 1
    """Loader batches are multiples of this (``LOADER`` only)."""

    @property
    def samples_per_step(self) -> int:
        return self.loader_batch * self.accumulation * self.world_size

    @property
    def unit(self) -> int:
        """``B`` moves in steps of this."""
        if self.mechanism is BatchMechanism.LOADER:
            return self.multiple * self.accumulation * self.world_size
        return self.loader_batch * self.world_size

    def with_samples(self, samples_per_step: int) -> BatchLayout:
        """The layout with ``B = samples_per_step`` (a multiple of :attr:`unit`)."""
        if samples_per_step % self.unit:
            raise ValueError(
                f"samples_per_step must be a multiple of {self.unit}, got {samples_per_step}"
            )
        if self.mechanism is BatchMechanism.LOADER:
            loader = samples_per_step // (self.accumulation * self.world_size)
            return replace(self, loader_batch=loader)
        return replace(self, accumulation=samples_per_step // (self.loader_batch * self.world_size))


def data_from_module(trainer: Any) -> bool:
    """Whether the fit loop's train data comes from a LightningModule's or DataModule's
    ``train_dataloader()`` (the only source that rebuilds the loader when asked).

    Lightning has no public accessor for this; its fit loop's data source has ``is_module()``.
    Where that is missing (another Lightning version), ``True``: the caller of
    :func:`kramers_callback.actuators.apply_layout` then checks that the rebuilt loader has the
    batch size it asked for.
    """
    source = getattr(getattr(trainer, "fit_loop", None), "_data_source", None)
    is_module = getattr(source, "is_module", None)
    return bool(is_module()) if callable(is_module) else True


def detect_mechanism(pl_module: Any, attribute: str, *, from_module: bool = True) -> BatchMechanism:
    """``LOADER`` when the train data comes from ``train_dataloader()`` (``from_module``, see
    :func:`data_from_module`) and Lightning finds ``attribute`` on the module or its
    datamodule; ``ACCUMULATION`` otherwise."""
    if from_module and lightning_hasattr(pl_module, attribute):
        return BatchMechanism.LOADER
    return BatchMechanism.ACCUMULATION


def num_loader_batches(
    samples: int, loader_batch: int, *, drop_last: bool = False, limit: int | float = 1.0
) -> int:
    r"""Batches per epoch of a loader over ``samples`` samples (one rank's share), as Lightning
    counts them with ``limit_train_batches = limit``:

    .. math::

        n = \lceil S / b \rceil\ (\lfloor S / b \rfloor \text{ with drop\_last});\qquad
        \min(n, \text{limit})\ \text{(int limit)},\quad
        \lfloor n \cdot \text{limit} \rfloor\ \text{(fraction)}

    (``_parse_num_batches`` in Lightning's data connector). Non-increasing in ``b``. Cost: O(1).
    """
    length = samples // loader_batch if drop_last else -(-samples // loader_batch)
    if isinstance(limit, int) and not isinstance(limit, bool):
        return min(length, limit)
    return int(length * limit)


def max_loader_batch(
    samples: int,
    min_batches: int,
    *,
    multiple: int = 1,
    drop_last: bool = False,
    limit: int | float = 1.0,
) -> int | None:
    """The largest loader batch ``b ≤ max(samples, multiple)`` (a multiple of ``multiple``)
    whose epoch still has at least ``min_batches`` batches (:func:`num_loader_batches`);
    ``None`` if even ``b = multiple`` has fewer.

    Why: Lightning refuses an integer ``val_check_interval`` larger than the epoch's batch
    count, so a growing loader batch must stop where the count would drop below it.
    Cost: ``O(log S)`` evaluations of :func:`num_loader_batches` (bisection; the count is
    non-increasing in ``b``).
    """

    def enough(units: int) -> bool:
        count = num_loader_batches(samples, units * multiple, drop_last=drop_last, limit=limit)
        return count >= min_batches

    if not enough(1):
        return None
    low, high = 1, max(samples // multiple, 1)
    if enough(high):
        return high * multiple
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if enough(mid) else (low, mid)
    return low * multiple

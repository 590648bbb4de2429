"""The two ways the callback changes the batch size ``B`` (samples per optimizer step).

``B = b · k · w``: loader batch ``b`` × gradient-accumulation factor ``k`` × data-parallel
world size ``w`` (SPEC 1).

- :attr:`BatchMechanism.LOADER`: the LightningModule or its DataModule has a ``batch_size``
  attribute (any name, found as Lightning's batch-size finder finds it: the module, its
  ``hparams``, the datamodule, its ``hparams``) that its ``train_dataloader()`` reads. The
  callback sets it and makes Lightning rebuild the train dataloader at the next epoch start;
  ``B`` moves in steps of ``batch_multiple · k · w``.
- :attr:`BatchMechanism.ACCUMULATION`: otherwise, ``trainer.accumulate_grad_batches`` is set
  at epoch boundaries (as Lightning's ``GradientAccumulationScheduler`` does); it needs nothing
  from the user, and ``B`` moves in steps of ``b · w``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Any

from pytorch_lightning.utilities.parsing import lightning_hasattr, lightning_setattr

__all__ = ["BatchLayout", "BatchMechanism", "apply_layout", "detect_mechanism"]


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


def detect_mechanism(pl_module: Any, attribute: str) -> BatchMechanism:
    """``LOADER`` when Lightning finds ``attribute`` on the module or its datamodule."""
    if lightning_hasattr(pl_module, attribute):
        return BatchMechanism.LOADER
    return BatchMechanism.ACCUMULATION


def apply_layout(trainer: Any, pl_module: Any, layout: BatchLayout, attribute: str) -> None:
    """Make the next epoch train with ``layout``.

    ``LOADER``: set the attribute and drop the fit loop's loader so Lightning calls
    ``train_dataloader()`` again at the next epoch start (what Lightning's own batch-size
    finder does, ``tuner/batch_size_scaling.py``). ``ACCUMULATION``: set
    ``trainer.accumulate_grad_batches``, which the loop reads at every batch.
    """
    if layout.mechanism is BatchMechanism.LOADER:
        lightning_setattr(pl_module, attribute, layout.loader_batch)
        trainer.fit_loop._combined_loader = None
    else:
        trainer.accumulate_grad_batches = layout.accumulation

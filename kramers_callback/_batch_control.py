"""Which way the batch size ``B`` moves, and the layout in force, from setup to each epoch start.

Lightning glue around :mod:`kramers_callback._batch_size` (the mechanisms and the arithmetic of
``B = b · k · w``) and :mod:`kramers_callback.actuators` (the writes): it finds the mechanism,
puts back a checkpoint's layout, follows the reloaded train dataloader (falling back to
accumulation where it ignores the batch attribute) and reads what Lightning's loop allows.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import GradientAccumulationScheduler
from pytorch_lightning.utilities.parsing import lightning_getattr
from torch.utils.data import DataLoader

from kramers_callback import _setup_checks as checks
from kramers_callback._batch_size import (
    BatchLayout,
    BatchMechanism,
    data_from_module,
    detect_mechanism,
)
from kramers_callback._callback_state import layout_from_state
from kramers_callback.actuators import apply_decision, apply_layout, fall_back_to_accumulation
from kramers_callback.limits import loop_cap
from kramers_callback.observation import Decision, Knobs
from kramers_callback.policies import PolicyRule

__all__ = ["BatchControl"]


class BatchControl:
    """The batch mechanism and layout of one fit.

    Args:
        rule: the policy's rule (whether it owns ``B``).
        attribute: the attribute that sizes the train dataloader (``batch_size_attr``).
        multiple: loader batches stay multiples of this.

    Attributes:
        layout: the :class:`~kramers_callback._batch_size.BatchLayout` in force (``None``
            before training starts).
        restored: a checkpoint's layout, put back at fit start.
        pinned: ``B`` stays where it is (the loader ignores the attribute and the
            accumulation is not the callback's).
    """

    def __init__(self, rule: PolicyRule, *, attribute: str, multiple: int) -> None:
        self.rule = rule
        self.attribute = attribute
        self.multiple = multiple
        self.mechanism: BatchMechanism | None = None
        self.layout: BatchLayout | None = None
        self.restored: dict[str, Any] | None = None
        self.external_accumulation = False
        self.reload_pending = False
        self.pinned = False
        self.loader_samples: int | None = None
        self.drop_last = False

    @property
    def owns_accumulation(self) -> bool:
        """Whether the callback sets ``trainer.accumulate_grad_batches``; otherwise it only
        reads the factor in force (``"observe"`` and ``"lr"`` never write it; a
        GradientAccumulationScheduler owns it, and is refused at setup where the callback
        would need it)."""
        return self.rule.owns_batch and not self.external_accumulation

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """At setup: refuse a GradientAccumulationScheduler where ``B`` could only move
        through the accumulation that it owns
        (:func:`~kramers_callback._setup_checks.check_accumulation_owner`)."""
        self.external_accumulation = any(
            isinstance(c, GradientAccumulationScheduler) for c in trainer.callbacks
        )
        mechanism = detect_mechanism(
            pl_module, self.attribute, from_module=data_from_module(trainer)
        )
        if self.external_accumulation and mechanism is BatchMechanism.ACCUMULATION:
            checks.check_accumulation_owner(self.rule, self.attribute)

    def restore(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """At fit start: the mechanism, and a checkpoint's layout where there is one."""
        self.mechanism = detect_mechanism(
            pl_module, self.attribute, from_module=data_from_module(trainer)
        )
        restored = self.restored
        if restored is None:
            return
        mechanism = BatchMechanism(restored["mechanism"])
        if mechanism is BatchMechanism.LOADER and self.mechanism is BatchMechanism.LOADER:
            if self.rule.owns_batch:  # observe and lr never changed it
                layout = layout_from_state(restored, self.multiple)
                apply_layout(trainer, pl_module, layout, self.attribute)
        else:
            # An accumulation run stays one (also after falling back from the loader).
            self.mechanism = BatchMechanism.ACCUMULATION
            if self.owns_accumulation:
                trainer.accumulate_grad_batches = int(restored["accumulation"])

    def start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loader: DataLoader
    ) -> BatchLayout:
        """At train start: the layout of the train ``loader`` (accumulation where it does not
        read the attribute)."""
        self._note_loader(loader)
        mechanism = self.mechanism or BatchMechanism.ACCUMULATION
        if mechanism is BatchMechanism.LOADER:
            attr = lightning_getattr(pl_module, self.attribute)
            if attr != loader.batch_size:
                checks.check_unread_batch_attribute(
                    self.attribute,
                    attr,
                    loader.batch_size,
                    refuse=self.external_accumulation and self.rule.owns_batch,
                )
                mechanism = BatchMechanism.ACCUMULATION
        self.mechanism = mechanism
        self.layout = BatchLayout(
            mechanism=mechanism,
            loader_batch=int(loader.batch_size),  # type: ignore[arg-type]
            accumulation=int(trainer.accumulate_grad_batches),
            world_size=trainer.world_size,
            multiple=self.multiple,
        )
        return self.layout

    def start_epoch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> BatchLayout:
        """The layout this epoch trains with: the reloaded loader's batch (or the fall-back
        to accumulation where it ignored the attribute), and the accumulation factor set."""
        layout = self.layout
        assert layout is not None
        if layout.mechanism is BatchMechanism.LOADER:
            loader = trainer.train_dataloader
            if isinstance(loader, DataLoader) and loader.batch_size is not None:
                self._note_loader(loader)
                actual = int(loader.batch_size)
                if self.reload_pending and actual != layout.loader_batch:
                    self.layout, pinned = fall_back_to_accumulation(
                        trainer,
                        pl_module,
                        layout,
                        actual,
                        self.attribute,
                        owns_accumulation=self.owns_accumulation,
                    )
                    self.pinned = self.pinned or pinned
                    self.mechanism = self.layout.mechanism
                else:
                    self.layout = replace(layout, loader_batch=actual)
            self.reload_pending = False
            layout = self.layout
        if layout.mechanism is BatchMechanism.ACCUMULATION and self.owns_accumulation:
            trainer.accumulate_grad_batches = layout.accumulation
        return layout

    def in_force(self, trainer: pl.Trainer) -> BatchLayout:
        """The layout the epoch trains with (from its first batch on: every epoch-start hook
        has set its accumulation factor by then)."""
        assert self.layout is not None
        if not (self.layout.mechanism is BatchMechanism.ACCUMULATION and self.owns_accumulation):
            # B counts the accumulation factor in force, whoever set it.
            self.layout = replace(self.layout, accumulation=int(trainer.accumulate_grad_batches))
        return self.layout

    def apply(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        optimizer: torch.optim.Optimizer,
        *,
        knobs: Knobs,
        decision: Decision | None,
    ) -> BatchLayout:
        """Apply ``decision`` (:func:`kramers_callback.actuators.apply_decision`); returns the
        layout for the next epoch, which a loader change makes Lightning reload."""
        assert self.layout is not None
        layout = apply_decision(
            trainer,
            pl_module,
            optimizer,
            rule=self.rule,
            knobs=knobs,
            decision=decision,
            layout=self.layout,
            attribute=self.attribute,
        )
        if layout is not self.layout:
            self.layout = layout
            self.reload_pending = layout.mechanism is BatchMechanism.LOADER
        return layout

    def cap(self, trainer: pl.Trainer) -> int | None:
        """The largest ``B`` Lightning's loop takes (:func:`kramers_callback.limits.loop_cap`)."""
        assert self.layout is not None
        return loop_cap(
            self.layout,
            val_check_interval=getattr(trainer, "val_check_interval", None),
            check_val_every_n_epoch=trainer.check_val_every_n_epoch,
            limit_val_batches=trainer.limit_val_batches,
            loader_samples=self.loader_samples,
            drop_last=self.drop_last,
            limit_train_batches=trainer.limit_train_batches,
        )

    def _note_loader(self, loader: DataLoader) -> None:
        """One rank's samples per epoch and ``drop_last``: what Lightning's batch count (and
        so the largest loader batch an integer ``val_check_interval`` allows) depends on."""
        sampler = loader.sampler
        self.loader_samples = len(sampler) if hasattr(sampler, "__len__") else None  # type: ignore[arg-type]
        self.drop_last = bool(loader.drop_last)

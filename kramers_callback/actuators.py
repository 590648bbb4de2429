"""Apply a decision to the Trainer: the learning rate of every parameter group, and the batch
layout (the loader's batch attribute and a loader rebuild, or gradient accumulation).

Lightning glue only: what to set comes from :mod:`kramers_callback.controller`, how ``B`` maps
to a loader batch and an accumulation factor from
:class:`~kramers_callback._batch_size.BatchLayout`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from pytorch_lightning.utilities.parsing import lightning_setattr
from pytorch_lightning.utilities.rank_zero import rank_zero_warn

from kramers_callback import _optimizer as optim_io
from kramers_callback._batch_size import BatchLayout, BatchMechanism
from kramers_callback.observation import Decision, Knobs
from kramers_callback.policies import PolicyRule

__all__ = ["apply_decision", "apply_layout", "fall_back_to_accumulation"]


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


def apply_decision(
    trainer: Any,
    pl_module: Any,
    optimizer: torch.optim.Optimizer,
    *,
    rule: PolicyRule,
    knobs: Knobs,
    decision: Decision | None,
    layout: BatchLayout,
    attribute: str,
) -> BatchLayout:
    """Set the knobs that ``rule`` owns to ``decision``'s (``None``: hold); return the layout
    in force for the next epoch.

    The learning rate changes by one factor ``η'/η`` in every parameter group (their ratios
    stay); the batch through :func:`apply_layout`. Cost: O(parameter groups).
    """
    if decision is None or not decision.changed:
        return layout
    if rule.owns_lr and decision.lr != knobs.lr:
        optim_io.scale_lr(optimizer, decision.lr / knobs.lr)
    if rule.owns_batch and decision.batch_size != knobs.batch_size:
        layout = layout.with_samples(decision.batch_size)
        apply_layout(trainer, pl_module, layout, attribute)
    return layout


def fall_back_to_accumulation(
    trainer: Any,
    pl_module: Any,
    intended: BatchLayout,
    actual: int,
    attribute: str,
    *,
    owns_accumulation: bool,
) -> tuple[BatchLayout, bool]:
    """The rebuilt train dataloader did not take the loader batch that was set: warn, and
    change ``B`` through gradient accumulation from now on (or, where the callback does not
    own ``accumulate_grad_batches``, keep ``B`` where it is). Returns the layout in force and
    whether ``B`` is pinned from now on."""
    # The attribute sizes nothing: put back the value in force, so it does not mislead.
    lightning_setattr(pl_module, attribute, actual)
    world = intended.world_size
    if not owns_accumulation:
        layout, pinned = replace(intended, loader_batch=actual), True
        then = (
            "a GradientAccumulationScheduler owns trainer.accumulate_grad_batches, so the "
            f"batch size stays at B = {layout.samples_per_step} from now on"
        )
    else:
        accumulation = max(1, round(intended.samples_per_step / (actual * world)))
        layout = BatchLayout(
            BatchMechanism.ACCUMULATION, actual, accumulation, world, intended.multiple
        )
        pinned = False
        trainer.accumulate_grad_batches = accumulation
        then = (
            "changing the batch size through trainer.accumulate_grad_batches from now on "
            f"(B = {layout.samples_per_step} instead of {intended.samples_per_step})"
        )
    rank_zero_warn(
        f"KramersCallback: the train dataloader was rebuilt with batch_size={actual}, not "
        f"the {intended.loader_batch} set through `{attribute}`: "
        f"train_dataloader() does not read it; {then}."
    )
    return layout, pinned

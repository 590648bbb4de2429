"""``hybrid``: cool by growing ``B`` first and lower ``η`` only once ``B`` has reached
``batch_max`` ("increase the batch size instead of decaying the learning rate", Smith et al.
2018); heat by raising ``η`` first, and shrink ``B`` once ``η`` has reached ``lr_max`` or the
stability limit.

The part of a change that the per-decision limit holds back is left to the next decision, not
handed to the other knob: ``η`` moves only when ``B`` sits at its bound and the temperature is
still off target."""

from __future__ import annotations

from dataclasses import dataclass

from kramers_callback.policies.base import Policy
from kramers_callback.policies.temperature_model import TemperatureModel

__all__ = ["HybridPolicy"]


@dataclass(frozen=True)
class HybridPolicy:
    policy: Policy = Policy.HYBRID
    owns_lr: bool = True
    owns_batch: bool = True

    def move(
        self, model: TemperatureModel, lr: float, batch_size: int, *, cooling: bool
    ) -> tuple[float, int]:
        if cooling:
            new_batch, at_max = model.move_batch(lr, batch_size)
            if at_max and model.gap(lr, new_batch) > 0:
                new_lr, _ = model.move_lr(lr, new_batch)
            else:
                new_lr = model.cap_lr(lr)
            return new_lr, new_batch
        new_lr, at_upper = model.move_lr(lr, batch_size)
        new_batch = batch_size
        if at_upper and model.gap(new_lr, batch_size) < 0:
            new_batch, _ = model.move_batch(new_lr, batch_size)
        return new_lr, new_batch

r"""``lr``: move the learning rate only, :math:`T(\eta', B) = T^*(\eta', B)` at fixed ``B``
(for a constant target :math:`\eta' = \eta\,T^*/T`), within the LR bounds and below the
stability limit."""

from __future__ import annotations

from dataclasses import dataclass

from kramers_callback.policies.base import Policy
from kramers_callback.policies.temperature_model import TemperatureModel

__all__ = ["LrPolicy"]


@dataclass(frozen=True)
class LrPolicy:
    policy: Policy = Policy.LR
    owns_lr: bool = True
    owns_batch: bool = False

    def move(
        self, model: TemperatureModel, lr: float, batch_size: int, *, cooling: bool
    ) -> tuple[float, int]:
        new_lr, _ = model.move_lr(lr, batch_size)
        return new_lr, batch_size

r"""``batch``: move the batch size only, :math:`T(\eta, B') = T^*(\eta, B')` at fixed ``η``
(for a constant target the optimal batch size of docs/theory.md section 4.4), on a multiple of the
batch unit within the batch bounds."""

from __future__ import annotations

from dataclasses import dataclass

from kramers_callback.policies.base import Policy
from kramers_callback.policies.temperature_model import TemperatureModel

__all__ = ["BatchPolicy"]


@dataclass(frozen=True)
class BatchPolicy:
    policy: Policy = Policy.BATCH
    owns_lr: bool = False
    owns_batch: bool = True

    def move(
        self, model: TemperatureModel, lr: float, batch_size: int, *, cooling: bool
    ) -> tuple[float, int]:
        new_batch, _ = model.move_batch(lr, batch_size)
        return lr, new_batch

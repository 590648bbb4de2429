"""``observe``: measure and log, change nothing (bit-identical training to no callback)."""

from __future__ import annotations

from dataclasses import dataclass

from kramers_callback.policies.base import Policy
from kramers_callback.policies.temperature_model import TemperatureModel

__all__ = ["ObservePolicy"]


@dataclass(frozen=True)
class ObservePolicy:
    policy: Policy = Policy.OBSERVE
    owns_lr: bool = False
    owns_batch: bool = False

    def move(
        self, model: TemperatureModel, lr: float, batch_size: int, *, cooling: bool
    ) -> tuple[float, int]:
        return lr, batch_size

"""The protocol every policy follows, and the names the callback accepts.

A policy owns some of the knobs ``η`` and ``B`` and, given that the temperature is off its
target, moves the knobs it owns (:class:`PolicyRule`). The shared steps (never act on a
non-finite input, the stability clamp where no target exists, holding on target) are
:func:`kramers_callback.controller.decide`'s; the clamped one-knob moves are
:class:`~kramers_callback.policies.temperature_model.TemperatureModel`'s. A new policy is one
file in this package with a class that has ``policy``, ``owns_lr``, ``owns_batch`` and
``move``, registered in :data:`kramers_callback.policies.RULES`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from kramers_callback.policies.temperature_model import TemperatureModel

__all__ = ["Policy", "PolicyRule", "TargetFn"]


class Policy(str, enum.Enum):
    """Which knobs the controller may turn (docs/theory.md section 4.3)."""

    OBSERVE = "observe"
    """Measure and log; change nothing."""
    LR = "lr"
    """Change the learning rate only."""
    BATCH = "batch"
    """Change the batch size only (docs/theory.md section 4.4)."""
    HYBRID = "hybrid"
    """Cool by growing the batch size up to ``batch_max`` first, then lowering the learning
    rate ("increase the batch size instead of decaying the learning rate", Smith et al. 2018);
    heat in the reverse order: raise the learning rate up to its bound first, then shrink the
    batch."""


TargetFn = Callable[[float, int], float]
"""``T*(η, B)``: the target temperature if the learning rate were ``η`` and the batch ``B``
(``nan`` where no temperature reaches the target, e.g. ``τ·A ≤ 1``)."""


class PolicyRule(Protocol):
    """Which knobs a policy owns, and how it moves them toward ``T = T*``."""

    policy: Policy
    owns_lr: bool
    """Whether it may change ``η`` (the callback then refuses LR schedulers, and the
    stability clamp applies even without a target)."""
    owns_batch: bool
    """Whether it may change ``B`` (the callback then writes the loader batch or
    ``accumulate_grad_batches``)."""

    def move(
        self, model: TemperatureModel, lr: float, batch_size: int, *, cooling: bool
    ) -> tuple[float, int]:
        """``(η', B')`` with ``T`` off target (``cooling``: too hot), within the clamps of
        ``model``; only owned knobs change."""
        ...

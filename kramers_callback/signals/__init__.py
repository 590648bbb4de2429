"""Signals: what the measurements say the temperature should be (:class:`Signal`).

- :mod:`~kramers_callback.signals.kramers_target`: the annealing target ``T*(η, B)`` from the
  Kramers escape rates of the last good estimate (docs/theory.md sections 4.1, 4.2).
- :mod:`~kramers_callback.signals.equilibrium`: whether SGD has thermalized in its basin, from
  the trend of the training loss against the noise floor.
"""

from kramers_callback.signals.base import Signal
from kramers_callback.signals.equilibrium import (
    EquilibriumReading,
    EquilibriumSignal,
    equilibrium_test,
)
from kramers_callback.signals.kramers_target import (
    KramersTarget,
    KramersTargetSignal,
    Target,
    annealing_target,
)

__all__ = [
    "EquilibriumReading",
    "EquilibriumSignal",
    "KramersTarget",
    "KramersTargetSignal",
    "Signal",
    "Target",
    "annealing_target",
    "equilibrium_test",
]

"""Signals: what the measurements say the temperature should be (:class:`Signal`).

- :mod:`~kramers_callback.signals.kramers_target`: the annealing target ``T*(η, B)`` from the
  Kramers escape rates of the last good estimate (docs/theory.md sections 4.1, 4.2).
- :mod:`~kramers_callback.signals.equilibrium`: whether SGD has thermalized in its basin, from
  the trend of the training loss against the noise floor.
- :mod:`~kramers_callback.signals.monitor_plateau`: whether the monitored metric has stopped
  improving at this temperature (with ``cooling_patience``).
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
from kramers_callback.signals.monitor_plateau import (
    MonitorPlateauSignal,
    MonitorReading,
    monitor_plateau,
)

__all__ = [
    "EquilibriumReading",
    "EquilibriumSignal",
    "KramersTarget",
    "KramersTargetSignal",
    "MonitorPlateauSignal",
    "MonitorReading",
    "Signal",
    "Target",
    "annealing_target",
    "equilibrium_test",
    "monitor_plateau",
]

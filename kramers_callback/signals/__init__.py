"""Signals: what the measurements say the temperature should be (:class:`Signal`).

- :mod:`~kramers_callback.signals.kramers_target`: the annealing target ``T*(η, B)`` from the
  Kramers escape rates of the last good estimate (seed 000 sections 5.1, 5.2).
"""

from kramers_callback.signals.base import Signal
from kramers_callback.signals.kramers_target import (
    KramersTarget,
    KramersTargetSignal,
    Target,
    annealing_target,
)

__all__ = ["KramersTarget", "KramersTargetSignal", "Signal", "Target", "annealing_target"]

"""The protocol every signal follows: read an :class:`~kramers_callback.observation.Observation`,
return a typed reading that a policy can act on.

A new signal is one file in this package: a frozen dataclass for its reading and a class with
``read``. It must be pure (no Lightning, no model): the callback measures, signals interpret.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

from kramers_callback.observation import Observation

__all__ = ["Signal"]

ReadingT_co = TypeVar("ReadingT_co", covariant=True)


class Signal(Protocol[ReadingT_co]):
    """``read(observation) -> reading``: pure, deterministic (every rank reads alike)."""

    def read(self, observation: Observation) -> ReadingT_co: ...

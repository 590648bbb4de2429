r"""The controller's regimes: descending, thermalized, trapped; and what cooling is still worth.

Pure logic (docs/theory.md section "The equilibrium regime"), no Lightning. The callback reads
the two signals (:mod:`kramers_callback.signals.equilibrium` and the Kramers target), this module
names the phase and says whether a cooling step is worth its compute, and the policy turns the
resulting target temperature into ``η`` and ``B``:

- **descending**: the training loss still falls by more than its noise and by more than a
  cooling step would give. Hold ``η`` and ``B`` (the stability clamp still applies).
- **trapped**: some pathway has a barrier within reach, so it has a Kramers rate; the seed's
  annealing target ``T*(t)`` from ``T_c`` applies.
- **thermalized**: stationary, and no barrier within reach: cool by
  :data:`~kramers_callback.noise.floor.COOLING_FACTOR` (once per equilibrium: the dwell starts
  again after every change), while the floor that cooling can still remove is worth it.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from kramers_callback._validation import check_non_negative

__all__ = ["CoolingValue", "Phase", "classify_phase", "cooling_value"]


class Phase(enum.IntEnum):
    """The controller's phase, logged as ``kramers/phase`` by its integer value."""

    DESCENDING = 0
    THERMALIZED = 1
    TRAPPED = 2


def classify_phase(*, trapped: bool, thermalized: bool) -> Phase:
    """``TRAPPED`` when a pathway has a Kramers rate (a barrier in reach decides the schedule
    whatever the loss does), else ``THERMALIZED`` or ``DESCENDING`` by the equilibrium test."""
    if trapped:
        return Phase.TRAPPED
    return Phase.THERMALIZED if thermalized else Phase.DESCENDING


@dataclass(frozen=True)
class CoolingValue:
    """What cooling can still buy at the current temperature."""

    removable: float
    """``F(T) − F(T_min)``: the floor that cooling down to the coldest allowed setting removes."""
    relative: float
    """``removable / L``: as a fraction of the current training loss."""
    at_coldest: bool
    """The temperature is already at the coldest setting the limits allow."""
    worth_it: bool
    """``c = 0`` (compute is free) or ``c · relative ≥ 1``, and not at the coldest setting."""


def cooling_value(
    *,
    floor: float,
    temperature: float,
    coldest_temperature: float,
    loss: float,
    compute_cost: float,
) -> CoolingValue:
    r"""Whether cooling is still worth its compute.

    .. math::

        \Delta F = F\,\Big(1 - \frac{T_{\min}}{T}\Big),\qquad
        \text{worth it} \iff T > T_{\min}\ \wedge\ \big(c = 0\ \vee\ c\,\frac{\Delta F}{L} \ge 1\big)

    The floor scales with the temperature (``F = d·T/2``), so cooling to the coldest setting
    the limits allow, ``T_min``, removes ``ΔF``. The seed's stop rule values an escape at ``c``
    budgets of compute (fewer than ``1/c`` expected escapes are not worth continuing); the same
    weight applied to cooling asks that what cooling can still remove be at least ``1/c`` of
    the training loss ``L``. ``c = 0`` values compute at nothing: cool down to ``T_min``.

    Args:
        floor: ``F`` at the current temperature
            (:func:`~kramers_callback.noise.floor.noise_floor`).
        temperature, coldest_temperature: ``T`` now and ``T_min`` (same units).
        loss: the mean training loss over the equilibrium window.
        compute_cost: ``c ≥ 0``.

    Cost: ``O(1)``. Undefined inputs (non-finite) give "not worth it".
    """
    compute_cost = check_non_negative("compute_cost", compute_cost)
    at_coldest = not temperature > coldest_temperature * (1.0 + 1e-9)
    if not all(math.isfinite(v) for v in (floor, temperature, coldest_temperature, loss)):
        return CoolingValue(math.nan, math.nan, at_coldest, False)
    removable = max(0.0, floor * (1.0 - coldest_temperature / temperature)) if temperature > 0 else 0.0
    relative = removable / loss if loss > 0 else math.inf
    worth = not at_coldest and (compute_cost == 0 or compute_cost * relative >= 1.0)
    return CoolingValue(removable, relative, at_coldest, worth)

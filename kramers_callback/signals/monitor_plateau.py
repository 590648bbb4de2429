r"""Has the monitored metric stopped improving at this temperature? A plateau test, opt-in.

Pure logic (docs/theory.md section 7.7). The equilibrium test reads the training loss, and a
network that memorises its training set (noisy labels, an over-parametrised MLP) goes on
lowering that loss at a fixed temperature long after the metric its user cares about has
stopped improving. What that descent buys is fitting the sample, which the training loss cannot
tell from learning. With a ``monitor`` and ``cooling_patience = p``, the callback also counts
the dwell (the epoch ends since the temperature last changed) as **stalled** when the monitored
value has not improved on the dwell's best by more than ``δ = min_delta`` for ``p`` epoch ends:

.. math::

    \text{stalled} \iff n - j^* \ge p,\qquad
    j^* = \max\{\,j \le n : v_j \text{ beats } \min_{i<j} v_i \text{ by more than } \delta\,\}

(``max`` for ``mode="max"``), with ``v_1, …, v_n`` the monitored values at the dwell's epoch
ends, ``v_1`` counting as an improvement, and a non-finite value as none. This is
``ReduceLROnPlateau``'s rule, restarted at every change of temperature, so each cooling is
judged by what the user's metric did at its own temperature.

Assumes the monitored metric is computed on data the optimizer does not see (validation); on a
training metric it adds nothing to the equilibrium test. Cost: ``O(n)`` per read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from kramers_callback._validation import check_choice, check_non_negative, check_positive_int
from kramers_callback.observation import Observation

__all__ = ["MonitorPlateauSignal", "MonitorReading", "monitor_plateau"]


@dataclass(frozen=True)
class MonitorReading:
    """One plateau test of the dwell's monitored values."""

    stalled: bool
    epochs_since_best: int
    """Epoch ends of the dwell since its last improvement (``n − j*``; ``0`` without values)."""
    best: float
    """The dwell's best monitored value (``nan`` without values)."""
    reason: str


def monitor_plateau(
    values: Sequence[float], *, patience: int, min_delta: float = 0.0, mode: str = "min"
) -> MonitorReading:
    """The test of the module docstring on ``values``, oldest first."""
    patience = check_positive_int("patience", patience)
    min_delta = check_non_negative("min_delta", min_delta)
    mode = check_choice("mode", mode, ("min", "max"))
    sign = 1.0 if mode == "min" else -1.0
    best, since = math.nan, 0
    for value in values:
        improved = math.isfinite(value) and (
            not math.isfinite(best) or sign * (best - value) > min_delta
        )
        best, since = (value, 0) if improved else (best, since + 1)
    if not values:
        return MonitorReading(False, 0, math.nan, "no monitored value at this temperature")
    stalled = math.isfinite(best) and since >= patience
    verdict = "stalled" if stalled else "improving"
    return MonitorReading(
        stalled,
        since,
        best,
        f"monitor {verdict}: {since} of {patience} epoch ends without improving on {best:.4g}",
    )


class MonitorPlateauSignal:
    """The plateau test of the observation's dwell monitor values
    (:attr:`~kramers_callback.observation.Observation.monitor_dwell`).

    Args:
        patience: ``p``, the callback's ``cooling_patience``.
        min_delta, mode: the monitor's, as the stop rule reads them.
    """

    def __init__(self, *, patience: int, min_delta: float = 0.0, mode: str = "min") -> None:
        self.patience = check_positive_int("cooling_patience", patience)
        self.min_delta = min_delta
        self.mode = mode

    def read(self, observation: Observation) -> MonitorReading:
        return monitor_plateau(
            observation.monitor_dwell,
            patience=self.patience,
            min_delta=self.min_delta,
            mode=self.mode,
        )

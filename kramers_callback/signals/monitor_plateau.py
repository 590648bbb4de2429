r"""Has the monitored metric stopped improving at this temperature? A plateau test, opt-in.

Pure logic (docs/theory.md section 7.7). The equilibrium test reads the training loss, and a
network that memorises its training set (noisy labels, an over-parametrised MLP) goes on
lowering that loss at a fixed temperature long after the metric its user cares about has
stopped improving. What that descent buys is fitting the sample, which the training loss cannot
tell from learning. With a ``monitor`` and ``cooling_patience = p``, the callback also counts
the dwell (the epoch ends since the temperature last changed) as **stalled** when the monitored
value has not improved on the dwell's best by more than ``δ = min_delta`` for ``p`` epoch ends:

.. math::

    I_j \iff v_j \text{ finite} \wedge \big(b_{j-1} = \varnothing \vee v_j < b_{j-1} - \delta\big),
    \qquad b_j = \begin{cases} v_j & I_j \\ b_{j-1} & \text{otherwise,}\end{cases}
    \qquad b_0 = \varnothing,

    \text{stalled} \iff b_n \ne \varnothing \wedge n - \max\{\,j \le n : I_j\,\} \ge p

(``v_j > b_{j−1} + δ`` for ``mode="max"``), with ``v_1, …, v_n`` the monitored values at the
dwell's epoch ends: ``I_j``, an improvement, needs a finite value better than the best by more
than ``δ``, so a tie is none (:func:`~kramers_callback.stopping.improves`). This is
``ReduceLROnPlateau``'s rule with ``patience = p − 1`` and ``threshold_mode="abs"``, restarted
at every change of temperature, so each cooling is judged by what the user's metric did at its
own temperature.

Assumes the monitored metric is computed on data the optimizer does not see (validation); on a
training metric it adds nothing to the equilibrium test. Cost: ``O(n)`` per read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from kramers_callback._validation import check_choice, check_non_negative, check_positive_int
from kramers_callback.observation import Observation
from kramers_callback.stopping import improves

__all__ = ["MonitorPlateauSignal", "MonitorReading", "monitor_plateau"]


@dataclass(frozen=True)
class MonitorReading:
    """One plateau test of the dwell's monitored values."""

    stalled: bool
    epochs_since_best: int
    """Epoch ends of the dwell since its last improvement (``n − j*``; ``n`` without one)."""
    best: float
    """The dwell's best monitored value ``b_n`` (``nan`` without a finite value)."""
    reason: str


def _plateau(values: Sequence[float], patience: int, min_delta: float, mode: str) -> MonitorReading:
    best, since = math.nan, 0
    for value in values:
        if improves(value, best, min_delta=min_delta, mode=mode):
            best, since = value, 0
        else:
            since += 1
    if not math.isfinite(best):
        return MonitorReading(False, since, best, "no finite monitored value at this temperature")
    stalled = since >= patience
    return MonitorReading(
        stalled,
        since,
        best,
        f"monitor {'stalled' if stalled else 'improving'}: {since} of {patience} epoch ends "
        f"without improving on {best:.4g}",
    )


def monitor_plateau(
    values: Sequence[float], *, patience: int, min_delta: float = 0.0, mode: str = "min"
) -> MonitorReading:
    """The test of the module docstring on ``values``, oldest first."""
    return _plateau(
        values,
        check_positive_int("patience", patience),
        check_non_negative("min_delta", min_delta),
        check_choice("mode", mode, ("min", "max")),
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
        self.min_delta = check_non_negative("min_delta", min_delta)
        self.mode = check_choice("mode", mode, ("min", "max"))

    def read(self, observation: Observation) -> MonitorReading:
        return _plateau(observation.monitor_dwell, self.patience, self.min_delta, self.mode)

"""Termination: stop when neither escapes nor cooling are worth the compute.

docs/theory.md sections 4.5 and 7.6. Pure logic: no Lightning. The callback feeds one check per
epoch end and turns the answer into
``trainer.should_stop`` through ``trainer.strategy.reduce_boolean_decision``.
"""

from __future__ import annotations

import enum
import math
from typing import Any

from kramers_callback._validation import check_choice, check_non_negative, check_positive_int
from kramers_callback.kramers import should_stop

__all__ = ["StopReason", "TerminationRule", "improves"]


def improves(value: float, best: float | None, *, min_delta: float, mode: str) -> bool:
    """Whether a monitored ``value`` beats ``best`` by more than ``min_delta`` (``mode="min"``:
    lower is better), EarlyStopping's rule: a non-finite value never does, and any finite
    value beats no best (``None`` or ``nan``)."""
    if not math.isfinite(value):
        return False
    if best is None or not math.isfinite(best):
        return True
    return ((best - value) if mode == "min" else (value - best)) > min_delta


class StopReason(enum.Enum):
    """Why the callback stopped training (kept in its state as ``.value``)."""

    NOT_STOPPED = "not_stopped"
    COLDEST_SETTING = "coldest_setting"
    """Thermalized (or, with ``cooling_patience``, stalled) at the coldest temperature the
    limits allow, and ``k·R·c < 1`` on the
    measured pathways, for ``patience`` consecutive checks (at or after ``min_epochs``; with a
    monitor, while it did not improve)."""
    COOLING_NOT_WORTH = "cooling_not_worth"
    """Thermalized (or stalled), what cooling could still remove is below ``1/c`` of the
    training loss, and ``k·R·c < 1`` on the measured pathways, for ``patience`` consecutive
    checks."""
    NON_FINITE_LOSS = "non_finite_loss"
    """A training loss of the epoch was NaN or infinite (the parameters are lost, as
    EarlyStopping's ``check_finite`` assumes); with ``check_finite=True`` only."""


_LEGACY_REASONS = {"escapes_exhausted": StopReason.COOLING_NOT_WORTH.value}

_SETTLED = {
    StopReason.COLDEST_SETTING: "{} at the coldest setting the limits allow",
    StopReason.COOLING_NOT_WORTH: (
        "{}, and what cooling could still remove is below 1/compute_cost of the training loss"
    ),
}
"""The settled reasons' messages, filled with how the walker settled."""


class TerminationRule:
    r"""Seed 000 section 6.3's stopping rule, with nothing left to gain from cooling, guarded.

    .. math::

        \text{condition} \iff k_{\text{total}}\,R\,c < 1
        \ \wedge\ \text{settled with no cooling worth it}

    with ``k_total`` the escape rate per step of the *measured* pathways (a direction with no
    barrier within reach is an unmeasured pathway, never a zero rate: it is the second part
    that covers it; settled is thermalized, or stalled on the monitor with ``cooling_patience``),
    ``R`` the remaining steps and ``c ≥ 0`` the compute-cost weight
    (:func:`kramers_callback.kramers.should_stop`; ``c = 0`` never stops). The second part is
    the caller's: a :class:`StopReason` saying why nothing is left to gain, or ``None``
    (still descending, or a cooling step is still worth it), so a run whose training loss
    still descends stops by the rule alone only where its monitored metric stalled
    (docs/theory.md, "The equilibrium regime").
    Guards: training stops only when the condition (and, with a monitor, "the monitored value
    did not improve by more than ``min_delta`` on its best so far") has held at ``patience``
    consecutive checks, and only once ``min_epochs`` epochs are complete. A check without a
    monitored value (none logged yet, as before the first validation) counts as "still
    improving": it never stops. (In an epoch without validation the callback passes the last
    logged value, so ``patience > 1`` still counts under ``check_val_every_n_epoch``.)

    Args:
        compute_cost: ``c ≥ 0``.
        min_epochs: completed epochs before any stop (``≥ 0``).
        patience: consecutive checks the condition must hold (``≥ 1``).
        min_delta: the smallest change of the monitored value that counts as improvement.
        mode: ``"min"`` (lower is better) or ``"max"``.
        use_monitor: whether checks carry a monitored value.

    Attributes:
        wait_count: consecutive checks at which the condition held.
        best: best monitored value so far (``None`` before the first).
        reason: a :class:`StopReason`; ``stopped_epoch`` the epoch of the stop (or ``None``).

    Cost: O(1) per check.
    """

    def __init__(
        self,
        *,
        compute_cost: float,
        min_epochs: int = 0,
        patience: int = 1,
        min_delta: float = 0.0,
        mode: str = "min",
        use_monitor: bool = False,
    ) -> None:
        self.compute_cost = check_non_negative("compute_cost", compute_cost)
        self.min_epochs = check_positive_int("min_epochs", min_epochs, minimum=0)
        self.patience = check_positive_int("patience", patience)
        self.min_delta = check_non_negative("min_delta", min_delta)
        self.mode = check_choice("mode", mode, ("min", "max"))
        self.use_monitor = bool(use_monitor)
        self.wait_count = 0
        self.best: float | None = None
        self.reason = StopReason.NOT_STOPPED
        self.stopped_epoch: int | None = None
        self.message: str | None = None

    def _improved(self, value: float | None) -> bool:
        """Whether ``value`` beats the best by more than ``min_delta`` (and record it)."""
        if value is None:
            return True  # none logged yet: never stop on it
        if improves(value, self.best, min_delta=self.min_delta, mode=self.mode):
            self.best = value
            return True
        return False

    def check(
        self,
        *,
        rate: float,
        remaining_steps: float,
        epochs_completed: int,
        settled: StopReason | None,
        monitor_value: float | None = None,
        settled_as: str = "thermalized",
    ) -> bool:
        """One check; ``True`` when training should stop now.

        Args:
            settled: why nothing is left to gain from cooling
                (:attr:`StopReason.COLDEST_SETTING` or :attr:`StopReason.COOLING_NOT_WORTH`),
                or ``None`` when something is.
            settled_as: how the walker settled, for the message (``"thermalized"``, or
                ``"stalled on the monitor"``).
            rate: ``k_total ≥ 0`` per step (``inf`` allowed).
            remaining_steps: ``R``, steps left in the budget at the current batch size.
            epochs_completed: epochs finished so far.
            monitor_value: the monitored metric now (``None`` when unavailable); ignored
                without ``use_monitor``.
        """
        if settled not in (None, *_SETTLED):
            raise ValueError(f"settled must be None or one of {list(_SETTLED)}, got {settled!r}")
        condition = settled is not None and should_stop(
            rate=rate, remaining_steps=remaining_steps, compute_cost=self.compute_cost
        )
        if self.use_monitor:
            condition = (not self._improved(monitor_value)) and condition
        self.wait_count = self.wait_count + 1 if condition else 0
        if self.reason is not StopReason.NOT_STOPPED:
            return True
        if self.wait_count >= self.patience and epochs_completed >= self.min_epochs:
            assert settled is not None
            self.reason = settled
            self.stopped_epoch = epochs_completed
            expected = rate * max(remaining_steps, 0.0)
            self.message = (
                f"KramersCallback stopped training after {epochs_completed} epochs: "
                f"{_SETTLED[settled].format(settled_as)}, and {expected:.3g} escapes expected on "
                f"the measured pathways in the remaining {remaining_steps:.0f} steps is below "
                "1/compute_cost "
                f"= {1 / self.compute_cost:.3g}, "
                + (
                    f"for {self.wait_count} consecutive checks"
                    if self.wait_count > 1
                    else "at this check"
                )
                + (", and the monitored metric stopped improving" if self.use_monitor else "")
            )
            return True
        return False

    def stop_non_finite(self, epochs_completed: int) -> None:
        """Stop now for a non-finite training loss (:attr:`StopReason.NON_FINITE_LOSS`),
        unless already stopped."""
        if self.reason is not StopReason.NOT_STOPPED:
            return
        self.reason = StopReason.NON_FINITE_LOSS
        self.stopped_epoch = epochs_completed
        self.message = (
            f"KramersCallback stopped training after {epochs_completed} epochs: a training loss "
            "of the last epoch was not finite (NaN or inf), so the parameters are no longer "
            "usable (pass check_finite=False to keep training at the last good settings)."
        )

    def state_dict(self) -> dict[str, Any]:
        """Plain Python values only (loads under ``torch.load(weights_only=True)``)."""
        return {
            "wait_count": self.wait_count,
            "best": self.best,
            "reason": self.reason.value,
            "stopped_epoch": self.stopped_epoch,
            "message": self.message,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.wait_count = int(state.get("wait_count", 0))
        best = state.get("best")
        self.best = None if best is None else float(best)
        reason = state.get("reason", StopReason.NOT_STOPPED.value)
        # 0.1's single reason: its rule had no cooling part, so it read as "not worth it".
        self.reason = StopReason(_LEGACY_REASONS.get(reason, reason))
        self.stopped_epoch = state.get("stopped_epoch")
        self.message = state.get("message")

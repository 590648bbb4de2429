"""The seed's annealing schedule as a plain PyTorch learning-rate scheduler.

The schedule and its reading of the seed are derived in docs/theory.md section 4.2.
"""

from __future__ import annotations

from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from kramers_callback._validation import check_positive, check_positive_int
from kramers_callback.kramers import _check_escape_possible, annealed_lr

__all__ = ["KramersAnnealingLR"]


class KramersAnnealingLR(LRScheduler):
    r"""Anneal every parameter group's learning rate by the seed's schedule
    (docs/theory.md section 4.2).

    .. math::

        \eta(t) = \eta_0\,\frac{1 + \ln(\tau / \min(t, \tau))}{\ln(\tau A)}

    with ``η₀`` each group's initial learning rate (``group["initial_lr"]``), ``τ`` the step
    budget, ``A`` the attempt frequency per step (the seed's ``ω₀``, see
    :func:`kramers_callback.kramers.annealed_lr`) and ``t = last_epoch + 1`` the 1-based step:
    the learning rate set at construction, used by the first ``optimizer.step()``, is
    ``η(1)``; after ``n`` calls of :meth:`step` it is ``η(n + 1)``. Past the horizon the
    value at ``t = τ`` is held. Call :meth:`step` once per optimizer step (in Lightning:
    ``"interval": "step"``). ``η(1) = η₀ (1 + ln τ) / ln(τA)`` differs from ``η₀`` unless
    ``A = e``: ``η₀`` scales the schedule, as in the seed.

    Uses no Lightning and no measurement: ``A`` is a fixed number (for example the
    ``attempt_frequency`` of an earlier :func:`kramers_callback.estimate.estimate`).

    Args:
        optimizer: the wrapped optimizer.
        horizon: ``τ``, the step budget (an integer ``≥ 1``).
        attempt_frequency: ``A > 0`` per step, with ``τ·A > 1``.
        last_epoch: index of the last step taken, ``-1`` to start afresh (PyTorch convention).

    Raises:
        ValueError: on an invalid ``horizon`` or ``attempt_frequency``, or ``τ·A ≤ 1``.

    Cost: O(1) per step and parameter group.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        horizon: int,
        attempt_frequency: float,
        last_epoch: int = -1,
    ) -> None:
        self.horizon = check_positive_int("horizon", horizon)
        self.attempt_frequency = check_positive("attempt_frequency", attempt_frequency)
        _check_escape_possible(float(self.horizon), self.attempt_frequency)
        super().__init__(optimizer, last_epoch)

    def _lr_at(self, base_lr: float | Tensor) -> float | Tensor:
        return annealed_lr(
            step=self.last_epoch + 1,
            horizon=self.horizon,
            base_lr=base_lr,
            attempt_frequency=self.attempt_frequency,
        )

    def get_lr(self) -> list[float | Tensor]:
        """Learning rates for step ``t = last_epoch + 1``; a closed form of the step index."""
        return [self._lr_at(base_lr) for base_lr in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float | Tensor]:
        """The same closed form (used by PyTorch when ``step(epoch)`` is called)."""
        return [self._lr_at(base_lr) for base_lr in self.base_lrs]

r"""The clamps every decision respects (docs/theory.md section 4.3), and how the callback
derives them from its options and the Trainer's loop.

Pure arithmetic: no Lightning. The callback reads the Trainer and the loader; these functions
turn those numbers into a :class:`ControlLimits`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from kramers_callback._batch_size import BatchLayout, BatchMechanism, max_loader_batch
from kramers_callback._validation import check_in_range, check_positive, check_positive_int

__all__ = [
    "ControlLimits",
    "LoopBatching",
    "control_limits",
    "loop_cap",
    "stability_limit",
    "val_check_cap",
]


@dataclass(frozen=True)
class ControlLimits:
    """The clamps of docs/theory.md section 4.3 that every decision respects.

    Args:
        lr_min, lr_max: bounds on the learning rate ``η`` (``0 < lr_min ≤ lr_max``).
        batch_min, batch_max: bounds on the samples per optimizer step ``B``.
        batch_multiple: ``B`` is always a multiple of this (loader multiple × world size, or
            the loader batch × world size when the batch grows by gradient accumulation).
        max_change: the largest factor by which ``η`` or ``B`` may move in one decision
            (``> 1``; ``2`` means at most doubling or halving).
    """

    lr_min: float
    lr_max: float
    batch_min: int
    batch_max: int
    batch_multiple: int = 1
    max_change: float = 2.0

    def __post_init__(self) -> None:
        check_positive("lr_min", self.lr_min)
        check_positive("lr_max", self.lr_max)
        if self.lr_max < self.lr_min:
            raise ValueError(f"lr_max must be ≥ lr_min = {self.lr_min!r}, got {self.lr_max!r}")
        check_positive_int("batch_min", self.batch_min)
        check_positive_int("batch_max", self.batch_max)
        if self.batch_max < self.batch_min:
            raise ValueError(
                f"batch_max must be ≥ batch_min = {self.batch_min!r}, got {self.batch_max!r}"
            )
        check_positive_int("batch_multiple", self.batch_multiple)
        check_in_range("max_change", self.max_change, 1.0, math.inf, low_open=True, high_open=True)


def stability_limit(*, lambda_max: float, momentum: float = 0.0) -> float:
    r"""Largest stable learning rate on a quadratic with top curvature ``λ_max``.

    .. math::

        \eta < \frac{2 (1 + \beta)}{\lambda_{\max}}

    Source: gradient descent on ``½ λ x²`` contracts iff ``|1 − ηλ| < 1`` (docs/theory.md
    section 4.3: ``η < 2/λ_max``); heavy-ball momentum ``β`` widens this to ``2(1 + β)/λ``
    (Polyak 1964). ``inf`` when ``λ_max ≤ 0`` (no unstable direction). Assumptions: the top
    eigenvalue governs stability (locally quadratic loss). Cost: O(1).
    """
    if not lambda_max > 0:
        return math.inf
    return 2.0 * (1.0 + momentum) / lambda_max


@dataclass(frozen=True)
class LoopBatching:
    """What Lightning's loop needs of the loader batch when it validates every
    ``val_check_interval`` batches (an integer): one rank's samples per epoch, ``drop_last``
    and ``limit_train_batches``."""

    val_check_interval: int
    loader_samples: int
    drop_last: bool
    limit_train_batches: int | float


def val_check_cap(
    loop: LoopBatching, *, multiple: int, accumulation: int, world_size: int
) -> int | None:
    r"""The largest ``B`` whose loader batch leaves an epoch at least ``val_check_interval``
    batches (Lightning refuses fewer when it validates per epoch):

    .. math::

        B_{\text{cap}} = b_{\max} \cdot k \cdot w,\qquad
        b_{\max} = \max\{b \in \text{multiple}\,\mathbb{N} : n(b) \ge \text{interval}\}

    (:func:`~kramers_callback._batch_size.max_loader_batch`); ``0`` where even the smallest
    loader batch fails. Cost: ``O(log S)``.
    """
    loader_batch = max_loader_batch(
        loop.loader_samples,
        loop.val_check_interval,
        multiple=multiple,
        drop_last=loop.drop_last,
        limit=loop.limit_train_batches,
    )
    if loader_batch is None:
        return 0
    return loader_batch * accumulation * world_size


def loop_cap(
    layout: BatchLayout,
    *,
    val_check_interval: Any,
    check_val_every_n_epoch: int | None,
    limit_val_batches: int | float,
    loader_samples: int | None,
    drop_last: bool,
    limit_train_batches: int | float,
) -> int | None:
    """The cap on ``B`` of :func:`val_check_cap` where Lightning's loop sets one: the loader
    batch moves (``layout``) and the loop validates every integer ``val_check_interval``
    batches within epochs, over a loader of known length (``loader_samples`` on one rank);
    ``None`` otherwise (the Trainer's arguments of those names). Cost: ``O(log S)``."""
    if not (
        layout.mechanism is BatchMechanism.LOADER
        and isinstance(val_check_interval, int)
        and not isinstance(val_check_interval, bool)
        and check_val_every_n_epoch is not None
        and limit_val_batches
        and loader_samples is not None
    ):
        return None
    loop = LoopBatching(val_check_interval, loader_samples, drop_last, limit_train_batches)
    return val_check_cap(
        loop,
        multiple=layout.multiple,
        accumulation=layout.accumulation,
        world_size=layout.world_size,
    )


def control_limits(
    *,
    initial_lr: float,
    initial_batch: int,
    lr_min: float | None,
    lr_max: float | None,
    batch_min: int | None,
    batch_max: int | None,
    max_change: float,
    samples_per_epoch: int,
    unit: int,
    samples_per_step: int,
    damping: float = 1.0,
    pinned: bool = False,
    cap: int | None = None,
) -> ControlLimits:
    """The callback's clamps from its options (``None``: the default) and the run.

    - ``η ∈ [lr_min, lr_max]``, by default ``[η₀/1000, η₀]`` (``η₀ = initial_lr``), scaled by
      ``1 − dampening`` (``damping``; SGD's, or ``1 − β₁`` for the Adam family) as the decision
      sees the learning rate;
    - ``B ∈ [batch_min, batch_max]``, by default ``[B₀, samples per epoch]``, never above an
      epoch and at least one ``unit`` (the step of ``B``);
    - ``pinned`` (the loader ignores the batch attribute and accumulation is not the
      callback's): ``B`` stays where it is;
    - ``cap`` (:func:`val_check_cap`): Lightning would refuse a larger loader batch, which
      wins over ``batch_min``; where no multiple of the unit fits, the decision holds ``B``.

    Cost: O(1).
    """
    lr_max_ = lr_max if lr_max is not None else initial_lr
    lr_min_ = lr_min if lr_min is not None else min(lr_max_, initial_lr) / 1000
    per_epoch = max(samples_per_epoch, unit)
    high = min(batch_max or per_epoch, per_epoch)
    low = min(batch_min or initial_batch, high)
    high = max(high, unit, low)
    if pinned:
        low = high = samples_per_step
    elif cap is not None and cap < high:
        high = max(cap, 1)
        low = min(low, high)
    return ControlLimits(
        lr_min=lr_min_ * damping,
        lr_max=lr_max_ * damping,
        batch_min=max(low, 1),
        batch_max=high,
        batch_multiple=unit,
        max_change=max_change,
    )

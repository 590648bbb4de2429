r"""Has SGD thermalized in its basin? A trend test of the training loss against the noise floor.

Pure maths (docs/theory.md section "The equilibrium regime"); the per-step sums that feed it
are kept on the device by :class:`kramers_callback._loss_blocks.LossBlocks`.

At a fixed temperature SGD relaxes to the stationary distribution of its basin, whose mean
loss sits a noise floor ``F`` above the bottom (:func:`kramers_callback.noise.floor.noise_floor`).
Cooling by ``r`` buys ``G = (1 − r)F``; staying where it is buys whatever the loss still falls.
The walker counts as **thermalized** when the drop that the training loss's own trend predicts
for one more window is no larger than what a cooling step buys, or than the trend's own noise:

.. math::

    E = \frac{\max(0, -\hat b)\,W}{\max\big(G,\ z\,\operatorname{se}(\hat b)\,W\big)} \le 1,
    \qquad z = 2,

with ``b̂`` the least-squares slope of the block means of the per-batch training losses
against the samples seen, over the last half of the dwell at the current temperature (at least
``min_blocks`` blocks), ``W`` that window's length in samples, and ``se(b̂)`` from the
block-to-block noise of the block means (the batch-means method, which stays honest when
momentum or a slow mode correlates successive losses, as long as a block is longer than the
correlation; :func:`loss_trend`).
"Descending" is the complement: the loss still falls by more than its noise and by more than
cooling would give. Discarding the first half of the dwell is the usual burn-in rule of MCMC
output analysis (Geweke 1992): the relaxation right after a change of temperature is not the
stationary state.

In the first dwell, from the initialisation, a flat window may be a pause of the descent (an
early plateau) rather than a basin. There the test also asks one of two things: that
equipartition vouch for a basin whose bottom the network can fit, ``F ≥ L/2``; or, for a
network that cannot fit its data (``L₀ ≫ F``), that the window be flat on evidence twice: the
trend *resolved* at the scale of one cooling step, ``z·se(b̂)·W < G`` (so that ``E ≤ 1`` is
not the mere absence of evidence of a descent), at this epoch end and at the previous one.

Why this test (measured alternatives in docs/theory.md): it needs no weight decay (the
fluctuation–dissipation relation of Yaida 2019 does), holds with momentum (Pflug's sign test
does not), and its threshold is the physical quantity a cooling step buys: it does not fire on
a loss that still falls by more than cooling would give, and the noise floor keeps a slow drift
that is worth less than a cooling step from holding it off when large batches make the batch
losses quiet (where a pure significance test of the slope never fires).

Cost: ``O(blocks)`` per test, on the host, from one read of the device sums per epoch.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from kramers_callback._validation import check_positive_int
from kramers_callback.noise.floor import COOLING_FACTOR, cooling_gain, noise_floor
from kramers_callback.noise.temperature import effective_lr
from kramers_callback.observation import LossBlock, Observation

__all__ = [
    "FIRST_DWELL_FLOOR_SHARE",
    "NOISE_Z",
    "EquilibriumReading",
    "EquilibriumSignal",
    "LossBlock",
    "equilibrium_test",
    "loss_trend",
    "trend_window",
    "window_noise_trace",
]

NOISE_Z = 2.0
"""Standard errors of the trend within which a drop counts as noise (a two-sided 95% band)."""
FIRST_DWELL_FLOOR_SHARE = 0.5
"""In the first dwell, thermalized also needs the floor to be at least this share of the loss,
or a window flat on evidence at two epoch ends (:func:`equilibrium_test`,
``min_floor_share``)."""


@dataclass(frozen=True)
class EquilibriumReading:
    """One equilibrium test."""

    statistic: float
    """``E`` of the module docstring: thermalized when ``≤ 1``; ``nan`` when undefined."""
    thermalized: bool
    slope: float
    """Loss per sample over the window (negative: still descending)."""
    slope_error: float
    window_samples: float
    loss: float
    """Mean training loss over the window (``nan`` before there is one)."""
    floor: float
    """``F``, the noise floor the test compared with."""
    gain: float
    """``G = (1 − r)F``, the loss one cooling step removes."""
    num_blocks: int
    reason: str
    """Why it is (not) thermalized, for the history."""
    resolved: bool = False
    """``E ≤ 1`` on evidence: the trend's noise ``z·se(b̂)·W`` is below the gain ``G``, so the
    test could tell a cooling step's worth of descent from none."""


def loss_trend(blocks: Sequence[LossBlock]) -> tuple[float, float]:
    r"""Least-squares slope of the block means against their positions, and its standard error.

    .. math::

        \hat b = \frac{\sum_j (x_j - \bar x)(y_j - \bar y)}{\sum_j (x_j - \bar x)^2},\qquad
        \operatorname{se}(\hat b)^2 = \frac{\hat\sigma^2}{\sum_j (x_j - \bar x)^2},\qquad
        \hat\sigma^2 = \frac{\sum_{j} (r_{j+1} - r_j)^2}{2(m - 1)}

    with ``r_j`` the residuals of the fit. ``σ̂²`` is von Neumann's mean square successive
    difference (von Neumann et al. 1941): it measures the block-to-block noise and, unlike
    the residual variance, is not inflated by a trend that curves inside the window (an
    exponential relaxation), which would otherwise pass a descent off as noise. ``m ≥ 3``
    blocks; ``(nan, nan)`` with fewer or with no spread of positions. Cost: ``O(m)``.
    """
    m = len(blocks)
    if m < 3:
        return math.nan, math.nan
    xs = [b.position for b in blocks]
    ys = [b.mean for b in blocks]
    x_bar = math.fsum(xs) / m
    y_bar = math.fsum(ys) / m
    sxx = math.fsum((x - x_bar) ** 2 for x in xs)
    if not sxx > 0:
        return math.nan, math.nan
    slope = math.fsum((x - x_bar) * (y - y_bar) for x, y in zip(xs, ys, strict=True)) / sxx
    residuals = [y - y_bar - slope * (x - x_bar) for x, y in zip(xs, ys, strict=True)]
    mssd = math.fsum((b - a) ** 2 for a, b in itertools.pairwise(residuals)) / (2 * (m - 1))
    return slope, math.sqrt(mssd / sxx)


def trend_window(dwell: Sequence[LossBlock], min_blocks: int) -> list[LossBlock]:
    """The blocks the test reads: the last half of the dwell, at least ``min_blocks`` (none
    while the dwell is shorter)."""
    n = len(dwell)
    return list(dwell[n - max(min_blocks, n // 2) :]) if n >= min_blocks else []


def window_noise_trace(window: Sequence[LossBlock]) -> float:
    r"""The floor's noise over a window: the mean of its blocks' running ``tr Σ₁``.

    .. math::

        \overline{\operatorname{tr}\Sigma_1} = \frac{1}{m'}\sum_{j:\ \text{finite}}
        \operatorname{tr}\Sigma_1^{(j)}

    over the ``m'`` of the window's ``m`` blocks that carry a finite value. Each block carries
    its epoch's estimate, so an epoch weighs by its share of the window, as its losses weigh in
    the trend. ``nan`` when no block has one. Cost: ``O(m)``.
    """
    values = [b.noise_trace for b in window if math.isfinite(b.noise_trace)]
    return math.fsum(values) / len(values) if values else math.nan


def equilibrium_test(
    dwell: Sequence[LossBlock],
    *,
    floor: float,
    factor: float = COOLING_FACTOR,
    min_floor_share: float = 0.0,
    burn_in: float = 0.0,
    min_blocks: int = 8,
    previous: EquilibriumReading | None = None,
) -> EquilibriumReading:
    r"""Test the blocks since the last change of temperature (module docstring).

    Args:
        dwell: the loss blocks since the temperature last changed, oldest first.
        floor: ``F``, the noise floor at the current temperature
            (:func:`~kramers_callback.noise.floor.noise_floor`); ``nan``: untestable.
        factor: the cooling factor ``r``; the gain is ``G = (1 − r)F``.
        min_floor_share: thermalized also needs ``F ≥ min_floor_share · L``, with ``L`` the
            window's mean loss, or a window :attr:`~EquilibriumReading.resolved` here and in
            ``previous``. The callback asks ``1/2`` in the first dwell, from the
            initialisation: a walker still descending from there is not relaxing in a basin,
            and in a basin whose bottom the network can fit (``L₀ ≈ 0``) equipartition makes
            the floor the whole excess loss (docs/theory.md, "The equilibrium regime"); a
            network that cannot fit its data shows its stationarity on evidence, twice.
        burn_in: samples seen that belong to the initial transient: the test waits until its
            window starts after them. The callback passes the first epoch's samples in the
            first dwell, from the initialisation (docs/theory.md, "The first dwell").
        min_blocks: the smallest window; the test waits until the dwell holds this many.
        previous: the test of the dwell as the previous epoch end had it (without this epoch's
            blocks), for ``min_floor_share``; ``None``: no previous test.

    Returns:
        An :class:`EquilibriumReading`; not thermalized whenever anything is undefined or
        non-finite.
    """
    min_blocks = check_positive_int("min_blocks", min_blocks, minimum=3)
    gain = cooling_gain(floor=floor, factor=factor) if math.isfinite(floor) else math.nan
    n = len(dwell)
    window = trend_window(dwell, min_blocks)
    loss = math.fsum(b.mean for b in window) / len(window) if window else math.nan

    def reading(
        statistic: float,
        slope: float,
        error: float,
        span: float,
        reason: str,
        thermalized: bool = False,
        resolved: bool = False,
    ):
        return EquilibriumReading(
            statistic=statistic,
            thermalized=thermalized,
            slope=slope,
            slope_error=error,
            window_samples=span,
            loss=loss,
            floor=floor,
            gain=gain,
            num_blocks=len(window),
            reason=reason,
            resolved=resolved,
        )

    if not window:
        return reading(math.nan, math.nan, math.nan, 0.0, f"dwell of {n} < {min_blocks} blocks")
    if window[0].position <= burn_in:
        return reading(math.nan, math.nan, math.nan, 0.0, "burn-in")
    if not math.isfinite(loss):
        return reading(math.nan, math.nan, math.nan, 0.0, "non-finite training loss")
    # The window spans from the first block's start to the last block's end: block positions are
    # centres, so add half a block at each side.
    span = window[-1].position - window[0].position
    span += 0.5 * (window[0].samples + window[-1].samples)
    slope, error = loss_trend(window)
    if not (math.isfinite(slope) and math.isfinite(error)):
        return reading(math.nan, slope, error, span, "no trend: blocks without spread")
    if not (math.isfinite(gain) and gain > 0):
        return reading(math.nan, slope, error, span, "no noise floor to compare with")
    drop = max(0.0, -slope) * span
    noise = NOISE_Z * error * span
    statistic = drop / max(gain, noise)
    resolved = statistic <= 1.0 and noise < gain
    vouched = floor >= min_floor_share * loss
    twice = resolved and previous is not None and previous.resolved
    thermalized = statistic <= 1.0 and (vouched or twice)
    if thermalized:
        verdict = "thermalized" if vouched else "thermalized (flat on evidence twice)"
    elif statistic > 1.0:
        verdict = "descending"
    else:
        # An early plateau, or a network that cannot fit its data: wait for the evidence.
        verdict = (
            f"descending from the start (floor below {min_floor_share:g} of the loss, "
            f"{'flat on evidence once' if resolved else 'flat within the noise'})"
        )
    return reading(
        statistic,
        slope,
        error,
        span,
        f"{verdict}: trend drop {drop:.3g} per window vs cooling gain {gain:.3g} and "
        f"trend noise {noise:.3g}",
        thermalized,
        resolved,
    )


class EquilibriumSignal:
    """The equilibrium test of the observation's dwell, at its floor.

    The floor comes from the running noise (``tr Σ₁`` along the trajectory) averaged over the
    test's window, as the trend averages the losses (:func:`window_noise_trace`; the epoch's
    running noise, then the observation's, where the window's blocks carry none), and the knobs
    (:func:`~kramers_callback.noise.floor.noise_floor`); the first dwell, from the
    initialisation, asks a window after the first epoch (the initial transient) and
    :data:`FIRST_DWELL_FLOOR_SHARE`, or else a window flat on evidence here and at the previous
    epoch end (the dwell without the observation's ``epoch_blocks``, tested again at its own
    window's running noise; a previous window without one is no evidence). Cost: that of
    :func:`equilibrium_test`, twice in the first dwell.

    Args:
        factor: the cooling factor ``r`` (``G = (1 − r)F``).
        min_blocks: the smallest window.
    """

    def __init__(self, *, factor: float = COOLING_FACTOR, min_blocks: int = 8) -> None:
        self.factor = factor
        self.min_blocks = min_blocks

    def read(self, observation: Observation) -> EquilibriumReading:
        blocks, fresh = observation.loss_blocks, observation.epoch_blocks
        previous = None
        if observation.first_dwell and 0 < fresh < len(blocks):
            # The previous epoch end's test, recomputed from the checkpointed dwell: from its
            # own window's noise only, since this epoch's noise or estimate is not what that
            # epoch end read.
            previous, _ = self._test(observation, blocks[:-fresh], None, own_noise=True)
        reading, fallback = self._test(observation, blocks, previous)
        if fallback and math.isfinite(reading.floor):
            # Say so: the floor then moves with when the estimates come.
            reason = f"{reading.reason}; floor from noise_source={observation.noise_source}"
            reading = replace(reading, reason=reason)
        return reading

    def _test(
        self,
        observation: Observation,
        blocks: Sequence[LossBlock],
        previous: EquilibriumReading | None,
        *,
        own_noise: bool = False,
    ) -> tuple[EquilibriumReading, bool]:
        """The test of ``blocks`` at their window's floor, and whether that floor fell back to
        the observation's noise (``own_noise``: never; no floor instead)."""
        # The floor of the temperature the window was trained at.
        knobs = observation.dwell_knobs
        if knobs is None:
            knobs = observation.knobs
        # The floor is a stationary average: the running noise averages along the trajectory,
        # where an estimate reads one point on a fixed probe; averaged over the window the
        # trend reads, as the loss is.
        noise = window_noise_trace(trend_window(blocks, self.min_blocks))
        fallback = False
        if not (math.isfinite(noise) or own_noise):
            noise = observation.running_noise_trace
            fallback = not math.isfinite(noise)
            if fallback:
                noise = observation.noise_trace
        floor = math.nan
        if math.isfinite(noise) and noise >= 0:
            floor = noise_floor(
                lr=effective_lr(lr=knobs.lr, momentum=knobs.momentum),
                noise_trace=noise,
                batch_size=knobs.batch_size,
                dataset_size=observation.dataset_size,
            )
        first = observation.first_dwell
        reading = equilibrium_test(
            blocks,
            floor=floor,
            factor=self.factor,
            min_floor_share=FIRST_DWELL_FLOOR_SHARE if first else 0.0,
            burn_in=observation.burn_in_samples if first else 0.0,
            min_blocks=self.min_blocks,
            previous=previous,
        )
        return reading, fallback

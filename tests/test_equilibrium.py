"""The noise floor and the equilibrium test against known answers.

- A quadratic with a chosen Hessian and per-sample noise: the stationary covariance solves the
  Lyapunov equation ``HS + SH = η Σ_B``, so the floor ``½ tr(HS) = η tr Σ_B / 4`` is exact, and
  simulated SGD relaxes to it; the test must reject equilibrium during the descent from far
  away and accept it after burn-in.
- The double well ``x⁴ − 3x² + y²`` at a temperature far below its barrier: inside a well the
  walker is stationary, and the test says so.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch
from lightning_helpers import started_step_statistics
from torch import nn

from kramers_callback._arguments import CallbackArguments
from kramers_callback._batch_size import BatchLayout, BatchMechanism
from kramers_callback._decision_step import DecisionStep
from kramers_callback._loss_blocks import Dwell, LossBlocks
from kramers_callback._step_statistics import EpochStatistics
from kramers_callback.limits import control_limits
from kramers_callback.noise.floor import COOLING_FACTOR, cooling_factor, cooling_gain, noise_floor
from kramers_callback.noise.temperature import isotropic_temperature
from kramers_callback.observation import (
    EstimateSummary,
    Horizon,
    Knobs,
    RunningNoise,
    observe,
    usable_running_noise,
)
from kramers_callback.policies import policy_rule
from kramers_callback.regime import Phase, choose, classify_phase, cooling_value
from kramers_callback.signals import EquilibriumSignal, KramersTargetSignal
from kramers_callback.signals.equilibrium import LossBlock, equilibrium_test, loss_trend
from kramers_callback.stopping import StopReason


def _spd(rng: np.random.Generator, eigenvalues: np.ndarray) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((len(eigenvalues), len(eigenvalues))))
    return (q * eigenvalues) @ q.T


def test_floor_is_half_trace_of_h_times_the_lyapunov_covariance():
    rng = np.random.default_rng(0)
    d, lr, batch = 12, 0.01, 8
    h = _spd(rng, np.geomspace(0.1, 10.0, d))
    sigma_1 = _spd(rng, rng.uniform(0.5, 3.0, d))
    sigma_b = sigma_1 / batch
    s = scipy.linalg.solve_continuous_lyapunov(h, lr * sigma_b)  # H S + S H = η Σ_B
    exact = 0.5 * np.trace(h @ s)
    floor = noise_floor(lr=lr, noise_trace=float(np.trace(sigma_1)), batch_size=batch)
    assert floor == pytest.approx(exact, rel=1e-10)
    # Without replacement the finite-population factor enters as it does for Σ_B.
    n = 100
    finite = noise_floor(lr=lr, noise_trace=1.0, batch_size=batch, dataset_size=n)
    assert finite == pytest.approx(lr * (n - batch) / (batch * (n - 1)) / 4)


def test_cooling_factor_and_gain():
    assert COOLING_FACTOR == 0.5
    assert cooling_factor(max_change=2.0) == 0.5
    assert cooling_factor(max_change=10.0) == 0.5  # the optimum, not the largest allowed
    assert cooling_factor(max_change=1.25) == pytest.approx(0.8)
    assert cooling_gain(floor=0.4) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="max_change must be"):
        cooling_factor(max_change=1.0)
    with pytest.raises(ValueError, match="floor must be"):
        cooling_gain(floor=-1.0)


def _quadratic_sgd(
    *, steps: int, seed: int, start: float = 0.0, lr: float = 0.02, batch: int = 4, d: int = 8
):
    """SGD on ``ℓ_i = ½θᵀHθ + a_iᵀθ`` with centred ``a_i`` (``Σ₁ = Cov(a)``), from ``start``
    along the flattest direction; returns the per-step batch losses and the exact floor."""
    rng = np.random.default_rng(seed)
    h = np.diag(np.geomspace(0.1, 5.0, d))
    cov = np.diag(rng.uniform(1.0, 4.0, d))
    chol = np.linalg.cholesky(cov)
    theta = np.zeros(d)
    theta[0] = start
    losses = np.empty(steps)
    for t in range(steps):
        a_bar = (rng.standard_normal((batch, d)) @ chol.T).mean(axis=0)
        losses[t] = 0.5 * theta @ h @ theta + a_bar @ theta
        theta = theta - lr * (h @ theta + a_bar)
    floor = noise_floor(lr=lr, noise_trace=float(np.trace(cov)), batch_size=batch)
    return losses, floor


def _blocks(losses: np.ndarray, per_block: int, batch: int = 4) -> list[LossBlock]:
    blocks = []
    for start in range(0, len(losses) - per_block + 1, per_block):
        chunk = losses[start : start + per_block]
        positions = batch * (np.arange(start, start + per_block) + 1)
        blocks.append(LossBlock(float(chunk.mean()), float(positions.mean()), batch * per_block))
    return blocks


def test_quadratic_sgd_relaxes_to_the_floor():
    losses, floor = _quadratic_sgd(steps=200_000, seed=1)
    # E[L − L₀] = η tr Σ_B / 4 up to O(ηλ) (η λ_max = 0.1 here) and sampling error.
    assert losses[5000:].mean() == pytest.approx(floor, rel=0.1)


def test_equilibrium_rejected_during_descent_and_accepted_after_burn_in():
    descending, thermalized = [], []
    for seed in range(10):
        # From L₀ = ½·0.1·30² = 45 ≈ 10⁴ F along the flattest mode, whose loss relaxes as
        # e^{−2ηλt} = e^{−t/250}: the first 400 steps are a descent.
        losses, floor = _quadratic_sgd(steps=8000, seed=seed, start=30.0, batch=16)
        early = _blocks(losses[:400], per_block=25, batch=16)
        descending.append(equilibrium_test(early, floor=floor, min_blocks=8))
        # A dwell of 160 blocks, tested on its last 80 (steps 4000–8000, 16 relaxation times
        # of the slowest mode after the start).
        thermalized.append(equilibrium_test(_blocks(losses, 50, batch=16), floor=floor))
    assert all(not r.thermalized and r.statistic > 1 for r in descending)
    assert sum(r.thermalized for r in thermalized) >= 9
    assert all(r.num_blocks == 80 for r in thermalized)


def test_equilibrium_inside_a_double_well_far_below_its_barrier():
    # x⁴ − 3x² + y² with per-sample tilts a_i; T_x = η Var(a_x) / (2B) ≪ ΔL = 9/4.
    rng = np.random.default_rng(3)
    lr, batch, steps = 0.01, 4, 20_000
    cov = np.array([4.0, 1.0])
    theta = np.array([math.sqrt(1.5), 0.0])
    losses, exact = np.empty(steps), np.empty(steps)
    for t in range(steps):
        a_bar = (rng.standard_normal((batch, 2)) * np.sqrt(cov)).mean(axis=0)
        x, y = theta
        exact[t] = x**4 - 3 * x**2 + y**2
        losses[t] = exact[t] + a_bar @ theta  # what the training step sees
        grad = np.array([4 * x**3 - 6 * x, 2 * y]) + a_bar
        theta = theta - lr * grad
    temperature_x = lr * cov[0] / batch / 2
    assert 2.25 / temperature_x > 400  # far below the barrier: no escape in any horizon
    assert theta[0] > 0  # never left its well
    floor = noise_floor(lr=lr, noise_trace=float(cov.sum()), batch_size=batch)
    reading = equilibrium_test(_blocks(losses, 250), floor=floor)
    assert reading.thermalized, reading.reason
    # Inside its well the walker sits at the floor above the minimum L₀ = −9/4 (the batch
    # losses' tilt a_Bᵀθ averages to zero but is far too noisy to show it).
    assert exact[2000:].mean() + 2.25 == pytest.approx(floor, rel=0.15)


def test_loss_trend_is_the_least_squares_slope():
    rng = np.random.default_rng(0)
    xs = np.arange(20.0) * 10
    ys = 3.0 - 0.01 * xs + 0.05 * rng.standard_normal(20)
    blocks = [LossBlock(float(y), float(x), 10) for x, y in zip(xs, ys, strict=True)]
    slope, error = loss_trend(blocks)
    fit = scipy.stats.linregress(xs, ys)
    assert slope == pytest.approx(fit.slope, rel=1e-12)
    residuals = ys - fit.intercept - fit.slope * xs
    mssd = np.sum(np.diff(residuals) ** 2) / (2 * 19)
    assert error == pytest.approx(math.sqrt(mssd / np.sum((xs - xs.mean()) ** 2)), rel=1e-10)
    # For independent noise both spreads estimate the same σ: within sampling error here.
    assert error == pytest.approx(fit.stderr, rel=0.5)
    assert all(math.isnan(v) for v in loss_trend([LossBlock(1.0, 0.0, 1)] * 2))


def test_untestable_readings_are_not_thermalized():
    flat = [LossBlock(1.0 + 0.01 * (-1) ** i, 10.0 * i, 10) for i in range(10)]
    assert equilibrium_test(flat, floor=2.0).thermalized
    short = equilibrium_test(flat[:5], floor=2.0, min_blocks=8)
    assert not short.thermalized and "dwell of 5" in short.reason
    assert not equilibrium_test(flat, floor=math.nan).thermalized
    bad = [*flat[:-1], LossBlock(math.nan, 100.0, 10)]
    assert not equilibrium_test(bad, floor=2.0).thermalized
    # The first-dwell rule: a floor of at least half the loss vouches for a basin at once.
    assert equilibrium_test(flat, floor=0.6, min_floor_share=0.5).thermalized
    # Below it, one flat window is not a basin yet, even on evidence (trend noise 0.03 against
    # a gain of 0.2): it may be a pause of the descent.
    once = equilibrium_test(flat, floor=0.4, min_floor_share=0.5)
    assert once.statistic <= 1 and once.resolved and not once.thermalized
    assert "from the start" in once.reason and "flat on evidence once" in once.reason
    # Flat on evidence at the previous test too: a network that cannot fit its data settles.
    twice = equilibrium_test(flat, floor=0.4, min_floor_share=0.5, previous=once)
    assert twice.thermalized and "flat on evidence twice" in twice.reason
    # Within the noise (a gain of 0.02 below the trend noise) is no evidence, then or before.
    vague = equilibrium_test(flat, floor=0.04, min_floor_share=0.5, previous=once)
    assert vague.statistic <= 1 and not vague.resolved and not vague.thermalized
    assert "flat within the noise" in vague.reason
    assert not equilibrium_test(flat, floor=0.4, min_floor_share=0.5, previous=vague).thermalized


def test_loss_blocks_sum_on_the_device_and_survive_a_checkpoint():
    blocks = LossBlocks(blocks_per_epoch=4)
    blocks.start_epoch(10, torch.device("cpu"))
    losses = torch.linspace(2.0, 1.0, 10)
    seen = 0
    for i, loss in enumerate(losses[:6]):
        seen += 8
        blocks.add(loss, batch_idx=i, samples=8, position=seen)
    state = blocks.state_dict()
    resumed = LossBlocks(blocks_per_epoch=4)
    resumed.start_epoch(10, torch.device("cpu"))
    resumed.load_state_dict(state)
    for target in (blocks, resumed):
        s = seen
        for i, loss in enumerate(losses[6:], start=6):
            s += 8
            target.add(loss, batch_idx=i, samples=8, position=s)
    read, read_resumed = blocks.read(), resumed.read()
    assert read == read_resumed
    # Batches 0–2, 3–4, 5–7, 8–9 fall in blocks 0, 1, 2, 3 (index = i·4 // 10).
    groups = [[0, 1, 2], [3, 4], [5, 6, 7], [8, 9]]
    for block, group in zip(read, groups, strict=True):
        assert block.mean == pytest.approx(float(losses[group].mean()))
        assert block.position == pytest.approx(8 * (np.mean(group) + 1))
        assert block.samples == 8 * len(group)
    dwell = Dwell()
    dwell.extend(read)
    restored = Dwell()
    restored.load_state_dict(dwell.state_dict())
    assert restored.blocks == dwell.blocks


def test_phase_and_cooling_value():
    assert classify_phase(trapped=True, thermalized=False) is Phase.TRAPPED
    assert classify_phase(trapped=False, thermalized=True) is Phase.THERMALIZED
    assert classify_phase(trapped=False, thermalized=False) is Phase.DESCENDING
    # A stalled monitor is the weakest evidence: trapped and thermalized come first.
    assert classify_phase(trapped=False, thermalized=False, stalled=True) is Phase.STALLED
    assert classify_phase(trapped=False, thermalized=True, stalled=True) is Phase.THERMALIZED
    assert classify_phase(trapped=True, thermalized=False, stalled=True) is Phase.TRAPPED
    assert [p.value for p in Phase] == [0, 1, 2, 3]
    assert [p.settled for p in Phase] == [False, True, False, True]
    # F = 0.2 at T = 1; cooling to T_min = 0.5 removes 0.1, a fifth of L = 0.5.
    value = cooling_value(
        floor=0.2, temperature=1.0, coldest_temperature=0.5, loss=0.5, compute_cost=5.0
    )
    assert value.removable == pytest.approx(0.1) and value.relative == pytest.approx(0.2)
    assert value.worth_it  # c · 0.2 = 1
    assert not cooling_value(
        floor=0.2, temperature=1.0, coldest_temperature=0.5, loss=0.5, compute_cost=4.0
    ).worth_it
    free = cooling_value(
        floor=1e-9, temperature=1.0, coldest_temperature=0.5, loss=1.0, compute_cost=0.0
    )
    assert free.worth_it  # c = 0: compute is free, cool down to the coldest setting
    coldest = cooling_value(
        floor=0.2, temperature=0.5, coldest_temperature=0.5, loss=0.5, compute_cost=0.0
    )
    assert coldest.at_coldest and not coldest.worth_it
    assert not cooling_value(
        floor=math.nan, temperature=1.0, coldest_temperature=0.5, loss=1.0, compute_cost=1.0
    ).worth_it


def test_a_window_inside_the_burn_in_is_not_tested_and_one_after_it_is():
    # The thermalized walker of the quadratic: its last 80 blocks pass the test. With the
    # burn-in ending inside that window the test waits; ending before it, the test runs.
    losses, floor = _quadratic_sgd(steps=8000, seed=0, start=30.0, batch=16)
    blocks = _blocks(losses, 50, batch=16)
    assert equilibrium_test(blocks, floor=floor).thermalized
    window_start = blocks[len(blocks) // 2].position
    waiting = equilibrium_test(blocks, floor=floor, burn_in=window_start + 1.0)
    assert not waiting.thermalized and waiting.reason == "burn-in"
    assert math.isnan(waiting.statistic)
    after = equilibrium_test(blocks, floor=floor, burn_in=window_start - 1.0)
    assert after.thermalized and after.statistic <= 1.0


def _signal_reading(
    running: float, *, last_good=None, loss_blocks=(), signal=None, dwell_knobs=None
):
    """The equilibrium signal's reading of an epoch end at η = 0.05, B = 32, after a change."""
    observation = observe(
        epoch=3,
        horizon=Horizon(samples_seen=4800),
        knobs=Knobs(0.05, 32, momentum=0.0, damping=1.0),
        fresh=None,
        running=RunningNoise(noise_trace=running),
        last_good=last_good,
        dataset_size=None,
        dim=10,
        loss_blocks=loss_blocks,
        first_dwell=False,
        dwell_knobs=dwell_knobs,
    )
    return (signal or EquilibriumSignal()).read(observation)


def test_the_floor_reads_the_running_noise_and_names_a_fallback():
    def reading(running: float):
        return _signal_reading(running, last_good=EstimateSummary(status="ok", noise_trace=90.0))

    with_running = reading(40.0)
    expected = noise_floor(lr=0.05, noise_trace=40.0, batch_size=32)
    assert with_running.floor == pytest.approx(expected)
    assert "noise_source" not in with_running.reason
    without = reading(math.nan)  # no window sampled this epoch: the last estimate's noise
    assert without.floor == pytest.approx(noise_floor(lr=0.05, noise_trace=90.0, batch_size=32))
    assert without.reason.endswith("; floor from noise_source=last_estimate")
    # A scheduler outside the callback stepped at this epoch end: η is 0.05 from now on, but
    # the dwell trained at 0.5 with momentum 0.9, B = 64, and the floor is that stationary
    # state's.
    trained = Knobs(0.5, 64, momentum=0.9, damping=1.0)
    stepped = _signal_reading(40.0, dwell_knobs=trained)
    assert stepped.floor == pytest.approx(noise_floor(lr=5.0, noise_trace=40.0, batch_size=64))


def test_the_first_dwell_with_a_floor_below_half_the_loss_settles_only_when_flat_twice():
    # η = 0.05, B = 32 and a running tr Σ₁ of 1024: F = 0.4 against a loss of 1, below half of
    # it, G = 0.2 well above the trend noise of blocks alternating by ±0.01. Epoch 0 is the
    # burn-in; the dwell's last ``epoch_blocks`` are the epoch's own.
    def blocks(shapes, noises):
        return tuple(
            LossBlock(
                mean=shape(j) + 0.01 * (-1) ** j,
                position=100.0 * (16 * e + j + 0.5),
                samples=100,
                noise_trace=noise,
            )
            for e, (shape, noise) in enumerate(zip(shapes, noises, strict=True))
            for j in range(16)
        )

    def reading(shapes, epoch_blocks=16, noises=None):
        observation = observe(
            epoch=len(shapes) - 1,
            horizon=Horizon(samples_seen=1600 * len(shapes)),
            knobs=Knobs(0.05, 32, momentum=0.0, damping=1.0),
            fresh=None,
            running=RunningNoise(noise_trace=1024.0),
            last_good=None,
            dataset_size=None,
            dim=10,
            loss_blocks=blocks(shapes, noises or [1024.0] * len(shapes)),
            epoch_blocks=epoch_blocks,
            first_dwell=True,
            burn_in_samples=1600.0,
        )
        return EquilibriumSignal().read(observation)

    def start(j):
        return 3.0 - 0.1 * j  # the descent from the initialisation

    def flat(j):
        return 1.0

    def falling(j):
        return 1.8 - 0.05 * j

    assert reading([start, flat, flat]).thermalized  # epochs 1 and 2 flat: twice
    assert reading([start, flat, flat]).floor < 0.5 * reading([start, flat, flat]).loss
    # The same dwell without the epoch's own blocks marked: no previous test to agree.
    alone = reading([start, flat, flat], epoch_blocks=0)
    assert not alone.thermalized and "flat on evidence once" in alone.reason
    # A plateau right after a descent (the previous test saw it fall) is not a basin yet.
    paused = reading([start, falling, flat, flat])
    assert paused.resolved and not paused.thermalized
    # The previous test reads its own window's noise: where that epoch sampled none, it is no
    # evidence (this epoch's running noise is not what that epoch end read).
    unread = reading([start, flat, flat], noises=[1024.0, math.nan, 1024.0])
    assert unread.resolved and not unread.thermalized


def test_the_floor_averages_the_running_noise_over_the_test_window():
    # Three epochs of 16 flat blocks whose running noise reads 20, 40 and 60: the window is the
    # last half of the dwell (24 blocks: 8 of the second epoch, 16 of the third), so the floor
    # reads (8·40 + 16·60)/24, not the epoch's 60 nor the observation's running 999.
    def blocks(noises):
        return tuple(
            LossBlock(mean=1.0, position=100.0 * (16 * e + j + 0.5), samples=100, noise_trace=n)
            for e, n in enumerate(noises)
            for j in range(16)
        )

    def reading(loss_blocks, signal=None):
        return _signal_reading(999.0, loss_blocks=loss_blocks, signal=signal)

    def floor(noise):
        return noise_floor(lr=0.05, noise_trace=noise, batch_size=32)

    assert reading(blocks([20.0, 40.0, 60.0])).floor == pytest.approx(floor(160.0 / 3))
    # A longer smallest window (40 blocks: 8 of the first epoch) reaches further back.
    longer = reading(blocks([20.0, 40.0, 60.0]), signal=EquilibriumSignal(min_blocks=40))
    assert longer.floor == pytest.approx(floor((8 * 20 + 16 * 40 + 16 * 60) / 40))
    # Blocks without an epoch noise (a non-finite loss) are left out of the mean.
    assert reading(blocks([20.0, 40.0, math.nan])).floor == pytest.approx(floor(40.0))
    # None in the window: the epoch's running noise (not the estimate's, which the reason
    # would name), as before blocks carried one.
    fallback = reading(blocks([20.0, math.nan, math.nan]))
    assert fallback.floor == pytest.approx(floor(999.0))
    assert "noise_source" not in fallback.reason


def test_the_dwell_keeps_each_blocks_noise_through_a_checkpoint_and_reads_old_ones():
    dwell = Dwell()
    dwell.extend(
        [
            LossBlock(mean=0.5, position=8.0, samples=16, noise_trace=3.0),
            LossBlock(mean=0.4, position=24.0, samples=16),  # no usable noise: nan
        ]
    )
    restored = Dwell()
    buffer = io.BytesIO()
    torch.save(dwell.state_dict(), buffer)
    buffer.seek(0)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert repr(restored.blocks) == repr(dwell.blocks)  # repr: nan == nan
    restored.load_state_dict([[0.5, 8.0, 16.0]])  # a checkpoint from before the noise column
    (old,) = restored.blocks
    assert (old.mean, old.position, old.samples) == (0.5, 8.0, 16)
    assert math.isnan(old.noise_trace)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_the_dwell_tags_each_epochs_blocks_with_its_usable_running_noise(bad):
    # Through StepStatistics, two optimizer steps a window. Epoch 1: per-step gradients ±1
    # about 0, so the two-batch noise is positive. Epoch 2: the same, with one non-finite
    # loss. Epoch 3: one constant gradient, so the noise is 0. No decision may use the last two.
    param = nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([param], lr=0.1)
    steps = started_step_statistics(param, dataset_size=64, num_batches=4, noise_stride=1)
    layout = BatchLayout(BatchMechanism.LOADER, 8, 1, 1, 1)
    step = DecisionStep(CallbackArguments(), policy_rule("lr"))
    noises = []
    for bad_at, sign in ((None, -1.0), (2, -1.0), (None, 1.0)):
        steps.start_epoch(4, layout, torch.device("cpu"))
        for i in range(4):
            steps.count_batch(torch.zeros(8, 1))
            param.grad = torch.full((3,), sign**i)
            steps.add_loss(torch.tensor(bad if i == bad_at else 0.5), i)
            steps.optimizer_step(opt)
        statistics = steps.read_epoch(mean=lambda sums: sums)
        assert statistics.loss_finite == (bad_at is None)
        noises.append(statistics.running.noise_trace)
        step.add_epoch(None, statistics)
    assert noises[0] > 0 and math.isnan(noises[1]) and math.isnan(noises[2])
    tags = [b.noise_trace for b in step.dwell.blocks]
    assert tags[:4] == [noises[0]] * 4 and all(math.isnan(t) for t in tags[4:])


def test_a_running_noise_is_usable_when_positive_finite_and_from_a_finite_epoch():
    assert usable_running_noise(3.0, loss_finite=True) == 3.0
    for noise, finite in ((3.0, False), (0.0, True), (-1.0, True), (math.inf, True)):
        assert math.isnan(usable_running_noise(noise, loss_finite=finite))


def test_knobs_changed_from_outside_the_callback_start_a_new_dwell():
    """An LR scheduler under the batch or observe policy moves the temperature between epoch
    ends: the blocks trained before the change are another stationary state's."""
    step = DecisionStep(CallbackArguments(), policy_rule("batch"))
    block = LossBlock(mean=0.5, position=8.0, samples=16)
    statistics = EpochStatistics(
        RunningNoise(noise_trace=3.0), loss_finite=True, loss_blocks=(block,) * 4
    )
    lengths = []
    for knobs in (
        Knobs(0.1, 16, momentum=0.9),
        Knobs(0.1, 16, momentum=0.9),  # unchanged: the dwell grows
        Knobs(0.01, 16, momentum=0.9),  # η from outside
        Knobs(0.01, 32, momentum=0.9),  # B from outside
        Knobs(0.01, 32, momentum=0.5),  # β from outside: another η/(1 − β)
        Knobs(0.01, 32, momentum=0.5),
    ):
        step.note_epoch_knobs(knobs)
        step.add_epoch(None, statistics)
        lengths.append(len(step.dwell.blocks))
    assert lengths == [4, 8, 4, 4, 4, 8]


NOISE, DIM, BATCH, SIZE = 400.0, 10, 64, 4000
"""A trapping epoch end: ``tr Σ₁``, ``d``, ``B`` and ``N`` at η = 0.05."""


def _trapping(running: float, *, loss_blocks=(), rule: str = "batch", **choice):
    """The regime at epoch 14 of 30 after a good estimate with one pathway whose barrier is
    within reach, at the running noise ``running``, deciding under ``rule``."""
    temperature = isotropic_temperature(
        lr=0.05, noise_trace=NOISE, dim=DIM, batch_size=BATCH, dataset_size=SIZE
    )
    good = EstimateSummary(
        status="ok",
        temperature=temperature,
        noise_trace=NOISE,
        lambda_max=5.0,
        lr_eff=0.05,
        batch_size=BATCH,
        dim=DIM,
        finite=True,
        pathway_barriers=(0.02,),
        pathway_curvatures=(5.0,),
        pathway_barrier_curvatures=(-2.0,),
        pathway_temperatures=(temperature,),
    )
    limits = control_limits(
        initial_lr=0.05, initial_batch=32, lr_min=None, lr_max=None, batch_min=None,
        batch_max=None, max_change=2.0, samples_per_epoch=SIZE, unit=1, samples_per_step=BATCH,
    )  # fmt: skip
    observation = observe(
        epoch=14,
        horizon=Horizon(samples_seen=14 * SIZE, samples_left=16 * SIZE),
        knobs=Knobs(0.05, BATCH),
        fresh=None,
        running=RunningNoise(noise_trace=running),
        last_good=good,
        dataset_size=SIZE,
        dim=DIM,
        loss_blocks=tuple(loss_blocks),
        first_dwell=False,
    )
    assert observation.noise_source == "running"
    target = KramersTargetSignal().read(observation)
    assert target.now is not None  # trapped: the barrier is within reach
    options = {"equilibrium": equilibrium_test([], floor=math.nan), "compute_cost": 0.0, **choice}
    regime = choose(
        observation,
        rule=policy_rule(rule),
        limits=limits,
        target=target,
        factor=COOLING_FACTOR,
        **options,
    )
    return regime, target, temperature


def test_the_trapped_move_compares_the_target_with_the_estimates_own_temperature():
    """Between estimates the running noise may read far off (a few two-batch pairs an epoch at a
    large B). The annealing target comes from the last estimate's pathways, so the batch policy's
    move must not depend on that reading: the same B for a running noise ×100 or ÷100."""

    def decided(running: float):
        regime, target, temperature = _trapping(running)
        assert regime.phase is Phase.TRAPPED
        # What the decision read, and the callback logs: the estimate's noise at the knobs.
        used = regime.observation
        assert used is not None and used.noise_source == "last_estimate"
        assert used.temperature == pytest.approx(temperature)
        return regime.record.decision, target.now

    (low, low_target), (high, high_target) = decided(NOISE / 100), decided(NOISE * 100)
    # T_c and T* never depended on the reading (every T_v scales with it).
    assert low_target.critical_temperature == pytest.approx(high_target.critical_temperature)
    assert low_target.temperature == pytest.approx(high_target.temperature)
    assert low.batch_size == high.batch_size != BATCH  # a move, the same for both readings


def test_a_trapped_walker_thermalized_with_nothing_worth_cooling_is_settled():
    # Settled comes from the signals, not the phase: the stop rule may then end the run once
    # the trapped pathways' escapes are not worth waiting for either (k·R·c < 1).
    flat = [LossBlock(0.5, (i + 0.5) * 250, 250, NOISE) for i in range(16)]
    equilibrium = equilibrium_test(flat, floor=0.005)
    assert equilibrium.thermalized
    regime, _, _ = _trapping(NOISE, loss_blocks=flat, equilibrium=equilibrium, compute_cost=1.0)
    assert regime.phase is Phase.TRAPPED and not regime.cooling.worth_it
    assert regime.settled is StopReason.COOLING_NOT_WORTH

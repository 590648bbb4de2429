"""Overhead budget: spacing and sizing of estimates from measured time, counted work as the
predictor."""

from __future__ import annotations

import io
import itertools
import math

import pytest
import torch

from kramers_callback._budget import (
    FIRST_BY_EPOCH,
    GRADIENT_PASSES,
    HVP_PASSES,
    SPACING,
    EstimateSize,
    OverheadBudget,
    estimate_work,
    training_work,
)

FULL = EstimateSize(
    probe_size=256,
    probe_batch_size=64,
    top_k=3,
    max_products=300,
    compute_trace=True,
    max_trace_samples=100,
    max_scan_evals=60,
)


def test_counted_work():
    assert training_work(10) == 30.0
    # 7 products and 12 batch forwards over 40 samples in 4 batches.
    expected = 40 * (HVP_PASSES * 7 + GRADIENT_PASSES) + 12 * 10
    assert estimate_work(num_hvp=7, num_forward=12, num_samples=40, num_batches=4) == expected


def test_ladder_shrinks_to_a_floor():
    ladder = FULL.ladder()
    assert ladder[0] == FULL and len(ladder) > 2
    bounds = [s.bound() for s in ladder]
    assert all(a > b for a, b in itertools.pairwise(bounds))
    last = ladder[-1]
    assert (last.probe_size, last.top_k, last.compute_trace) == (32, 1, False)
    assert (last.max_products, last.max_scan_evals) == (20, 10)
    assert last.shrunk() == last
    assert all(s.probe_batch_size <= s.probe_size for s in ladder)


def test_unlimited_budget_always_runs_full_size():
    budget = OverheadBudget(math.inf, FULL)
    for epoch in range(3):
        budget.add_training(100)
        budget.add_training_seconds(1.0)
        plan = budget.plan(epochs_done=epoch + 1)
        assert plan.run and plan.size == FULL
        budget.record(plan, 1e6, 2.0)
    assert budget.num_estimates == 3 and budget.overhead == pytest.approx(6.0 / 3.0)
    assert budget.counted_overhead == pytest.approx(3e6 / 900)


def simulate(
    beta: float,
    epochs: int,
    *,
    epoch_samples: int = 20_000,
    epoch_seconds: float = 10.0,
    seconds_per_work: float = 1e-4,
    efficiency: float = 0.2,
    max_epochs: float = math.inf,
):
    """A run where every estimate costs ``efficiency`` times its bound, at a fixed speed."""
    budget = OverheadBudget(beta, FULL)
    ran = []
    for epoch in range(epochs):
        for _ in range(epoch_samples // 500):
            budget.add_training(500)
        budget.add_training_seconds(epoch_seconds)
        plan = budget.plan(epochs_done=epoch + 1, epochs_left=max_epochs - epoch - 1)
        if plan.run:
            work = efficiency * plan.size.bound()
            budget.record(plan, work, work * seconds_per_work)
            ran.append((epoch, plan.level))
        else:
            assert "exceeds the overhead credit" in plan.reason
            budget.defer()
    return budget, ran


def test_spacing_keeps_measured_overhead_within_budget():
    for beta in (0.01, 0.05, 0.2):
        budget, ran = simulate(beta, 300)
        assert ran, "at least one estimate must fit 300 epochs"
        assert budget.overhead <= beta
        assert budget.num_deferred == 300 - len(ran)
    # A larger budget buys more estimate time (larger estimates, or more of them).
    spent = [simulate(beta, 300)[0].estimate_seconds for beta in (0.01, 0.05, 0.2)]
    assert spent[0] < spent[1] < spent[2]


def test_estimates_come_at_least_every_spacing_epochs_where_the_smallest_fits():
    # Each epoch is 10 s; at 5% one SPACING-epoch share is 1.5 s, enough for a small size.
    budget, ran = simulate(0.05, 30)
    epochs = [e for e, _ in ran]
    assert epochs[0] <= FIRST_BY_EPOCH - 1
    assert all(b - a <= SPACING for a, b in itertools.pairwise(epochs))
    assert budget.overhead <= 0.05 + 1e-12


def test_first_estimate_by_the_second_epoch_borrows_from_the_horizon():
    # The smallest estimate costs more than two epochs' credit, less than the horizon's.
    slow = 2 * 0.05 * 10.0 * 2 / (0.2 * FULL.ladder()[-1].bound())
    budget, ran = simulate(0.05, 20, seconds_per_work=slow, max_epochs=20)
    assert ran[0][0] == FIRST_BY_EPOCH - 1  # the end of the second epoch (0-based 1)
    assert budget.overhead <= 0.05 + 1e-12  # repaid by the end of the horizon
    # Without a horizon to borrow from (a 2-epoch budget), the smallest size runs once, to
    # measure what an estimate really costs.
    _, short = simulate(0.05, 2, seconds_per_work=slow, max_epochs=2)
    assert short == [(FIRST_BY_EPOCH - 1, len(FULL.ladder()) - 1)]


def test_spacing_is_deterministic_for_the_same_times():
    (first, ran_first), (second, ran_second) = simulate(0.05, 200), simulate(0.05, 200)
    assert ran_first == ran_second and first.state_dict() == second.state_dict()


def test_sizing_picks_the_largest_size_that_fits_the_spacing_share():
    sizes = FULL.ladder()
    for expected in (0, 1, len(sizes) - 1):
        # One epoch whose share 0.05·SPACING·t_epoch just fits size `expected`, at 1 µs per
        # counted sample-pass of training.
        rate = 1e-6
        seconds = sizes[expected].bound() * rate / (0.05 * SPACING) * 1.0001
        budget = OverheadBudget(0.05, FULL)
        budget.add_training(round(seconds / rate / 3))
        budget.add_training_seconds(seconds)
        plan = budget.plan(epochs_done=1)
        assert plan.level == expected
    # A cheap previous estimate (warm start) lowers every prediction.
    budget.record(plan, 0.1 * sizes[-1].bound(), 1.0)
    assert budget.predicted(FULL) == pytest.approx(0.1 * FULL.bound())


def test_no_plan_before_training_time_is_measured():
    plan = OverheadBudget(0.05, FULL).plan(epochs_done=1)
    assert not plan.run and "no training time" in plan.reason


def test_state_round_trip_loads_with_weights_only():
    budget, _ = simulate(0.05, 50)
    buffer = io.BytesIO()
    torch.save(budget.state_dict(), buffer)
    buffer.seek(0)
    restored = OverheadBudget(0.05, FULL)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.state_dict() == budget.state_dict()


@pytest.mark.parametrize("bad", [0.0, -0.1, float("nan"), "x"])
def test_bad_budget(bad):
    with pytest.raises(ValueError, match=r"overhead_budget must be a number > 0 \(inf: no limit\)"):
        OverheadBudget(bad, FULL)

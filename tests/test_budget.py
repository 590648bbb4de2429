"""Overhead budget: deterministic spacing and sizing of estimates from counted work."""

from __future__ import annotations

import io
import itertools
import math

import pytest
import torch

from kramers_callback._budget import (
    GRADIENT_PASSES,
    HVP_PASSES,
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
    assert last.shrunk() == last
    assert all(s.probe_batch_size <= s.probe_size for s in ladder)


def test_unlimited_budget_always_runs_full_size():
    budget = OverheadBudget(math.inf, FULL)
    for _ in range(3):
        budget.add_training(100)
        plan = budget.plan(epoch_samples=100)
        assert plan.run and plan.size == FULL
        budget.record(plan, 1e6)
    assert budget.num_estimates == 3 and budget.overhead == pytest.approx(3e6 / 900)


def simulate(beta: float, epochs: int, *, epoch_samples: int = 20_000, efficiency: float = 0.2):
    """A run where every estimate costs ``efficiency`` times its bound."""
    budget = OverheadBudget(beta, FULL)
    ran = []
    for epoch in range(epochs):
        for _ in range(epoch_samples // 500):
            budget.add_training(500)
        plan = budget.plan(epoch_samples=epoch_samples)
        if plan.run:
            budget.record(plan, efficiency * plan.size.bound())
            ran.append((epoch, plan.level))
        else:
            assert "exceeds the overhead credit" in plan.reason
            budget.defer()
    return budget, ran


def test_spacing_keeps_counted_overhead_within_budget():
    for beta in (0.01, 0.05, 0.2):
        budget, ran = simulate(beta, 300)
        assert ran, "at least one estimate must fit 300 epochs"
        assert budget.overhead <= beta
        assert budget.num_deferred == 300 - len(ran)
    # A larger budget buys more estimates.
    assert len(simulate(0.2, 300)[1]) > len(simulate(0.05, 300)[1]) > len(simulate(0.01, 300)[1])


def test_spacing_is_deterministic():
    (first, ran_first), (second, ran_second) = simulate(0.05, 200), simulate(0.05, 200)
    assert ran_first == ran_second and first.state_dict() == second.state_dict()


def test_sizing_picks_the_largest_size_that_fits_an_epoch_share():
    budget = OverheadBudget(0.05, FULL)
    sizes = FULL.ladder()
    cases = [(10**9, 0), (int(2 * sizes[1].bound() / 0.15), 1), (10, len(sizes) - 1)]
    for samples, expected in cases:
        plan = budget.plan(epoch_samples=samples)
        assert plan.level == expected, samples
    # A cheap previous estimate (warm start) lowers every prediction.
    budget.record(budget.plan(epoch_samples=10), 0.1 * sizes[-1].bound())
    assert budget.predicted(FULL) == pytest.approx(0.1 * FULL.bound())


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

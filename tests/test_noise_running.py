"""The running two-batch estimator (kramers_callback.noise.running)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from kramers_callback.noise import (
    RunningNoiseEstimator,
    finite_population_factor,
    two_batch_gradient_norm_sq,
    two_batch_noise_trace,
)

DTYPE = torch.float64


def _per_sample_gradients(n: int = 10, seed: int = 0) -> torch.Tensor:
    """Exact per-sample gradients ``r_i x_i`` of ``½(x_iᵀθ − y_i)²`` at a fixed θ."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=DTYPE)
    y = x @ torch.tensor([1.0, -1.0, 0.5], dtype=DTYPE) + torch.randn(n, generator=g, dtype=DTYPE)
    theta = torch.tensor([0.5, 0.2, -0.3], dtype=DTYPE)
    return (x @ theta - y)[:, None] * x


def _targets(grads: torch.Tensor) -> tuple[float, float]:
    """The data set's ``Σ₁`` (``1/N``, docs/theory.md section 2.3) trace and its exact ``‖g‖²``."""
    mean = grads.mean(0)
    return float((grads - mean).square().sum(1).mean()), float(mean.square().sum())


def _relative_errors(metric: RunningNoiseEstimator, grads: torch.Tensor) -> tuple[float, float]:
    out = metric.compute()
    trace, norm_sq = _targets(grads)
    return (
        abs(float(out["noise_trace"]) - trace) / trace,
        abs(float(out["gradient_norm_sq"]) - norm_sq) / trace,
    )


def _feed_with_replacement(metric, grads, windows, g, batch_sizes=(4,)):
    for _ in range(windows * metric.window):
        b = batch_sizes[int(torch.randint(len(batch_sizes), (1,), generator=g))]
        metric.update(grads[torch.randint(len(grads), (b,), generator=g)].mean(0), b)


def _feed_without_replacement(metric, grads, windows, g, batch_size=3):
    # One shuffled epoch per window: the window's batches are disjoint.
    for _ in range(windows):
        order = torch.randperm(len(grads), generator=g)
        for t in range(metric.window):
            metric.update(grads[order[t * batch_size : (t + 1) * batch_size]].mean(0), batch_size)


@pytest.mark.parametrize("mode", ["with_replacement", "without_replacement", "varying_batch"])
def test_converges_at_fixed_parameters(mode: str) -> None:
    # n = 10 samples: Σ₁ (1/N) and the sample variance (1/(N − 1)) differ by 10%, which the
    # converged estimate must resolve.
    grads = _per_sample_gradients(n=10)
    errors = []
    for windows in (40, 4000):
        g = torch.Generator().manual_seed(1)
        if mode == "without_replacement":
            metric = RunningNoiseEstimator(window=3, dataset_size=10)
            _feed_without_replacement(metric, grads, windows, g)
        else:
            metric = RunningNoiseEstimator(window=2)
            sizes = (2, 3, 5) if mode == "varying_batch" else (4,)
            _feed_with_replacement(metric, grads, windows, g, sizes)
        assert float(metric.num_pairs) == windows
        errors.append(_relative_errors(metric, grads))
    (trace_small, norm_small), (trace_large, norm_large) = errors
    assert trace_large < 0.03 and norm_large < 0.03, errors
    assert trace_large < trace_small / 3 and norm_large < norm_small / 3, errors


def test_update_pair_data_parallel_form() -> None:
    # Four "ranks" with local batches of 3 at the same θ; the big batch is their mean.
    grads = _per_sample_gradients(n=10)
    g = torch.Generator().manual_seed(2)
    metric = RunningNoiseEstimator()
    for _ in range(4000):
        local = [grads[torch.randint(10, (3,), generator=g)].mean(0) for _ in range(4)]
        big = torch.stack(local).mean(0)
        for rank_gradient in local:
            metric.update_pair(rank_gradient.square().sum(), 3, big.square().sum(), 12)
    trace_error, norm_error = _relative_errors(metric, grads)
    assert trace_error < 0.03 and norm_error < 0.03
    assert float(metric.num_pairs) == 4 * 4000


def test_two_batch_formulas_recover_an_exact_line() -> None:
    # ‖G_B‖² = ‖g‖² + tr Σ₁ · x_B exactly: both unknowns come back.
    norm_sq, trace = 0.7, 5.0
    for b_small, b_big, n in ((2, 8, None), (3, 30, 100)):
        x_small = finite_population_factor(batch_size=b_small, dataset_size=n)
        x_big = finite_population_factor(batch_size=b_big, dataset_size=n)
        pair = {
            "small_sq_norm": norm_sq + trace * x_small,
            "small_factor": x_small,
            "big_sq_norm": norm_sq + trace * x_big,
            "big_factor": x_big,
        }
        assert two_batch_noise_trace(**pair) == pytest.approx(trace)
        assert two_batch_gradient_norm_sq(**pair) == pytest.approx(norm_sq)
    # McCandlish et al. 2018, appendix A, with x = 1/B.
    y_small, y_big = 3.0, 1.2
    pair = {
        "small_sq_norm": y_small,
        "small_factor": 1 / 4,
        "big_sq_norm": y_big,
        "big_factor": 1 / 32,
    }
    assert two_batch_gradient_norm_sq(**pair) == pytest.approx((32 * y_big - 4 * y_small) / 28)
    assert two_batch_noise_trace(**pair) == pytest.approx((y_small - y_big) / (1 / 4 - 1 / 32))


def test_drift_bias_matches_the_documented_formula() -> None:
    # SGD on L = ½λ‖θ‖² with isotropic noise: d independent 1-D walkers as the coordinates of
    # one parameter vector. Documented bias (w = 2, with replacement):
    #   E tr Σ̂₁ = tr Σ₁ + η tr(HΣ₁) + B E‖g₁ − g₂‖² / 2,  g₂ − g₁ = −ηH(g₁ + ξ₁).
    lam, s2, b, d = 1.0, 1.0, 4, 4000
    g = torch.Generator().manual_seed(3)
    for eta in (0.5, 0.02):
        var_theta = eta**2 * (s2 / b) / (1 - (1 - eta * lam) ** 2)  # stationary variance
        spread = b * eta**2 * lam**2 * (lam**2 * var_theta + s2 / b) / 2
        predicted = d * (s2 + eta * lam * s2 + spread)
        theta = torch.randn(d, generator=g, dtype=DTYPE) * math.sqrt(var_theta)
        metric = RunningNoiseEstimator(window=2)
        for _ in range(400):
            gradient = lam * theta + torch.randn(d, generator=g, dtype=DTYPE) * math.sqrt(s2 / b)
            metric.update(gradient, b)
            theta = theta - eta * gradient
        estimate = float(metric.compute()["noise_trace"])
        assert estimate == pytest.approx(predicted, rel=0.03), (eta, estimate / (d * s2))
    assert predicted == pytest.approx(d * s2, rel=0.03)  # small η: unbiased to O(η)


@pytest.mark.filterwarnings("error:The ``compute`` method of metric")
def test_state_survives_state_dict_and_clone() -> None:
    grads = _per_sample_gradients()
    g = torch.Generator().manual_seed(4)
    metric = RunningNoiseEstimator(window=2)
    _feed_with_replacement(metric, grads, 50, g)
    state = metric.state_dict()
    assert {"noise_trace_sum", "gradient_norm_sq_sum", "num_pairs", "num_dropped"} <= set(state)

    restored = RunningNoiseEstimator(window=2)
    restored.update_pair(1.0, 1, 0.0, 2)
    restored.compute()  # a cached value that the load must invalidate
    restored.load_state_dict(state)
    for key, value in metric.compute().items():
        torch.testing.assert_close(restored.compute()[key], value)

    clone = copy.deepcopy(metric)
    clone.update_pair(10.0, 1, 1.0, 2)
    assert float(clone.num_pairs) == 51 and float(metric.num_pairs) == 50
    assert float(clone.compute()["noise_trace"]) != float(metric.compute()["noise_trace"])


def test_compute_cache_is_invalidated_by_update_pair() -> None:
    metric = RunningNoiseEstimator()
    metric.update_pair(3.0, 2, 1.0, 4)
    first = float(metric.compute()["noise_trace"])
    metric.update_pair(5.0, 2, 1.0, 4)
    assert float(metric.compute()["noise_trace"]) != first


def test_non_finite_window_is_dropped() -> None:
    grads = _per_sample_gradients()
    clean = RunningNoiseEstimator(window=2)
    dirty = RunningNoiseEstimator(window=2)
    _feed_with_replacement(clean, grads, 20, torch.Generator().manual_seed(5))
    _feed_with_replacement(dirty, grads, 20, torch.Generator().manual_seed(5))
    dirty.update(torch.full((3,), float("inf"), dtype=DTYPE), 4)
    dirty.update(grads[0], 4)
    assert float(dirty.num_dropped) == 1 and float(dirty.num_pairs) == 20
    for key, value in clean.compute().items():
        torch.testing.assert_close(dirty.compute()[key], value)


def test_reset_and_partial_windows() -> None:
    grads = _per_sample_gradients()
    metric = RunningNoiseEstimator(window=3)
    metric.update(grads[0], 1)
    metric.update(grads[1], 1)
    metric.reset()
    metric.update(grads[2], 1)
    metric.update(grads[3], 1)
    assert float(metric.num_pairs) == 0  # the pre-reset steps did not count
    metric.update(grads[4], 1)
    assert float(metric.num_pairs) == 1
    metric(grads[5], 1)  # forward is update
    assert metric.compute()["noise_trace"].dtype == DTYPE


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
def test_nan_before_the_first_pair() -> None:
    metric = RunningNoiseEstimator()
    assert all(math.isnan(float(v)) for v in metric.compute().values())


def test_noise_scale_is_the_ratio_of_the_averages() -> None:
    metric = RunningNoiseEstimator()
    metric.update_pair(3.0, 2, 1.0, 4)  # tr = 8, ‖g‖² = −1
    metric.update_pair(5.0, 2, 3.0, 4)  # tr = 8, ‖g‖² = 1
    out = metric.compute()
    assert float(out["noise_trace"]) == pytest.approx(8.0)
    assert float(out["gradient_norm_sq"]) == pytest.approx(0.0, abs=1e-12)
    assert float(out["noise_scale"]) == math.inf
    metric.update_pair(5.0, 2, 3.5, 4)  # tr = 6, ‖g‖² = 2
    assert float(metric.compute()["noise_scale"]) == pytest.approx((22 / 3) / (2 / 3))


def _two_updates(metric: RunningNoiseEstimator, batch_size: int) -> None:
    metric.update(torch.ones(3), batch_size)
    metric.update(torch.ones(3), batch_size)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda m: RunningNoiseEstimator(window=1), r"window must be an integer ≥ 2, got 1"),
        (
            lambda m: RunningNoiseEstimator(dataset_size=1),
            r"dataset_size must be an integer ≥ 2, got 1",
        ),
        (lambda m: m.update(torch.ones(2, 3), 4), r"gradient must be a flat tensor of shape \[d\]"),
        (lambda m: m.update(torch.ones(3), 0), r"batch_size must be an integer ≥ 1, got 0"),
        (lambda m: m.update_pair(1.0, 4, 0.5, 4), r"big_batch must be > small_batch = 4, got 4"),
        (
            lambda m: (m.update(torch.ones(3), 1), m.update(torch.ones(4), 1)),
            r"gradient must have the 3 entries of the window's earlier gradients, got 4",
        ),
        (
            lambda m: RunningNoiseEstimator(window=2, dataset_size=10).update(torch.ones(3), 11),
            r"batch_size must be ≤ dataset_size = 10, got 11",
        ),
        (
            lambda m: _two_updates(RunningNoiseEstimator(window=2, dataset_size=10), 6),
            r"batch_size must keep a window's 2 batches within dataset_size = 10",
        ),
        (
            lambda m: two_batch_noise_trace(
                small_sq_norm=1.0, small_factor=0.1, big_sq_norm=1.0, big_factor=0.5
            ),
            r"small_factor must be > big_factor = 0.5",
        ),
    ],
)
def test_bad_arguments(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call(RunningNoiseEstimator(window=3))

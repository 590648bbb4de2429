"""Hutchinson and Hutch++ traces: exact cases, convergence, the |trace| stopping rule (float64)."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from reference_problems import (
    DenseOperator,
    chosen_spectrum,
    dense_hessian,
    quadratic_probe,
    tiny_mlp_probe,
)

from kramers_callback.curvature import (
    HessianOperator,
    KrylovBasis,
    deflated_hutchinson_trace,
    hutchinson_trace,
    spectrum_ends,
)
from kramers_callback.curvature.trace import hutchinson_should_stop, mean_and_stderr


def hutchinson_variance(A: torch.Tensor) -> float:
    """``Var[zᵀAz] = 2(‖A‖_F² − Σ A_jj²)`` for Rademacher ``z`` (Hutchinson 1990)."""
    return float(2 * ((A**2).sum() - (torch.diagonal(A) ** 2).sum()))


def test_diagonal_hessian_is_exact_after_the_minimum_samples() -> None:
    # Rademacher probes see a diagonal matrix without error: zᵀDz = tr D for every z.
    A = torch.diag(torch.tensor([3.0, -1.0, 0.5, 2.0], dtype=torch.float64))
    result = hutchinson_trace(HessianOperator(quadratic_probe(A)), min_samples=5)
    assert result.value == pytest.approx(4.5, abs=1e-12)
    assert result.stderr == pytest.approx(0.0, abs=1e-12)
    assert result.converged
    assert result.num_samples == result.num_products == 5


def test_converges_to_the_dense_trace_of_a_rotated_quadratic() -> None:
    A, _ = chosen_spectrum([4.0, 3.0, 2.0, 1.0, 0.5, -0.5, 0.25, 0.1])
    op = HessianOperator(quadratic_probe(A))
    result = hutchinson_trace(op, tol=0.02, max_samples=5000, generator=torch.Generator())
    exact = float(torch.trace(A))
    assert result.converged
    assert result.stderr <= 0.02 * abs(result.value)
    assert abs(result.value - exact) <= 4 * result.stderr
    assert result.num_products == result.num_samples


def test_error_shrinks_with_samples() -> None:
    A, _ = chosen_spectrum([5.0, 2.0, 1.0, 1.0, -0.5, 0.3], seed=1)
    exact = float(torch.trace(A))

    def mean_abs_error(n: int) -> float:
        errors = []
        for seed in range(40):
            op = DenseOperator(A)
            g = torch.Generator().manual_seed(seed)
            r = hutchinson_trace(op, tol=1e-12, min_samples=n, max_samples=n, generator=g)
            assert r.num_samples == n and not r.converged
            errors.append(abs(r.value - exact))
        return statistics.fmean(errors)

    e_small, e_large = mean_abs_error(16), mean_abs_error(256)
    # The standard error scales as n^{-1/2}: 16x the samples should give about 1/4 the error.
    assert e_large < 0.5 * e_small


def test_stderr_matches_the_rademacher_variance_formula() -> None:
    A, _ = chosen_spectrum([3.0, -2.0, 1.5, 0.5, 0.2], seed=2)
    n = 4000
    r = hutchinson_trace(DenseOperator(A), tol=1e-12, min_samples=n, max_samples=n)
    assert r.stderr**2 * n == pytest.approx(hutchinson_variance(A), rel=0.1)


def test_negative_trace_does_not_stop_after_two_samples() -> None:
    # pyhessian 0.1 divides by the signed running mean: with tr H < 0 its test passes at once.
    A, _ = chosen_spectrum([-4.0, -3.0, -2.0, 1.0, -1.0, 0.5], seed=3)
    exact = float(torch.trace(A))
    assert exact < 0
    op = HessianOperator(quadratic_probe(A))
    r = hutchinson_trace(op, tol=0.05, min_samples=2, max_samples=3000)
    assert r.num_samples > 2
    assert r.converged
    assert r.stderr <= 0.05 * abs(r.value)
    assert abs(r.value - exact) <= 4 * r.stderr


def test_max_samples_ends_unconverged_and_honest() -> None:
    A, _ = chosen_spectrum([1.0, -1.0, 1.0, -1.0, 0.01])  # trace ≈ 0: a relative target is far off
    r = hutchinson_trace(DenseOperator(A), tol=1e-3, max_samples=30)
    assert not r.converged
    assert r.num_samples == r.num_products == 30
    assert r.stderr > 1e-3 * abs(r.value)


def test_deterministic_given_the_generator_and_global_rng_untouched() -> None:
    A, _ = chosen_spectrum([2.0, 1.0, 0.5])
    state = torch.get_rng_state()
    a = hutchinson_trace(DenseOperator(A), generator=torch.Generator().manual_seed(7))
    b = hutchinson_trace(DenseOperator(A), generator=torch.Generator().manual_seed(7))
    c = hutchinson_trace(DenseOperator(A), generator=torch.Generator().manual_seed(8))
    assert a == b
    assert a.value != c.value
    assert torch.equal(torch.get_rng_state(), state)


def test_a_budget_below_min_samples_is_all_used() -> None:
    A = torch.diag(torch.tensor([1.0, 2.0], dtype=torch.float64))
    r = hutchinson_trace(DenseOperator(A), min_samples=10, max_samples=3)
    assert r.num_samples == 3 and r.converged and r.value == pytest.approx(3.0)


def test_mean_and_stderr_against_statistics() -> None:
    samples = [1.0, 4.0, -2.0, 3.5, 0.25]
    mean, stderr = mean_and_stderr(samples)
    assert mean == pytest.approx(statistics.fmean(samples))
    assert stderr == pytest.approx(statistics.stdev(samples) / math.sqrt(5))
    assert mean_and_stderr([2.0]) == (2.0, math.inf)


def test_stopping_rule_uses_the_magnitude_of_the_mean() -> None:
    assert hutchinson_should_stop(-10.0, 0.05, 10, 0.01, 10)
    assert not hutchinson_should_stop(-10.0, 0.2, 10, 0.01, 10)
    assert not hutchinson_should_stop(-10.0, 0.05, 9, 0.01, 10)


def test_bad_arguments_raise_value_errors() -> None:
    op = DenseOperator(torch.eye(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"tol must be a finite number > 0, got 0"):
        hutchinson_trace(op, tol=0)
    with pytest.raises(ValueError, match=r"min_samples must be an integer ≥ 2, got 1"):
        hutchinson_trace(op, min_samples=1)
    with pytest.raises(ValueError, match=r"max_samples must be an integer ≥ 2, got 1"):
        hutchinson_trace(op, max_samples=1)
    with pytest.raises(ValueError, match=r"generator must be a torch.Generator or None, got 3"):
        hutchinson_trace(op, generator=3)  # type: ignore[arg-type]


# -- Hutch++: exact on a captured subspace, Hutchinson on the deflated remainder ----------------
def test_deflated_trace_converges_to_the_dense_trace_of_a_tiny_mlp() -> None:
    _, probe = tiny_mlp_probe()
    exact = float(torch.trace(dense_hessian(probe)))
    op = HessianOperator(probe)
    ends = spectrum_ends(op, 3, tol=1e-2, generator=torch.Generator().manual_seed(0))
    assert ends.basis is not None and len(ends.basis) < probe.dim  # a proper subspace
    before = op.num_products
    r = deflated_hutchinson_trace(
        op, ends.basis, tol=0.02, max_samples=3000, generator=torch.Generator().manual_seed(1)
    )
    assert r.converged and r.low_rank_dim == len(ends.basis)
    assert r.num_products == r.num_samples == op.num_products - before
    assert abs(r.value - exact) <= 4 * r.stderr
    assert r.stderr <= 0.02 * abs(r.value)


def test_a_basis_of_the_whole_space_gives_the_exact_trace_without_products() -> None:
    A, Q = chosen_spectrum([3.0, -1.0, 0.5, 0.25])
    op = DenseOperator(A)
    r = deflated_hutchinson_trace(op, KrylovBasis(Q.T.contiguous(), (A @ Q).T.contiguous()))
    assert r.value == pytest.approx(2.75, abs=1e-12)
    assert r.converged and r.num_products == 0 and r.stderr == 0.0


def test_hutchpp_beats_hutchinson_at_equal_products_on_a_few_large_eigenvalues() -> None:
    # Four large eigenvalues dominate ‖H‖_F: the Lanczos basis captures them, leaving a
    # remainder with a small Frobenius norm. Both estimators get the same products in all,
    # the Krylov run's included.
    spectrum = [50.0, 40.0, 30.0, -20.0, *torch.linspace(-0.5, 1.0, 196).tolist()]
    A, _ = chosen_spectrum(spectrum, seed=9)
    exact = float(torch.trace(A))
    errors: dict[str, list[float]] = {"hutchinson": [], "hutch++": []}
    for seed in range(20):
        op = DenseOperator(A)
        g = torch.Generator().manual_seed(seed)
        ends = spectrum_ends(op, 3, tol=1e-3, generator=g)
        samples = 40
        deflated = deflated_hutchinson_trace(
            op, ends.basis, tol=1e-12, min_samples=samples, max_samples=samples, generator=g
        )
        total = op.num_products
        plain = hutchinson_trace(
            DenseOperator(A), tol=1e-12, min_samples=total, max_samples=total, generator=g
        )
        assert plain.num_products == total == ends.num_products + deflated.num_products
        errors["hutch++"].append(abs(deflated.value - exact))
        errors["hutchinson"].append(abs(plain.value - exact))
    assert statistics.fmean(errors["hutch++"]) < 0.25 * statistics.fmean(errors["hutchinson"])

"""Both ends of the spectrum from one Lanczos run, and max_products as a hard cap (float64)."""

from __future__ import annotations

import pytest
import torch
from reference_problems import (
    DenseOperator,
    chosen_spectrum,
    dense_hessian,
    quadratic_probe,
    squared_error,
    tiny_mlp_probe,
)
from torch import nn

import kramers_callback as kc
from kramers_callback.curvature import (
    BACKENDS,
    HessianOperator,
    make_curvature,
    min_eigenpair,
    spectrum_ends,
    top_eigenpairs,
)

BULK = torch.linspace(-0.009, 0.05, 300).tolist()
"""A near-zero bulk just above ``λ_min = −0.01``: relative gap ``10⁻⁴`` of the spread."""


@pytest.fixture(scope="module")
def mlp():
    _, probe = tiny_mlp_probe()
    evals, evecs = torch.linalg.eigh(dense_hessian(probe))
    return probe, evals, evecs


def test_one_run_matches_eigh_at_both_ends_and_beats_two_runs(mlp) -> None:
    probe, evals, evecs = mlp
    assert evals[0] < -0.25 * evals[-1]  # a clearly negative bottom
    g = torch.Generator().manual_seed(1)
    ends = spectrum_ends(HessianOperator(probe), 3, tol=1e-6, generator=g)
    assert ends.converged
    torch.testing.assert_close(ends.top.eigenvalues, evals.flip(0)[:3], rtol=1e-6, atol=0)
    assert float(ends.bottom.eigenvalues[0]) == pytest.approx(float(evals[0]), rel=1e-6)
    assert float((ends.bottom.eigenvectors[0] @ evecs[:, 0]).abs()) > 0.999
    cos = (ends.top.eigenvectors * evecs.flip(1)[:, :3].T).sum(dim=1).abs()
    assert bool((cos > 0.999).all())
    op = HessianOperator(probe)
    top_eigenpairs(op, 3, tol=1e-6, generator=torch.Generator().manual_seed(1))
    min_eigenpair(op, tol=1e-6, generator=torch.Generator().manual_seed(1))
    assert ends.num_products < op.num_products
    # Each end reports when it first passed; the run's total covers both.
    assert max(ends.top.num_products, ends.bottom.num_products) == ends.num_products


def test_warm_start_from_exact_vectors_of_both_ends(mlp) -> None:
    probe, evals, evecs = mlp
    ends = spectrum_ends(
        HessianOperator(probe),
        3,
        top_init=evecs.flip(1)[:, :3].T.contiguous(),
        bottom_init=evecs[:, 0].clone(),
    )
    # k + 1 products span the init, one more looks outside it (a stale span is invariant too).
    assert ends.converged and ends.num_products == 5
    assert float(ends.bottom.eigenvalues[0]) == pytest.approx(float(evals[0]), rel=1e-6)


def test_a_badly_separated_bottom_converges_after_the_top_is_locked() -> None:
    # Top well separated, bottom a small negative eigenvalue at the edge of a near-zero bulk:
    # the top converges long before the bottom, which then has the restarted basis to itself.
    A, _ = chosen_spectrum([10.0, 7.0, 5.0, -0.01, *BULK], seed=3)
    ends = spectrum_ends(DenseOperator(A), 3, tol=1e-3, max_products=2000, basis_size=24)
    assert ends.converged
    assert ends.top.num_products < ends.bottom.num_products == ends.num_products
    assert ends.num_products > 24  # restarted
    torch.testing.assert_close(ends.top.eigenvalues, torch.tensor([10.0, 7.0, 5.0]).double())
    assert float(ends.bottom.eigenvalues[0]) == pytest.approx(-0.01, rel=1e-3)


def test_the_budget_is_a_hard_cap_and_an_unresolved_bottom_is_reported() -> None:
    A, _ = chosen_spectrum([10.0, 7.0, 5.0, -0.01, *BULK], seed=3)
    op = DenseOperator(A)
    ends = spectrum_ends(op, 3, tol=1e-3, max_products=25)
    assert ends.num_products == op.num_products == 25
    assert ends.top.converged and not ends.bottom.converged
    assert float(ends.bottom.residual_norms[0]) > 1e-3 * 0.01


@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_keep_both_ends_within_one_budget(backend: str, mlp) -> None:
    probe, evals, _ = mlp
    budget = {"native": 300, "pyhessian": 3000}[backend]
    with make_curvature(backend, probe) as curvature:
        ends = curvature.spectrum_ends(3, max_products=budget)
        assert ends.num_products == curvature.num_products <= budget
        capped = curvature.spectrum_ends(3, max_products=12)
        assert capped.num_products <= 12
    assert ends.converged
    torch.testing.assert_close(ends.top.eigenvalues, evals.flip(0)[:3], rtol=1e-3, atol=0)
    assert float(ends.bottom.eigenvalues[0]) == pytest.approx(float(evals[0]), rel=1e-3)


def test_dimension_below_k_plus_one_shares_the_last_pair() -> None:
    A, _ = chosen_spectrum([2.0, -1.0], seed=1)
    ends = spectrum_ends(HessianOperator(quadratic_probe(A)), 2)
    torch.testing.assert_close(ends.top.eigenvalues, torch.tensor([2.0, -1.0]).double())
    torch.testing.assert_close(ends.bottom.eigenvalues, torch.tensor([-1.0]).double())


def test_bad_warm_starts_raise_value_errors(mlp) -> None:
    probe, _, _ = mlp
    op = HessianOperator(probe)
    with pytest.raises(ValueError, match=r"top_init must be a tensor of shape \[k, 26\]"):
        spectrum_ends(op, 2, top_init=torch.ones(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"init must be a tensor of shape \[26\], got \(3,\)"):
        spectrum_ends(op, 2, bottom_init=torch.ones(3, dtype=torch.float64))
    assert op.num_products == 0


def test_estimate_max_products_caps_all_curvature_products() -> None:
    # Before the cap covered the whole estimate, each eigensolve had max_products and the
    # trace max_trace_samples more: 52–57 products were reported with max_products=40.
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3)).double()
    x = torch.randn(64, 6, generator=g, dtype=torch.float64)
    y = torch.randn(64, 3, generator=g, dtype=torch.float64)
    for compute_trace in (True, False):
        est = kc.estimate(
            model,
            squared_error,
            [(x[:32], y[:32]), (x[32:], y[32:])],
            lr=0.1,
            batch_size=8,
            max_products=40,
            compute_trace=compute_trace,
        )
        assert est.num_hvp <= 40
    assert est.dim > 40  # the run cannot finish by exhausting the space

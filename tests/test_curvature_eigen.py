"""Native top/min eigenpairs against eigh of dense Hessians and chosen spectra (float64)."""

from __future__ import annotations

import math

import pytest
import torch
from reference_problems import DenseOperator, chosen_spectrum, dense_hessian, tiny_mlp_probe

from kramers_callback._probe import ProbeLoss
from kramers_callback.curvature import HessianOperator, min_eigenpair, top_eigenpairs
from kramers_callback.curvature.krylov import extreme_eigenpairs


@pytest.fixture(scope="module")
def mlp() -> tuple[ProbeLoss, torch.Tensor, torch.Tensor]:
    _, probe = tiny_mlp_probe()
    evals, evecs = torch.linalg.eigh(dense_hessian(probe))
    return probe, evals, evecs


def abs_cosines(U: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """``|⟨u_i, w_i⟩|`` for unit rows (eigenvectors are defined up to sign)."""
    return (U * W).sum(dim=1).abs()


def test_top3_of_a_tiny_mlp_match_eigh(mlp: tuple) -> None:
    probe, evals, evecs = mlp
    op = HessianOperator(probe)
    result = top_eigenpairs(op, 3, tol=1e-6, generator=torch.Generator().manual_seed(1))
    assert result.converged
    torch.testing.assert_close(result.eigenvalues, evals.flip(0)[:3], rtol=1e-6, atol=0)
    assert bool((abs_cosines(result.eigenvectors, evecs.flip(1)[:, :3].T) > 0.999).all())
    torch.testing.assert_close(
        torch.linalg.vector_norm(result.eigenvectors, dim=1), torch.ones(3, dtype=torch.float64)
    )
    assert result.num_products == op.num_products <= 300


def test_default_tolerance_is_within_one_percent(mlp: tuple) -> None:
    probe, evals, _ = mlp
    result = top_eigenpairs(HessianOperator(probe), 3)
    assert result.converged
    rel = (result.eigenvalues - evals.flip(0)[:3]).abs() / evals.flip(0)[:3]
    assert bool((rel < 1e-2).all())


def test_clearly_negative_lambda_min_of_a_tiny_mlp(mlp: tuple) -> None:
    probe, evals, evecs = mlp
    assert evals[0] < -0.25 * evals[-1]  # the case this test is about
    result = min_eigenpair(HessianOperator(probe), tol=1e-6)
    assert result.converged
    assert result.eigenvalues.shape == (1,)
    assert float(result.eigenvalues[0]) == pytest.approx(float(evals[0]), rel=1e-6)
    assert float(abs_cosines(result.eigenvectors, evecs[:, :1].T)[0]) > 0.999


def test_residual_norms_are_the_true_residuals(mlp: tuple) -> None:
    probe, evals, evecs = mlp
    H = evecs @ torch.diag(evals) @ evecs.T
    result = top_eigenpairs(HessianOperator(probe), 2, tol=1e-2)
    U, lam = result.eigenvectors, result.eigenvalues
    true = torch.linalg.vector_norm(U @ H - lam[:, None] * U, dim=1)
    torch.testing.assert_close(result.residual_norms, true, rtol=1e-6, atol=1e-12)
    assert bool((result.residual_norms <= 1e-2 * lam.abs()).all())


def test_chosen_spectrum_gives_exact_extremes() -> None:
    spectrum = [7.0, 5.0, 4.5, 1.0, 0.5, 0.0, -0.2, -3.0] + [0.1 * i for i in range(12)]
    A, _ = chosen_spectrum(spectrum)
    top = top_eigenpairs(DenseOperator(A), 3, tol=1e-10)
    torch.testing.assert_close(top.eigenvalues, torch.tensor([7.0, 5.0, 4.5]).double())
    low = min_eigenpair(DenseOperator(A), tol=1e-10)
    torch.testing.assert_close(low.eigenvalues, torch.tensor([-3.0]).double())
    assert top.converged and low.converged


def test_warm_start_from_exact_eigenvectors_needs_k_plus_one_products(mlp: tuple) -> None:
    probe, _, evecs = mlp
    cold = top_eigenpairs(HessianOperator(probe), 3, generator=torch.Generator().manual_seed(2))
    init = evecs.flip(1)[:, :3].T.contiguous()
    warm = top_eigenpairs(HessianOperator(probe), 3, init=init)
    assert cold.converged and warm.converged
    # k products span the init, one more looks outside it (an invariant span may be stale).
    assert warm.num_products == 4
    assert cold.num_products >= 3 * warm.num_products
    low_cold = min_eigenpair(HessianOperator(probe))
    low_warm = min_eigenpair(HessianOperator(probe), init=evecs[:, 0].clone())
    assert low_warm.converged and low_warm.num_products == 2
    assert low_cold.num_products >= 5


def test_warm_start_from_a_perturbed_basis_beats_cold() -> None:
    # The Hessian "moved": start from eigenvectors of a nearby matrix.
    spectrum = [10.0, 9.0, 8.0] + [1.0 - 0.01 * i for i in range(197)]
    A, Q = chosen_spectrum(spectrum, seed=4)
    noise = torch.randn(200, 200, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    A_moved = A + 0.02 * (noise + noise.T) / 2
    cold = top_eigenpairs(DenseOperator(A_moved), 3, tol=1e-6)
    warm = top_eigenpairs(DenseOperator(A_moved), 3, init=Q[:, :3].T.contiguous(), tol=1e-6)
    exact = torch.linalg.eigvalsh(A_moved).flip(0)[:3]
    for r in (cold, warm):
        assert r.converged
        torch.testing.assert_close(r.eigenvalues, exact, rtol=1e-6, atol=0)
    assert warm.num_products < cold.num_products


def test_init_with_fewer_or_more_rows_than_k(mlp: tuple) -> None:
    probe, evals, evecs = mlp
    one_row = top_eigenpairs(HessianOperator(probe), 3, init=evecs[:, -1:].T.contiguous())
    five_rows = top_eigenpairs(HessianOperator(probe), 3, init=evecs[:, -5:].T.contiguous())
    for r in (one_row, five_rows):
        assert r.converged
        torch.testing.assert_close(r.eigenvalues, evals.flip(0)[:3], rtol=1e-3, atol=0)
    assert five_rows.num_products == 6


def test_warm_start_from_a_stale_eigenvector_still_finds_the_top(mlp: tuple) -> None:
    # An exact eigenvector that is no longer the top one spans an invariant subspace: the
    # residual test alone would accept it. The solver must look outside it.
    # (A stale start just below the top can still pass; see krylov.extreme_eigenpairs.)
    probe, evals, evecs = mlp
    top = top_eigenpairs(HessianOperator(probe), 1, init=evecs[:, 0][None].contiguous())
    assert top.converged
    assert float(top.eigenvalues[0]) == pytest.approx(float(evals[-1]), rel=1e-3)
    low = min_eigenpair(HessianOperator(probe), init=evecs[:, -1].clone())
    assert low.converged
    assert float(low.eigenvalues[0]) == pytest.approx(float(evals[0]), rel=1e-3)


def test_budget_exhausted_is_reported_not_hidden() -> None:
    spectrum = [1.0 - 0.001 * i for i in range(300)]  # a cluster: Lanczos needs many products
    A, _ = chosen_spectrum(spectrum, seed=6)
    op = DenseOperator(A)
    result = top_eigenpairs(op, 2, tol=1e-8, max_products=6)
    assert not result.converged
    assert result.num_products == op.num_products == 6
    assert result.eigenvalues.shape == (2,)
    assert bool((result.residual_norms > 1e-8 * result.eigenvalues.abs()).any())


def test_thick_restarts_still_converge() -> None:
    spectrum = [3.0, 2.9, 2.8] + [2.0 * (1 - i / 400) for i in range(400)]
    A, _ = chosen_spectrum(spectrum, seed=7)
    op = DenseOperator(A)
    result = extreme_eigenpairs(op, 3, largest=True, tol=1e-8, max_products=2000, basis_size=8)
    assert result.converged
    assert result.num_products > 8  # the basis of 8 was restarted
    torch.testing.assert_close(result.eigenvalues, torch.tensor([3.0, 2.9, 2.8]).double())


def test_invariant_subspaces_and_full_dimension() -> None:
    # Rank one: the Krylov space of any start vector is invariant after one step.
    u = torch.tensor([1.0, 2.0, 2.0, 0.0, 0.0], dtype=torch.float64) / 3
    rank_one = top_eigenpairs(DenseOperator(4.0 * torch.outer(u, u)), 3)
    torch.testing.assert_close(rank_one.eigenvalues, torch.tensor([4.0, 0.0, 0.0]).double())
    assert rank_one.converged
    zero = min_eigenpair(DenseOperator(torch.zeros(4, 4, dtype=torch.float64)))
    assert zero.converged and float(zero.eigenvalues[0]) == 0.0
    A, _ = chosen_spectrum([2.0, -1.0, 0.5, 0.25])
    full = top_eigenpairs(DenseOperator(A), 4, tol=1e-12)
    torch.testing.assert_close(full.eigenvalues, torch.tensor([2.0, 0.5, 0.25, -1.0]).double())


def test_float32_operator() -> None:
    A, _ = chosen_spectrum([5.0, 3.0, 1.0, -2.0] + [0.0] * 30, seed=8)
    op = DenseOperator(A.float())
    top = top_eigenpairs(op, 2, tol=1e-4)
    assert top.eigenvalues.dtype == torch.float32 and top.eigenvectors.dtype == torch.float32
    torch.testing.assert_close(top.eigenvalues, torch.tensor([5.0, 3.0]), rtol=1e-4, atol=0)
    low = min_eigenpair(op, tol=1e-4)
    torch.testing.assert_close(low.eigenvalues, torch.tensor([-2.0]), rtol=1e-4, atol=0)


def test_deterministic_given_generator_and_global_rng_untouched(mlp: tuple) -> None:
    probe, _, _ = mlp
    state = torch.get_rng_state()
    a = top_eigenpairs(HessianOperator(probe), 2, generator=torch.Generator().manual_seed(3))
    b = top_eigenpairs(HessianOperator(probe), 2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.eigenvalues, b.eigenvalues)
    assert torch.equal(a.eigenvectors, b.eigenvectors)
    assert a.num_products == b.num_products
    assert torch.equal(torch.get_rng_state(), state)


def test_bad_arguments_raise_value_errors() -> None:
    op = DenseOperator(torch.eye(4, dtype=torch.float64))
    k_rule = r"k must be an integer in \[1, 4\] \(the dimension\), got 0"
    with pytest.raises(ValueError, match=k_rule):
        top_eigenpairs(op, 0)
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 4\]"):
        top_eigenpairs(op, 5)
    with pytest.raises(ValueError, match=r"tol must be a finite number > 0, got -1"):
        top_eigenpairs(op, 1, tol=-1)
    with pytest.raises(ValueError, match=r"tol must be a finite number > 0, got nan"):
        min_eigenpair(op, tol=math.nan)
    with pytest.raises(ValueError, match=r"max_products must be an integer ≥ k = 2, got 1"):
        top_eigenpairs(op, 2, max_products=1)
    with pytest.raises(ValueError, match=r"init must be a tensor of shape \[k, 4\] with k ≥ 1"):
        top_eigenpairs(op, 1, init=torch.ones(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"init must be a tensor of shape \[4\], got \(3,\)"):
        min_eigenpair(op, init=torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"upper_bound must be a finite number or None, got inf"):
        min_eigenpair(op, upper_bound=math.inf)
    assert op.num_products == 0

"""Both curvature backends against dense references; PyHessian's defects kept from the user."""

from __future__ import annotations

import importlib

import pytest
import torch
from reference_problems import (
    chosen_spectrum,
    dense_hessian,
    quadratic_probe,
    squared_error,
    tiny_mlp,
)

from kramers_callback._probe import ProbeLoss
from kramers_callback.curvature import BACKENDS, Curvature, make_curvature
from kramers_callback.curvature.pyhessian_backend import PyHessianOperator


@pytest.fixture(scope="module")
def mlp() -> tuple[ProbeLoss, torch.Tensor, torch.Tensor]:
    model, batches = tiny_mlp()
    probe = ProbeLoss(model, squared_error, batches)
    evals, evecs = torch.linalg.eigh(dense_hessian(probe))
    return probe, evals, evecs


# PyHessian's power iteration needs many more products than Lanczos on this spectrum
# (λ₃ ≈ |λ_min|, so its deflated third step converges slowly).
BUDGET = {"native": 300, "pyhessian": 3000}


@pytest.mark.parametrize("backend", BACKENDS)
def test_top3_and_min_match_eigh(backend: str, mlp: tuple) -> None:
    probe, evals, evecs = mlp
    assert evals[0] < -0.25 * evals[-1]  # λ_min clearly negative
    with make_curvature(backend, probe) as curvature:
        assert isinstance(curvature, Curvature)
        g = torch.Generator().manual_seed(1)
        top = curvature.top_eigenpairs(3, max_products=BUDGET[backend], generator=g)
        low = curvature.min_eigenpair(max_products=BUDGET[backend], generator=g)
    for result in (top, low):
        assert result.converged
        assert result.num_products <= BUDGET[backend]
        assert bool((result.residual_norms <= 1e-3 * result.eigenvalues.abs()).all())
    torch.testing.assert_close(top.eigenvalues, evals.flip(0)[:3], rtol=1e-3, atol=0)
    cos = (top.eigenvectors * evecs.flip(1)[:, :3].T).sum(dim=1).abs()
    assert bool((cos > 0.999).all())
    assert float(low.eigenvalues[0]) == pytest.approx(float(evals[0]), rel=1e-3)
    assert float((low.eigenvectors[0] @ evecs[:, 0]).abs()) > 0.999


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_quadratic_form_and_product_count(backend: str, mlp: tuple) -> None:
    probe, evals, evecs = mlp
    H = evecs @ torch.diag(evals) @ evecs.T
    with make_curvature(backend, probe) as curvature:
        expected = torch.func.grad(probe.mean_loss)(probe.x0)
        torch.testing.assert_close(curvature.gradient, expected, rtol=0, atol=1e-12)
        V = torch.randn(2, probe.dim, generator=torch.Generator().manual_seed(2)).double()
        forms = curvature.quadratic_form(V)
        torch.testing.assert_close(forms, torch.einsum("id,de,ie->i", V, H, V), rtol=1e-9, atol=0)
        assert curvature.num_products == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_warm_start_from_exact_eigenvectors(backend: str, mlp: tuple) -> None:
    probe, _, evecs = mlp
    with make_curvature(backend, probe) as curvature:
        warm = curvature.top_eigenpairs(3, init=evecs.flip(1)[:, :3].T.contiguous())
        cold = curvature.top_eigenpairs(3, max_products=BUDGET[backend])
    # k products span the init, one more looks outside it (an invariant span may be stale).
    assert warm.converged and warm.num_products == 4
    assert cold.num_products >= 3 * warm.num_products


@pytest.mark.parametrize("backend", BACKENDS)
def test_min_warm_start_from_the_exact_eigenvector(backend: str, mlp: tuple) -> None:
    probe, evals, evecs = mlp
    with make_curvature(backend, probe) as curvature:
        warm = curvature.min_eigenpair(init=evecs[:, 0].clone(), upper_bound=float(evals[-1]))
        zeros = curvature.min_eigenpair(
            init=torch.zeros(probe.dim, dtype=torch.float64),
            upper_bound=float(evals[-1]),
            max_products=BUDGET[backend],
        )
    # Lanczos spends one product outside the init's span; power iteration (pyhessian) cannot
    # leave an exact eigenvector, so it stops after one.
    assert warm.converged and warm.num_products == (2 if backend == "native" else 1)
    assert zeros.converged  # an all-zero start falls back to a random one
    assert float(zeros.eigenvalues[0]) == pytest.approx(float(evals[0]), rel=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_trace_converges_to_the_dense_trace(backend: str, mlp: tuple) -> None:
    probe, evals, _ = mlp
    with make_curvature(backend, probe) as curvature:
        result = curvature.trace(tol=0.05, max_samples=3000, generator=torch.Generator())
    assert result.converged
    assert abs(result.value - float(evals.sum())) <= 4 * result.stderr
    assert result.num_products == result.num_samples


def test_both_backends_draw_the_same_trace_probes(mlp: tuple) -> None:
    probe, _, _ = mlp
    results = []
    for backend in BACKENDS:
        with make_curvature(backend, probe) as curvature:
            results.append(curvature.trace(generator=torch.Generator().manual_seed(9)))
    native, pyh = results
    assert native.num_samples == pyh.num_samples
    assert native.value == pytest.approx(pyh.value, rel=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_negative_trace_does_not_stop_after_two_samples(backend: str) -> None:
    A, _ = chosen_spectrum([-4.0, -3.0, -2.0, 1.0, -1.0, 0.5], seed=3)
    with make_curvature(backend, quadratic_probe(A)) as curvature:
        result = curvature.trace(tol=0.05, min_samples=2, max_samples=3000)
    assert result.num_samples > 2
    assert result.converged
    assert abs(result.value - float(torch.trace(A))) <= 4 * result.stderr


def test_pyhessian_own_trace_stops_after_two_samples_on_a_negative_trace() -> None:
    # The defect the backend routes around: pyhessian's test divides by the signed trace.
    A, _ = chosen_spectrum([-4.0, -3.0, -2.0, 1.0, -1.0, 0.5], seed=3)
    op = PyHessianOperator(quadratic_probe(A))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        samples = op.hessian.trace(maxIter=100, tol=1e-3)
    assert len(samples) == 2
    op.close()


def test_pyhessian_backend_ranks_by_value_not_magnitude() -> None:
    A, _ = chosen_spectrum([3.0, 1.0, 0.5, -5.0, 0.2, 0.1], seed=4)
    pyhessian_module = importlib.import_module("pyhessian.hessian")
    op = PyHessianOperator(quadratic_probe(A))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        raw, _ = op.hessian.eigenvalues(maxIter=200, tol=1e-8, top_n=1)
    assert raw[0] == pytest.approx(-5.0, rel=1e-3)  # power iteration finds the largest |λ|
    assert pyhessian_module.hessian_vector_product.__module__ == "pyhessian.utils"
    with make_curvature("pyhessian", quadratic_probe(A)) as curvature:
        top = curvature.top_eigenpairs(2, max_products=2000)
    assert top.converged
    expected = torch.tensor([3.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(top.eigenvalues, expected, rtol=1e-3, atol=0)


def test_pyhessian_min_with_and_without_upper_bound() -> None:
    A, _ = chosen_spectrum([3.0, 1.0, 0.5, -2.0, 0.2, 0.1], seed=5)
    with make_curvature("pyhessian", quadratic_probe(A)) as curvature:
        free = curvature.min_eigenpair(max_products=2000)
        bounded = curvature.min_eigenpair(max_products=2000, upper_bound=3.0)
    # Dominated by a negative eigenvalue: the first power iteration already finds λ_min.
    B, _ = chosen_spectrum([1.0, 0.5, -5.0, 0.2], seed=6)
    with make_curvature("pyhessian", quadratic_probe(B)) as curvature:
        dominant = curvature.min_eigenpair(max_products=2000)
    for result, expected in ((free, -2.0), (bounded, -2.0), (dominant, -5.0)):
        assert result.converged
        assert float(result.eigenvalues[0]) == pytest.approx(expected, rel=1e-3)


def test_pyhessian_leaves_the_user_model_alone() -> None:
    model, batches = tiny_mlp()
    model.train()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    params = [p.detach().clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    probe = ProbeLoss(model, squared_error, batches)
    with make_curvature("pyhessian", probe) as curvature:
        curvature.top_eigenpairs(2, max_products=600)
        curvature.min_eigenpair(max_products=600)
        curvature.trace(max_samples=20)
        wrapper = curvature.operator.module
        assert not wrapper.training  # pyhessian's eval() reached only the wrapper
    assert wrapper.flat.grad is None  # the graph-attached .grad was freed
    assert all(m.training for m in model.modules())
    for p, before in zip(model.parameters(), params, strict=True):
        assert torch.equal(p, before)
        assert torch.equal(p.grad, torch.full_like(p, 0.5))
        assert p.grad.grad_fn is None
    assert torch.equal(torch.get_rng_state(), rng)


def test_pyhessian_runs_in_preconditioned_coordinates(mlp: tuple) -> None:
    model, batches = tiny_mlp()
    scale = torch.linspace(0.5, 2.0, 26, dtype=torch.float64)
    probe = ProbeLoss(model, squared_error, batches, scale=scale)
    exact = torch.linalg.eigvalsh(dense_hessian(probe)).flip(0)[:2]
    with make_curvature("pyhessian", probe) as curvature:
        top = curvature.top_eigenpairs(2, max_products=2000)
    assert top.converged
    torch.testing.assert_close(top.eigenvalues, exact, rtol=1e-3, atol=0)


def test_pyhessian_float32_probe() -> None:
    model, batches = tiny_mlp(torch.float32)
    probe = ProbeLoss(model, squared_error, batches)
    model64, batches64 = tiny_mlp()
    exact = torch.linalg.eigvalsh(dense_hessian(ProbeLoss(model64, squared_error, batches64)))
    with make_curvature("pyhessian", probe) as curvature:
        top = curvature.top_eigenpairs(1, tol=1e-3, max_products=1000)
    assert top.eigenvalues.dtype == torch.float32
    assert float(top.eigenvalues[0]) == pytest.approx(float(exact[-1]), rel=1e-3)


def test_unknown_backend_and_bad_budgets_raise_value_errors(mlp: tuple) -> None:
    probe, _, _ = mlp
    rule = r"backend must be one of \['native', 'pyhessian'\], got 'arpack'"
    with pytest.raises(ValueError, match=rule):
        make_curvature("arpack", probe)
    with make_curvature("pyhessian", probe) as curvature:
        with pytest.raises(ValueError, match=r"max_products must be an integer ≥ 2k = 6, got 5"):
            curvature.top_eigenpairs(3, max_products=5)
        with pytest.raises(ValueError, match=r"max_products must be an integer ≥ 3, got 2"):
            curvature.min_eigenpair(max_products=2)
        with pytest.raises(ValueError, match=r"init must be a tensor of shape \[k, 26\]"):
            curvature.top_eigenpairs(1, init=torch.zeros(1, 25, dtype=torch.float64))
        assert curvature.num_products == 0

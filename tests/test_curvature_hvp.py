"""HessianOperator: products against the dense Hessian of ``probe.mean_loss`` (float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference_problems import dense_hessian, tiny_mlp_probe
from torch import nn

from kramers_callback._probe import ProbeLoss
from kramers_callback.curvature import HessianOperator


def test_matvec_matches_dense_hessian() -> None:
    _, probe = tiny_mlp_probe()
    H = dense_hessian(probe)
    op = HessianOperator(probe)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        v = torch.randn(probe.dim, generator=g, dtype=torch.float64)
        torch.testing.assert_close(op.matvec(v), H @ v, rtol=0, atol=1e-10)
    assert op.num_products == 3


def test_unequal_batches_are_weighted_by_their_size() -> None:
    # Batch means weighted equally would be wrong here: 3 vs 13 samples.
    _, probe = tiny_mlp_probe(split=(3, 13))
    H = dense_hessian(probe)
    op = HessianOperator(probe)
    V = torch.eye(probe.dim, dtype=torch.float64)
    torch.testing.assert_close(op.matmat(V), H, rtol=0, atol=1e-10)
    assert op.num_products == probe.dim


def test_gradient_is_the_mean_probe_gradient() -> None:
    _, probe = tiny_mlp_probe(split=(5, 11))
    op = HessianOperator(probe)
    expected = torch.func.grad(probe.mean_loss)(probe.x0)
    torch.testing.assert_close(op.gradient, expected, rtol=0, atol=1e-12)
    assert not op.gradient.requires_grad


def test_matmat_and_quadratic_form_count_one_product_per_row() -> None:
    _, probe = tiny_mlp_probe()
    H = dense_hessian(probe)
    op = HessianOperator(probe)
    V = torch.randn(4, probe.dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(op.matmat(V), V @ H, rtol=0, atol=1e-10)
    assert op.num_products == 4
    torch.testing.assert_close(
        op.quadratic_form(V), torch.einsum("id,de,ie->i", V, H, V), rtol=0, atol=1e-10
    )
    assert op.num_products == 8


def test_scipy_linear_operator_matches_and_counts() -> None:
    _, probe = tiny_mlp_probe()
    H = dense_hessian(probe).numpy()
    op = HessianOperator(probe)
    A = op.as_linear_operator()
    rng = np.random.default_rng(3)
    v = rng.standard_normal(probe.dim)
    np.testing.assert_allclose(A @ v, H @ v, rtol=0, atol=1e-10)
    X = rng.standard_normal((probe.dim, 3))
    np.testing.assert_allclose(A @ X, H @ X, rtol=0, atol=1e-10)
    assert A.dtype == np.float64
    assert op.num_products == 4


def test_preconditioned_coordinates_give_s_h_s() -> None:
    # With θ = s ⊙ x the Hessian in x is diag(s) H_θ diag(s): derived from the unscaled probe.
    _, plain = tiny_mlp_probe()
    H_theta = dense_hessian(plain)
    s = torch.linspace(0.5, 2.0, plain.dim, dtype=torch.float64)
    _, scaled = tiny_mlp_probe(scale=s)
    op = HessianOperator(scaled)
    V = torch.eye(plain.dim, dtype=torch.float64)
    torch.testing.assert_close(op.matmat(V), s[:, None] * H_theta * s[None, :], rtol=0, atol=1e-10)


def test_float32_probe_agrees_with_float64_dense() -> None:
    _, probe64 = tiny_mlp_probe()
    H = dense_hessian(probe64)
    _, probe32 = tiny_mlp_probe(dtype=torch.float32)
    op = HessianOperator(probe32)
    assert op.dtype == torch.float32
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    hv = op.matvec(v)
    assert hv.dtype == torch.float32
    torch.testing.assert_close(hv.double(), H @ v, rtol=1e-4, atol=1e-4)


def test_user_model_is_left_alone() -> None:
    model, probe = tiny_mlp_probe()
    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    op = HessianOperator(probe)
    op.matvec(torch.ones(probe.dim, dtype=torch.float64))
    assert all(p.grad is None for p in model.parameters())
    assert model.training
    for p, q in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, q)


def test_loss_linear_in_x_has_zero_hessian() -> None:
    class Linear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))

    def loss_fn(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return batch @ model.w

    batches = [torch.ones(2, 3, dtype=torch.float64), torch.ones(3, 3, dtype=torch.float64)]
    op = HessianOperator(ProbeLoss(Linear(), loss_fn, batches))
    assert torch.equal(op.matvec(torch.ones(3, dtype=torch.float64)), torch.zeros(3).double())
    torch.testing.assert_close(op.gradient, torch.ones(3, dtype=torch.float64))


def test_bad_vectors_raise_value_errors_naming_the_argument() -> None:
    _, probe = tiny_mlp_probe()
    op = HessianOperator(probe)
    with pytest.raises(ValueError, match=r"v must be a tensor of shape \[26\], got \(25,\)"):
        op.matvec(torch.zeros(25, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"v must have finite entries"):
        op.matvec(torch.full((26,), float("nan"), dtype=torch.float64))
    with pytest.raises(ValueError, match=r"V must be a tensor of shape \[k, 26\] with k ≥ 1"):
        op.matmat(torch.zeros(26, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"V must be a tensor of shape \[k, 26\]"):
        op.quadratic_form(torch.zeros(0, 26, dtype=torch.float64))
    assert op.num_products == 0


def test_close_releases_the_graph() -> None:
    _, probe = tiny_mlp_probe()
    op = HessianOperator(probe)
    op.close()
    with pytest.raises(RuntimeError, match="closed"):
        op.matvec(torch.zeros(probe.dim, dtype=torch.float64))

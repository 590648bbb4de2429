"""Small float64 problems with known answers, shared by the noise and curvature tests.

Importable by name (``tests/`` is on ``sys.path`` under pytest), like ``lightning_helpers``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kramers_callback._probe import ProbeLoss

DTYPE = torch.float64


# -- a seeded 3-6-3 tanh classifier and its data (the noise estimators) --------------------------
def init_weights(model: nn.Module, seed: int = 0) -> nn.Module:
    """Overwrite every parameter with seeded ``0.7·N(0, 1)`` draws (float64); returns ``model``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=DTYPE) * 0.7)
    return model


def classifier_mlp(seed: int = 0) -> nn.Module:
    """A 3-6-3 tanh MLP (45 parameters) with seeded weights."""
    return init_weights(nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 3)).to(DTYPE), seed)


def classification_data(n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` inputs in ℝ³ and labels in {0, 1, 2}, from a private generator."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g, dtype=DTYPE), torch.randint(0, 3, (n,), generator=g)


def classification_batches(n: int = 23, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``classification_data`` as two probe batches: the first 10 samples, then the rest."""
    x, y = classification_data(n, seed)
    return [(x[:10], y[:10]), (x[10:], y[10:])]


def cross_entropy(model: nn.Module, batch: Any) -> torch.Tensor:
    """Per-sample cross-entropy of an ``(inputs, labels)`` batch."""
    x, y = batch
    return nn.functional.cross_entropy(model(x), y, reduction="none")


def unit_rows(k: int, d: int, seed: int = 5) -> torch.Tensor:
    """``k`` seeded random unit vectors in ℝᵈ, as rows."""
    v = torch.randn(k, d, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    return v / v.norm(dim=1, keepdim=True)


# -- a 3-4-2 tanh regression MLP and dense Hessians (the curvature estimators) -------------------
def squared_error(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Per-sample ``‖f(x) − y‖²``."""
    inputs, targets = batch
    return ((model(inputs) - targets) ** 2).sum(dim=1)


def tiny_mlp(
    dtype: torch.dtype = torch.float64, split: tuple[int, int] = (8, 8)
) -> tuple[nn.Module, list]:
    """A 3-4-2 tanh MLP (26 parameters) away from a minimum, and two probe batches.

    Built off the global RNG (it is forked), so every call returns the same network.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(dtype)
    g = torch.Generator().manual_seed(0)
    n = sum(split)
    inputs = torch.randn(n, 3, generator=g, dtype=torch.float64).to(dtype)
    targets = torch.randn(n, 2, generator=g, dtype=torch.float64).to(dtype)
    a, _ = split
    return model, [(inputs[:a], targets[:a]), (inputs[a:], targets[a:])]


def tiny_mlp_probe(
    dtype: torch.dtype = torch.float64,
    split: tuple[int, int] = (8, 8),
    scale: torch.Tensor | None = None,
) -> tuple[nn.Module, ProbeLoss]:
    """``tiny_mlp`` and the squared-error probe of its two batches."""
    model, batches = tiny_mlp(dtype, split)
    return model, ProbeLoss(model, squared_error, batches, scale=scale, dtype=dtype)


def dense_hessian(probe: ProbeLoss) -> torch.Tensor:
    """The float64 Hessian of ``probe.mean_loss`` at ``probe.x0``."""
    # torch.func.hessian is jacfwd(jacrev(f)); jacrev twice is the same matrix without loading
    # the forward-AD decompositions, which warn about torch.jit.script on recent torch.
    return torch.func.jacrev(torch.func.jacrev(probe.mean_loss))(probe.x0.double())


# -- matrices with a chosen spectrum --------------------------------------------------------------
class DenseOperator:
    """A symmetric matrix as a counted operator: the estimators only see ``matvec``."""

    def __init__(self, A: torch.Tensor) -> None:
        self.A = A
        self.dim = A.shape[0]
        self.dtype = A.dtype
        self.device = A.device
        self.num_products = 0

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.num_products += 1
        return self.A @ v.to(self.dtype)

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        self.num_products += len(V)
        return V.to(self.dtype) @ self.A


def chosen_spectrum(eigenvalues, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``A = Q diag(λ) Qᵀ`` with a seeded random orthogonal ``Q`` (float64); returns ``A, Q``."""
    g = torch.Generator().manual_seed(seed)
    n = len(eigenvalues)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return Q @ torch.diag(torch.as_tensor(eigenvalues, dtype=torch.float64)) @ Q.T, Q


def quadratic_probe(A: torch.Tensor) -> ProbeLoss:
    """``ℓ_i(x) = ½ xᵀAx`` for every sample of two probe batches: ``H = A`` exactly."""

    class Point(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.x = nn.Parameter(torch.linspace(-1, 1, A.shape[0], dtype=torch.float64))

    def loss_fn(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return 0.5 * (model.x @ A @ model.x) * torch.ones(len(batch), dtype=torch.float64)

    return ProbeLoss(Point(), loss_fn, [torch.zeros(3, 1), torch.zeros(5, 1)])

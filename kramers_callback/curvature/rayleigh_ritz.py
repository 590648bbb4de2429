r"""Rayleigh–Ritz extraction and the residual convergence test (pure linear algebra, no autograd).

Given an orthonormal basis ``V`` (rows) of a subspace and the stored products ``HV``, the Ritz
pairs are the eigenpairs of the projected matrix ``T = V H Vᵀ``:

.. math::

    T c_j = \theta_j c_j, \qquad u_j = V^\top c_j, \qquad H u_j = (HV)^\top c_j,
    \qquad r_j = \lVert H u_j - \theta_j u_j \rVert .

Because ``H u_j`` is a combination of stored products, the residual is exact (no extra product
and no reliance on a Lanczos recurrence that loses orthogonality). Source: Parlett, *The
Symmetric Eigenvalue Problem* (1998), ch. 11; Saad, *Numerical Methods for Large Eigenvalue
Problems* (2011), sec. 4.3.
"""

from __future__ import annotations

import torch
from torch import Tensor

ROUNDOFF_FACTOR = 100.0
"""Residuals below ``ROUNDOFF_FACTOR · eps · max|θ|`` are at the round-off level of the products
and count as converged whatever ``|θ_j|`` is (an eigenvalue at ``0`` has no relative accuracy)."""


def ritz_decomposition(T: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues (ascending) and eigenvectors (columns) of the symmetric projected matrix."""
    return torch.linalg.eigh(T)


def ritz_pairs(V: Tensor, HV: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
    """Ritz vectors ``U = Cᵀ V`` and products ``HU = Cᵀ HV`` (rows) for coefficients ``C``."""
    Ct = C.T.to(V.dtype)
    return Ct @ V, Ct @ HV


def residual_norms(U: Tensor, HU: Tensor, theta: Tensor) -> Tensor:
    """``‖H u_j − θ_j u_j‖`` for the rows of ``U`` (float64)."""
    R = HU.double() - theta.to(HU.device, torch.float64)[:, None] * U.double()
    return torch.linalg.vector_norm(R, dim=1)


def convergence_floor(theta_all: Tensor, dtype: torch.dtype) -> float:
    """The round-off floor ``ROUNDOFF_FACTOR · eps(dtype) · max|θ|`` (``max|θ|`` ≤ ``‖H‖₂``)."""
    scale = float(theta_all.abs().max()) if theta_all.numel() else 0.0
    return ROUNDOFF_FACTOR * torch.finfo(dtype).eps * scale


def converged_mask(theta: Tensor, residuals: Tensor, tol: float, floor: float) -> Tensor:
    r"""``r_j ≤ tol · |θ_j|`` or ``r_j ≤ floor``: the relative residual test with a round-off floor.

    .. math:: \lVert H u_j - \theta_j u_j \rVert \le \max(\mathrm{tol}\,|\theta_j|,\ \mathrm{floor})

    For a unit ``u_j`` this bounds the distance from ``θ_j`` to the spectrum by ``tol·|θ_j|``
    (Parlett 1998, Theorem 4.5.1).
    """
    theta = theta.to(residuals.device, torch.float64)
    bound = torch.maximum(tol * theta.abs(), torch.full_like(theta, floor))
    return residuals <= bound

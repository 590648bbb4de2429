"""Result types of the curvature estimators: what was found, whether it converged, what it cost."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass(frozen=True)
class EigenResult:
    """Approximate eigenpairs ``H u_i ≈ λ_i u_i`` of a symmetric operator.

    ``converged`` is ``True`` only when every returned pair meets the residual test
    ``‖H u_i − λ_i u_i‖ ≤ tol · max(|λ_i|, floor)`` (see :mod:`.rayleigh_ritz`); a result that
    ran out of products is still returned, with ``converged=False`` and its residuals.
    """

    eigenvalues: Tensor
    """``Tensor[k]``: descending for the top eigenpairs; the smallest one for the minimum."""
    eigenvectors: Tensor = field(repr=False)
    """``Tensor[k, d]``: unit rows, ``eigenvectors[i]`` belongs to ``eigenvalues[i]``."""
    converged: bool
    num_products: int
    """Hessian-vector products (on the whole probe set) this call used."""
    residual_norms: Tensor
    """``Tensor[k]``: ``‖H u_i − λ_i u_i‖``, from stored products (not from a recurrence)."""


@dataclass(frozen=True)
class TraceResult:
    """A Hutchinson estimate of ``tr H`` and its standard error."""

    value: float
    """Sample mean of ``zᵀ H z`` over Rademacher probes ``z``."""
    stderr: float
    """Standard error of the mean: sample standard deviation ``/ √num_samples``."""
    converged: bool
    """``stderr ≤ tol · |value|`` was reached within ``max_samples`` probes."""
    num_samples: int
    num_products: int

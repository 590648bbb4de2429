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
class KrylovBasis:
    """An orthonormal basis ``V`` (rows) of a subspace and its stored products ``HV``."""

    vectors: Tensor = field(repr=False)
    """``Tensor[m, d]``, orthonormal rows."""
    products: Tensor = field(repr=False)
    """``Tensor[m, d]``: ``products[i] = H vectors[i]``."""

    def __len__(self) -> int:
        return int(self.vectors.shape[0])


@dataclass(frozen=True)
class SpectrumEnds:
    """The top-``k`` and the bottom eigenpair of one Krylov run (see :mod:`.krylov`).

    ``top.num_products`` and ``bottom.num_products`` are the products the run had made when
    that end first met its residual test (all of them if it never did): what that end alone
    cost. They overlap; the run's total is :attr:`num_products`.
    """

    top: EigenResult
    """Eigenvalues descending."""
    bottom: EigenResult
    """The algebraically smallest pair (``k = 1``)."""
    num_products: int
    """Hessian-vector products of the whole run (both ends together)."""
    basis: KrylovBasis | None = None
    """The final search space and its products (``None`` where the backend keeps none): the
    low-rank part of :func:`.deflated_hutchinson_trace`, free of further products."""

    @property
    def converged(self) -> bool:
        return self.top.converged and self.bottom.converged


@dataclass(frozen=True)
class TraceResult:
    """A stochastic estimate of ``tr H`` and its standard error."""

    value: float
    """Hutchinson: sample mean of ``zᵀ H z`` over Rademacher probes ``z``; Hutch++: the exact
    trace over a captured subspace plus that mean over the deflated remainder."""
    stderr: float
    """Standard error of the mean: sample standard deviation ``/ √num_samples``."""
    converged: bool
    """``stderr ≤ tol · |value|`` was reached within ``max_samples`` probes."""
    num_samples: int
    num_products: int
    """Products this call made (the captured subspace's products are not counted again)."""
    low_rank_dim: int = 0
    """Dimension of the subspace whose trace is exact (``0``: plain Hutchinson)."""

r"""Extreme eigenpairs of a symmetric operator: thick-restart Lanczos with stored products.

The solver keeps an orthonormal basis ``V`` and the products ``HV``; after every product it
extracts Ritz pairs (:mod:`.rayleigh_ritz`) and tests the *exact* residual of each wanted pair,
so it stops as soon as the tolerance is met (ARPACK tests only after a full ``ncv``-step
factorisation) and its ``residual_norms`` cost no extra product. The basis grows by the
residual of the first unconverged wanted Ritz pair:

.. math::

    v_{m+1} \propto (I - V^\top V)\,(H u_j - \theta_j u_j) .

All Ritz residuals of a Krylov space are parallel to the Lanczos residual, so from one start
vector this *is* Lanczos with full reorthogonalisation (Parlett 1998, ch. 13), computed by
Rayleigh–Ritz rather than by the three-term recurrence. When the basis is full it is
thick-restarted on the Ritz vectors nearest the wanted end (Wu & Simon 2000, "Thick-restart
Lanczos method for large symmetric eigenvalue problems", SIAM J. Matrix Anal. Appl. 22(2)),
which keeps the Krylov structure.

Warm start: the start vector is the sum of an orthonormal basis of the previous eigenvectors.
If they are exact, ``K_k(H, Σ u_i) = span(u_1 … u_k)`` and ``k`` products suffice; if the
Hessian has moved, Lanczos starts with most of its weight on the wanted subspace. In
development measurements (a perturbed chosen spectrum, and the MLP of the benchmark) this used
fewer products than a Davidson-style start from the whole block (Rayleigh–Ritz on the ``k``
old vectors, then one residual at a time, or all ``k`` residuals at a time), which spends
``k`` products before it filters anything and then refines the pairs one after another.

Compared with ``scipy.sparse.linalg.eigsh`` (ARPACK) and ``lobpcg`` on the same operators
(``benchmarks/bench_eigen_warm_start.py``): at equal residual tolerance it uses as few or fewer
products, cold and warm, and unlike them it reports exact residuals at no extra product.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from kramers_callback.curvature._random import resolve_generator, standard_normal
from kramers_callback.curvature.hvp import CurvatureOperator, check_block
from kramers_callback.curvature.rayleigh_ritz import (
    converged_mask,
    convergence_floor,
    residual_norms,
    ritz_decomposition,
    ritz_pairs,
)
from kramers_callback.curvature.results import EigenResult, KrylovBasis, SpectrumEnds

MIN_BASIS = 20
"""Basis size (like ARPACK's default ``ncv``): ``max(MIN_BASIS, 2w + 1)`` for ``w`` wanted
pairs (both ends together), at most ``d``."""


def check_eigen_arguments(op: CurvatureOperator, k: int, tol: float, max_products: int) -> None:
    """``1 ≤ k ≤ d``, ``tol > 0`` finite, ``max_products ≥ k``."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= op.dim:
        raise ValueError(f"k must be an integer in [1, {op.dim}] (the dimension), got {k!r}")
    if not (isinstance(tol, (int, float)) and not isinstance(tol, bool)) or not (
        math.isfinite(tol) and tol > 0
    ):
        raise ValueError(f"tol must be a finite number > 0, got {tol!r}")
    if isinstance(max_products, bool) or not isinstance(max_products, int) or max_products < k:
        raise ValueError(f"max_products must be an integer ≥ k = {k}, got {max_products!r}")


class _Basis:
    """An orthonormal basis ``V`` (rows), its products ``HV`` and ``T = V H Vᵀ``, grown one
    product at a time."""

    def __init__(self, op: CurvatureOperator, capacity: int) -> None:
        self.op = op
        self.capacity = capacity
        self.V = torch.empty(0, op.dim, dtype=op.dtype, device=op.device)
        self.HV = torch.empty_like(self.V)
        self.T = torch.empty(0, 0, dtype=torch.float64, device=op.device)
        # Below this fraction of its length a vector lies in span(V) up to round-off.
        self._dependent = math.sqrt(torch.finfo(op.dtype).eps)

    def __len__(self) -> int:
        return int(self.V.shape[0])

    def orthogonalize(self, w: Tensor) -> Tensor | None:
        """``w`` made orthonormal to ``V`` (two Gram–Schmidt passes), or ``None`` if dependent."""
        norm0 = torch.linalg.vector_norm(w)
        if not bool(torch.isfinite(norm0)) or float(norm0) == 0.0:
            return None
        for _ in range(2):  # "twice is enough" (Giraud et al. 2005) for full orthogonality
            if len(self):
                w = w - self.V.T @ (self.V @ w)
        norm = torch.linalg.vector_norm(w)
        if float(norm) <= self._dependent * float(norm0):
            return None
        return w / norm

    def append(self, v: Tensor) -> None:
        """Add a unit vector ``v ⟂ V`` and its product (one product)."""
        hv = self.op.matvec(v)
        # T's new column from both sides, averaged: symmetric to round-off whatever the order.
        t = ((self.V @ hv).double() + (self.HV @ v).double()) / 2
        tvv = (v @ hv).double().reshape(1)
        self.T = torch.cat(
            [torch.cat([self.T, t[:, None]], dim=1), torch.cat([t, tvv])[None, :]], dim=0
        )
        self.V = torch.cat([self.V, v[None]])
        self.HV = torch.cat([self.HV, hv[None]])

    def restart(self, C: Tensor, theta: Tensor) -> None:
        """Replace the basis by the Ritz vectors with coefficient columns ``C`` (no product)."""
        self.V, self.HV = ritz_pairs(self.V, self.HV, C)
        self.T = torch.diag(theta)


def warm_start_vector(init: Tensor) -> Tensor:
    """The sum of an orthonormal basis of ``span(init rows)``: one start vector with equal
    weight on every previous eigenvector, whatever their signs and scales."""
    if float(torch.linalg.matrix_norm(init)) == 0.0:
        return init[0]  # all zeros: the caller falls back to a random start
    Q, _ = torch.linalg.qr(init.T)
    return Q.sum(dim=1)


def _end_result(
    theta: Tensor, U: Tensor, residuals: Tensor, ok: Tensor, *, wanted: int, products: int
) -> EigenResult:
    converged = len(theta) == wanted and bool(ok.all())
    U = U / torch.linalg.vector_norm(U, dim=1, keepdim=True)
    return EigenResult(
        eigenvalues=theta.to(U.dtype),
        eigenvectors=U,
        converged=converged,
        num_products=products,
        residual_norms=residuals.to(U.dtype),
    )


def _restart_indices(
    theta: Tensor, n_top: int, n_bottom: int, extra: int, top_done: bool, bottom_done: bool
) -> Tensor:
    """Ritz indices kept by a thick restart: the wanted pairs of each end plus ``extra`` more,
    given to the ends that have not converged (a converged end keeps only its wanted pairs,
    which locks it), split evenly when both have not."""
    ends = [n for n, done in ((n_top, top_done), (n_bottom, bottom_done)) if n and not done]
    share = extra // max(len(ends), 1)
    extra_top = share if n_top and not top_done else 0
    extra_bottom = extra - extra_top if n_bottom and not bottom_done else 0
    if not ends:  # only the warm-start rule keeps it going: extend the ends it wants
        extra_top, extra_bottom = (extra, 0) if n_top else (0, extra)
    m = len(theta)
    top = torch.arange(m - 1, m - 1 - min(m, n_top + extra_top), -1)
    bottom = torch.arange(0, min(m, n_bottom + extra_bottom))
    return torch.unique(torch.cat([bottom, top]))  # ascending, as ``theta`` is


def thick_restart_lanczos(
    op: CurvatureOperator,
    n_top: int,
    n_bottom: int,
    *,
    init: Tensor | None = None,
    tol: float = 1e-3,
    max_products: int = 300,
    generator: torch.Generator | None = None,
    basis_size: int | None = None,
) -> SpectrumEnds:
    r"""The ``n_top`` largest and the ``n_bottom`` smallest eigenpairs from one Krylov space.

    See the module docstring for the method. Every step extracts the Ritz pairs at both ends
    of the same space and tests each end's exact residuals; an end counts as converged when
    all its pairs pass (:func:`.converged_mask`). The basis grows by the residual with the
    largest norm among the unconverged pairs (all are parallel in a Krylov space, so this is
    the Lanczos vector; the largest is the one least spoilt by cancellation). A full basis is
    thick-restarted on the Ritz vectors of both ends (the wanted pairs plus
    ``max(1, (m − w)/2)`` more, given to the end(s) still unconverged): a subset of the Ritz
    vectors of a Krylov space, with the common residual direction, spans a Krylov space again
    (Wu & Simon 2000), so one end that converges early is locked and the space that is left
    serves the other. Stops when both ends pass, the basis is the whole space, or
    ``max_products`` products are spent (a hard cap).

    ``init`` (``Tensor[k', d]``) gives the start vector (:func:`warm_start_vector`); without
    it an ``N(0, I)`` vector from ``generator`` does. Top eigenvalues come back descending,
    bottom ones ascending; ``n_top`` or ``n_bottom`` may be ``0``. Cost: at most
    ``max_products`` products; memory ``2 · basis_size · d`` (basis and products).
    """
    wanted = n_top + n_bottom
    check_eigen_arguments(op, max(n_top, n_bottom, 1), tol, max_products)  # ends may overlap
    generator = resolve_generator(generator)
    capacity = min(op.dim, basis_size if basis_size is not None else max(MIN_BASIS, 2 * wanted + 1))
    capacity = max(capacity, min(op.dim, 2 * wanted))
    extra = max(0, min(capacity - 1, wanted + max(1, (capacity - wanted) // 2)) - wanted)
    start = op.num_products
    basis = _Basis(op, capacity)

    def used() -> int:
        return op.num_products - start

    def add(w: Tensor) -> bool:
        v = basis.orthogonalize(w.to(device=op.device, dtype=op.dtype))
        if v is None:
            return False
        basis.append(v)
        return True

    # A warm start spanning an invariant subspace (exact eigenvectors, which need not be the
    # extreme ones any more) would pass the residual test without ever seeing the rest of the
    # spectrum: convergence only counts once the basis has left the span of ``init`` (the
    # invariant case then adds a random direction). This catches a stale start whenever the
    # random direction's Rayleigh quotient beats it; a stale start just inside the true end
    # can still be accepted, as with any residual test.
    init_rank = 0
    if init is not None:
        block = check_block("init", init, op.dim)
        init_rank = min(block.shape[0], op.dim)
        add(warm_start_vector(block))
    while len(basis) == 0:  # no init, or an init of zeros
        add(standard_normal((op.dim,), generator, op.dtype, op.device))

    top_at: int | None = None
    bottom_at: int | None = None
    while True:
        theta, C = ritz_decomposition(basis.T)
        m = len(theta)
        top_idx = torch.arange(m - 1, m - 1 - min(m, n_top), -1)
        bottom_idx = torch.arange(0, min(m, n_bottom))
        idx = torch.cat([top_idx, bottom_idx])
        U, HU = ritz_pairs(basis.V, basis.HV, C[:, idx])
        residuals = residual_norms(U, HU, theta[idx])
        ok = converged_mask(theta[idx], residuals, tol, convergence_floor(theta, op.dtype))
        nt = len(top_idx)
        outside_init = len(basis) > init_rank
        top_done = nt == n_top and bool(ok[:nt].all()) and outside_init
        bottom_done = len(bottom_idx) == n_bottom and bool(ok[nt:].all()) and outside_init
        top_at = used() if top_done and top_at is None else top_at
        bottom_at = used() if bottom_done and bottom_at is None else bottom_at
        complete = len(basis) == op.dim  # exact Rayleigh–Ritz: nothing left to add
        if (top_done and bottom_done) or complete or used() >= max_products:
            top = _end_result(
                theta[top_idx],
                U[:nt],
                residuals[:nt],
                ok[:nt],
                wanted=n_top,
                products=used() if top_at is None else top_at,
            )
            bottom = _end_result(
                theta[bottom_idx],
                U[nt:],
                residuals[nt:],
                ok[nt:],
                wanted=n_bottom,
                products=used() if bottom_at is None else bottom_at,
            )
            return SpectrumEnds(
                top=top, bottom=bottom, num_products=used(), basis=KrylovBasis(basis.V, basis.HV)
            )
        if len(basis) == capacity:
            keep = _restart_indices(theta, n_top, n_bottom, extra, top_done, bottom_done)
            basis.restart(C[:, keep], theta[keep])
        unconverged = (~ok).nonzero().flatten()
        grown = False
        if len(unconverged):
            j = int(unconverged[torch.argmax(residuals[unconverged])])
            grown = add(HU[j] - theta[idx][j].to(op.dtype) * U[j])
        # An invariant subspace was found: continue from a fresh direction.
        while not grown and used() < max_products:
            grown = add(standard_normal((op.dim,), generator, op.dtype, op.device))


def extreme_eigenpairs(
    op: CurvatureOperator,
    k: int,
    *,
    largest: bool,
    init: Tensor | None = None,
    tol: float = 1e-3,
    max_products: int = 300,
    generator: torch.Generator | None = None,
    basis_size: int | None = None,
) -> EigenResult:
    """The ``k`` algebraically largest (``largest=True``) or smallest eigenpairs of ``op``:
    :func:`thick_restart_lanczos` at one end. Eigenvalues come back descending when
    ``largest``, ascending otherwise. Cost: at most ``max_products`` products."""
    check_eigen_arguments(op, k, tol, max_products)
    ends = thick_restart_lanczos(
        op,
        k if largest else 0,
        0 if largest else k,
        init=init,
        tol=tol,
        max_products=max_products,
        generator=generator,
        basis_size=basis_size,
    )
    return ends.top if largest else ends.bottom

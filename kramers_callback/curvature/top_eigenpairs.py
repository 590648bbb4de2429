"""The top-k Hessian eigenpairs (docs/theory.md section 3.1): escape directions and ``λ_max``."""

from __future__ import annotations

import torch
from torch import Tensor

from kramers_callback.curvature.hvp import CurvatureOperator
from kramers_callback.curvature.krylov import extreme_eigenpairs
from kramers_callback.curvature.results import EigenResult


def top_eigenpairs(
    op: CurvatureOperator,
    k: int,
    *,
    init: Tensor | None = None,
    tol: float = 1e-3,
    max_products: int = 300,
    generator: torch.Generator | None = None,
) -> EigenResult:
    r"""The ``k`` algebraically largest eigenpairs of ``H``, eigenvalues descending.

    .. math::

        H u_i = \lambda_i u_i, \quad \lambda_1 \ge \dots \ge \lambda_k,
        \qquad \text{converged} \iff \lVert H u_i - \lambda_i u_i \rVert
        \le \mathrm{tol}\cdot\max(|\lambda_i|, \text{floor}) \ \ \forall i .

    Method: thick-restart Lanczos with stored products (:mod:`.krylov`), docs/theory.md section 8. A
    residual ``≤ tol·|λ_i|`` puts ``λ_i`` within ``tol·|λ_i|`` of *an* eigenvalue; when
    ``λ_1 ≈ λ_2`` (gap below ``tol``) the pair may belong to either, which is as good an
    escape direction.

    Warm start: pass the previous estimate's eigenvectors as ``init`` (``Tensor[k', d]``).
    Lanczos then starts from their (orthonormalised) sum: exact eigenvectors converge in ``k'``
    products, and a Hessian that has moved is still found faster than from a random vector.

    Assumptions: ``H`` symmetric (a Hessian). Deterministic given ``generator`` (a private
    ``torch.Generator``; default: seeded with 0), which draws the start vector when ``init`` is
    ``None`` and fresh directions if an invariant subspace is hit.

    Cost: at most ``max_products`` Hessian-vector products (for ``k ≤ 3`` at ``tol = 1e-3``,
    measured: 9–12 cold on a digits MLP and 10–16 on the digits CNN, a few fewer warm; see
    ``benchmarks/RESULTS.md``); memory ``2·max(20, 2k+1)·d`` numbers.
    """
    return extreme_eigenpairs(
        op, k, largest=True, init=init, tol=tol, max_products=max_products, generator=generator
    )

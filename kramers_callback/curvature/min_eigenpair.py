"""The smallest (most negative) Hessian eigenpair (docs/theory.md section 3.1): the saddle
curvature."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from kramers_callback.curvature.hvp import CurvatureOperator, check_vector
from kramers_callback.curvature.krylov import extreme_eigenpairs
from kramers_callback.curvature.results import EigenResult


def check_upper_bound(upper_bound: float | None) -> float | None:
    """``None`` or a finite number."""
    if upper_bound is None:
        return None
    if (
        isinstance(upper_bound, bool)
        or not isinstance(upper_bound, (int, float))
        or not (math.isfinite(upper_bound))
    ):
        raise ValueError(f"upper_bound must be a finite number or None, got {upper_bound!r}")
    return float(upper_bound)


def as_init_block(init: Tensor | None, dim: int) -> Tensor | None:
    """A single start vector ``Tensor[d]`` as a one-row block; a block passes through."""
    if isinstance(init, Tensor) and init.dim() == 1:
        return check_vector("init", init, dim)[None]
    return init


def min_eigenpair(
    op: CurvatureOperator,
    *,
    init: Tensor | None = None,
    tol: float = 1e-3,
    max_products: int = 300,
    generator: torch.Generator | None = None,
    upper_bound: float | None = None,
) -> EigenResult:
    r"""The algebraically smallest eigenpair ``(λ_min, u_min)`` of ``H`` (``k = 1``).

    .. math::

        \lambda_{\min} = \min_{\lVert u \rVert = 1} u^\top H u,
        \qquad \text{converged} \iff \lVert H u - \lambda_{\min} u \rVert
        \le \mathrm{tol}\cdot\max(|\lambda_{\min}|, \text{floor}) .

    ``λ_min < 0`` is the saddle curvature at the current point (docs/theory.md section 3.1). Method:
    the same thick-restart Lanczos as :func:`top_eigenpairs` aimed at the other end of the spectrum
    (:mod:`.krylov`). Krylov methods are shift-invariant, so ``upper_bound`` (an upper bound
    on ``λ_max``, which power-iteration backends need for the shift ``upper_bound·I − H``) is
    checked and otherwise not needed here.

    Assumptions: ``H`` symmetric. The relative test is demanding when ``|λ_min| ≪ λ_max`` (a
    near-zero bottom of the spectrum, typical of trained networks): then ``converged`` may be
    ``False`` while the value is already accurate on the scale of ``λ_max``; the residual
    floor is round-off, ``100·eps·max|θ|``. Warm start: the previous ``u_min`` as ``init``
    (``Tensor[d]`` or ``Tensor[k', d]``). Deterministic given ``generator``.

    Cost: at most ``max_products`` products; memory ``2·20·d`` numbers.
    """
    check_upper_bound(upper_bound)
    return extreme_eigenpairs(
        op,
        1,
        largest=False,
        init=as_init_block(init, op.dim),
        tol=tol,
        max_products=max_products,
        generator=generator,
    )

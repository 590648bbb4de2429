r"""``λ_max``, the top-k and ``λ_min`` from one Krylov run (docs/theory.md section 8).

Lanczos approximates both ends of the spectrum first (Kaniel–Paige–Saad bounds, Saad 2011,
sec. 6.6), so the Ritz pairs at the two ends of one Krylov space give the top-``k`` and the
bottom eigenpair together: the run costs about what the slower end needs, where a top solve
followed by a bottom solve costs the sum.

.. math::

    \text{top: } \lVert H u_i - \theta_i u_i \rVert \le \mathrm{tol}\,\max(|\theta_i|, f),
    \quad i = 1..k; \qquad
    \text{bottom: } \lVert H u_{\min} - \theta_{\min} u_{\min} \rVert
    \le \mathrm{tol}\,\max(|\theta_{\min}|, f)

with the round-off floor ``f`` of :func:`.convergence_floor`. Each end has its own test; once
the top end passes, its ``k`` Ritz vectors are locked at every thick restart and the rest of
the basis serves the bottom (:func:`.thick_restart_lanczos`).

When one run cannot resolve ``λ_min``: the bottom end converges at a rate set by its relative
gap ``(λ₂' − λ_min)/(λ_max − λ₂')`` (``λ₂'`` the second smallest). On trained networks
``λ_min`` is a small negative number at the edge of a bulk of near-zero eigenvalues, so that
gap is tiny and the relative test ``tol·|λ_min|`` asks for a residual far below
``tol·λ_max``. The bottom end then needs several times the products of the top end. The
fallback is to continue the same run with the top end locked (above): it is what a second
Lanczos run from the best bottom Ritz vectors would do, without paying again for the products
that built them. A shifted solve, power iteration on ``c·I − H``, converges linearly in
``(c − λ₂')/(c − λ_min)``, the square of Lanczos' rate, so it is not used. If ``max_products``
runs out first, the bottom pair is returned with ``converged=False`` and its residual; its
value is then typically accurate on the scale of ``λ_max`` (the error of a Ritz value is of the
order of the residual squared over the gap).
"""

from __future__ import annotations

import torch
from torch import Tensor

from kramers_callback.curvature.hvp import CurvatureOperator, check_block
from kramers_callback.curvature.krylov import thick_restart_lanczos
from kramers_callback.curvature.min_eigenpair import as_init_block
from kramers_callback.curvature.results import SpectrumEnds

ENDS_BASIS = 30
"""Default basis size of the two-ended run: the bottom end of trained networks converges
slowly, and every thick restart slows it further. On the digits MLP of
``benchmarks/bench_eigen_warm_start.py`` (d = 3 466, 6 points) a basis of 20 needed 23–74
products (median 46), 30 needed 22–55 (median 35), and 40 or 60 hardly fewer (22–49)."""


def warm_start_block(
    top_init: Tensor | None, bottom_init: Tensor | None, dim: int
) -> Tensor | None:
    """The previous top vectors (``Tensor[k', d]``) and bottom vector (``Tensor[d]`` or a block)
    stacked into one start block; ``None`` when neither is given."""
    blocks = [
        check_block(name, block, dim)
        for name, block in (
            ("top_init", top_init),
            ("bottom_init", as_init_block(bottom_init, dim)),
        )
        if block is not None
    ]
    return torch.cat(blocks) if blocks else None


def spectrum_ends(
    op: CurvatureOperator,
    k: int,
    *,
    top_init: Tensor | None = None,
    bottom_init: Tensor | None = None,
    tol: float = 1e-3,
    max_products: int = 300,
    generator: torch.Generator | None = None,
    basis_size: int = ENDS_BASIS,
) -> SpectrumEnds:
    r"""The top-``k`` eigenpairs and the bottom eigenpair of ``H`` from one Lanczos run.

    Method and limits: the module docstring. Warm start: the previous estimate's top vectors
    (``top_init``) and bottom vector (``bottom_init``) together give the start vector
    (:func:`.warm_start_vector`); if they are exact eigenvectors the run converges in
    ``k + 2`` products (``k + 1`` to span them, one more to look outside their span).

    Assumptions: ``H`` symmetric. When ``d ≤ k`` the bottom pair is also the last top pair.
    Deterministic given ``generator``.

    Cost: at most ``max_products`` products, a hard cap for both ends together (measured on
    a digits MLP and a tiny MLP: ``benchmarks/RESULTS.md``); memory
    ``2·max(basis_size, 2k+3)·d`` numbers.
    """
    return thick_restart_lanczos(
        op,
        k,
        1,
        init=warm_start_block(top_init, bottom_init, op.dim),
        tol=tol,
        max_products=max_products,
        generator=generator,
        basis_size=max(basis_size, 2 * (k + 1) + 1),
    )

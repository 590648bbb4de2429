"""``tr H`` by Hutchinson's estimator, plain or deflated by a captured subspace (Hutch++),
with a stopping rule on ``|tr H|`` (docs/theory.md section 8)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from kramers_callback._validation import check_positive, check_positive_int
from kramers_callback.curvature._random import rademacher, resolve_generator
from kramers_callback.curvature.hvp import CurvatureOperator
from kramers_callback.curvature.results import KrylovBasis, TraceResult


def mean_and_stderr(samples: list[float]) -> tuple[float, float]:
    """Sample mean and its standard error ``s / √n`` (``s`` with Bessel's correction; ``inf``
    for fewer than two samples)."""
    n = len(samples)
    mean = math.fsum(samples) / n
    if n < 2:
        return mean, math.inf
    var = math.fsum((q - mean) ** 2 for q in samples) / (n - 1)
    return mean, math.sqrt(var / n)


def hutchinson_should_stop(
    mean: float, stderr: float, num_samples: int, tol: float, min_samples: int
) -> bool:
    r"""The stopping rule ``n ≥ n_min`` and ``SE ≤ tol·|mean|``.

    The magnitude ``|mean|`` matters: pyhessian 0.1 divides by the *signed* running trace, so a
    negative trace (a saddle region) makes its test pass after two samples whatever the error.
    """
    return num_samples >= min_samples and stderr <= tol * abs(mean)


def hutchinson_trace(
    op: CurvatureOperator,
    *,
    tol: float = 1e-2,
    min_samples: int = 10,
    max_samples: int = 200,
    generator: torch.Generator | None = None,
) -> TraceResult:
    r"""Hutchinson's stochastic trace estimate of ``H`` with Rademacher probes.

    .. math::

        \operatorname{tr} H = \mathbb{E}_z[z^\top H z], \quad z_j \in \{\pm 1\}\ \text{i.i.d.},
        \qquad \widehat{\operatorname{tr}} = \frac1n \sum_{s=1}^n z_s^\top H z_s,


        \operatorname{Var}[z^\top H z] = 2\Big(\lVert H \rVert_F^2 - \sum_j H_{jj}^2\Big).

    Source: Hutchinson (1990), "A stochastic estimator of the trace of the influence matrix";
    Rademacher probes have the smallest variance among i.i.d. probes (Avron & Toledo 2011).
    Stops when at least ``min(min_samples, max_samples)`` probes give a standard error
    ``≤ tol·|mean|`` (:func:`hutchinson_should_stop`); ``converged`` says whether that happened
    within ``max_samples``.

    Assumptions: ``H`` symmetric; the normal approximation behind the standard error needs a
    few samples, hence ``min_samples``. A trace near zero relative to ``‖H‖_F`` needs many
    samples (the rule is relative) and may end unconverged. Deterministic given ``generator``.

    Cost: one Hessian-vector product per sample; memory ``O(d)``.
    """
    return _stochastic_trace(
        op,
        lambda z: z,
        0.0,
        tol=tol,
        min_samples=min_samples,
        max_samples=max_samples,
        generator=generator,
    )


def deflated_hutchinson_trace(
    op: CurvatureOperator,
    basis: KrylovBasis,
    *,
    tol: float = 1e-2,
    min_samples: int = 10,
    max_samples: int = 200,
    generator: torch.Generator | None = None,
) -> TraceResult:
    r"""Hutch++: the trace over a captured subspace exactly, Hutchinson on the rest.

    .. math::

        \operatorname{tr} H = \operatorname{tr}(V H V^\top)
            + \operatorname{tr}ig((I - P) H (I - P)ig), \quad P = V^\top V,
        \qquad \widehat{\operatorname{tr}} = \sum_i v_i^\top (H v_i)
            + rac1n \sum_{s=1}^n w_s^\top H w_s, \quad w_s = (I - P) z_s,

    exact because ``tr(P H (I − P)) = 0``. Source: Meyer, Musco, Musco & Woodruff (2021),
    "Hutch++: Optimal stochastic trace estimation" (SOSA), whose low-rank part is a sketch
    ``Q = orth(HS)``; here it is the final Lanczos basis of :func:`.spectrum_ends`, which holds
    the Ritz vectors of both ends of the spectrum, so its trace costs no product (``H V`` is
    stored). The remainder's variance, ``Var[wᵀHw] ≤ 2‖(I−P)H(I−P)‖_F²`` for Rademacher
    ``z``, drops the largest ``|λ|`` from ``‖H‖_F²``: a spectrum with a few large eigenvalues
    needs far fewer samples than :func:`hutchinson_trace`. The reported ``stderr`` is the
    remainder's sample standard error (the captured part has none); the stopping rule and
    ``converged`` are those of :func:`hutchinson_trace` on the total.

    Assumptions: ``H`` symmetric, ``basis.vectors`` orthonormal rows with
    ``basis.products = H · vectors`` (rows). A basis of the whole space gives the exact trace
    with no sample. Deterministic given ``generator``.

    Cost: one product per sample; memory ``O(d)`` beyond the basis.
    """
    V = basis.vectors.to(device=op.device, dtype=op.dtype)
    captured = float((V.double() * basis.products.double()).sum())
    if len(basis) == op.dim:  # nothing outside the basis: the trace is exact
        return TraceResult(captured, 0.0, True, 0, 0, low_rank_dim=len(basis))
    return _stochastic_trace(
        op,
        lambda z: z - V.T @ (V @ z),
        captured,
        tol=tol,
        min_samples=min_samples,
        max_samples=max_samples,
        generator=generator,
        low_rank_dim=len(basis),
    )


def _stochastic_trace(
    op: CurvatureOperator,
    project: Callable[[Tensor], Tensor],
    captured: float,
    *,
    tol: float,
    min_samples: int,
    max_samples: int,
    generator: torch.Generator | None,
    low_rank_dim: int = 0,
) -> TraceResult:
    """``captured + mean(wᵀHw)`` over Rademacher ``z``, ``w = project(z)``, with the stopping
    rule of :func:`hutchinson_should_stop` on the total."""
    check_positive("tol", tol)
    check_positive_int("min_samples", min_samples, minimum=2)
    check_positive_int("max_samples", max_samples, minimum=2)
    # A budget below min_samples is the caller's choice: then all of it is the minimum.
    min_samples = min(min_samples, max_samples)
    generator = resolve_generator(generator)
    start = op.num_products
    samples: list[float] = []
    mean, stderr, converged = math.nan, math.inf, False
    while len(samples) < max_samples:
        w = project(rademacher((op.dim,), generator, op.dtype, op.device))
        samples.append(float(w.double() @ op.matvec(w).double()))
        mean, stderr = mean_and_stderr(samples)
        if hutchinson_should_stop(captured + mean, stderr, len(samples), tol, min_samples):
            converged = True
            break
    return TraceResult(
        value=captured + mean,
        stderr=stderr,
        converged=converged,
        num_samples=len(samples),
        num_products=op.num_products - start,
        low_rank_dim=low_rank_dim,
    )

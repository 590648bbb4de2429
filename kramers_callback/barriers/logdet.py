r"""The seed's barrier from Hessian determinants: a named heuristic, not the default estimator.

The seed (docs/theory.md section 3.2) writes

.. math::

    \Delta L \approx -\frac{T}{2}\,\ln\left|\frac{\det \nabla^2 L(\theta_0)}
    {\det \nabla^2 L(\theta^*)}\right| .

It has no general validity: on ``L(x, y) = x⁴ − 3x² + y²`` the Hessians are ``diag(12, 2)`` at
the minimum and ``diag(−6, 2)`` at the saddle, so it gives ``−T ln 2 / 2 < 0`` while the true
barrier is ``9/4`` (docs/theory.md section 3.2). The determinants enter the Eyring–Kramers
*prefactor*, not the exponent. The line scan (:mod:`kramers_callback.barriers.line_scan`) is the
default.

The log-determinants come from stochastic Lanczos quadrature; the quadrature maths
(:func:`lanczos_quadrature`) is separate from the torch plumbing (the Lanczos recursion).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from torch import Tensor

from kramers_callback._validation import check_finite, check_non_negative, check_positive_int

# Lanczos stops on an invariant subspace when β_j falls below this many ulps of ‖T‖.
_BREAKDOWN_ULPS = 1e3
# Absolute floor (relative to max(1, |value|)) for calling the quadrature converged.
_QUADRATURE_FLOOR = 1e-8


@dataclass(frozen=True)
class LogDetResult:
    """``log|det H|`` from :func:`stochastic_lanczos_logdet`."""

    value: float
    """Mean over probes of ``d · e₁ᵀ log|T| e₁``."""
    stderr: float
    """Standard error of ``value`` over the probes (``nan`` with one probe)."""
    num_products: int
    """Products ``H v`` used."""
    quadrature_change: float
    """Mean over probes of ``|Q_m − Q_{m−1}|``: the change of the estimate in the last Lanczos
    step, a rough gauge of the Lanczos truncation error (it understates a slowly converging
    rule by a small factor; ``0`` when Lanczos spanned an invariant subspace, where the
    quadrature is exact)."""
    converged: bool
    """``quadrature_change`` is below ``stderr`` (the Monte Carlo error dominates)."""


def _log_abs(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(np.abs(x))


def lanczos_quadrature(
    alphas: np.ndarray, betas: np.ndarray, fn: Callable[[np.ndarray], np.ndarray] = _log_abs
) -> float:
    r"""Gauss quadrature of ``e₁ᵀ f(T) e₁`` for the Lanczos tridiagonal ``T``.

    .. math::

        e_1^\top f(T)\, e_1 = \sum_{k=1}^{m} \tau_k^2\, f(\theta_k),
        \qquad T = \operatorname{tridiag}(\beta, \alpha, \beta) = U \Theta U^\top,
        \ \tau_k = U_{1k}.

    With ``T`` from ``m`` Lanczos steps on ``H`` started at ``q₁ = z/‖z‖``, this is the
    ``m``-point Gauss rule for ``∫ f dμ`` where ``μ`` is the spectral measure of ``H`` seen from
    ``q₁``, so ``‖z‖² · e₁ᵀ f(T) e₁ ≈ zᵀ f(H) z`` (Golub & Meurant 2010, ch. 6).

    Source: Ubaru, Chen & Saad, SIAM J. Matrix Anal. Appl. 38 (2017) 1075.
    Assumptions: ``f`` is smooth on the spectral interval (for ``log|λ|`` this fails when the
    spectrum straddles 0; see :func:`stochastic_lanczos_logdet`).
    Cost: one symmetric tridiagonal eigendecomposition, ``O(m²)``.

    Args:
        alphas: diagonal of ``T``, length ``m ≥ 1``.
        betas: off-diagonal of ``T``, length ``m − 1``.
        fn: the function ``f`` applied elementwise to the Ritz values (default ``log|λ|``).
    """
    alphas = np.asarray(alphas, dtype=np.float64)
    betas = np.asarray(betas, dtype=np.float64)
    if alphas.ndim != 1 or alphas.size == 0 or betas.shape != (alphas.size - 1,):
        raise ValueError(
            "alphas, betas must be 1-D of lengths m ≥ 1 and m − 1, got shapes "
            f"{alphas.shape}, {betas.shape}"
        )
    if alphas.size == 1:
        return float(fn(alphas)[0])
    ritz, vectors = eigh_tridiagonal(alphas, betas)
    return float(np.dot(vectors[0] ** 2, fn(ritz)))


def _lanczos(
    matvec: Callable[[Tensor], Tensor], start: Tensor, steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """``steps`` Lanczos steps from ``start`` with full reorthogonalisation: ``(α, β)``.

    Full reorthogonalisation keeps the Ritz values free of ghost copies, which would bias the
    quadrature weights; with the few tens of steps SLQ needs, its ``O(m d)`` memory is small.
    """
    dim = start.numel()
    basis = torch.empty((steps, dim), dtype=start.dtype, device=start.device)
    basis[0] = start / torch.linalg.vector_norm(start)
    alphas: list[float] = []
    betas: list[float] = []
    eps = torch.finfo(start.dtype).eps
    scale = 0.0
    for j in range(steps):
        w = matvec(basis[j]).reshape(-1).to(start.dtype)
        if w.shape != (dim,):
            raise ValueError(
                f"matvec must return {dim} values (one per dimension), got {w.numel()}"
            )
        alpha = float(torch.dot(basis[j], w))
        alphas.append(alpha)
        if j == steps - 1:
            break
        # Classical Gram–Schmidt against the whole basis, twice ("twice is enough").
        used = basis[: j + 1]
        for _ in range(2):
            w = w - used.T @ (used @ w)
        beta = float(torch.linalg.vector_norm(w))
        scale = max(scale, abs(alpha), beta)
        if not beta > _BREAKDOWN_ULPS * eps * scale:
            # Invariant subspace: the Gauss rule is exact for this probe.
            break
        betas.append(beta)
        basis[j + 1] = w / beta
    return np.asarray(alphas), np.asarray(betas)


def stochastic_lanczos_logdet(
    matvec: Callable[[Tensor], Tensor],
    dim: int,
    *,
    num_probes: int = 20,
    lanczos_steps: int = 30,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> LogDetResult:
    r"""``log|det H|`` by stochastic Lanczos quadrature with Rademacher probes.

    .. math::

        \log|\det H| = \operatorname{tr} \log|H|
        \approx \frac{1}{n_v} \sum_{l=1}^{n_v} \|z_l\|^2 \sum_{k=1}^{m}
        \tau_{k,l}^2 \log|\theta_{k,l}|, \qquad z_l \in \{\pm 1\}^d,

    where ``θ_{k,l}``, ``τ_{k,l}`` are the Ritz values and first eigenvector components of the
    ``m``-step Lanczos tridiagonal started at ``z_l/‖z_l‖`` (:func:`lanczos_quadrature`); the
    outer mean is Hutchinson's trace estimator (``E zzᵀ = I``).

    Source: Ubaru, Chen & Saad, "Fast estimation of tr(f(A)) via stochastic Lanczos
    quadrature", SIAM J. Matrix Anal. Appl. 38 (2017) 1075.

    Assumptions and caveats:

    - ``H`` is symmetric; ``matvec(v) = H v`` for a 1-D ``v`` of length ``dim``.
    - Indefinite ``H`` (a saddle): ``log|λ|`` is applied to the Ritz values, which estimates
      ``Σ log|λ_i| = log|det H|``. The Gauss rule converges slowly when eigenvalues lie close
      to 0 on both sides, because ``log|λ|`` is singular there and a Ritz value may fall in the
      spectral gap; check ``quadrature_change`` and raise ``lanczos_steps`` (with
      ``lanczos_steps ≥ dim`` the quadrature is exact and only the Monte Carlo error remains).
    - A zero eigenvalue makes ``log|det H| = −∞``. Near-zero eigenvalues — the flat
      directions every over-parameterised network has — dominate ``log|det H|``, so the value
      says more about the null space than about barriers. A Ritz value exactly at 0 makes the
      result ``−inf``.
    - The Monte Carlo variance is ``2 Σ_{i≠j} (log|H|)_{ij}²`` per probe: zero when ``H`` is
      diagonal in the coordinate basis, large when ``log|H|`` has big off-diagonal entries.

    Cost: ``num_probes · min(lanczos_steps, dim)`` Hessian-vector products (fewer when Lanczos
    finds an invariant subspace), memory ``min(lanczos_steps, dim) · dim`` values for the
    Lanczos basis.

    Args:
        matvec: ``v ↦ H v``.
        dim: ``d``, the length of ``v``; ``≥ 1``.
        num_probes: Rademacher probes ``n_v ≥ 1`` (``≥ 2`` for a standard error).
        lanczos_steps: Lanczos steps ``m ≥ 1`` per probe (capped at ``dim``).
        generator: private ``torch.Generator`` for the probes; a freshly seeded one when
            ``None``. The global RNG is never touched.
        dtype: floating dtype of the Lanczos vectors.
        device: device of the Lanczos vectors (default: the generator's device).
    """
    if not callable(matvec):
        raise ValueError(f"matvec must be callable, got {matvec!r}")
    dim = check_positive_int("dim", dim)
    num_probes = check_positive_int("num_probes", num_probes)
    steps = min(check_positive_int("lanczos_steps", lanczos_steps), dim)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    if generator is None:
        generator = torch.Generator()
        generator.seed()
    device = generator.device if device is None else torch.device(device)

    estimates = np.empty(num_probes)
    changes = np.empty(num_probes)
    calls = 0

    def counted(v: Tensor) -> Tensor:
        nonlocal calls
        calls += 1
        return matvec(v)

    for probe in range(num_probes):
        signs = torch.randint(0, 2, (dim,), generator=generator, device=generator.device)
        z = (2 * signs - 1).to(device=device, dtype=dtype)
        alphas, betas = _lanczos(counted, z, steps)
        # ‖z‖² = d for Rademacher probes.
        estimates[probe] = dim * lanczos_quadrature(alphas, betas)
        exact_rule = alphas.size < steps or steps == dim
        if exact_rule or alphas.size == 1:
            changes[probe] = 0.0
        else:
            shorter = lanczos_quadrature(alphas[:-1], betas[:-1])
            changes[probe] = abs(estimates[probe] - dim * shorter)

    value = float(estimates.mean())
    stderr = float(estimates.std(ddof=1) / math.sqrt(num_probes)) if num_probes > 1 else math.nan
    change = float(changes.mean())
    floor = _QUADRATURE_FLOOR * max(1.0, abs(value)) if math.isfinite(value) else 0.0
    converged = change <= max(stderr if math.isfinite(stderr) else 0.0, floor)
    return LogDetResult(value, stderr, calls, change, converged)


def logdet_barrier(*, temperature: float, logdet_well: float, logdet_saddle: float) -> float:
    r"""The seed's barrier "from parameter diversity": a heuristic with no general validity.

    .. math::

        \Delta L \approx -\frac{T}{2}\left(\log|\det H_0| - \log|\det H^*|\right)

    Source: the seed, as restated in docs/theory.md section 3.2. Caveat (same section): on
    ``L = x⁴ − 3x² + y²``, ``H₀ = diag(12, 2)`` and ``H* = diag(−6, 2)`` give ``−T ln 2 / 2 < 0``,
    while the true barrier is ``9/4``; the value scales with ``T`` and not with the loss difference
    at all. The determinants belong in the Eyring–Kramers prefactor ``√(det H₀/|det H*|)``. Use the
    line scan (:func:`~kramers_callback.barriers.line_scan.scan_for_barrier`) for barriers;
    this function exists so the seed's formula can be compared against it.
    Cost: none (closed form); the log-determinants typically come from
    :func:`stochastic_lanczos_logdet`.

    Args:
        temperature: ``T ≥ 0``.
        logdet_well: ``log|det H₀|`` at the minimum (finite).
        logdet_saddle: ``log|det H*|`` at the saddle (finite).
    """
    t = check_non_negative("temperature", temperature)
    well = check_finite("logdet_well", logdet_well)
    saddle = check_finite("logdet_saddle", logdet_saddle)
    return -t * (well - saddle) / 2.0

"""Gradient-noise moments from micro-batch gradients of the probe set (docs/theory.md section 2.5).

No per-sample autograd: each micro-batch is one ordinary forward and backward pass, so this
works for any model the user can train, BatchNorm in training mode included (then each
micro-batch is normalised with its own statistics, as in training).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from kramers_callback._probe import ProbeLoss, concat_batches, select_samples
from kramers_callback._validation import check_positive_int
from kramers_callback.noise.moments import (
    NoiseMoments,
    StreamingMoments,
    check_directions,
    unbiased_gradient_norm_sq,
)

__all__ = [
    "default_micro_batch_size",
    "micro_batch_noise",
    "micro_batch_noise_trace",
    "micro_batch_relative_error",
]

DEFAULT_NUM_MICRO_BATCHES = 8
"""Micro-batches drawn when no ``micro_batch_size`` is given."""


def default_micro_batch_size(num_samples: int) -> int:
    """``b = max(1, ⌊n / 8⌋)``: eight micro-batches of the ``n`` probe samples (``n`` of one when
    ``n < 16``)."""
    n = check_positive_int("num_samples", num_samples)
    return max(1, n // DEFAULT_NUM_MICRO_BATCHES)


def micro_batch_relative_error(num_micro_batches: int) -> float:
    r"""Relative standard error of the micro-batch ``tr Σ₁`` and ``vᵀΣ₁v`` for Gaussian gradients.

    .. math::

        \frac{\operatorname{sd}\,\widehat{v^\top\Sigma_1 v}}{v^\top\Sigma_1 v}
        = \sqrt{\frac{2}{m-1}}, \qquad
        \frac{\operatorname{sd}\,\widehat{\operatorname{tr}\Sigma_1}}{\operatorname{tr}\Sigma_1}
        = \sqrt{\frac{2}{(m-1)\,r}} \le \sqrt{\frac{2}{m-1}},
        \quad r = \frac{(\operatorname{tr}\Sigma_1)^2}{\operatorname{tr}\Sigma_1^2} \in [1, d].

    Derivation (``docs/theory.md``, section 2.5): for Gaussian micro-batch gradients
    ``G_j ~ N(g, Σ₁/b)``, the scatter of ``vᵀG_j`` over ``m`` micro-batches is
    ``(vᵀΣ₁v/b) χ²_{m−1}`` (Cochran's theorem), and ``Var χ²_k = 2k``; along the eigenvectors
    of ``Σ₁`` the scatter is a sum of independent ``(σ_k²/b) χ²_{m−1}``, whose variance is
    ``2(m−1) Σ_k σ_k⁴/b²``. The bound (``r = 1``, noise in one direction) is returned; it is
    exact for ``T_v`` and for ``T`` when one direction dominates the noise. Micro-batch means
    of ``b`` samples are nearer Gaussian than single gradients (their excess kurtosis is
    ``1/b`` of the samples'), which is what makes the Gaussian formula apt here.
    Cost: ``O(1)``.
    """
    m = check_positive_int("num_micro_batches", num_micro_batches, minimum=2)
    return math.sqrt(2.0 / (m - 1))


def micro_batch_noise_trace(
    *, scatter: float | Tensor, num_micro_batches: int, micro_batch_size: int
) -> float | Tensor:
    r"""Unbiased ``tr Σ₁`` (or ``vᵀΣ₁v``, elementwise) from the scatter of micro-batch gradients.

    .. math::

        \widehat{\operatorname{tr}\Sigma_1} = \frac{b}{m-1}\sum_{j=1}^{m}\|G_j - \bar G\|^2,
        \qquad \bar G = \frac1m\sum_j G_j,

    where ``scatter`` is ``Σ_j ‖G_j − Ḡ‖²``, ``m`` the number of micro-batches and ``b`` their
    size. Source: docs/theory.md section 2.5. Derivation: the ``G_j`` are means of ``b``
    samples, so their covariance is ``Σ₁/b`` and ``scatter/(m − 1)`` is its unbiased sample
    estimate (assumes i.i.d. samples; for the finite probe, see :func:`micro_batch_noise`).
    Cost: ``O(1)`` (``O(k)`` for a tensor).
    """
    m = check_positive_int("num_micro_batches", num_micro_batches, minimum=2)
    b = check_positive_int("micro_batch_size", micro_batch_size)
    return scatter * (b / (m - 1))


def _gather(probe: ProbeLoss, index: Tensor) -> Any:
    """One batch holding the probe samples ``index`` (global indices across probe batches)."""
    parts = []
    offset = 0
    for batch, size in zip(probe.batches, probe.batch_sizes, strict=True):
        local = index[(index >= offset) & (index < offset + size)] - offset
        if local.numel():
            parts.append(select_samples(batch, local.to(probe.device)))
        offset += size
    return concat_batches(parts)


def micro_batch_noise(
    probe: ProbeLoss,
    *,
    micro_batch_size: int,
    generator: torch.Generator,
    directions: Tensor | None = None,
) -> NoiseMoments:
    r"""Gradient-noise moments from ``m = ⌊n/b⌋`` random micro-batches of the probe set.

    All ``n`` probe samples are permuted with ``generator`` and split into ``m`` micro-batches
    of ``b`` samples (the remainder ``n − m b`` is dropped); ``G_j`` is the gradient of the
    mean loss of micro-batch ``j``, in the probe's coordinates ``x``. Then

    .. math::

        \widehat{\operatorname{tr}\Sigma_1} = \frac{b}{m-1}\sum_j\|G_j - \bar G\|^2, \qquad
        \widehat{v^\top\Sigma_1 v} = \frac{b}{m-1}\sum_j\big(v^\top G_j - v^\top\bar G\big)^2,
        \qquad \widehat{\|g\|^2} = \|\bar G\|^2 - \frac{\widehat{\operatorname{tr}\Sigma_1}}{mb}.

    **Unbiased for the finite probe, not just for i.i.d. samples.** Let ``ḡ`` and
    ``S² = Σ_i ‖g_i − ḡ‖²/(n − 1)`` be the probe's mean gradient and sample variance (the
    quantities :func:`~kramers_callback.noise.per_sample_noise` returns). Under a uniformly
    random permutation, each ``G_j`` is the mean of a uniform ``b``-subset of the probe and
    ``Ḡ`` the mean of a uniform ``mb``-subset; the mean of a uniform ``k``-subset of ``n``
    has ``E‖mean − ḡ‖² = S² (n − k)/(n k)`` (Cochran 1977, theorem 2.2). Hence

    .. math::

        \mathbb E\sum_j\|G_j - \bar G\|^2
        = \mathbb E\sum_j\|G_j - \bar g\|^2 - m\,\mathbb E\|\bar G - \bar g\|^2
        = \frac{m S^2}{n}\Big(\frac{n-b}{b} - \frac{n-mb}{mb}\Big) = \frac{(m-1)\,S^2}{b},

    so ``E[tr Σ̂₁] = S²`` exactly, and likewise
    ``E[‖Ḡ‖²] − E[tr Σ̂₁]/(mb) = ‖ḡ‖² + S²(n − mb)/(n m b) − S²/(mb) = ‖ḡ‖² − S²/n``: averaged over
    partitions, both equal the per-sample reference on the same probe (with equal partition
    and any remainder). The permutation matters: with class-ordered data, contiguous chunks
    are class-pure and the scatter overstates the between-class part of ``Σ₁`` about
    ``b``-fold, hence the random permutation.

    Assumes each micro-batch's mean loss is the mean of its samples' losses (exact in eval
    mode; in training mode BatchNorm couples samples inside a micro-batch, which is the
    noise training sees at batch size ``b``). Needs ``m ≥ 2``; the estimate has
    ``m − 1`` degrees of freedom, so its relative standard error is at most ``√(2/(m − 1))``
    for Gaussian gradients (:func:`micro_batch_relative_error`), and ``√(2/(m − 1))`` exactly
    for each ``vᵀΣ₁v``.

    Works with a :class:`~kramers_callback._probe.BatchMeanLoss` (one call per micro-batch,
    whose mean is all it needs): the noise of a ``training_step`` without per-sample losses.

    Cost: ``m`` forward and backward passes of ``b`` samples; memory ``O(d)`` (the moments are
    merged one micro-batch at a time) plus one micro-batch of samples. ``generator`` is the
    only source of randomness (the global RNG is never touched).
    Raises ``ValueError`` when a loss or micro-batch gradient is not finite.
    """
    n = probe.num_samples
    b = check_positive_int("micro_batch_size", micro_batch_size)
    if n // b < 2:
        raise ValueError(
            f"micro_batch_size must be ≤ {n // 2} (at least 2 micro-batches of the {n} probe "
            f"samples), got {b}"
        )
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {generator!r}")
    m = n // b
    x = probe.x0.detach()
    directions = check_directions(directions, probe.dim, x)
    order = torch.randperm(n, generator=generator, device=generator.device).cpu()
    gradient_moments = StreamingMoments()
    direction_moments = StreamingMoments()
    forward_before = probe.num_forward
    with torch.enable_grad():
        x_ = x.detach().requires_grad_(True)
        for j in range(m):
            micro_batch = _gather(probe, order[j * b : (j + 1) * b])
            losses = probe.check_losses(probe.per_sample_losses(x_, micro_batch), micro_batch)
            losses = losses.to(probe.dtype)
            (grad,) = torch.autograd.grad(losses.mean(), x_, allow_unused=True)
            grad = torch.zeros_like(x) if grad is None else grad.detach()
            if not (bool(torch.isfinite(losses).all()) and bool(torch.isfinite(grad).all())):
                raise ValueError(
                    "micro-batch losses and gradients must be finite (the loss or its gradient "
                    f"is not finite at the current parameters), got non-finite values in "
                    f"micro-batch {j} of {m}"
                )
            gradient_moments.update(grad.unsqueeze(0))
            if directions is not None:
                direction_moments.update((directions @ grad).unsqueeze(0))

    assert gradient_moments.m2 is not None and gradient_moments.mean is not None
    noise_trace = float(
        micro_batch_noise_trace(
            scatter=float(gradient_moments.m2.sum()), num_micro_batches=m, micro_batch_size=b
        )
    )
    directional = None
    if directions is not None:
        assert direction_moments.m2 is not None
        directional = micro_batch_noise_trace(
            scatter=direction_moments.m2, num_micro_batches=m, micro_batch_size=b
        )
    mean = gradient_moments.mean
    return NoiseMoments(
        num_samples=m * b,
        noise_trace=noise_trace,
        gradient_norm_sq=unbiased_gradient_norm_sq(
            mean_norm_sq=float(mean.square().sum()), noise_trace=noise_trace, num_samples=m * b
        ),
        mean_gradient=mean,
        directional_variance=directional,
        num_forward=probe.num_forward - forward_before,
    )

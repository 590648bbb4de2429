"""What a noise estimator returns, and the streaming moments every estimator accumulates.

:class:`NoiseMoments` is the common result of :func:`~kramers_callback.noise.per_sample_noise`
and :func:`~kramers_callback.noise.micro_batch_noise`. :class:`StreamingMoments` keeps the
mean and the centred sum of squares of a stream of vectors chunk by chunk, so an estimator
holds ``O(d)`` numbers however many samples it sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from kramers_callback._validation import check_positive_int
from kramers_callback.noise.temperature import gradient_noise_scale


@dataclass(frozen=True)
class NoiseMoments:
    """First and second moments of the per-sample gradients ``g_i = ∇ℓ_i`` on a probe set.

    All quantities are in the flat coordinates ``x`` of
    :class:`~kramers_callback._probe.ProbeLoss` (preconditioned when it has a ``scale``).
    """

    num_samples: int
    """Probe samples the estimate used ``n``."""
    noise_trace: float
    """Unbiased ``tr Σ₁ = E_i ‖g_i − g‖²`` (sample variance with ``1/(n − 1)``)."""
    gradient_norm_sq: float
    """Unbiased ``‖g‖²``: ``‖ḡ‖² − tr Σ₁ / n`` (the mean of ``n`` samples carries ``tr Σ₁/n``)."""
    mean_gradient: Tensor | None = None
    """``ḡ``, shape ``[d]``."""
    directional_variance: Tensor | None = None
    """Unbiased ``vᵀ Σ₁ v`` for each requested direction ``v``, shape ``[k]``."""
    num_forward: int = 0
    """Forward passes over a (micro-/one-sample) batch the estimate made. They are also
    counted in the probe's own ``ProbeLoss.num_forward``: do not add the two."""

    @property
    def noise_scale(self) -> float:
        """``B_noise = tr Σ₁ / ‖g‖²`` (McCandlish et al. 2018); ``inf`` when ``‖g‖² ≤ 0``."""
        return gradient_noise_scale(
            noise_trace=max(self.noise_trace, 0.0), gradient_norm_sq=self.gradient_norm_sq
        )


def unbiased_gradient_norm_sq(
    *, mean_norm_sq: float, noise_trace: float, num_samples: int
) -> float:
    r"""Unbiased squared norm of the expected gradient from the mean of ``n`` samples.

    .. math::

        \widehat{\|g\|^2} = \|\bar g\|^2 - \frac{\widehat{\operatorname{tr}\Sigma_1}}{n},
        \qquad \mathbb E\,\|\bar g\|^2 = \|g\|^2 + \frac{\operatorname{tr}\Sigma_1}{n}.

    Source: McCandlish et al. 2018 ("An empirical model of large-batch training"), appendix A.
    Assumes the ``n`` samples are independent draws and ``noise_trace`` is unbiased. May be
    negative when ``‖g‖² ≪ tr Σ₁ / n``. Cost: ``O(1)``.
    """
    n = check_positive_int("num_samples", num_samples)
    return float(mean_norm_sq) - float(noise_trace) / n


class StreamingMoments:
    r"""Column means and centred sums of squares of a stream of row blocks ``X_c ∈ R^{c×p}``.

    Merging a block (Chan, Golub & LeVeque 1979, the pairwise form of Welford's update):

    .. math::

        \delta = \bar x_c - \bar x, \quad
        \bar x \leftarrow \bar x + \delta\,\frac{c}{n + c}, \quad
        M_2 \leftarrow M_2 + M_{2,c} + \delta^{2}\,\frac{n c}{n + c},

    with ``M₂ = Σ_i (x_i − x̄)²`` per column. Centring inside each block avoids the
    cancellation of ``Σ‖x‖² − n‖x̄‖²`` when the mean dominates the spread (the usual case for
    gradients in float32). The merge is exact in exact arithmetic: the result does not
    depend on how the rows are blocked. Cost: ``O(c·p)`` per block, memory ``O(p)``.
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def update(self, block: Tensor) -> None:
        """Merge the rows of ``block`` (shape ``[c, p]``, ``c ≥ 1``)."""
        c = int(block.shape[0])
        if c == 0:
            return
        block_mean = block.mean(dim=0)
        block_m2 = (block - block_mean).square().sum(dim=0)
        if self.mean is None or self.m2 is None:
            self.count, self.mean, self.m2 = c, block_mean, block_m2
            return
        total = self.count + c
        delta = block_mean - self.mean
        self.mean = self.mean + delta * (c / total)
        self.m2 = self.m2 + block_m2 + delta.square() * (self.count * c / total)
        self.count = total

    def variance(self) -> Tensor:
        """Unbiased column variances ``M₂ / (n − 1)`` (needs ``n ≥ 2``)."""
        if self.m2 is None or self.count < 2:
            raise ValueError(f"samples must number at least 2 for a variance, got {self.count}")
        return self.m2 / (self.count - 1)


def check_directions(directions: Tensor | None, dim: int, like: Tensor) -> Tensor | None:
    """``directions`` as a ``[k, dim]`` tensor with finite entries, on ``like``'s device/dtype."""
    if directions is None:
        return None
    if (
        not isinstance(directions, Tensor)
        or directions.dim() != 2
        or directions.shape[1] != dim
        or directions.shape[0] == 0
    ):
        got = (
            tuple(directions.shape) if isinstance(directions, Tensor) else type(directions).__name__
        )
        raise ValueError(f"directions must be a tensor of shape [k, {dim}] with k ≥ 1, got {got!r}")
    if not bool(torch.isfinite(directions).all()):
        raise ValueError("directions must have finite entries, got non-finite values")
    return directions.detach().to(device=like.device, dtype=like.dtype)


def describe_error(err: BaseException) -> str:
    """``"TypeName: first line of the message"``, for one-line fallback warnings."""
    lines = str(err).splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"

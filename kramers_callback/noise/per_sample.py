"""Exact per-sample gradient moments on the probe set: the reference noise estimator.

Every other estimator of ``tr Σ₁`` is tested against this one.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.func import grad_and_value, vmap

from kramers_callback._probe import ProbeLoss, batch_size_of, map_leaves, select_samples
from kramers_callback._validation import check_positive_int
from kramers_callback.noise.moments import (
    NoiseMoments,
    StreamingMoments,
    check_directions,
    describe_error,
    unbiased_gradient_norm_sq,
)

__all__ = ["per_sample_gradients", "per_sample_noise"]


def _as_one_sample_batch(sample: Any) -> Any:
    return map_leaves(sample, lambda leaf: leaf.unsqueeze(0) if isinstance(leaf, Tensor) else leaf)


def _vmapped_gradients(probe: ProbeLoss, x: Tensor, chunk: Any) -> tuple[Tensor, Tensor]:
    """``(ℓ_i, ∇ℓ_i)`` for the samples of ``chunk`` by ``vmap(grad)``: one batched forward."""

    def one_sample_loss(x_: Tensor, sample: Any) -> Tensor:
        # The user's loss_fn expects a batch: give it a batch of one.
        batch = _as_one_sample_batch(sample)
        losses = probe.check_losses(probe.per_sample_losses(x_, batch), batch)
        return losses.to(probe.dtype).sum()

    in_dims = map_leaves(chunk, lambda leaf: 0 if isinstance(leaf, Tensor) else None)
    grads, losses = vmap(grad_and_value(one_sample_loss), in_dims=(None, in_dims))(x, chunk)
    return losses, grads


def _looped_gradients(probe: ProbeLoss, x: Tensor, chunk: Any) -> tuple[Tensor, Tensor]:
    """``(ℓ_i, ∇ℓ_i)`` by one autograd pass per sample: for models ``vmap`` cannot batch."""
    losses, grads = [], []
    with torch.enable_grad():
        x_ = x.detach().requires_grad_(True)
        for i in range(batch_size_of(chunk)):
            sample = select_samples(chunk, slice(i, i + 1))
            loss = probe.check_losses(probe.per_sample_losses(x_, sample), sample)
            loss = loss.to(probe.dtype).sum()
            (grad,) = torch.autograd.grad(loss, x_, allow_unused=True)
            losses.append(loss.detach())
            grads.append(torch.zeros_like(x_) if grad is None else grad)
    return torch.stack(losses), torch.stack(grads)


class _GradientSource:
    """``vmap`` first; on the first failure one warning, then a per-sample loop for the rest."""

    def __init__(self, probe: ProbeLoss) -> None:
        self.probe = probe
        self.use_vmap = True

    def __call__(self, x: Tensor, chunk: Any) -> tuple[Tensor, Tensor]:
        if self.use_vmap:
            try:
                return _vmapped_gradients(self.probe, x, chunk)
            except (RuntimeError, NotImplementedError) as err:
                # A genuine error in the model reappears in the loop below and propagates.
                self.use_vmap = False
                warnings.warn(
                    "per-sample gradients: torch.func.vmap failed for this model "
                    f"({describe_error(err)}); "
                    "falling back to one autograd pass per sample (slower, same result)",
                    UserWarning,
                    stacklevel=3,
                )
        return _looped_gradients(self.probe, x, chunk)


def _chunks(probe: ProbeLoss, chunk_size: int) -> Iterator[tuple[int, Any]]:
    """``(index of the chunk's first sample in the probe, chunk)`` over all probe batches."""
    offset = 0
    for batch, size in zip(probe.batches, probe.batch_sizes, strict=True):
        for start in range(0, size, chunk_size):
            yield offset + start, select_samples(batch, slice(start, start + chunk_size))
        offset += size


def _check_finite(losses: Tensor, grads: Tensor, first_index: int) -> None:
    finite = torch.isfinite(losses) & torch.isfinite(grads).all(dim=1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten()
        raise ValueError(
            "per-sample losses and gradients must be finite (the loss or its gradient is not "
            f"finite at the current parameters), got {bad.numel()} non-finite sample(s), the "
            f"first at probe index {first_index + int(bad[0])}"
        )


def per_sample_gradients(probe: ProbeLoss, batch: Any, *, chunk_size: int = 64) -> Tensor:
    r"""Exact per-sample gradients ``∇_x ℓ_i(x₀)`` of one batch, shape ``[n_b, d]``.

    .. math::

        G_{i\cdot} = \nabla_x\, \ell_i(x_0) = s \odot \nabla_\theta\, \ell_i(\theta_0),
        \qquad \theta = s \odot x,

    with ``s`` the probe's ``scale`` (``s = 1`` without one). Computed by
    ``torch.func.vmap(torch.func.grad(...))`` of a one-sample loss (the user's ``loss_fn`` on a
    batch of one), ``chunk_size`` samples per call; falls back to a loop of
    ``torch.autograd.grad`` calls, with one warning, when ``vmap`` cannot batch the model.

    Assumes each sample's loss depends on that sample only (no BatchNorm in training mode, no
    in-batch negatives): the model should be in eval mode. Cost: one batched forward and
    backward per chunk (``n_b`` of each in the fallback); memory ``O(n_b·d)`` for the result.
    Raises ``ValueError`` when a loss or gradient is not finite.
    """
    chunk_size = check_positive_int("chunk_size", chunk_size)
    source = _GradientSource(probe)
    x = probe.x0.detach()
    out = []
    n = batch_size_of(batch)
    for start in range(0, n, chunk_size):
        losses, grads = source(x, select_samples(batch, slice(start, start + chunk_size)))
        _check_finite(losses, grads, start)
        out.append(grads)
    return torch.cat(out)


def per_sample_noise(
    probe: ProbeLoss, *, directions: Tensor | None = None, chunk_size: int = 64
) -> NoiseMoments:
    r"""Exact gradient-noise moments of the probe set from per-sample gradients (the reference).

    .. math::

        \bar g = \frac1n \sum_i g_i, \qquad
        \widehat{\operatorname{tr}\Sigma_1} = \frac{1}{n-1}\sum_i \|g_i - \bar g\|^2, \qquad
        \widehat{v^\top\Sigma_1 v} = \frac{1}{n-1}\sum_i \big(v^\top g_i - v^\top \bar g\big)^2,

        \widehat{\|g\|^2} = \|\bar g\|^2 - \widehat{\operatorname{tr}\Sigma_1}/n,

    with ``g_i = ∇_x ℓ_i(x₀)`` in the probe's coordinates (see :func:`per_sample_gradients`)
    and ``v`` the rows of ``directions`` (``[k, d]``). Source: docs/theory.md section 2.1; the
    ``‖g‖²`` correction is McCandlish et al. 2018, appendix A.

    Assumes the probe samples are independent draws from the training set (then all three
    are unbiased) and each sample's loss depends on that sample only (eval mode).

    Cost: ``⌈n_b / chunk_size⌉`` batched forward+backward passes per probe batch (``n``
    one-sample passes if ``vmap`` falls back to a loop); memory ``O(chunk_size·d)``: the
    moments are merged chunk by chunk (:class:`~kramers_callback.noise.moments.StreamingMoments`),
    never holding all ``n × d`` gradients. Raises ``ValueError`` when a loss or gradient is not
    finite, or the probe has fewer than 2 samples.
    """
    chunk_size = check_positive_int("chunk_size", chunk_size)
    n = probe.num_samples
    if n < 2:
        raise ValueError(f"probe must hold at least 2 samples for a variance, got {n}")
    x = probe.x0.detach()
    directions = check_directions(directions, probe.dim, x)
    source = _GradientSource(probe)
    gradient_moments = StreamingMoments()
    direction_moments = StreamingMoments()
    forward_before = probe.num_forward
    for first_index, chunk in _chunks(probe, chunk_size):
        losses, grads = source(x, chunk)
        _check_finite(losses, grads, first_index)
        gradient_moments.update(grads)
        if directions is not None:
            direction_moments.update(grads @ directions.T)

    noise_trace = float(gradient_moments.variance().sum())
    mean = gradient_moments.mean
    assert mean is not None
    return NoiseMoments(
        num_samples=n,
        noise_trace=noise_trace,
        gradient_norm_sq=unbiased_gradient_norm_sq(
            mean_norm_sq=float(mean.square().sum()), noise_trace=noise_trace, num_samples=n
        ),
        mean_gradient=mean,
        directional_variance=None if directions is None else direction_moments.variance(),
        num_forward=probe.num_forward - forward_before,
    )

"""The probe-set loss as a function of one flat parameter vector.

Every estimator works in the flat coordinates ``x`` of :class:`ProbeLoss`: the model's
trainable parameters concatenated, optionally divided elementwise by a ``scale`` (the square
root of a diagonal preconditioner, used for adaptive optimizers; see ``docs/theory.md``). With
``θ = scale ⊙ x`` the loss, gradients and Hessian-vector products with respect to ``x`` are the
preconditioned ones, so the estimators never need to know about preconditioning.

The model is called through :func:`torch.func.functional_call`, so nothing is written into its
parameters: evaluating the loss at ``θ₀ + s v`` leaves the model untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

LossFn = Callable[[nn.Module, Any], Tensor]
"""``loss_fn(model, batch) -> Tensor[n]``: one loss per sample of the batch."""


@dataclass(frozen=True)
class BatchMeanLoss:
    r"""A loss that knows only batch means: ``fn(model, batch) -> Tensor[]``, the batch's mean.

    Wrapping such a function (a ``training_step``, say) makes it a :data:`LossFn`: a call
    returns the batch mean ``L_b`` repeated once per sample, ``Tensor[n_b]``. Sums and means
    over a batch of that vector are those of the per-sample losses it stands for,

    .. math::

        \sum_{i\in b} \ell_i = n_b L_b, \qquad
        L = \frac1n \sum_b n_b L_b ,

    so the probe mean loss, its Hessian-vector products, the line scans and micro-batch
    gradients (each micro-batch one call) are exact. The spread of the repeated values inside
    a batch is zero, not the per-sample spread: :class:`ProbeLoss` marks such a probe
    ``per_sample=False``, and estimators that read the spread inside a batch
    (:func:`~kramers_callback.noise.directional_variance`) refuse it; the noise then comes
    from the spread between micro-batches (``docs/theory.md``, section 2.5).

    Assumes ``fn`` is the mean of per-sample losses of the batch (so batch means of different
    sizes combine by the weights ``n_b/n``). Cost: one call of ``fn`` per call.
    """

    fn: Callable[[nn.Module, Any], Tensor]
    """``fn(model, batch) -> Tensor`` with one element: the batch's mean loss."""

    def __call__(self, model: nn.Module, batch: Any) -> Tensor:
        mean = self.fn(model, batch)
        if not isinstance(mean, Tensor) or mean.numel() != 1:
            got = tuple(mean.shape) if isinstance(mean, Tensor) else type(mean).__name__
            raise ValueError(
                f"a BatchMeanLoss must return the batch's mean loss, a tensor of one element, "
                f"got {got}"
            )
        return mean.reshape(()).expand(batch_size_of(batch))


def move_batch(batch: Any, device: torch.device, dtype: torch.dtype | None = None) -> Any:
    """Move every tensor of a (nested) batch to ``device``; floating tensors also to ``dtype``."""

    def move(leaf: Any) -> Any:
        if not isinstance(leaf, Tensor):
            return leaf
        if dtype is not None and leaf.is_floating_point():
            return leaf.to(device=device, dtype=dtype)
        return leaf.to(device=device)

    return map_leaves(batch, move)


def estimation_dtype(parameter_dtype: torch.dtype) -> torch.dtype:
    """The dtype an estimate runs in: the parameters' float32 or float64, else float32 (a
    half-precision model is measured in float32: eigensolvers need its mantissa)."""
    return parameter_dtype if parameter_dtype in (torch.float32, torch.float64) else torch.float32


def batch_size_of(batch: Any) -> int:
    """The leading dimension of the first tensor found in a (nested) batch."""
    if isinstance(batch, Tensor):
        if batch.dim() == 0:
            raise ValueError(
                f"batches must hold tensors with a batch dimension, got shape {tuple(batch.shape)}"
            )
        return int(batch.shape[0])
    if isinstance(batch, dict):
        items: Iterable[Any] = batch.values()
    elif isinstance(batch, (list, tuple)):
        items = batch
    else:
        items = ()
    for item in items:
        try:
            return batch_size_of(item)
        except TypeError:
            continue
    raise TypeError(f"batch holds no tensor: {type(batch).__name__}")


def select_samples(batch: Any, index: Tensor | slice) -> Any:
    """The samples ``index`` of every tensor in a (nested) batch."""
    return map_leaves(batch, lambda leaf: leaf[index] if isinstance(leaf, Tensor) else leaf)


class _LossModule(nn.Module):
    """Wraps ``loss_fn(model, batch)`` as a module so ``functional_call`` can swap parameters."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self._loss_fn = loss_fn

    def forward(self, batch: Any) -> Tensor:
        return self._loss_fn(self.model, batch)


class ProbeLoss:
    """Per-sample and mean losses of a fixed probe set, as functions of flat coordinates ``x``.

    Args:
        model: the network; it must already be in the mode the estimate should use (eval).
        loss_fn: ``loss_fn(model, batch) -> Tensor[n]``, or a :class:`BatchMeanLoss`.
        batches: the probe set, materialised once.
        scale: optional positive ``Tensor[d]``; ``θ = scale ⊙ x``.
        dtype: floating dtype of the estimate (defaults to the parameters' dtype, at least float32).

    Attributes:
        x0: the current point in ``x`` coordinates (a detached copy).
        dim: number of trainable parameters ``d``.
        num_samples: total probe samples ``n``.
        num_forward: forward passes over a probe batch made so far (counted work).
        per_sample: whether ``loss_fn`` gives per-sample losses (``False`` for a
            :class:`BatchMeanLoss`, whose "per-sample" losses repeat the batch mean).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        batches: Sequence[Any],
        *,
        scale: Tensor | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError(
                "model must have at least one parameter with requires_grad=True, got none"
            )
        self.names = [f"model.{n}" for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.numels = [p.numel() for _, p in named]
        first = named[0][1]
        self.device = first.device
        self.dtype = dtype = estimation_dtype(first.dtype) if dtype is None else dtype
        self.module = _LossModule(model, loss_fn)
        self.per_sample = not isinstance(loss_fn, BatchMeanLoss)
        theta0 = torch.cat([p.detach().reshape(-1).to(dtype) for _, p in named])
        self.scale = None if scale is None else scale.detach().to(device=self.device, dtype=dtype)
        self.x0 = theta0 if self.scale is None else theta0 / self.scale
        self.dim = int(self.x0.numel())
        self.batches = [move_batch(b, self.device) for b in batches]
        self.batch_sizes = [batch_size_of(b) for b in self.batches]
        empty = [i for i, size in enumerate(self.batch_sizes) if size == 0]
        if empty:
            raise ValueError(
                f"batches must each hold at least one sample, got empty batch(es) at index "
                f"{empty} (sizes {self.batch_sizes})"
            )
        self.num_samples = int(sum(self.batch_sizes))
        self.num_forward = 0
        # Buffers stay those of the model; parameters outside the trainable set stay fixed.
        self._frozen = {
            f"model.{n}": p.detach().to(dtype) if p.is_floating_point() else p.detach()
            for n, p in model.named_parameters()
            if not p.requires_grad
        }

    # -- coordinates -------------------------------------------------------------------------
    def theta(self, x: Tensor) -> Tensor:
        """Flat parameters ``θ = scale ⊙ x``."""
        return x if self.scale is None else x * self.scale

    def unflatten(self, x: Tensor) -> dict[str, Tensor]:
        """Parameter dictionary for ``functional_call`` at coordinates ``x``."""
        flat = self.theta(x)
        out = dict(self._frozen)
        for name, shape, chunk in zip(
            self.names, self.shapes, flat.split(self.numels), strict=True
        ):
            out[name] = chunk.view(shape)
        return out

    # -- evaluations -------------------------------------------------------------------------
    def per_sample_losses(self, x: Tensor, batch: Any) -> Tensor:
        """``ℓ_i(x)`` for the samples of one batch, shape ``[n_b]``. One forward pass."""
        self.num_forward += 1
        return functional_call(self.module, self.unflatten(x), (batch,), strict=False)

    def require_per_sample(self, estimator: str) -> None:
        """Raise a ``ValueError``: ``estimator`` needs per-sample losses and the probe has none."""
        if not self.per_sample:
            raise ValueError(
                f"{estimator} needs per-sample losses (loss_fn(model, batch) -> Tensor[n]), got a "
                "BatchMeanLoss, which gives one mean per batch: use the micro-batch estimator "
                "(micro_batch_noise, or estimate(noise='micro_batch'))"
            )

    def check_losses(self, losses: Tensor, batch: Any) -> Tensor:
        """Raise a ``ValueError`` unless ``losses`` has shape ``[n]`` for this batch."""
        n = batch_size_of(batch)
        if not isinstance(losses, Tensor) or losses.shape != (n,):
            shape = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
            raise ValueError(
                f"loss_fn must return per-sample losses of shape [{n}] (one per sample of the "
                f"batch), got {shape}"
            )
        return losses

    def mean_loss(self, x: Tensor) -> Tensor:
        """The probe-set mean loss ``L(x)`` (differentiable). One forward pass per batch."""
        total = torch.zeros((), device=self.device, dtype=self.dtype)
        for batch in self.batches:
            total = total + self.per_sample_losses(x, batch).to(self.dtype).sum()
        return total / self.num_samples

    def loss_along(self, direction: Tensor) -> Callable[[float], float]:
        """``φ(s) = L(x₀ + s·direction)`` as a plain float function, without autograd."""

        def phi(s: float) -> float:
            with torch.no_grad():
                return float(self.mean_loss(self.x0 + s * direction))

        return phi

    def batch_weights(self) -> list[float]:
        """``n_b / n`` per probe batch: the weights that turn batch means into the probe mean."""
        return [b / self.num_samples for b in self.batch_sizes]


def map_leaves(batch: Any, fn: Callable[[Any], Any]) -> Any:
    """``fn`` applied to every leaf of a (nested) batch, keeping its containers.

    Containers are dicts, namedtuples, lists and tuples; anything else, tensor or not, is a
    leaf. :func:`move_batch` and :func:`select_samples` walk batches through it.
    """
    if isinstance(batch, dict):
        return {k: map_leaves(v, fn) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(map_leaves(v, fn) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(map_leaves(v, fn) for v in batch)
    return fn(batch)


def concat_batches(batches: Sequence[Any]) -> Any:
    """One batch holding the samples of ``batches`` in order (undoes :func:`select_samples` splits).

    Tensors are concatenated along the batch dimension; a non-tensor leaf (which
    :func:`select_samples` leaves unchanged) is taken from the first batch.
    Cost: one copy of the samples.
    """
    if len(batches) == 0:
        raise ValueError("batches must be a non-empty sequence of batches, got an empty sequence")
    first = batches[0]
    if len(batches) == 1:
        return first
    if isinstance(first, Tensor):
        try:
            return torch.cat(list(batches))
        except (RuntimeError, TypeError) as err:
            shapes = [
                tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__ for b in batches
            ]
            raise ValueError(
                "batches must hold tensors that agree beyond the batch dimension, got shapes "
                f"{shapes}"
            ) from err
    if isinstance(first, dict):
        return {k: concat_batches([b[k] for b in batches]) for k in first}
    if isinstance(first, tuple) and hasattr(first, "_fields"):
        return type(first)(*(concat_batches([b[i] for b in batches]) for i in range(len(first))))
    if isinstance(first, (list, tuple)):
        return type(first)(concat_batches([b[i] for b in batches]) for i in range(len(first)))
    return first

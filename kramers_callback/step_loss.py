"""Which loss the estimates use, and the loss of ``training_step`` when nothing better is given.

Resolution order (``docs/theory.md``, section 2.5):

1. ``loss_fn(model, batch) -> Tensor[n]`` passed by the user;
2. the LightningModule's ``per_sample_loss(batch) -> Tensor[n]``;
3. the batch mean returned by the LightningModule's own ``training_step``, wrapped as a
   :class:`~kramers_callback._probe.BatchMeanLoss`: curvature and line scans are exact, the
   noise comes from micro-batch gradients (:func:`~kramers_callback.noise.micro_batch_noise`).

A ``training_step`` is user code with side effects. Each call made for an estimate runs inside
:func:`isolated_step`, which keeps ``self.log``/``self.log_dict`` away from the logger and
``trainer.callback_metrics``, restores the torchmetrics states it updated and the global RNG
states it drew from. Parameters, buffers, ``.grad`` and training flags are restored by the
estimate itself (:func:`~kramers_callback._model_state.preserved_model_state`); the optimizer
is never called.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from pytorch_lightning.utilities.model_helpers import is_overridden
from pytorch_lightning.utilities.signature_utils import is_param_in_hook_signature
from torch import Tensor, nn
from torchmetrics import Metric

from kramers_callback._model_state import _rng_restore, _rng_snapshot
from kramers_callback._probe import BatchMeanLoss, LossFn
from kramers_callback.noise.micro_batch import default_micro_batch_size, micro_batch_relative_error

__all__ = [
    "TRAINING_STEP_LOSS",
    "LossPath",
    "ResolvedLoss",
    "isolated_step",
    "per_sample_loss_method",
    "resolve_loss",
    "step_output_loss",
    "training_step_loss",
    "training_step_warning",
]

_LOG_METHODS = ("log", "log_dict")
_BOOKKEEPING = ("_update_count", "_computed", "_forward_cache")
"""Besides its states, what a torchmetrics ``Metric`` changes on ``update``/``forward``."""


class LossPath(str, Enum):
    """Where the estimates' loss comes from, in resolution order."""

    LOSS_FN = "loss_fn"
    PER_SAMPLE_LOSS = "per_sample_loss"
    TRAINING_STEP = "training_step"


@dataclass(frozen=True)
class ResolvedLoss:
    """The loss ``estimate`` is given, and which path of the resolution order it came from."""

    loss_fn: LossFn
    path: LossPath


def per_sample_loss_method(model: nn.Module, batch: Any) -> Tensor:
    """``model.per_sample_loss(batch)``: a module-level function, so it pickles (ddp_spawn)."""
    return model.per_sample_loss(batch)  # type: ignore[operator]


def step_output_loss(output: Any) -> Tensor:
    """The loss in a ``training_step`` output: the tensor itself, or a mapping's ``"loss"``.

    Follows Lightning's automatic optimisation, except that ``None`` (a skipped step, or a
    manually optimised module) is refused: the estimate needs a loss at every call.
    Raises ``ValueError`` naming what was returned.
    """
    loss = output.get("loss") if isinstance(output, Mapping) else output
    if isinstance(loss, Tensor):
        return loss
    if output is None:
        raise ValueError(
            "training_step must return the batch's mean loss (a Tensor, or a dict with a "
            "'loss' Tensor) for KramersCallback's training_step fallback, got None (a skipped "
            "step, or manual optimisation). Return the loss, or give the LightningModule a "
            "`per_sample_loss(self, batch) -> Tensor[n]` method, or pass "
            "KramersCallback(loss_fn=...)."
        )
    if isinstance(output, Mapping):
        raise ValueError(
            "training_step must return a dict with a 'loss' Tensor for KramersCallback's "
            f"training_step fallback, got a dict with keys {sorted(map(str, output))} and "
            f"'loss' = {type(loss).__name__}"
        )
    raise ValueError(
        "training_step must return the batch's mean loss (a Tensor, or a dict with a 'loss' "
        f"Tensor) for KramersCallback's training_step fallback, got {type(output).__name__}"
    )


def _no_log(*args: Any, **kwargs: Any) -> None:
    """Stands in for ``LightningModule.log``/``log_dict`` while a step is evaluated."""


def _copy_state(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, list):
        return list(value)
    return value


@contextlib.contextmanager
def isolated_step(module: nn.Module) -> Iterator[None]:
    """Run a step of ``module`` without its logging, metric updates or RNG draws showing.

    - ``log`` and ``log_dict`` of every submodule are shadowed by no-op instance attributes:
      ``self.log`` resolves to the instance first, also from helper methods, so nothing reaches
      ``trainer._results``, hence neither the logger nor ``callback_metrics``;
    - every torchmetrics ``Metric`` gets its states and update bookkeeping back;
    - the global RNG states (Python, NumPy, torch, CUDA) are restored, so a step that draws
      random numbers (an augmentation, say) draws the same ones at every call of an estimate,
      and the loss stays a deterministic function of the parameters.

    Restored on exit, also after an exception. Cost: one copy of the metric states and RNG
    states per call. Not covered: calls to a logger's ``experiment`` made directly, and other
    attributes a step assigns.
    """
    modules = list(module.modules())
    shadowed = [
        (m, name, m.__dict__.get(name))
        for m in modules
        if isinstance(m, pl.LightningModule)
        for name in _LOG_METHODS
    ]
    metrics = [
        (m, {name: _copy_state(getattr(m, name)) for name in (*m.metric_state, *_BOOKKEEPING)})
        for m in modules
        if isinstance(m, Metric)
    ]
    rng = _rng_snapshot()
    for m, name, _ in shadowed:
        m.__dict__[name] = _no_log
    try:
        yield
    finally:
        for m, name, previous in shadowed:
            if previous is None:
                del m.__dict__[name]
            else:
                m.__dict__[name] = previous
        for m, states in metrics:
            for name, value in states.items():
                setattr(m, name, value)
        _rng_restore(rng)


def training_step_loss(model: nn.Module, batch: Any) -> Tensor:
    """``model.training_step(batch, 0)``'s loss, inside :func:`isolated_step`.

    ``batch_idx`` is ``0`` (and left out for a ``training_step(self, batch)``), as Lightning
    does. Raises ``ValueError`` for an output without a loss (:func:`step_output_loss`).
    """
    step = model.training_step  # type: ignore[attr-defined]
    with isolated_step(model):
        if is_param_in_hook_signature(step, "batch_idx", min_args=2):
            output = step(batch, 0)
        else:
            output = step(batch)
    return step_output_loss(output)


TRAINING_STEP_LOSS = BatchMeanLoss(training_step_loss)
"""The third path of the resolution order: the batch-mean loss of ``training_step``."""


def resolve_loss(loss_fn: LossFn | None, pl_module: pl.LightningModule) -> ResolvedLoss:
    """The estimates' loss: ``loss_fn``, else ``per_sample_loss``, else ``training_step``.

    Raises ``MisconfigurationException`` when none is available (no ``loss_fn``, and the module
    overrides neither ``per_sample_loss`` nor ``training_step``).
    """
    if loss_fn is not None:
        return ResolvedLoss(loss_fn, LossPath.LOSS_FN)
    if callable(getattr(pl_module, "per_sample_loss", None)):
        return ResolvedLoss(per_sample_loss_method, LossPath.PER_SAMPLE_LOSS)
    if is_overridden("training_step", pl_module):
        return ResolvedLoss(TRAINING_STEP_LOSS, LossPath.TRAINING_STEP)
    raise MisconfigurationException(
        "KramersCallback needs a loss: pass KramersCallback(loss_fn=lambda model, batch: ...) "
        "returning one loss per sample, or add `per_sample_loss(self, batch) -> Tensor[n]` or "
        f"`training_step` to {type(pl_module).__name__}."
    )


def training_step_warning(*, num_samples: int, micro_batch_size: int | None = None) -> str:
    """The one warning of the ``training_step`` path: what it measures and what it costs.

    ``num_samples`` is the probe size ``n``; ``micro_batch_size`` the ``b`` the estimates are
    given (``None``: :func:`~kramers_callback.noise.micro_batch.default_micro_batch_size`).
    Raises ``ValueError`` when they make fewer than 2 micro-batches (the estimate would too).
    """
    b = micro_batch_size or default_micro_batch_size(num_samples)
    m = num_samples // b
    return (
        "KramersCallback: no loss_fn was given and the LightningModule has no per_sample_loss, "
        "so estimates use the batch-mean loss of training_step (docs/theory.md, section 2.5). "
        "Curvature and barriers are exact. The noise (T, T_v, B_noise) comes from the spread "
        f"of m = {m} micro-batch gradients of b = {b} probe samples: {m} training_step "
        "forward-backward passes per estimate, with a relative standard error of up to "
        f"sqrt(2/(m-1)) = {micro_batch_relative_error(m):.0%} on T and each T_v. For exact "
        "per-sample noise, add `per_sample_loss(self, batch) -> Tensor[n]` to the "
        "LightningModule or pass KramersCallback(loss_fn=...)."
    )

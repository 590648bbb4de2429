"""The setups ``KramersCallback`` refuses, each with a message that says what to change.

Lightning glue: every ``check_*`` function raises ``MisconfigurationException`` for one
unsupported setup and returns otherwise, but :func:`check_monitor` (run during training by
:class:`MonitorCheck`), which raises or warns as EarlyStopping's ``strict`` does. The one setup
that is supported but approximated gets :func:`adaptive_warning`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from pytorch_lightning.utilities.model_helpers import is_overridden
from pytorch_lightning.utilities.rank_zero import rank_zero_warn
from torch.utils.data import DataLoader

from kramers_callback import _optimizer as optim_io
from kramers_callback._probe import LossFn
from kramers_callback.estimate import check_top_k, noise_estimator_for
from kramers_callback.policies import PolicyRule

__all__ = [
    "MonitorCheck",
    "MonitoredValues",
    "adaptive_warning",
    "check_accumulation_owner",
    "check_fit_loop",
    "check_monitor",
    "check_noise_option",
    "check_optimizer",
    "check_schedule",
    "check_top_k_fits",
    "check_train_loader",
    "check_unread_batch_attribute",
    "validates",
]

_SHARDED_STRATEGIES = (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy)


def check_fit_loop(trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
    """Parameters replicated on every rank, and automatic optimization."""
    if isinstance(trainer.strategy, _SHARDED_STRATEGIES):
        raise MisconfigurationException(
            f"KramersCallback does not support the {type(trainer.strategy).__name__}: its "
            "estimates need every parameter on every rank (FSDP and DeepSpeed shard them). "
            "Use strategy='ddp' (or 'ddp_spawn', or one device)."
        )
    if not pl_module.automatic_optimization:
        raise MisconfigurationException(
            "KramersCallback does not support manual optimization: it reads the gradient "
            "at each optimizer step and sets the learning rate and the batch size of "
            "Lightning's loop. Use automatic optimization, or remove the callback."
        )


def check_accumulation_owner(rule: PolicyRule, attribute: str) -> None:
    """Called where a GradientAccumulationScheduler runs and the batch could only change
    through ``accumulate_grad_batches``: refused when the policy owns ``B``."""
    if rule.owns_batch:
        raise MisconfigurationException(
            f"KramersCallback(policy={rule.policy.value!r}) would change the batch size "
            "through trainer.accumulate_grad_batches (no `"
            f"{attribute}` attribute sizes a train_dataloader() of the "
            "LightningModule or DataModule), which a GradientAccumulationScheduler also "
            "sets. Remove the GradientAccumulationScheduler, or use policy='observe' (or "
            f"'lr'), or give the LightningModule or DataModule a `{attribute}` "
            "attribute that its train_dataloader() reads (and pass the data through it, not "
            "as Trainer.fit(train_dataloaders=...))."
        )


def check_optimizer(trainer: pl.Trainer) -> str:
    """One SGD or Adam-family optimizer; returns its kind
    (:func:`kramers_callback._optimizer.classify`)."""
    optimizers = trainer.optimizers
    if len(optimizers) != 1:
        raise MisconfigurationException(
            f"KramersCallback supports exactly one optimizer, got {len(optimizers)}. Return "
            "one optimizer (with parameter groups if needed) from configure_optimizers."
        )
    optimizer = optimizers[0]
    kind = optim_io.classify(optimizer)
    if kind is None:
        raise MisconfigurationException(
            f"KramersCallback supports torch.optim.SGD and the Adam family (Adam, AdamW, "
            f"NAdam, RAdam), got {type(optimizer).__name__}."
        )
    return kind


def adaptive_warning(optimizer: torch.optim.Optimizer) -> str:
    """The warning for an Adam-family optimizer: outside the SGD theory, approximated."""
    return (
        f"KramersCallback: {type(optimizer).__name__} is outside the seed's SGD theory; "
        "estimates use the diagonal-preconditioner approximation P = 1/(sqrt(v̂)+ε) from the "
        "optimizer's exp_avg_sq (docs/theory.md)."
    )


def check_schedule(trainer: pl.Trainer, rule: PolicyRule) -> None:
    """No LR scheduler where the policy owns ``η``, and a finite budget ``τ``."""
    if rule.owns_lr and trainer.lr_scheduler_configs:
        raise MisconfigurationException(
            f"KramersCallback(policy={rule.policy.value!r}) sets the learning rate itself, "
            "so it cannot run with an LR scheduler. Remove the scheduler from "
            "configure_optimizers, or use policy='batch' or 'observe' to keep it."
        )
    if trainer.max_steps == -1 and trainer.max_epochs in (None, -1):
        raise MisconfigurationException(
            "KramersCallback needs a finite training budget τ: set Trainer(max_epochs=...) "
            "or Trainer(max_steps=...)."
        )


def check_train_loader(loader: Any) -> DataLoader:
    """One torch DataLoader over a map-style dataset, with a ``batch_size``."""
    if not isinstance(loader, DataLoader):
        raise MisconfigurationException(
            "KramersCallback needs one torch DataLoader as the train dataloader, got "
            f"{type(loader).__name__}."
        )
    dataset = loader.dataset
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise MisconfigurationException(
            "KramersCallback draws its probe set by index: the train dataset must be "
            f"map-style (with __len__ and __getitem__), got {type(dataset).__name__}."
        )
    if loader.batch_size is None:
        raise MisconfigurationException(
            "KramersCallback needs the train DataLoader's batch_size (got None: a custom "
            "batch_sampler). Pass batch_size to the DataLoader."
        )
    return loader


def check_top_k_fits(pl_module: pl.LightningModule, top_k: int) -> None:
    """``top_k`` fits the model's trainable dimension."""
    try:
        dim = sum(p.numel() for p in optim_io.trainable_parameters(pl_module))
        check_top_k(top_k, dim)
    except ValueError as err:
        raise MisconfigurationException(f"KramersCallback: {err}") from None


def check_noise_option(options: dict[str, Any], loss_fn: LossFn) -> None:
    """``options["noise"]`` works with the resolved loss."""
    try:
        noise_estimator_for(options.get("noise"), loss_fn)
    except ValueError as err:
        raise MisconfigurationException(f"KramersCallback: estimate_options: {err}") from None


def check_unread_batch_attribute(
    attribute: str, value: Any, loader_batch: int | None, *, refuse: bool
) -> None:
    """The train dataloader ignores ``attribute`` (``value`` is not its ``loader_batch``):
    refuse where the accumulation is not the callback's to set either (``refuse``), else
    warn that the batch size moves through ``trainer.accumulate_grad_batches``."""
    if refuse:
        raise MisconfigurationException(
            f"KramersCallback: `{attribute}` = {value!r} does not size "
            f"the train dataloader (batch_size={loader_batch}), and a "
            "GradientAccumulationScheduler owns trainer.accumulate_grad_batches, so "
            "the callback cannot change the batch size. Make train_dataloader() "
            f"read `{attribute}`, or remove the "
            "GradientAccumulationScheduler, or use policy='observe' or 'lr'."
        )
    rank_zero_warn(
        f"KramersCallback: `{attribute}` = {value!r} does not size the "
        f"train dataloader (batch_size={loader_batch}); changing the batch "
        "size through trainer.accumulate_grad_batches instead."
    )


def validates(trainer: pl.Trainer) -> bool:
    """Whether this fit can run a validation loop (a ``validation_step`` and batches to run)."""
    module = trainer.lightning_module
    return bool(trainer.limit_val_batches) and is_overridden("validation_step", module)


def check_monitor(
    monitor: str | None, metrics: Mapping[str, Any], *, strict: bool, where: str
) -> bool:
    """EarlyStopping's ``strict``: a ``monitor`` that is never logged would leave the stop
    rule's guard silently open, so say so at the first chance (the end of a validation, or of
    a training epoch where none runs), naming what is logged. ``strict``: raise a
    ``RuntimeError``; else warn. Returns whether it warned (the caller warns once)."""
    if monitor is None or monitor in metrics:
        return False
    available = sorted(metrics)
    message = (
        f"KramersCallback: monitor={monitor!r} is not among the metrics logged by the "
        f"end of this {where} (available: {available}), so the stop rule cannot check it. "
        f"Log it (self.log({monitor!r}, ...)) or pass monitor=None"
    )
    if strict:
        raise RuntimeError(message + "; strict=False only warns.")
    rank_zero_warn(message + "; until it appears the stop rule runs without it. Warned once.")
    return True


class MonitorCheck:
    """The stop rule's ``monitor``: its value at an epoch end, and :func:`check_monitor` until
    it has warned once (a fit's state: a new fit starts with a new instance)."""

    def __init__(self, monitor: str | None, *, strict: bool) -> None:
        self.monitor = monitor
        self.strict = strict
        self.warned = False
        self.measured: float | None = None
        """The value the last validation of the epoch in progress logged (checkpointed: a
        resume between that validation and the epoch end does not see it again)."""

    def start_epoch(self) -> None:
        self.measured = None

    def end_validation(self, trainer: pl.Trainer) -> None:
        self.check(trainer, "validation")
        self.measured = self.value(trainer)

    def check(self, trainer: pl.Trainer, where: str) -> None:
        if not self.warned:
            self.warned = check_monitor(
                self.monitor, trainer.callback_metrics, strict=self.strict, where=where
            )

    def value(self, trainer: pl.Trainer) -> float | None:
        """The monitored value now, or ``None`` (checked here where no validation runs)."""
        if self.monitor is None:
            return None
        value = trainer.callback_metrics.get(self.monitor)
        if value is None and not validates(trainer):
            self.check(trainer, "training epoch")
        return None if value is None else float(value)

    def epoch_values(self, trainer: pl.Trainer) -> MonitoredValues:
        """Rank 0's :class:`MonitoredValues` at this epoch end (one broadcast, with a
        ``monitor``): a metric logged without ``sync_dist`` differs by rank, and ranks must
        decide alike and checkpoint the same stop-rule state."""
        if self.monitor is None:
            return MonitoredValues(None, None)
        latest = self.value(trainer)
        this_epoch = self.measured if validates(trainer) else latest
        latest, this_epoch = trainer.strategy.broadcast((latest, this_epoch), src=0)
        return MonitoredValues(latest, this_epoch)


@dataclass(frozen=True)
class MonitoredValues:
    """The monitored metric at an epoch end, as the two readers need it."""

    latest: float | None
    """What ``callback_metrics`` holds now, an older epoch's where no validation ran this
    epoch (the stop rule's guard: ``patience > 1`` still counts under
    ``check_val_every_n_epoch``)."""
    this_epoch: float | None
    """Where the fit validates, the epoch's last validation's value (``None`` in an epoch
    without one); where it has no validation loop, the epoch end's (the plateau test of
    ``cooling_patience``)."""

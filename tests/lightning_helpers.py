"""Tiny LightningModules and DataModules for the callback tests (CPU, seconds per fit).

Importable by name (``tests/`` is on ``sys.path`` under pytest), so ``ddp_spawn`` workers can
unpickle them.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from kramers_callback._step_statistics import StepStatistics
from kramers_callback.examples._sampler import EpochSeededSampler
from kramers_callback.examples.double_well import (
    MINIMUM_X,
    DoubleWellDataModule,
    DoubleWellModule,
    double_well_loss,
)

WELL = dict(
    overhead_budget=math.inf,
    probe_size=256,
    probe_batch_size=256,
    top_k=2,  # the whole 2-D space: a warm start then cannot miss an eigenvector
    compute_trace=False,
    max_products=60,
    max_scan_evals=40,
)
"""Estimate settings for the double-well callback tests: every epoch, exact, and quick."""

FAST = dict(
    overhead_budget=math.inf,
    probe_size=32,
    probe_batch_size=32,
    top_k=1,
    compute_trace=False,
    max_products=60,
    max_scan_evals=30,
)
"""Estimate settings for a small network's callback tests: a small estimate every epoch."""


def blobs(num_samples: int = 192, dim: int = 6, classes: int = 3, seed: int = 0) -> TensorDataset:
    """Gaussian blobs: a separable but noisy classification task."""
    generator = torch.Generator().manual_seed(seed)
    centres = 1.5 * torch.randn(classes, dim, generator=generator)
    y = torch.arange(num_samples) % classes
    x = centres[y] + torch.randn(num_samples, dim, generator=generator)
    return TensorDataset(x, y)


class BlobsData(pl.LightningDataModule):
    """``batch_size`` drives ``train_dataloader()``: the loader mechanism."""

    def __init__(self, batch_size: int = 16, num_samples: int = 192, seed: int = 0) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.seed = seed
        self.train_set = blobs(num_samples, seed=seed)
        self.val_set = blobs(64, seed=seed + 1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=EpochSeededSampler(self.train_set, self.seed),
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=64)


class FixedBlobsData(BlobsData):
    """No ``batch_size`` attribute: the callback must fall back to gradient accumulation."""

    def __init__(self, batch_size: int = 16, num_samples: int = 192, seed: int = 0) -> None:
        super().__init__(batch_size, num_samples, seed)
        self.loader_batch = self.__dict__.pop("batch_size")

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set,
            batch_size=self.loader_batch,
            sampler=EpochSeededSampler(self.train_set, self.seed),
        )


class TinyClassifier(pl.LightningModule):
    """A 6→8→3 tanh MLP (83 parameters) with ``per_sample_loss``.

    Args:
        optimizer: ``"sgd"``, ``"adamw"``, ``"rmsprop"`` (unsupported) or ``"two"`` (two
            optimizers, refused).
        scheduler: add a StepLR.
        manual: manual optimization (refused).
        nan_at_step: make the training loss NaN at this global step (a fault).
        nan_rank: only on this rank, with ``bad_value`` added as a constant: the loss the
            callback reads is not finite, but its gradient (and so every rank's parameters)
            stays finite.
        bad_value: what ``nan_rank`` adds: NaN, or an infinity.
    """

    def __init__(
        self,
        lr: float = 0.2,
        momentum: float = 0.0,
        optimizer: str = "sgd",
        scheduler: bool = False,
        manual: bool = False,
        nan_at_step: int | None = None,
        nan_rank: int | None = None,
        bad_value: float = math.nan,
        per_sample: bool = True,
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
        self.lr, self.momentum, self.optimizer_name = lr, momentum, optimizer
        self.scheduler, self.nan_at_step, self.nan_rank = scheduler, nan_at_step, nan_rank
        self.bad_value = bad_value
        self.automatic_optimization = not manual
        if not per_sample:
            self.per_sample_loss = None  # type: ignore[assignment]

    def per_sample_loss(self, batch: Any) -> Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y, reduction="none")

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        if self.nan_at_step is not None and self.global_step == self.nan_at_step:
            if self.nan_rank is None:
                loss = loss * float("nan")
            elif self.global_rank == self.nan_rank:
                loss = loss + self.bad_value
        if not self.automatic_optimization:
            opt = self.optimizers()
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self.net(x), y))

    def configure_optimizers(self) -> Any:
        params = self.parameters()
        if self.optimizer_name == "adamw":
            opt = torch.optim.AdamW(params, lr=self.lr)
        elif self.optimizer_name == "rmsprop":
            opt = torch.optim.RMSprop(params, lr=self.lr)
        elif self.optimizer_name == "two":
            return [
                torch.optim.SGD(self.net[0].parameters(), lr=self.lr),
                torch.optim.SGD(self.net[2].parameters(), lr=self.lr),
            ]
        else:
            opt = torch.optim.SGD(
                [
                    {"params": self.net[0].parameters()},
                    {"params": self.net[2].parameters(), "lr": self.lr / 2},
                ],
                lr=self.lr,
                momentum=self.momentum,
            )
        if self.scheduler:
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1)}
        return opt


class PlateauedClassifier(TinyClassifier):
    """Logs ``val_metric`` (without ``sync_dist``), which improves at the first two validations
    and never after: the monitored metric stalls while the training loss still falls. On
    ``improving_rank`` it improves at every validation instead."""

    def __init__(self, improving_rank: int | None = None) -> None:
        super().__init__(lr=0.2)
        self.improving_rank = improving_rank
        self.validations = 0

    def on_validation_epoch_end(self) -> None:
        self.validations += 1
        improving = self.global_rank == self.improving_rank
        self.log("val_metric", 1.0 / (self.validations if improving else min(self.validations, 2)))


def trainer(**kwargs: Any) -> pl.Trainer:
    """A quiet CPU trainer."""
    options: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        deterministic=True,
    )
    options.update(kwargs)
    return pl.Trainer(**options)


def started_step_statistics(
    param: nn.Parameter, *, dataset_size: int, num_batches: int, noise_stride: int
) -> StepStatistics:
    """Step statistics of one CPU process over ``param``, set up as at a fit's start."""
    steps = StepStatistics(noise_window=2, noise_stride=noise_stride)
    steps.start_fit(
        dataset_size=dataset_size,
        world_size=1,
        params=[param],
        adaptive=False,
        num_batches=num_batches,
        device=torch.device("cpu"),
    )
    return steps


def flat_parameters(module: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


class StopAfter(pl.Callback):
    """Stop training at the end of epoch ``epochs`` (1-based count)."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


class DumpHistory(pl.Callback):
    """Write each rank's Kramers history and last estimate to ``directory/rank{r}.json``."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from kramers_callback.callback import KramersCallback

        kramers = next(c for c in trainer.callbacks if isinstance(c, KramersCallback))
        est = kramers.last_estimate
        payload = {
            "history": kramers.history,
            "estimate": None
            if est is None
            else {
                "temperature": est.temperature,
                "lambda_max": est.lambda_max,
                "escape_rate": est.escape_rate,
                "eigenvalues": est.eigenvalues,
            },
            "lr": [g["lr"] for g in trainer.optimizers[0].param_groups],
            "stop_reason": kramers.stop_reason.value,
            "termination": kramers.termination.state_dict(),
            "params": flat_parameters(pl_module).tolist(),
        }
        path = os.path.join(self.directory, f"rank{trainer.global_rank}.json")
        with open(path, "w") as handle:
            json.dump(payload, handle, default=float)


class FixedDoubleWellData(DoubleWellDataModule):
    """The double-well data without a ``batch_size`` attribute: gradient accumulation it is."""

    def __init__(self, batch_size: int = 16, **kwargs: Any) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        self.loader_batch = self.__dict__.pop("batch_size")

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set,
            batch_size=self.loader_batch,
            sampler=EpochSeededSampler(self.train_set, self.seed),
        )


class SplitDoubleWell(pl.LightningModule):
    """The double well with ``x`` and ``y`` as two parameters in two groups (``y`` at half LR)."""

    def __init__(self, lr: float = 0.02, momentum: float = 0.0) -> None:
        super().__init__()
        self.lr, self.momentum = lr, momentum
        self.x = nn.Parameter(torch.tensor([MINIMUM_X]))
        self.y = nn.Parameter(torch.tensor([0.0]))

    def per_sample_loss(self, batch: Any) -> Tensor:
        a = batch[0] if isinstance(batch, (list, tuple)) else batch
        theta = torch.cat([self.x, self.y])
        return double_well_loss(theta) + a @ theta

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self.per_sample_loss(batch).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(
            [{"params": [self.x]}, {"params": [self.y], "lr": self.lr / 2}],
            lr=self.lr,
            momentum=self.momentum,
        )


class FaultyDoubleWell(DoubleWellModule):
    """The double well whose training loss turns NaN at one step (parameters become NaN)."""

    def __init__(self, nan_at_step: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.nan_at_step = nan_at_step

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if self.global_step == self.nan_at_step else loss


class BatchSizes(pl.Callback):
    """Record the samples of every training batch and the optimizer steps of every epoch."""

    def __init__(self) -> None:
        self.batches: dict[int, list[int]] = {}
        self.steps: dict[int, int] = {}
        self._start = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = trainer.global_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        self.batches.setdefault(trainer.current_epoch, []).append(len(batch[0]))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.steps[trainer.current_epoch] = trainer.global_step - self._start


def decisions(cb: Any) -> list[tuple]:
    """A callback's history as what was decided each epoch: the comparison of resume tests."""
    return [(h["epoch"], h["estimate"], h["reason"], h["lr"], h["batch_size"]) for h in cb.history]

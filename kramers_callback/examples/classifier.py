"""A LightningModule that trains any classification network with cross-entropy."""

from __future__ import annotations

from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kramers_callback._validation import (
    check_choice,
    check_in_range,
    check_non_negative,
    check_positive,
)

OPTIMIZERS = ("sgd", "adamw")


class ClassifierModule(pl.LightningModule):
    """Cross-entropy training of ``net`` with SGD (optionally with momentum) or AdamW.

    The training loss is the batch mean of :meth:`per_sample_loss`, so the callback's probe
    loss (the mean of the same per-sample losses over its probe set) is the function the
    optimizer descends.

    Logged metrics: ``train_loss`` (every step), ``val_loss`` and ``val_acc`` (per validation
    epoch), ``test_loss`` and ``test_acc``.

    Args:
        net: the network, ``net(x) -> logits [n, classes]``.
        lr: learning rate ``η > 0``.
        momentum: SGD momentum ``β ∈ [0, 1)``; must be 0 with AdamW, which uses its own betas.
        weight_decay: decoupled (AdamW) or L2 (SGD) weight decay ``≥ 0``.
        optimizer: ``"sgd"`` or ``"adamw"``.
    """

    def __init__(
        self,
        net: nn.Module,
        lr: float = 0.1,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        optimizer: Literal["sgd", "adamw"] = "sgd",
    ) -> None:
        super().__init__()
        if not isinstance(net, nn.Module):
            raise ValueError(f"net must be a torch.nn.Module, got {net!r}")
        check_positive("lr", lr)
        check_in_range("momentum", momentum, 0.0, 1.0, high_open=True)
        check_non_negative("weight_decay", weight_decay)
        check_choice("optimizer", optimizer, OPTIMIZERS)
        if optimizer == "adamw" and momentum != 0:
            raise ValueError(
                "momentum must be 0 with optimizer='adamw' (AdamW uses its betas), "
                f"got {momentum!r}"
            )
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.optimizer_name = optimizer

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def per_sample_loss(self, batch: Any) -> Tensor:
        """Cross-entropy of each sample of ``batch = (x, y)``, shape ``[n]``."""
        x, y = batch
        return F.cross_entropy(self.net(x), y, reduction="none")

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = self.per_sample_loss(batch).mean()
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch[1]))
        return loss

    def _evaluate(self, batch: Any, stage: str) -> None:
        x, y = batch
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(dim=-1) == y).float().mean()
        # Weighting each batch by its size makes the epoch value the exact data-set mean.
        self.log(f"{stage}_loss", loss, batch_size=len(y), sync_dist=True)
        self.log(f"{stage}_acc", acc, prog_bar=True, batch_size=len(y), sync_dist=True)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_name == "adamw":
            return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(
            self.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )

"""scikit-learn's bundled 8×8 digits as a LightningDataModule (nothing is downloaded)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from kramers_callback._validation import check_in_range, check_positive_int
from kramers_callback.examples._sampler import EpochSeededSampler


class DigitsDataModule(pl.LightningDataModule):
    """The 1 797 images of :func:`sklearn.datasets.load_digits`, split into train and validation.

    The split is a seeded random permutation; pixels are standardised with the training
    split's mean and standard deviation (one scalar each, so no pixel is divided by zero).
    Batches are ``(x [n, 1, 8, 8] float32, y [n] int64)``.

    ``batch_size`` is a plain attribute that :meth:`train_dataloader` reads each time it is
    called: the Kramers callback resizes batches by setting it and reloading the dataloader.
    The training order is a permutation drawn from ``(seed, epoch)`` (see
    :class:`~kramers_callback.examples._sampler.EpochSeededSampler`), so it survives resumes
    and reloads.

    Args:
        batch_size: training batch size.
        val_fraction: share of the samples held out for validation, in ``(0, 1)``.
        seed: seeds the split and the shuffling.
        eval_batch_size: validation batch size (fixed, whatever the training batch size).
    """

    num_classes = 10

    def __init__(
        self,
        batch_size: int = 32,
        val_fraction: float = 0.25,
        seed: int = 0,
        eval_batch_size: int = 512,
    ) -> None:
        super().__init__()
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.val_fraction = check_in_range(
            "val_fraction", val_fraction, 0.0, 1.0, low_open=True, high_open=True
        )
        self.seed = check_positive_int("seed", seed, minimum=0)
        self.eval_batch_size = check_positive_int("eval_batch_size", eval_batch_size)
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        from sklearn.datasets import load_digits

        data = load_digits()
        x = torch.as_tensor(data.images, dtype=torch.float32).unsqueeze(1)
        y = torch.as_tensor(data.target, dtype=torch.int64)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.seed))
        num_val = max(1, round(self.val_fraction * len(y)))
        val_idx, train_idx = order[:num_val], order[num_val:]
        mean, std = x[train_idx].mean(), x[train_idx].std()
        x = (x - mean) / std
        self.train_set = TensorDataset(x[train_idx], y[train_idx])
        self.val_set = TensorDataset(x[val_idx], y[val_idx])

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        assert self.train_set is not None
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=EpochSeededSampler(self.train_set, self.seed),
        )

    def val_dataloader(self) -> DataLoader:
        self.setup("validate")
        assert self.val_set is not None
        return DataLoader(self.val_set, batch_size=self.eval_batch_size)

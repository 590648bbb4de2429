"""scikit-learn's bundled 8×8 digits as a LightningDataModule (nothing is downloaded)."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from kramers_callback._validation import check_in_range
from kramers_callback.examples._sampler import SeededTensorDataModule


class DigitsDataModule(SeededTensorDataModule):
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
        super().__init__(batch_size, seed, eval_batch_size)
        self.val_fraction = check_in_range(
            "val_fraction", val_fraction, 0.0, 1.0, low_open=True, high_open=True
        )

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

"""A shuffling sampler whose order depends only on ``(seed, epoch)``, and the data-module base
that uses it.

Lightning calls ``set_epoch`` on a train sampler at the start of every epoch. Seeding each
epoch's permutation from ``(seed, epoch)`` instead of drawing from one long-lived generator
makes the order independent of how the run got there: a run resumed from a checkpoint, or a
dataloader rebuilt mid-run because the batch size changed, sees exactly the samples an
uninterrupted run sees. No global random state is read or written.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from kramers_callback._validation import check_positive_int


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed mixed from ``(seed, epoch)`` (no collisions between nearby pairs)."""
    words = np.random.SeedSequence([seed, epoch]).generate_state(2, dtype=np.uint32)
    return int(words.view(np.uint64)[0] >> np.uint64(1))


class EpochSeededSampler(RandomSampler):
    """A random permutation of the data set each epoch, drawn from ``(seed, epoch)``.

    It is a :class:`~torch.utils.data.RandomSampler`, so Lightning recognises it as shuffled and,
    under a distributed strategy, replaces it by its own seeded ``DistributedSampler``.

    Args:
        data_source: the data set (only its length is used).
        seed: integer ≥ 0.
    """

    def __init__(self, data_source: Sized, seed: int = 0) -> None:
        check_positive_int("seed", seed, minimum=0)
        super().__init__(data_source)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch`` (Lightning calls this before each epoch)."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        self.generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        return super().__iter__()


class SeededTensorDataModule(pl.LightningDataModule):
    """Loaders over in-memory ``train_set`` / ``val_set`` that subclasses build in ``setup``.

    ``batch_size`` is read each time :meth:`train_dataloader` is called (the Kramers callback
    resizes batches by setting it and reloading), and the training order comes from
    :class:`EpochSeededSampler`, so it survives resumes and reloads.
    """

    train_set: TensorDataset | None = None
    val_set: TensorDataset | None = None

    def __init__(self, batch_size: int, seed: int, eval_batch_size: int) -> None:
        super().__init__()
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.seed = check_positive_int("seed", seed, minimum=0)
        self.eval_batch_size = check_positive_int("eval_batch_size", eval_batch_size)

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

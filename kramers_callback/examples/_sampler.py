"""A shuffling sampler whose order depends only on ``(seed, epoch)``.

Lightning calls ``set_epoch`` on a train sampler at the start of every epoch. Seeding each
epoch's permutation from ``(seed, epoch)`` instead of drawing from one long-lived generator
makes the order independent of how the run got there: a run resumed from a checkpoint, or a
dataloader rebuilt mid-run because the batch size changed, sees exactly the samples an
uninterrupted run sees. No global random state is read or written.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized

import numpy as np
import torch
from torch.utils.data import RandomSampler

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

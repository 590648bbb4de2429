"""MNIST-1D as a LightningDataModule, generated offline by the ``mnist1d`` package."""

from __future__ import annotations

import functools
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from kramers_callback.examples._sampler import SeededTensorDataModule


@functools.lru_cache(maxsize=1)
def _reference_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)`` of the reference MNIST-1D (4 000 / 1 000 samples).

    ``make_dataset(get_dataset_args())`` generates the data in about a second; ``get_dataset``
    is never called because it downloads. ``make_dataset`` reseeds Python's and NumPy's global
    generators, so their states are restored afterwards.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    # make_dataset seeds the legacy global generators; they are restored, not used.
    py_state, np_state = random.getstate(), np.random.get_state()  # noqa: NPY002
    try:
        data = make_dataset(get_dataset_args())
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)  # noqa: NPY002
    arrays = (data["x"], data["y"], data["x_test"], data["y_test"])
    for array in arrays:
        array.setflags(write=False)
    return arrays


class MNIST1DDataModule(SeededTensorDataModule):
    """MNIST-1D (Greydanus & Steinbach 2020): 4 000 training and 1 000 test sequences of length 40.

    The data are the package's reference set (``get_dataset_args()``, generation seed 42),
    built in :meth:`setup` and cached in memory for the process. As in the authors' code the
    1 000 test sequences serve for validation (:meth:`val_dataloader`) and testing
    (:meth:`test_dataloader`). Batches are ``(x [n, 40] float32, y [n] int64)``.

    ``batch_size`` is read by :meth:`train_dataloader` on every call (the Kramers callback
    resizes batches through it); shuffling is drawn from ``(seed, epoch)``.

    Args:
        batch_size: training batch size.
        seed: seeds the shuffling (the data set itself is fixed).
        eval_batch_size: validation/test batch size.
    """

    num_classes = 10
    length = 40

    def __init__(self, batch_size: int = 100, seed: int = 0, eval_batch_size: int = 1000) -> None:
        super().__init__(batch_size, seed, eval_batch_size)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        x_train, y_train, x_test, y_test = _reference_arrays()
        self.train_set = TensorDataset(
            torch.tensor(x_train, dtype=torch.float32), torch.tensor(y_train, dtype=torch.int64)
        )
        self.val_set = TensorDataset(
            torch.tensor(x_test, dtype=torch.float32), torch.tensor(y_test, dtype=torch.int64)
        )

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

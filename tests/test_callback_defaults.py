"""``KramersCallback()`` at its defaults acts on a module written as a user would write it.

The digits CNN of the examples, plain SGD with momentum 0.9 and no weight decay, 20 epochs:
within that budget the callback must take curvature estimates at its default 5% overhead
budget and change the learning rate or the batch size (the equilibrium regime cools it).
"""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
from lightning_helpers import trainer

from kramers_callback import KramersCallback
from kramers_callback.examples import ClassifierModule, DigitsCNN, DigitsDataModule


@pytest.mark.slow
def test_defaults_estimate_and_change_lr_or_batch_within_20_epochs_on_digits():
    pl.seed_everything(0)
    cb = KramersCallback()
    module = ClassifierModule(DigitsCNN(), lr=0.05, momentum=0.9)
    trainer(callbacks=[cb], max_epochs=20).fit(module, datamodule=DigitsDataModule(batch_size=32))
    assert len(cb.history) == 20  # compute_cost = 0 by default: the rule never stops a run
    estimates = [h for h in cb.history if h["estimate"] == "ok"]
    assert estimates and estimates[0]["epoch"] <= 1  # the first by the end of epoch 2
    assert all(math.isfinite(h["metrics"]["kramers/lambda_max"]) for h in estimates)
    changed = [
        h for h in cb.history if h["lr"] != h["lr_before"] or h["batch_size"] != h["batch_before"]
    ]
    assert changed, "the defaults never changed η or B in 20 epochs"
    assert all(h["phase"] == "thermalized" for h in changed)
    assert all(h["reason"].startswith("thermalized: cool by 0.5") for h in changed)
    # hybrid (the default policy) cools by growing B first.
    assert changed[0]["batch_size"] > changed[0]["batch_before"]
    # The first epoch is the initial transient: never tested, so never cooled.
    assert "burn-in: the first epoch" in cb.history[0]["reason"]

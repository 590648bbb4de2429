"""``KramersCallback()`` at its defaults acts on a module written as a user would write it.

The digits CNN of the examples, plain SGD with momentum 0.9 and no weight decay, 20 epochs:
within that budget the callback must take curvature estimates at its default 5% overhead
budget and change the learning rate or the batch size (the equilibrium regime cools it).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import pytorch_lightning as pl
from lightning_helpers import trainer

import kramers_callback._estimate_schedule as schedule_module
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
    assert "hold (burn-in" in cb.history[0]["reason"]


@pytest.mark.slow
def test_the_equilibrium_decisions_do_not_depend_on_what_an_estimate_says_of_the_noise(
    monkeypatch,
):
    # The floor is read from the running noise along the trajectory: an estimate's noise, off
    # by ×1000 here, moves no cooling decision (and so neither does when the measured-time
    # budget happens to place an estimate).
    def fit(scale):
        monkeypatch.undo()  # wrap the real estimate, not the previous fit's wrapper
        real = schedule_module.run_estimate

        def scaled(*args, **kwargs):
            est = real(*args, **kwargs)
            return dataclasses.replace(est, noise_trace=est.noise_trace * scale)

        monkeypatch.setattr(schedule_module, "run_estimate", scaled)
        pl.seed_everything(0)
        cb = KramersCallback("lr", compute_cost=10, overhead_budget=math.inf)
        module = ClassifierModule(DigitsCNN(), lr=0.05, momentum=0.9)
        data = DigitsDataModule(batch_size=32)
        trainer(callbacks=[cb], max_epochs=8).fit(module, datamodule=data)
        return cb.history

    plain, skewed = fit(1.0), fit(1000.0)
    assert any("cool by" in h["reason"] for h in plain)
    assert all(h["estimate"] == "ok" for h in plain[1:])  # an estimate every epoch
    keys = ("phase", "reason", "lr", "batch_size", "stop")
    assert [[h[k] for k in keys] for h in plain] == [[h[k] for k in keys] for h in skewed]
    floors = [h["metrics"]["kramers/noise_floor"] for h in plain]
    assert floors == [h["metrics"]["kramers/noise_floor"] for h in skewed]

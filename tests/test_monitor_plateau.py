"""The monitor's plateau test (``cooling_patience``) against torch's ``ReduceLROnPlateau``, the
regime it leads to, and the callback that keeps its values per dwell and across a resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from lightning_helpers import BlobsData, PlateauedClassifier, StopAfter, trainer
from pytorch_lightning.callbacks import ModelCheckpoint

from kramers_callback import KramersCallback
from kramers_callback.limits import control_limits
from kramers_callback.noise.floor import COOLING_FACTOR
from kramers_callback.observation import Horizon, Knobs, LossBlock, RunningNoise, observe
from kramers_callback.policies import policy_rule
from kramers_callback.regime import Phase, choose
from kramers_callback.signals import MonitorPlateauSignal, monitor_plateau
from kramers_callback.signals.equilibrium import equilibrium_test
from kramers_callback.stopping import StopReason


def _first_reduction(values, *, patience, min_delta, mode):
    """The index at which ``ReduceLROnPlateau(patience=p − 1)`` first lowers the rate."""
    param = torch.nn.Parameter(torch.zeros(()))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode=mode, factor=0.5, patience=patience - 1, threshold=min_delta,
        threshold_mode="abs",
    )  # fmt: skip
    for index, value in enumerate(values):
        scheduler.step(value)
        if optimizer.param_groups[0]["lr"] < 1.0:
            return index
    return None


@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("min_delta", [0.0, 0.05])
@pytest.mark.parametrize("patience", [1, 2, 4])
def test_the_plateau_test_stalls_where_reduce_lr_on_plateau_first_reduces(
    patience, min_delta, mode
):
    rng = np.random.default_rng(patience * 10 + int(min_delta * 100) + (mode == "max"))
    checked = 0
    for _ in range(60):
        # A noisy descent that flattens: improvements early, a plateau later.
        n = int(rng.integers(3, 40))
        trend = np.exp(-np.arange(n) / rng.uniform(1.0, 8.0))
        values = (trend + rng.normal(0.0, 0.03, n)) * (1.0 if mode == "min" else -1.0)
        if rng.random() < 0.5:
            values = np.round(values, 1)  # ties with the best, as an accuracy metric has
        values = [float(v) for v in values]
        expected = _first_reduction(values, patience=patience, min_delta=min_delta, mode=mode)
        stalled_at = next(
            (
                i
                for i in range(len(values))
                if monitor_plateau(
                    values[: i + 1], patience=patience, min_delta=min_delta, mode=mode
                ).stalled
            ),
            None,
        )
        assert stalled_at == expected, values
        checked += expected is not None
    assert checked > 10  # the comparison covers stalls, not only their absence


def test_a_non_finite_value_is_no_improvement_and_no_value_is_no_stall():
    assert not monitor_plateau([], patience=1).stalled
    assert not monitor_plateau([math.nan, math.nan], patience=1).stalled  # no best to stall on
    reading = monitor_plateau([1.0, math.nan, math.inf], patience=2)
    assert reading.stalled and reading.best == 1.0 and reading.epochs_since_best == 2
    assert not monitor_plateau([1.0, math.nan, 0.5], patience=2).stalled
    # A tie is no improvement, and a leading NaN sets no best.
    assert monitor_plateau([1.0, 1.0, 1.0], patience=2).stalled
    reading = monitor_plateau([math.nan, 1.0, 1.1], patience=2)
    assert reading.best == 1.0 and reading.epochs_since_best == 1
    # The best moves only on an improvement by more than δ: 0.92 improves on 1.0 by 0.08, even
    # though it is within δ of 0.96.
    assert monitor_plateau([1.0, 0.96, 0.92], patience=2, min_delta=0.05).epochs_since_best == 0
    with pytest.raises(ValueError, match="cooling_patience must be"):
        MonitorPlateauSignal(patience=0)
    with pytest.raises(ValueError, match="mode must be one of"):
        monitor_plateau([1.0], patience=1, mode="up")


def _regime(values, *, floor, losses, compute_cost=0.0, patience=2):
    """The regime of an epoch end after a cooling (not the first dwell) at η = 0.05, B = 32,
    whose dwell holds ``losses`` as blocks and ``values`` as its monitored values."""
    size = 3200
    blocks = tuple(
        LossBlock(mean=loss, position=(i + 0.5) * 320, samples=320, noise_trace=40.0)
        for i, loss in enumerate(losses)
    )
    observation = observe(
        epoch=9,
        horizon=Horizon(samples_seen=10 * size, samples_left=10 * size),
        knobs=Knobs(0.05, 32),
        fresh=None,
        running=RunningNoise(noise_trace=40.0),
        last_good=None,
        dataset_size=size,
        dim=100,
        loss_blocks=blocks,
        first_dwell=False,
        monitor_dwell=tuple(values),
    )
    limits = control_limits(
        initial_lr=0.05, initial_batch=32, lr_min=None, lr_max=None, batch_min=None,
        batch_max=None, max_change=2.0, samples_per_epoch=size, unit=1, samples_per_step=32,
    )  # fmt: skip
    return choose(
        observation,
        rule=policy_rule("lr"),
        limits=limits,
        equilibrium=equilibrium_test(blocks, floor=floor),
        target=None,
        compute_cost=compute_cost,
        factor=COOLING_FACTOR,
        monitor=MonitorPlateauSignal(patience=patience).read(observation),
    )


FALLING = [1.0 - 0.05 * i for i in range(16)]
"""A training loss that falls by far more than its noise (none) and than a cooling buys."""


def test_a_stalled_monitor_cools_a_walker_whose_training_loss_still_falls():
    improving = _regime([0.9, 0.8, 0.7], floor=0.02, losses=FALLING)
    assert improving.phase is Phase.DESCENDING and not improving.equilibrium.thermalized
    assert not improving.record.decision.changed

    stalled = _regime([0.7, 0.71, 0.72], floor=0.02, losses=FALLING)
    assert stalled.phase is Phase.STALLED and not stalled.equilibrium.thermalized
    decision = stalled.record.decision
    assert decision.changed and decision.lr == pytest.approx(0.05 * COOLING_FACTOR)
    assert stalled.record.reason.startswith("stalled: cool by 0.5 (floor 0.02")
    assert "2 of 2 epoch ends without improving on 0.7" in stalled.record.reason
    assert stalled.settled is None

    # Without a floor, or without the test's window (4 blocks < 8) and so its loss, what a
    # cooling buys is unknown: hold, and do not settle.
    for floor, losses in ((math.nan, FALLING), (0.02, FALLING[:4])):
        unknown = _regime([0.7, 0.71, 0.72], floor=floor, losses=losses)
        assert unknown.phase is Phase.DESCENDING and not unknown.record.decision.changed
        assert unknown.settled is None

    # Cooling worth less than 1/c of the loss: nothing left to gain, so the stop rule may act.
    spent = _regime([0.7, 0.71, 0.72], floor=0.02, losses=FALLING, compute_cost=1.0)
    assert spent.phase is Phase.STALLED and not spent.record.decision.changed
    assert spent.settled is StopReason.COOLING_NOT_WORTH


def test_thermalized_takes_precedence_over_a_stalled_monitor():
    flat = [0.5] * 16
    regime = _regime([0.7, 0.71, 0.72], floor=0.1, losses=flat)
    assert regime.equilibrium.thermalized and regime.phase is Phase.THERMALIZED
    assert regime.record.reason.startswith("thermalized: cool by 0.5")


# -- the callback -------------------------------------------------------------------------------
def _fit(cb, *, epochs, callbacks=(), ckpt_path=None, **kwargs):
    pl.seed_everything(0)
    module, data = PlateauedClassifier(), BlobsData(batch_size=16)
    options = dict(max_epochs=epochs, limit_val_batches=1.0, **kwargs)
    trainer(callbacks=[cb, *callbacks], **options).fit(module, datamodule=data, ckpt_path=ckpt_path)
    return module


QUIET = dict(overhead_budget=math.inf, probe_size=64, verbose=False, max_products=40)


def _coolings(cb):
    return [
        (h["epoch"], h["phase"], h["lr_before"], h["lr"])
        for h in cb.history
        if h["lr"] != h["lr_before"]
    ]


def test_the_callback_cools_at_each_dwells_stall_and_only_with_cooling_patience():
    plain = KramersCallback("lr", monitor="val_metric", **QUIET)
    _fit(plain, epochs=7)
    assert all(h["phase"] == "descending" for h in plain.history)  # the loss still falls
    assert _coolings(plain) == [] and "monitor_plateau" not in plain.history[0]

    cb = KramersCallback("lr", monitor="val_metric", cooling_patience=2, **QUIET)
    _fit(cb, epochs=7)
    # Values 1, 0.5, 0.5, 0.5: the dwell's best at epoch 1, stalled two epoch ends later.
    assert [h["phase"] for h in cb.history[:4]] == ["descending"] * 3 + ["stalled"]
    epoch, _, before, after = _coolings(cb)[0]
    assert epoch == 3 and after == pytest.approx(before * COOLING_FACTOR)
    assert cb.history[3]["monitor_plateau"].startswith("monitor stalled: 2 of 2")
    assert cb.history[3]["metrics"]["kramers/phase"] == float(Phase.STALLED.value)
    # The cooling starts a new dwell, whose first value is its own best (not 0.5 of epoch 1,
    # three epoch ends back).
    assert cb.history[4]["monitor_plateau"].startswith("monitor improving: 0 of 2")


def test_a_stall_with_nothing_worth_cooling_for_stops_a_run_whose_loss_still_falls():
    # c = 1e-9: no cooling is worth its compute, so the first stall settles, and the stop rule
    # (no measured escapes) ends the run there; without cooling_patience it never stops.
    for patience, stop in ((None, None), (2, 4)):
        options = dict(monitor="val_metric", cooling_patience=patience, compute_cost=1e-9)
        cb = KramersCallback("lr", **options, **QUIET)
        _fit(cb, epochs=7)
        assert cb.termination.stopped_epoch == stop
        if stop is not None:
            assert cb.stop_reason is StopReason.COOLING_NOT_WORTH
            assert "after 4 epochs: stalled on the monitor, and what cooling" in (
                cb.termination.message
            )
            assert cb.history[-1]["phase"] == "stalled" and _coolings(cb) == []


def test_an_epoch_without_validation_adds_no_monitored_value_to_the_dwell():
    cb = KramersCallback("lr", monitor="val_metric", cooling_patience=1, **QUIET)
    _fit(cb, epochs=6, check_val_every_n_epoch=2)
    # Validations at epochs 1, 3, 5 log 1, 0.5, 0.5: stalled at epoch 5, not at epoch 2 or 4
    # (where callback_metrics still holds the previous validation's value).
    assert [e for e, *_ in _coolings(cb)] == [5]


def test_a_resume_keeps_the_dwells_monitored_values(tmp_path):
    uninterrupted = KramersCallback("lr", monitor="val_metric", cooling_patience=2, **QUIET)
    _fit(uninterrupted, epochs=5)
    assert _coolings(uninterrupted)[0][:2] == (3, "stalled")

    first = KramersCallback("lr", monitor="val_metric", cooling_patience=2, **QUIET)
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1)
    _fit(first, epochs=5, callbacks=[StopAfter(3), checkpoints], enable_checkpointing=True)
    path = next(tmp_path.glob("epoch=2-*.ckpt"))
    state = torch.load(path, weights_only=True)["callbacks"][first.state_key]
    assert state["dwell_monitored"] == [1.0, 0.5, 0.5]

    resumed = KramersCallback("lr", monitor="val_metric", cooling_patience=2, **QUIET)
    module = PlateauedClassifier()
    module.validations = 3  # the module's own count, which the checkpoint does not hold
    pl.seed_everything(123)
    trainer(callbacks=[resumed], max_epochs=5, limit_val_batches=1.0).fit(
        module, datamodule=BlobsData(batch_size=16), ckpt_path=path
    )
    assert _coolings(resumed) == _coolings(uninterrupted)


def test_a_resume_after_the_validation_inside_the_last_batch_keeps_its_value(tmp_path):
    # val_check_interval=0.5: ModelCheckpoint saves in on_validation_end, inside the epoch's
    # last batch, before the callback's on_train_epoch_end reads the validation's value; the
    # resumed run does not validate that epoch again, so the value must come from the file.
    kwargs = dict(val_check_interval=0.5)
    uninterrupted = KramersCallback("lr", monitor="val_metric", cooling_patience=2, **QUIET)
    _fit(uninterrupted, epochs=4, **kwargs)
    # Each epoch's last validation logs 0.5: the dwell [0.5, 0.5, 0.5] stalls at epoch 2.
    assert _coolings(uninterrupted)[0][:2] == (2, "stalled")

    first = KramersCallback("lr", monitor="val_metric", cooling_patience=2, **QUIET)
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1)
    _fit(
        first, epochs=4, callbacks=[StopAfter(2), checkpoints], enable_checkpointing=True, **kwargs
    )
    path = max(tmp_path.glob("epoch=1-*.ckpt"), key=lambda p: p.stat().st_mtime_ns)
    state = torch.load(path, weights_only=True)["callbacks"][first.state_key]
    assert len(state["history"]) == 1 and state["monitor_measured"] == 0.5

    resumed = KramersCallback("lr", monitor="val_metric", cooling_patience=2, **QUIET)
    module = PlateauedClassifier()
    module.validations = 4
    pl.seed_everything(123)
    options = dict(max_epochs=4, limit_val_batches=1.0, **kwargs)
    trainer(callbacks=[resumed], **options).fit(
        module, datamodule=BlobsData(batch_size=16), ckpt_path=path
    )
    assert _coolings(resumed) == _coolings(uninterrupted)


def test_cooling_patience_needs_a_monitor_and_a_positive_count():
    with pytest.raises(ValueError, match=r"cooling_patience=3 needs a monitor.*monitor=None"):
        KramersCallback(cooling_patience=3)
    with pytest.raises(ValueError, match="cooling_patience must be"):
        KramersCallback(monitor="val_loss", cooling_patience=0)

"""KramersCallback: resume from a checkpoint written inside an epoch, and the batch mechanisms'
interplay with Lightning (GradientAccumulationScheduler, integer val_check_interval, loaders
passed straight to ``Trainer.fit``)."""

from __future__ import annotations

import math
import warnings

import pytest
import pytorch_lightning as pl
import torch
from lightning_helpers import (
    WELL,
    BatchSizes,
    DoubleWellDataModule,
    DoubleWellModule,
    FixedDoubleWellData,
    StopAfter,
    decisions,
    flat_parameters,
    started_step_statistics,
    trainer,
)
from pytorch_lightning.callbacks import GradientAccumulationScheduler, ModelCheckpoint
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from torch.utils.data import DataLoader

from kramers_callback._batch_size import (
    BatchMechanism,
    max_loader_batch,
    num_loader_batches,
)
from kramers_callback.callback import KramersCallback
from kramers_callback.examples._sampler import EpochSeededSampler

QUIET_WELL = {**WELL, "verbose": False}
SAMPLES = 800  # 50 steps of 16 per epoch
LR = 0.05  # hot enough that the double well's budget wants cooling (the batch grows)


class ValidatedWell(DoubleWellModule):
    def validation_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        self.log("val_loss", self.per_sample_loss(batch).mean())


class ValidatedData(DoubleWellDataModule):
    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=200)


# -- 1. resume from a checkpoint written before on_train_epoch_end ---------------------------
def test_resume_from_a_checkpoint_saved_after_validation_inside_the_epoch(tmp_path):
    # val_check_interval=0.5: ModelCheckpoint saves in on_validation_end, during the epoch's
    # last batch, before the callback's on_train_epoch_end; Lightning then resumes without
    # calling on_train_epoch_start, so the callback's per-epoch state must come from the file.
    kwargs = dict(max_epochs=4, limit_val_batches=1.0, val_check_interval=0.5)

    pl.seed_everything(0)
    uninterrupted = KramersCallback("hybrid", **QUIET_WELL)
    full = ValidatedWell(lr=LR)
    trainer(callbacks=[uninterrupted], **kwargs).fit(
        full, datamodule=ValidatedData(num_samples=SAMPLES)
    )

    pl.seed_everything(0)
    first = KramersCallback("hybrid", **QUIET_WELL)
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1)
    # Same max_epochs (the budget τ), stopped after two epochs.
    t = trainer(callbacks=[first, StopAfter(2), checkpoints], enable_checkpointing=True, **kwargs)
    t.fit(ValidatedWell(lr=LR), datamodule=ValidatedData(num_samples=SAMPLES))
    # The last one written in epoch 1 (its step count depends on epoch 0's decision).
    path = max(tmp_path.glob("epoch=1-*.ckpt"), key=lambda p: p.stat().st_mtime_ns)
    state = torch.load(path, weights_only=True)["callbacks"][first.state_key]
    assert len(state["history"]) == 1  # written before epoch 1's decision
    assert state["epoch"]["samples_per_epoch"] == SAMPLES
    assert state["epoch"]["epoch_steps"] == math.ceil(SAMPLES / state["history"][0]["batch_size"])
    # One loss per loader batch (the loader mechanism: no accumulation).
    assert sum(state["epoch"]["loss_blocks"]["batches"]) == state["epoch"]["epoch_steps"]

    pl.seed_everything(123)  # the resumed run must not depend on the global seed
    resumed = KramersCallback("hybrid", **QUIET_WELL)
    module = ValidatedWell(lr=LR)
    trainer(callbacks=[resumed], **kwargs).fit(
        module, datamodule=ValidatedData(num_samples=SAMPLES), ckpt_path=path
    )
    assert decisions(resumed) == decisions(uninterrupted)
    assert any(h["batch_size"] != 16 for h in resumed.history)  # the test decides something
    assert [h["remaining_steps"] for h in resumed.history] == [
        h["remaining_steps"] for h in uninterrupted.history
    ]
    assert torch.equal(flat_parameters(module), flat_parameters(full))


class ScheduledWell(ValidatedWell):
    """η halved after every epoch by a StepLR, which the batch policy leaves to it."""

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        opt = super().configure_optimizers()
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)}


def test_a_resume_inside_an_epoch_keeps_the_knobs_a_scheduler_set(tmp_path):
    # The checkpoint after the epoch's last validation comes after StepLR stepped: the knobs
    # the epoch trained at must come from the file, not from the optimizer.
    kwargs = dict(max_epochs=4, limit_val_batches=1.0, val_check_interval=0.5)

    def run(callbacks, ckpt_path=None):
        module = ScheduledWell(lr=LR)
        t = trainer(callbacks=callbacks, enable_checkpointing=ckpt_path is None, **kwargs)
        t.fit(module, datamodule=ValidatedData(num_samples=SAMPLES), ckpt_path=ckpt_path)
        return module

    pl.seed_everything(0)
    uninterrupted = KramersCallback("batch", **QUIET_WELL)
    full = run([uninterrupted])
    pl.seed_everything(0)
    first = KramersCallback("batch", **QUIET_WELL)
    run([first, StopAfter(2), ModelCheckpoint(dirpath=tmp_path, save_top_k=-1)])
    path = max(tmp_path.glob("epoch=1-*.ckpt"), key=lambda p: p.stat().st_mtime_ns)
    saved = torch.load(path, weights_only=True)["callbacks"][first.state_key]
    assert saved["epoch_knobs"][0] == pytest.approx(LR / 2)  # epoch 1's η, not epoch 2's
    pl.seed_everything(123)
    resumed = KramersCallback("batch", **QUIET_WELL)
    module = run([resumed], ckpt_path=path)
    assert decisions(resumed) == decisions(uninterrupted)
    final = uninterrupted.state_dict()
    assert resumed.state_dict()["dwell_knobs"] == final["dwell_knobs"]
    assert resumed.state_dict()["dwell"] == final["dwell"]
    assert torch.equal(flat_parameters(module), flat_parameters(full))


def test_epoch_state_round_trips_through_a_weights_only_load(tmp_path):
    cb = KramersCallback("observe", **QUIET_WELL)
    pl.seed_everything(0)
    t = trainer(callbacks=[cb], max_epochs=1)
    t.fit(DoubleWellModule(lr=LR), datamodule=DoubleWellDataModule(num_samples=SAMPLES))
    # Fake an epoch in progress: 25 steps, a partial running estimate, a NaN loss.
    steps = cb._steps
    steps.epoch_steps, steps.step_samples = 25, 16
    steps.blocks.add(torch.tensor(math.nan), batch_idx=0, samples=16, position=16)
    steps.running.update(torch.ones(2), 16)
    steps.running.update(torch.zeros(2), 16)
    state = cb.state_dict()
    path = tmp_path / "state.pt"
    torch.save(state, path)
    loaded = torch.load(path, weights_only=True)

    restored = KramersCallback("observe", **QUIET_WELL)
    restored.load_state_dict(loaded)
    # Before fit, a restored state passes through unchanged (a re-saved checkpoint keeps it).
    assert repr(restored.state_dict()["epoch"]) == repr(state["epoch"])
    back = restored._steps
    back.start_fit(
        dataset_size=SAMPLES,
        world_size=1,
        params=[],
        adaptive=False,
        num_batches=t.num_training_batches,
        device=torch.device("cpu"),
    )
    assert (back.epoch_steps, back.step_samples) == (25, 16)
    restored_noise = {k: float(v) for k, v in back.running.compute().items()}
    assert restored_noise == {k: float(v) for k, v in steps.running.compute().items()}
    assert restored_noise["noise_trace"] > 0  # a pair was in: the test restores something
    assert back.restored is None  # applied once
    assert not back.read_epoch(mean=lambda sums: sums).loss_finite  # the NaN came back


# -- 2. GradientAccumulationScheduler ---------------------------------------------------------
@pytest.mark.parametrize("policy", ["batch", "hybrid"])
def test_a_gradient_accumulation_scheduler_is_refused_where_the_callback_needs_accumulation(
    policy,
):
    cb = KramersCallback(policy, **QUIET_WELL)
    gas = GradientAccumulationScheduler({0: 1, 2: 4})
    t = trainer(callbacks=[cb, gas], max_epochs=2)
    with pytest.raises(MisconfigurationException, match="GradientAccumulationScheduler") as err:
        t.fit(DoubleWellModule(lr=LR), datamodule=FixedDoubleWellData(num_samples=SAMPLES))
    assert "policy='observe'" in str(err.value) and "batch_size" in str(err.value)


def _fit_with_scheduler(order: str, policy: str = "observe", data_cls=FixedDoubleWellData):
    pl.seed_everything(0)
    sizes = BatchSizes()
    gas = GradientAccumulationScheduler({0: 1, 2: 4})
    cb = KramersCallback(policy, **QUIET_WELL)
    callbacks = {"none": [gas], "before": [cb, gas], "after": [gas, cb]}[order]
    t = trainer(callbacks=[*callbacks, sizes], max_epochs=4)
    module = DoubleWellModule(lr=LR)
    t.fit(module, datamodule=data_cls(num_samples=SAMPLES))
    return cb, sizes, flat_parameters(module), t


@pytest.mark.parametrize("order", ["before", "after"])
def test_observe_leaves_a_gradient_accumulation_scheduler_alone_and_logs_the_real_batch(order):
    _, plain_sizes, plain, _ = _fit_with_scheduler("none")
    cb, sizes, params, t = _fit_with_scheduler(order)
    assert torch.equal(params, plain)  # bit-identical to training without the callback
    assert sizes.steps == plain_sizes.steps == {0: 50, 1: 50, 2: 13, 3: 13}
    assert [h["batch_size"] for h in cb.history] == [16, 16, 64, 64]
    assert [h["metrics"]["kramers/batch_size"] for h in cb.history] == [16, 16, 64, 64]
    assert t.accumulate_grad_batches == 4
    # The scheduler's factor is in force from the epoch's first batch, whichever hook runs
    # first: B = 64 started a new dwell at epoch 2, which epoch 3 continued (16 loss blocks
    # an epoch; η, β = 0, damping 1).
    assert cb.state_dict()["dwell_knobs"] == [LR, 64.0, 0.0, 1.0]
    assert len(cb.state_dict()["dwell"]) == 2 * 16


def test_the_lr_policy_keeps_a_gradient_accumulation_schedulers_factor():
    cb, sizes, _, t = _fit_with_scheduler("before", policy="lr")
    assert sizes.steps == {0: 50, 1: 50, 2: 13, 3: 13}
    assert [h["batch_size"] for h in cb.history] == [16, 16, 64, 64]
    assert t.accumulate_grad_batches == 4


def test_a_scheduler_is_refused_with_a_loader_passed_to_fit_even_with_a_batch_size_attribute():
    data = DoubleWellDataModule(num_samples=SAMPLES)
    cb = KramersCallback("hybrid", **QUIET_WELL)
    t = trainer(callbacks=[cb, GradientAccumulationScheduler({0: 1, 2: 4})], max_epochs=2)
    with pytest.raises(MisconfigurationException, match="GradientAccumulationScheduler"):
        t.fit(HparamsWell(lr=LR), train_dataloaders=data.train_dataloader())


def test_the_loader_mechanism_composes_with_a_gradient_accumulation_scheduler():
    cb, sizes, _, t = _fit_with_scheduler("before", policy="batch", data_cls=DoubleWellDataModule)
    factor = {0: 1, 1: 1, 2: 4, 3: 4}
    assert t.accumulate_grad_batches == 4  # the scheduler's, never overwritten
    for h in cb.history:
        epoch = h["epoch"]
        loader_batch = sizes.batches[epoch][0]
        assert h["batch_before"] == loader_batch * factor[epoch]
        assert sizes.steps[epoch] == math.ceil(math.ceil(SAMPLES / loader_batch) / factor[epoch])
    assert len({b for e in sizes.batches.values() for b in e[:-1]}) > 1  # the loader did grow


# -- 3. integer val_check_interval --------------------------------------------------------------
def _brute_max_loader_batch(samples, min_batches, multiple, drop_last, limit):
    fits = [
        b
        for b in range(multiple, max(samples, multiple) + 1, multiple)
        if num_loader_batches(samples, b, drop_last=drop_last, limit=limit) >= min_batches
    ]
    return max(fits) if fits else None


def _reference_batches(samples, b, drop_last, limit):
    length = samples // b if drop_last else math.ceil(samples / b)
    return min(length, limit) if isinstance(limit, int) else math.floor(length * limit)


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("limit", [1.0, 0.5, 0.3, 7, 1000])
def test_loader_batch_cap_matches_a_brute_force_scan(drop_last, limit):
    for samples in (1, 5, 17, 100, 801):
        for b in (1, 3, 16, 200):
            assert num_loader_batches(
                samples, b, drop_last=drop_last, limit=limit
            ) == _reference_batches(samples, b, drop_last, limit)
        for min_batches in (1, 2, 7, 40, 500):
            for multiple in (1, 3, 8):
                expected = _brute_max_loader_batch(samples, min_batches, multiple, drop_last, limit)
                got = max_loader_batch(
                    samples, min_batches, multiple=multiple, drop_last=drop_last, limit=limit
                )
                assert got == expected, (samples, min_batches, multiple)


def test_an_integer_val_check_interval_caps_the_loader_batch():
    pl.seed_everything(0)
    cb = KramersCallback("hybrid", **QUIET_WELL)
    sizes = BatchSizes()
    t = trainer(callbacks=[cb, sizes], max_epochs=4, limit_val_batches=1.0, val_check_interval=40)
    t.fit(ValidatedWell(lr=LR), datamodule=ValidatedData(num_samples=SAMPLES))  # no ValueError
    assert len(cb.history) == 4
    assert max(h["batch_size"] for h in cb.history) == SAMPLES // 40  # 40 batches of 20
    assert any("batch_max" in h.get("limited_by", []) for h in cb.history)
    assert all(math.ceil(SAMPLES / batches[0]) >= 40 for batches in sizes.batches.values())


# -- 4. loaders the callback cannot resize ----------------------------------------------------
class HparamsWell(DoubleWellModule):
    """``hparams.batch_size`` equal to the loader's: Lightning's finder would find it."""

    def __init__(self, batch_size: int = 16, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(**kwargs)
        self.save_hyperparameters("batch_size")


def test_a_loader_passed_to_fit_grows_the_batch_by_accumulation():
    pl.seed_everything(0)
    data = DoubleWellDataModule(num_samples=SAMPLES)
    cb = KramersCallback("batch", **QUIET_WELL)
    sizes = BatchSizes()
    t = trainer(callbacks=[cb, sizes], max_epochs=4)
    module = HparamsWell(lr=LR)
    t.fit(module, train_dataloaders=data.train_dataloader())
    assert cb._batches.mechanism is BatchMechanism.ACCUMULATION
    assert any(h["batch_size"] != 16 for h in cb.history)
    for epoch in range(1, len(cb.history)):
        k = cb.history[epoch - 1]["batch_size"] // 16
        assert set(sizes.batches[epoch]) == {16}
        assert sizes.steps[epoch] == math.ceil(SAMPLES / 16 / k)  # the logged B is real
    assert module.hparams.batch_size == 16


class CachedLoaderData(DoubleWellDataModule):
    """Has ``batch_size`` but builds its loader once: a reload hands back the same batch."""

    def train_dataloader(self) -> DataLoader:
        if not hasattr(self, "_loader"):
            self._loader = DataLoader(
                self.train_set,
                batch_size=self.batch_size,
                sampler=EpochSeededSampler(self.train_set, self.seed),
            )
        return self._loader


def test_a_loader_that_ignores_the_batch_size_falls_back_to_accumulation():
    pl.seed_everything(0)
    cb = KramersCallback("batch", **QUIET_WELL)
    sizes = BatchSizes()
    data = CachedLoaderData(num_samples=SAMPLES)
    t = trainer(callbacks=[cb, sizes], max_epochs=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t.fit(DoubleWellModule(lr=LR), datamodule=data)
    ignored = [w for w in caught if "does not read it" in str(w.message)]
    assert len(ignored) == 1
    assert cb._batches.mechanism is BatchMechanism.ACCUMULATION
    assert data.batch_size == 16  # put back: the attribute sizes nothing
    # The B each decision starts from is the one its epoch really trained with.
    for h in cb.history:
        assert h["batch_before"] % 16 == 0
        assert sizes.steps[h["epoch"]] == math.ceil(SAMPLES / h["batch_before"])
    assert any(h["batch_before"] > 16 for h in cb.history), "the batch must really grow"
    assert t.accumulate_grad_batches == cb.history[-1]["batch_size"] // 16


def test_beside_a_scheduler_a_loader_that_ignores_the_batch_size_pins_the_batch():
    pl.seed_everything(0)
    cb = KramersCallback("batch", **QUIET_WELL)
    sizes = BatchSizes()
    gas = GradientAccumulationScheduler({0: 1, 5: 2})
    t = trainer(callbacks=[cb, gas, sizes], max_epochs=6)
    with pytest.warns(UserWarning, match="stays at B = 16"):
        t.fit(DoubleWellModule(lr=LR), datamodule=CachedLoaderData(num_samples=SAMPLES))
    assert cb._batches.pinned
    assert t.accumulate_grad_batches == 2  # the scheduler's
    pinned_from = next(h["epoch"] for h in cb.history if h["batch_size"] != 16) + 1
    later = cb.history[pinned_from:]
    assert any(h["reason"] == "cool" for h in later)  # decisions that would grow B
    for h in later:
        # No more changes; the decision's B is the one trained with, scheduler included.
        assert h["batch_size"] == h["batch_before"] == 16 * (2 if h["epoch"] >= 5 else 1)
        assert sizes.steps[h["epoch"]] == math.ceil(SAMPLES / h["batch_before"])


def _noise_after_steps(first_step: int, last_step: int) -> tuple[float, float]:
    """Feed optimizer steps ``first_step..last_step`` (gradient ``t·1`` at step ``t``) to step
    statistics whose epoch starts at ``first_step``, as after a resume there; return the
    running estimate's pair count and ``tr Σ₁``."""
    param = torch.nn.Parameter(torch.zeros(3))
    stats = started_step_statistics(param, dataset_size=10_000, num_batches=128, noise_stride=16)
    stats.epoch_steps = first_step  # what a restored epoch state puts back
    optimizer = torch.optim.SGD([param], lr=0.1)
    for step in range(first_step, last_step + 1):
        param.grad = torch.full((3,), float(step))
        stats.step_samples = 32
        stats.optimizer_step(optimizer)
    running = stats.running
    assert running is not None
    return float(running.num_pairs), float(running.compute()["noise_trace"])


def test_a_resume_inside_a_noise_window_opens_no_window_out_of_step():
    # Windows are steps (0, 1), (32, 33), (64, 65), ...: a resume at step 33 lost the window's
    # first step, and must not pair step 33 with step 64, 31 steps of drift apart.
    resumed = _noise_after_steps(33, 65)
    aligned = _noise_after_steps(64, 65)
    assert resumed == aligned and resumed[0] == 1.0

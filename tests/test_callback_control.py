"""KramersCallback decisions on the double well: batch mechanisms, LR, resume, faults, stop."""

from __future__ import annotations

import dataclasses
import gc
import io
import logging
import math
import re
import warnings

import pytest
import pytorch_lightning as pl
import torch
from lightning_helpers import (
    WELL,
    BatchSizes,
    BlobsData,
    DoubleWellDataModule,
    DoubleWellModule,
    FaultyDoubleWell,
    FixedDoubleWellData,
    SplitDoubleWell,
    StopAfter,
    TinyClassifier,
    decisions,
    flat_parameters,
    trainer,
)

import kramers_callback._estimate_schedule as schedule_module
from kramers_callback.callback import KramersCallback
from kramers_callback.stopping import StopReason

SAMPLES = 800
LR = 0.05  # hot enough that the 200-step budget wants cooling (τ·k ≈ 3 escapes)


def fit_well(cb, *, epochs=4, module=None, data=None, callbacks=(), **trainer_kwargs):
    pl.seed_everything(0)
    module = module or DoubleWellModule(lr=LR)
    data = data or DoubleWellDataModule(num_samples=SAMPLES, batch_size=16)
    if epochs is not None:
        trainer_kwargs["max_epochs"] = epochs
    t = trainer(callbacks=[cb, *callbacks], **trainer_kwargs)
    t.fit(module, datamodule=data)
    return t, module, data


def test_hybrid_grows_the_loader_batch_then_lowers_the_lr():
    cb = KramersCallback("hybrid", batch_max=20, **WELL)
    sizes = BatchSizes()
    t, _, data = fit_well(cb, callbacks=[sizes])
    history = cb.history
    assert any(h["reason"] == "cool" for h in history)
    # The batch moves first; the learning rate only once the batch sits at batch_max.
    assert any(h["batch_size"] == 20 and h["lr"] < LR for h in history)
    assert all(h["batch_size"] == 20 for h in history if h["lr"] != LR)
    assert all(16 <= h["batch_size"] <= 20 for h in history)
    assert data.batch_size == history[-1]["batch_size"]
    for epoch in range(1, len(history)):
        # The loader was rebuilt with the decided size (the last batch may be partial).
        assert set(sizes.batches[epoch][:-1]) == {history[epoch - 1]["batch_size"]}
    assert t.optimizers[0].param_groups[0]["lr"] == history[-1]["lr"]


def test_batch_policy_without_a_batch_size_attribute_uses_gradient_accumulation():
    cb = KramersCallback("batch", **WELL)
    sizes = BatchSizes()
    t, _, _ = fit_well(cb, data=FixedDoubleWellData(num_samples=SAMPLES), callbacks=[sizes])
    grown = [h for h in cb.history if h["batch_size"] != 16]
    assert grown, "the cooling schedule must grow the batch"
    assert all(h["batch_size"] % 16 == 0 and h["lr"] == LR for h in cb.history)
    assert t.accumulate_grad_batches == cb.history[-1]["batch_size"] // 16
    for epoch in range(1, len(cb.history)):
        k = cb.history[epoch - 1]["batch_size"] // 16
        assert set(sizes.batches[epoch]) == {16}  # the loader is untouched
        assert sizes.steps[epoch] == math.ceil(SAMPLES / 16 / k)


def test_lr_policy_scales_every_parameter_group_in_proportion():
    cb = KramersCallback("lr", **WELL)
    t, _, _ = fit_well(cb, module=SplitDoubleWell(lr=LR))
    lrs = [g["lr"] for g in t.optimizers[0].param_groups]
    assert lrs[0] != 0.02 and lrs[0] == pytest.approx(cb.history[-1]["lr"])
    assert lrs[1] == pytest.approx(lrs[0] / 2, rel=1e-12)
    assert all(h["batch_size"] == 16 for h in cb.history)


def test_two_runs_from_one_seed_decide_alike_and_deferrals_are_logged(caplog):
    def run():
        cb = KramersCallback("hybrid", **dict(WELL, overhead_budget=5.0))
        fit_well(cb, epochs=6)
        return cb

    # The budget spaces estimates by measured time: a garbage-collection pass of the whole
    # suite's heap inside one run's estimate (seen: 3.7 times the training time so far) would
    # defer that run's next estimates and not the other's.
    gc.collect()
    gc.disable()
    try:
        with caplog.at_level(logging.INFO):
            first = run()
        deferred = [r.getMessage() for r in caplog.records if "deferred" in r.getMessage()]
        second = run()
    finally:
        gc.enable()
    assert decisions(first) == decisions(second)
    kinds = [h["estimate"] for h in first.history]
    assert "deferred" in kinds and "ok" in kinds
    # Between estimates the running two-batch noise estimate keeps the temperature current
    # (outside the trapped phase, which compares its target with the estimate's own noise).
    between = [h for h in first.history if h["estimate"] == "deferred"]
    assert all(h["noise_source"] == "running" and h["temperature"] > 0 for h in between)
    assert len(deferred) == kinds.count("deferred")
    assert "exceeds the overhead credit" in deferred[0]
    assert first.budget.overhead <= 5.0


def test_resume_after_two_epochs_matches_an_uninterrupted_run(tmp_path):
    uninterrupted = KramersCallback("hybrid", **WELL)
    _, full_module, _ = fit_well(uninterrupted)

    first = KramersCallback("hybrid", **WELL)
    t, _, _ = fit_well(first, callbacks=[StopAfter(2)])
    assert len(first.history) == 2
    path = tmp_path / "two_epochs.ckpt"
    t.save_checkpoint(path)
    state = torch.load(path, weights_only=True)["callbacks"][first.state_key]
    assert state["probe_indices"] == first.state_dict()["probe_indices"]

    resumed = KramersCallback("hybrid", **WELL)
    pl.seed_everything(123)  # the resumed run must not depend on the global seed
    module, data = DoubleWellModule(lr=LR), DoubleWellDataModule(num_samples=SAMPLES)
    t2 = trainer(callbacks=[resumed], max_epochs=4)
    t2.fit(module, datamodule=data, ckpt_path=path)
    assert decisions(resumed) == decisions(uninterrupted)
    assert any(h["batch_size"] != 16 for h in resumed.history)
    assert torch.equal(flat_parameters(module), flat_parameters(full_module))
    assert data.batch_size == resumed.history[-1]["batch_size"]


def test_a_resume_keeps_the_floor_of_a_window_that_spans_the_checkpoint(tmp_path):
    # Guards the checkpoint of the dwell blocks' noise: observe never changes a knob, so the
    # dwell, and the test's window, run across the checkpoint, and the resumed floor averages
    # the blocks' noise from before it too (it differs if that column is not restored).
    def floors(cb):
        return repr([h["metrics"]["kramers/noise_floor"] for h in cb.history])  # nan-safe

    uninterrupted = KramersCallback("observe", **WELL)
    fit_well(uninterrupted, epochs=5)
    first = KramersCallback("observe", **WELL)
    t, _, _ = fit_well(first, epochs=5, callbacks=[StopAfter(3)])
    path = tmp_path / "three_epochs.ckpt"
    t.save_checkpoint(path)
    resumed = KramersCallback("observe", **WELL)
    module, data = DoubleWellModule(lr=LR), DoubleWellDataModule(num_samples=SAMPLES)
    trainer(callbacks=[resumed], max_epochs=5).fit(module, datamodule=data, ckpt_path=path)
    assert len(resumed.history) == 5
    assert floors(resumed) == floors(uninterrupted)
    assert len(set(floors(uninterrupted).split(", "))) > 2  # the floor moves from epoch to epoch


def test_state_dict_loads_with_weights_only():
    cb = KramersCallback("hybrid", **WELL)
    fit_well(cb, epochs=2)
    buffer = io.BytesIO()
    torch.save(cb.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    restored = KramersCallback("hybrid", **WELL)
    restored.load_state_dict(state)
    again = restored.state_dict()
    assert repr(again["history"]) == repr(cb.state_dict()["history"])  # repr: nan == nan
    assert torch.equal(again["warm_eigenvectors"], cb.state_dict()["warm_eigenvectors"])
    # Missing keys fall back to defaults (a state from an older version).
    KramersCallback().load_state_dict({})


def test_non_finite_training_loss_keeps_the_last_good_settings():
    # check_finite=False: the run goes on at the last good settings (the default stops it,
    # tests/test_callback_reliability.py).
    cb = KramersCallback("hybrid", check_finite=False, **WELL)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t, _, _ = fit_well(cb, module=FaultyDoubleWell(nan_at_step=110, lr=LR), epochs=4)
    assert t.current_epoch == 4  # training went on to the end
    failed = next(i for i, h in enumerate(cb.history) if h["estimate"] == "non_finite")
    messages = " ".join(str(w.message) for w in caught)
    assert f"no estimate at epoch {failed}" in messages
    assert "Keeping the last good settings" in messages
    good = cb.history[failed - 1]
    assert good["estimate"] == "ok" and good["batch_size"] != 16  # a decision was made before
    for h in cb.history[failed:]:
        # The cause, not its symptom (the estimate that failed on the NaN parameters).
        assert h["estimate"] == "non_finite" and h["reason"] == "non-finite training loss"
        assert (h["lr"], h["batch_size"]) == (good["lr"], good["batch_size"])


def _fit_well_with_third_estimate(monkeypatch, corrupt):
    monkeypatch.undo()  # a second call wraps the real estimate, not the first call's wrapper
    real = schedule_module.run_estimate
    calls = []

    def third_is_bad(*args, **kwargs):
        est = real(*args, **kwargs)
        calls.append(est)
        return corrupt(est) if len(calls) == 3 else est

    monkeypatch.setattr(schedule_module, "run_estimate", third_is_bad)
    cb = KramersCallback("hybrid", **WELL)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit_well(cb, epochs=4)
    return cb, " ".join(str(w.message) for w in caught)


def test_a_non_finite_estimate_is_flagged_and_holds_the_settings(monkeypatch):
    cb, messages = _fit_well_with_third_estimate(
        monkeypatch, lambda e: dataclasses.replace(e, temperature=math.nan)
    )
    assert "is not finite" in messages
    _, before, bad, after = cb.history
    assert "non finite" in bad["reason"] and bad["metrics"]["kramers/converged"] == 1.0
    assert (bad["lr"], bad["batch_size"]) == (before["lr"], before["batch_size"])
    assert after["estimate"] == "ok"


def test_an_unconverged_estimate_is_not_used_and_the_last_good_one_decides(monkeypatch):
    # Its curvature scaled both ways: were it used, the clamp 2(1+β)/λ_max and the target
    # would differ between the two runs.
    runs = []
    for scale in (1e6, 1e-6):
        cb, messages = _fit_well_with_third_estimate(
            monkeypatch,
            lambda e, s=scale: dataclasses.replace(
                e, converged={**e.converged, "top": False}, lambda_max=e.lambda_max * s
            ),
        )
        assert "did not converge (top eigensolver" in messages
        runs.append(cb.history)
    for history in runs:
        _, _, bad, after = history
        assert bad["estimate"] == "not_converged"
        assert bad["metrics"]["kramers/converged"] == 0.0
        # Decided, not held: the reason is the decision's, with the estimate's fate added.
        assert bad["reason"].endswith("(estimate not converged: its curvature is not used)")
        assert not bad["reason"].startswith("estimate")
        assert after["estimate"] == "ok"
    keys = ("lr", "batch_size", "critical_temperature", "target")
    assert [runs[0][2][k] for k in keys] == [runs[1][2][k] for k in keys]


def test_an_unconverged_estimate_warm_starts_the_next(monkeypatch):
    # A budget-capped eigensolver carries its progress: the estimate after an unconverged one
    # starts from its vectors, not from the last converged estimate's.
    real = schedule_module.run_estimate
    made, starts = [], []

    def second_unconverged(*args, **kwargs):
        starts.append(kwargs.get("warm_start"))
        est = real(*args, **kwargs)
        if len(made) == 1:
            est = dataclasses.replace(est, converged={**est.converged, "top": False})
        made.append(est)
        return est

    monkeypatch.setattr(schedule_module, "run_estimate", second_unconverged)
    cb = KramersCallback("observe", **WELL)
    fit_well(cb, epochs=3)
    assert [h["estimate"] for h in cb.history] == ["ok", "not_converged", "ok"]
    assert starts[0] is None and starts[1] is made[0] and starts[2] is made[1]


def test_the_first_epochs_burn_in_is_recorded_not_averaged_over_a_short_epoch():
    # max_steps cuts epoch 1 to 12 of its 50 batches: the dwell's last half then reaches back
    # into epoch 0, which an average epoch (samples seen / epochs) would count as tested.
    cb = KramersCallback("observe", **WELL)
    fit_well(cb, epochs=None, max_steps=62)
    assert len(cb.history) == 2
    assert all("burn-in" in h["reason"] for h in cb.history), [h["reason"] for h in cb.history]
    assert cb.state_dict()["first_epoch_samples"] == 800


def test_stop_rule_stops_once_with_its_reason(caplog):
    # c = 1e-6: stop once fewer than 10⁶ escapes are expected in the remaining steps, and the
    # walker is thermalized with nothing left to cool (observe moves nothing: it is already at
    # its coldest setting).
    cb = KramersCallback("observe", compute_cost=1e-6, patience=2, **WELL)
    with caplog.at_level(logging.INFO):
        t, _, _ = fit_well(cb, epochs=6)
    assert cb.stop_reason is StopReason.COLDEST_SETTING
    # The first epoch is burn-in (never thermalized): the two checks are epochs 1 and 2.
    assert len(cb.history) == 3 and t.current_epoch == 3 and cb.history[-1]["stop"]
    assert not cb.history[0]["stop"] and "burn-in" in cb.history[0]["reason"]
    said = [r.getMessage() for r in caplog.records if "stopped training" in r.getMessage()]
    assert len(said) == 1 and "for 2 consecutive checks" in said[0]
    assert "coldest setting" in said[0]
    assert cb.state_dict()["termination"]["reason"] == "coldest_setting"


def test_a_loss_below_zero_under_a_compute_cost_warns_once_and_names_the_rule(tmp_path):
    # The double well's loss x⁴ − 3x² + y² is negative near its minima (−2.25 at the bottom):
    # the worth rule's "share of the loss" is undefined there, and the user is told once.
    cb = KramersCallback("observe", compute_cost=1e-6, patience=2, **WELL)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit_well(cb, epochs=6)
    said = [str(w.message) for w in caught if "bounded below by 0" in str(w.message)]
    assert len(said) == 1, said
    assert "compute_cost=1e-06" in said[0] and "coldest setting" in said[0]
    assert float(re.search(r"window is (\S+),", said[0]).group(1)) < 0
    # Once said, a resume from a checkpoint of that run does not say it again.
    first = KramersCallback("observe", compute_cost=1e-6, patience=10, **WELL)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t, _, _ = fit_well(first, epochs=3)
    assert [w for w in caught if "bounded below by 0" in str(w.message)]
    path = tmp_path / "warned.ckpt"
    t.save_checkpoint(path)
    resumed = KramersCallback("observe", compute_cost=1e-6, patience=10, **WELL)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module, data = DoubleWellModule(lr=LR), DoubleWellDataModule(num_samples=SAMPLES)
        trainer(callbacks=[resumed], max_epochs=5).fit(module, datamodule=data, ckpt_path=path)
    assert len(resumed.history) == 5  # three restored, two new
    assert not [w for w in caught if "bounded below by 0" in str(w.message)]
    # Without a compute cost the rule weighs nothing, and there is nothing to warn about.
    free = KramersCallback("observe", patience=2, **WELL)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit_well(free, epochs=3)
    assert not [w for w in caught if "bounded below by 0" in str(w.message)]


def test_stop_rule_never_stops_a_descending_run():
    # c > 0 and no monitor: the loss of a freshly initialised classifier still falls by more
    # than its noise, so the rule alone must not stop it, however few escapes are expected.
    cb = KramersCallback(
        "observe", compute_cost=1e6, patience=1, **dict(WELL, probe_size=32, probe_batch_size=32)
    )
    pl.seed_everything(0)
    t = trainer(callbacks=[cb], max_epochs=4)
    t.fit(TinyClassifier(), datamodule=BlobsData())
    assert t.current_epoch == 4 and cb.stop_reason is StopReason.NOT_STOPPED
    assert all(h["phase"] == "descending" for h in cb.history)
    assert all(h["metrics"]["kramers/phase"] == 0.0 for h in cb.history)


def test_stop_rule_waits_for_the_monitored_metric_to_stall():
    cb = KramersCallback(
        "observe",
        compute_cost=1e-6,
        patience=2,
        monitor="train_loss",
        min_delta=100.0,  # after its first value, the loss never "improves" by that much
        **WELL,
    )
    fit_well(cb, epochs=6)
    # Check 1: first value (an improvement); checks 2 and 3: stalled → stop after epoch 3.
    assert [h["stop"] for h in cb.history] == [False, False, True]
    assert cb.stop_reason is StopReason.COLDEST_SETTING


def test_budget_from_max_steps_counts_remaining_steps():
    # "lr" keeps B (so the 120 steps fit in the Trainer's 3 epochs).
    cb = KramersCallback("lr", **WELL)
    t, _, _ = fit_well(cb, epochs=None, max_steps=120)
    assert t.global_step == 120
    first = cb.history[0]
    # 800 samples / 16 = 50 steps in the first epoch; max_steps leaves 70.
    assert first["step"] == 50 and first["remaining_steps"] == 70
    assert first["horizon"] == pytest.approx(120)


class _RaiseLrBeforeEstimate(pl.Callback):
    """Sets an unstable η just before the Kramers callback's epoch-end hook (it runs first)."""

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == 0:
            for group in trainer.optimizers[0].param_groups:
                group["lr"] = 0.5


@pytest.mark.parametrize("policy", ["lr", "hybrid"])
def test_without_a_target_the_stability_clamp_still_lowers_an_unstable_lr(policy):
    # Almost no noise: every pathway is "no barrier within reach", so there is no annealing
    # target. η = 0.5 is far above 2/λ_max ≈ 2/12 at the minimum and must come down, whether
    # the regime holds (descending) or cools (thermalized).
    cb = KramersCallback(policy, **WELL)
    quiet = DoubleWellDataModule(
        num_samples=SAMPLES, batch_size=16, covariance=[[1e-4, 0.0], [0.0, 1e-4]]
    )
    pl.seed_everything(0)
    module = DoubleWellModule(lr=LR)
    trainer(callbacks=[_RaiseLrBeforeEstimate(), cb], max_epochs=2).fit(module, datamodule=quiet)
    first = cb.history[0]
    assert first["estimate"] == "ok" and first["lr_before"] == 0.5
    # No barrier in reach: not trapped, so the Kramers target plays no part.
    assert first["phase"] in ("descending", "thermalized")
    assert math.isnan(first["critical_temperature"])
    assert "stability" in first["limited_by"]
    limit = 2.0 / first["metrics"]["kramers/lambda_max"]
    if first["phase"] == "descending":  # held: only the clamp moved η, to just below it
        assert first["lr"] == pytest.approx(limit, rel=1e-9)
    assert first["lr"] < limit
    assert math.isfinite(float(flat_parameters(module).abs().max()))


def test_an_unconverged_trace_is_flagged_apart_and_does_not_block_decisions():
    # Two Hutchinson samples cannot meet the 1% rule on an MLP's Hessian (on the double well
    # the Hessian is diagonal and Rademacher probes are exact); the eigensolvers still
    # converge, so the estimate counts as converged.
    cb = KramersCallback(
        "observe",
        overhead_budget=math.inf,
        probe_size=64,
        top_k=1,
        max_trace_samples=2,
        max_scan_evals=10,
    )
    pl.seed_everything(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(callbacks=[cb], max_epochs=2).fit(TinyClassifier(), datamodule=BlobsData())
    assert sum("Hutchinson trace" in str(w.message) for w in caught) == 1
    first = cb.history[0]
    assert first["estimate"] == "ok"
    assert first["metrics"]["kramers/trace_converged"] == 0.0
    assert first["metrics"]["kramers/converged"] == 1.0
    assert math.isfinite(first["metrics"]["kramers/hessian_trace"])


class _OffsetRegression(pl.LightningModule):
    """Linear regression with label noise (σ = 1, 200 inputs), plus a constant in the loss."""

    def __init__(self, offset: float) -> None:
        super().__init__()
        self.offset = offset
        self.w = torch.nn.Parameter(torch.zeros(200))

    def per_sample_loss(self, batch):
        x, y = batch
        return 0.5 * (y - x @ self.w) ** 2 + self.offset

    def training_step(self, batch, batch_idx):
        return self.per_sample_loss(batch).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class _RegressionData(pl.LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        self.batch_size = 8
        g = torch.Generator().manual_seed(0)
        x = torch.randn(4096, 200, generator=g)
        y = x @ (0.1 * torch.randn(200, generator=g)) + torch.randn(4096, generator=g)
        self.train_set = torch.utils.data.TensorDataset(x, y)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.train_set, batch_size=self.batch_size)


_REGRESSION_ESTIMATE = dict(WELL, probe_size=64, top_k=1, max_scan_evals=10)


@pytest.mark.parametrize("offset", [0.0, 3.0])
def test_a_constant_in_the_loss_does_not_keep_a_stationary_walker_from_cooling(offset):
    # Label noise keeps the loss above the floor the noise predicts (L₀ = σ²/2), and a
    # constant moves L₀ further: nothing physical changes, and the walker is stationary from
    # the first epoch after burn-in. At offset 0 the floor is over half the loss, which vouches
    # for the basin; at offset 3 it is not, and the flat windows must show it twice.
    cb = KramersCallback("lr", **_REGRESSION_ESTIMATE)
    pl.seed_everything(0)
    fit = trainer(callbacks=[cb], max_epochs=3)
    fit.fit(_OffsetRegression(offset), datamodule=_RegressionData())
    said = [h["equilibrium"] for h in cb.history]
    first = next(i for i, h in enumerate(cb.history) if h["lr"] < 0.05)
    if offset == 0:
        assert first == 1 and said[1].startswith("thermalized: "), said
    else:
        assert first == 2, said
        assert "flat on evidence once" in said[1] and "flat on evidence twice" in said[2]


def test_a_resume_between_the_two_flat_windows_settles_as_an_uninterrupted_run(tmp_path):
    # The previous test is recomputed from the checkpointed dwell: a checkpoint after the first
    # flat window (epoch 1) must cool at epoch 2 as the uninterrupted run does.
    def fit(cb, callbacks=(), ckpt_path=None):
        pl.seed_everything(0)
        t = trainer(callbacks=[cb, *callbacks], max_epochs=3)
        t.fit(_OffsetRegression(3.0), datamodule=_RegressionData(), ckpt_path=ckpt_path)
        return t

    uninterrupted = KramersCallback("lr", **_REGRESSION_ESTIMATE)
    fit(uninterrupted)
    first = KramersCallback("lr", **_REGRESSION_ESTIMATE)
    t = fit(first, callbacks=[StopAfter(2)])
    assert "flat on evidence once" in first.history[-1]["equilibrium"]
    path = tmp_path / "once.ckpt"
    t.save_checkpoint(path)
    resumed = KramersCallback("lr", **_REGRESSION_ESTIMATE)
    fit(resumed, ckpt_path=path)
    assert decisions(resumed) == decisions(uninterrupted)
    assert "flat on evidence twice" in resumed.history[2]["equilibrium"]

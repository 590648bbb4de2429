"""KramersCallback under faults and unusual but legal setups: precision plugins, resumes with
changed arguments, huge arguments, a monitor never logged, a non-finite training loss, one
instance fitted twice, and the horizon under ``max_steps``."""

from __future__ import annotations

import math
import time
import warnings

import pytest
import pytorch_lightning as pl
import torch
from lightning_helpers import BlobsData, TinyClassifier, decisions, trainer
from pytorch_lightning.utilities.exceptions import MisconfigurationException

import kramers_callback._estimate_schedule as schedule_module
from kramers_callback.callback import KramersCallback
from kramers_callback.stopping import StopReason

QUICK = dict(
    probe_size=64,
    probe_batch_size=32,
    overhead_budget=math.inf,
    compute_trace=False,
    verbose=False,
)
"""Every epoch an estimate, on a probe of 64 blobs: a fit of a few epochs takes under a second."""


def fit_blobs(cb, *, epochs=2, module=None, data=None, **trainer_kwargs):
    pl.seed_everything(0)
    module = module or TinyClassifier()
    data = data or BlobsData()
    t = trainer(callbacks=[cb], max_epochs=epochs, **trainer_kwargs)
    t.fit(module, datamodule=data)
    return t, module, data


# -- 1. precision plugins ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("precision", "dtype", "rounding"),
    [
        ("64-true", torch.float64, torch.float64),
        ("16-mixed", torch.float32, torch.float32),
        ("bf16-true", torch.float32, torch.bfloat16),
    ],
)
def test_probe_batches_follow_the_precision_plugin(monkeypatch, precision, dtype, rounding):
    real, seen = schedule_module.run_estimate, []

    def spy(model, loss_fn, batches, **kwargs):
        seen.append(([b[0] for b in batches], torch.is_autocast_enabled("cpu")))
        return real(model, loss_fn, batches, **kwargs)

    monkeypatch.setattr(schedule_module, "run_estimate", spy)
    cb = KramersCallback("hybrid", **QUICK)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "16-mixed" on the CPU runs as "bf16-mixed"
            fit_blobs(cb, precision=precision)
    except MisconfigurationException as err:  # a precision this machine cannot run
        pytest.skip(f"precision={precision!r} unsupported here: {err}")
    assert [h["estimate"] for h in cb.history] == ["ok", "ok"]
    assert cb.last_estimate is not None and cb.last_estimate.eigenvectors.dtype == dtype
    data = BlobsData().train_set.tensors[0][cb._estimates.probe.indices]
    for inputs, autocast in seen:
        assert not autocast  # estimation never runs under autocast
        assert torch.cat(inputs).dtype == dtype
        # The data as the training step sees it (rounded by the plugin), at the estimate dtype.
        assert torch.equal(torch.cat(inputs), data.to(rounding).to(dtype))


# -- 5. arguments that would allocate by their value --------------------------------------
def test_a_huge_top_k_builds_a_short_ladder_and_is_refused_at_setup():
    started = time.perf_counter()
    cb = KramersCallback("hybrid", top_k=10**9, max_products=10**9, **QUICK)
    assert time.perf_counter() - started < 1.0
    assert len(cb.budget.sizes) <= 64  # O(log) rungs, not one per eigenpair
    # Small values still step down by one eigenpair (the other knobs halve to their floors).
    assert [s.top_k for s in KramersCallback(top_k=4).budget.sizes][:4] == [4, 3, 2, 1]
    with pytest.raises(MisconfigurationException) as err:
        fit_blobs(KramersCallback("hybrid", top_k=100, **QUICK))
    assert "top_k must be an integer ≤ d = 83 (the number of trainable parameters), got 100" in (
        str(err.value)
    )


# -- 10. the horizon under max_steps ---------------------------------------------------------
@pytest.mark.parametrize("policy", ["observe", "hybrid"])
def test_the_horizon_is_max_steps_when_only_max_steps_bounds_the_run(policy):
    # 190 samples in batches of 16: each epoch ends on a batch of 14, a whole optimizer step.
    cb = KramersCallback(policy, **QUICK)
    t, _, _ = fit_blobs(cb, epochs=-1, max_steps=60, data=BlobsData(num_samples=190))
    assert t.global_step == 60 and len(cb.history) == 5
    assert [h["horizon"] for h in cb.history] == [60.0] * 5
    assert [h["remaining_steps"] for h in cb.history] == [60.0 - 12 * (e + 1) for e in range(5)]


# -- 9. one instance fitted twice ----------------------------------------------------------
def test_a_second_fit_starts_afresh_and_a_resume_continues(tmp_path):
    cb = KramersCallback("hybrid", **QUICK)
    t, _, _ = fit_blobs(cb)
    first = decisions(cb)
    path = tmp_path / "two.ckpt"
    t.save_checkpoint(path)
    fit_blobs(cb)  # the same instance, a new run: as if new
    assert decisions(cb) == first and [h["epoch"] for h in cb.history] == [0, 1]
    assert cb.budget.num_estimates == 2
    pl.seed_everything(0)
    trainer(callbacks=[cb], max_epochs=3).fit(
        TinyClassifier(), datamodule=BlobsData(), ckpt_path=path
    )
    assert [h["epoch"] for h in cb.history] == [0, 1, 2]  # a resume continues the checkpoint
    assert decisions(cb)[:2] == first


# -- 2, 3. resume with changed arguments ----------------------------------------------------
def checkpoint_after_two_epochs(tmp_path, **kwargs):
    cb = KramersCallback("hybrid", **{**QUICK, **kwargs})
    t, _, _ = fit_blobs(cb, limit_val_batches=1.0)
    path = tmp_path / "two.ckpt"
    t.save_checkpoint(path)
    return cb, path


def resume(path, policy="hybrid", **kwargs):
    cb = KramersCallback(policy, **{**QUICK, **kwargs})
    pl.seed_everything(0)
    trainer(callbacks=[cb], max_epochs=3, limit_val_batches=1.0).fit(
        TinyClassifier(), datamodule=BlobsData(), ckpt_path=path
    )
    return cb


def test_a_changed_policy_carries_the_state_over(tmp_path):
    first, path = checkpoint_after_two_epochs(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "Please add the following callbacks"
        resumed = resume(path, "observe")
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2]
    assert repr(resumed.history[:2]) == repr(first.history)  # repr: nan == nan
    assert resumed.budget.num_estimates == 3
    assert resumed._estimates.probe.indices == first._estimates.probe.indices
    last = resumed.history[-1]  # observe from now on: the knobs stay
    assert (last["lr"], last["batch_size"]) == (last["lr_before"], last["batch_before"])


def test_a_changed_probe_seed_keeps_the_stored_probe_and_warns(tmp_path):
    first, path = checkpoint_after_two_epochs(tmp_path)
    with pytest.warns(UserWarning, match=r"probe_seed=7 .* probe_seed=0: the stored probe set"):
        resumed = resume(path, probe_seed=7)
    assert resumed._estimates.probe.indices == first._estimates.probe.indices
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2]


def test_a_checkpoint_under_the_old_argument_key_still_loads(tmp_path):
    first, path = checkpoint_after_two_epochs(tmp_path)
    checkpoint = torch.load(path, weights_only=True)
    state = checkpoint["callbacks"].pop(first.state_key)
    checkpoint["callbacks"]["KramersCallback{'policy': 'hybrid', 'probe_seed': 0}"] = state
    torch.save(checkpoint, path)
    assert [h["epoch"] for h in resume(path).history] == [0, 1, 2]


@pytest.mark.parametrize(
    ("stored", "changed", "message"),
    [
        (
            {},
            {"probe_size": 32},
            "cannot resume with probe_size=32: the checkpoint was written "
            "with probe_size=64, and the stored probe set has that many samples",
        ),
        (
            {},
            {"monitor": "val_loss"},
            "cannot resume with monitor='val_loss': the checkpoint was written with monitor=None",
        ),
        (
            {"monitor": "val_loss"},
            {"monitor": "val_loss", "mode": "max"},
            "cannot resume with mode='max': the checkpoint was written with mode='min'",
        ),
    ],
)
def test_a_resume_refuses_changes_the_state_depends_on(tmp_path, stored, changed, message):
    _, path = checkpoint_after_two_epochs(tmp_path, **stored)
    with pytest.raises(MisconfigurationException, match=message):
        resume(path, **changed)


@pytest.mark.parametrize(
    "changed", [{"top_k": 2}, {"lr_min": 0.1}, {"lr_max": 0.3}, {"overhead_budget": 0.5}]
)
def test_a_resume_applies_other_changed_arguments_from_then_on(tmp_path, caplog, changed):
    first, path = checkpoint_after_two_epochs(tmp_path)
    ((name, value),) = changed.items()
    with caplog.at_level("INFO"):
        resumed = resume(path, **changed, verbose=True)
    stored = first.state_dict()["arguments"][name]
    assert f"apply from now on ({name}: {stored!r} -> {value!r})" in caplog.text
    assert repr(resumed.history[:2]) == repr(first.history)  # repr: nan == nan
    assert resumed.budget.training_work > first.budget.training_work  # the budget carried over
    if name == "top_k":
        assert len(resumed.last_estimate.eigenvalues) == 2
    if name == "lr_min":  # the clamp of the new value: η never below 0.1 from the resume on
        assert resumed.history[-1]["lr"] >= 0.1


# -- 7. a non-finite training loss -----------------------------------------------------------
STALE = ("kramers/lambda_max", "kramers/escape_rate", "kramers/converged", "kramers/temperature")


@pytest.mark.parametrize("check_finite", [True, False])
def test_a_nan_training_loss_shows_the_estimate_missing(caplog, check_finite):
    cb = KramersCallback("hybrid", check_finite=check_finite, **QUICK)
    module = TinyClassifier(nan_at_step=14)  # in epoch 1 (12 steps per epoch): parameters NaN
    with caplog.at_level("INFO"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t, _, _ = fit_blobs(cb, epochs=4, module=module)
    good, *bad = cb.history
    assert good["estimate"] == "ok" and math.isfinite(good["metrics"]["kramers/lambda_max"])
    for entry in bad:
        assert entry["reason"] == "non-finite training loss" and entry["noise_source"] == "none"
        assert math.isnan(entry["temperature"])
        assert all(math.isnan(entry["metrics"][name]) for name in STALE)
        assert (entry["lr"], entry["batch_size"]) == (good["lr"], good["batch_size"])
    assert all(math.isnan(float(t.callback_metrics[name])) for name in STALE)
    stops = [r.getMessage() for r in caplog.records if "stopped training" in r.getMessage()]
    skipped = [w for w in caught if "decision skipped" in str(w.message)]
    if check_finite:
        assert cb.stop_reason is StopReason.NON_FINITE_LOSS and StopReason("non_finite_loss")
        assert len(bad) == 1 and t.current_epoch == 2 and not skipped
        assert stops == [
            "KramersCallback stopped training after 2 epochs: a training loss of the last epoch "
            "was not finite (NaN or inf), so the parameters are no longer usable (pass "
            "check_finite=False to keep training at the last good settings)."
        ]
    else:
        assert cb.stop_reason is StopReason.NOT_STOPPED and len(bad) == 3 and not stops
        assert len(skipped) == 3


# -- 6. a monitor that is never logged ------------------------------------------------------
class Validated(TinyClassifier):
    """Logs ``val_loss`` at validation (TinyClassifier's), and nothing else."""


@pytest.mark.parametrize("validation", [True, False])
def test_a_monitor_never_logged_is_an_error_with_strict(validation):
    kwargs = dict(limit_val_batches=1.0) if validation else {}
    cb = KramersCallback("hybrid", monitor="val_acc", **QUICK)
    with pytest.raises(RuntimeError) as err:
        fit_blobs(cb, **kwargs)
    where = "validation" if validation else "training epoch"
    available = ["val_loss"] if validation else []
    assert str(err.value) == (
        f"KramersCallback: monitor='val_acc' is not among the metrics logged by the end of this "
        f"{where} (available: {available}), so the stop rule cannot check it. Log it "
        "(self.log('val_acc', ...)) or pass monitor=None; strict=False only warns."
    )
    assert cb.history == []  # at the first chance: before the first decision


def test_a_monitor_never_logged_warns_once_without_strict():
    cb = KramersCallback("hybrid", monitor="val_acc", strict=False, **QUICK)
    with pytest.warns(UserWarning, match="monitor='val_acc' is not among") as caught:
        fit_blobs(cb, epochs=3, limit_val_batches=1.0)
    assert sum("val_acc" in str(w.message) for w in caught) == 1 and len(cb.history) == 3
    with pytest.raises(ValueError, match="strict must be a bool, got 'yes'"):
        KramersCallback(strict="yes")
    with pytest.raises(ValueError, match="check_finite must be a bool, got 1"):
        KramersCallback(check_finite=1)


def test_a_monitor_logged_at_validation_raises_nothing():
    cb = KramersCallback("hybrid", monitor="val_loss", **QUICK)
    fit_blobs(cb, limit_val_batches=1.0, check_val_every_n_epoch=2)  # missing at epoch 0: fine
    assert len(cb.history) == 2

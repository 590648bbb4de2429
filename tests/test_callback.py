"""KramersCallback: arguments, refused setups, bit-identical observation, metrics, optimizers."""

from __future__ import annotations

import csv
import math
import types
import warnings

import pytest
import pytorch_lightning as pl
import torch
from lightning_helpers import (
    FAST,
    BlobsData,
    DoubleWellDataModule,
    DoubleWellModule,
    TinyClassifier,
    flat_parameters,
    trainer,
)
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.strategies import DeepSpeedStrategy, FSDPStrategy
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from kramers_callback.callback import METRICS, KramersCallback

WELL = dict(FAST, probe_size=256, probe_batch_size=256)
"""The double well's probe must be large: a small probe's mean tilt ``ā`` can erase the barrier."""


# -- arguments -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            dict(policy="anneal"),
            r"policy must be one of \['batch', 'hybrid', 'lr', 'observe'\], got 'anneal'",
        ),
        (dict(probe_size=1), "probe_size must be an integer ≥ 2, got 1"),
        (dict(probe_batch_size=0), "probe_batch_size must be an integer ≥ 1, got 0"),
        (dict(top_k=0), "top_k must be an integer ≥ 1, got 0"),
        (dict(overhead_budget=0.0), r"overhead_budget must be a number > 0 \(inf: no limit\)"),
        (dict(compute_cost=-1), "compute_cost must be a finite number ≥ 0, got -1"),
        (dict(patience=0), "patience must be an integer ≥ 1, got 0"),
        (dict(min_epochs=-1), "min_epochs must be an integer ≥ 0, got -1"),
        (dict(mode="up"), r"mode must be one of \['max', 'min'\], got 'up'"),
        (dict(lr_min=0.0), "lr_min must be a finite number > 0, got 0.0"),
        (dict(lr_min=0.1, lr_max=0.01), "lr_max must be ≥ lr_min = 0.1, got 0.01"),
        (dict(batch_min=64, batch_max=32), "batch_max must be ≥ batch_min = 64, got 32"),
        (dict(batch_multiple=0), "batch_multiple must be an integer ≥ 1, got 0"),
        (dict(max_change=1.0), r"max_change must be in \(1.0, inf\), got 1.0"),
        (dict(estimate_options={"lr": 1}), r"estimate_options must have keys among .*\['lr'\]"),
        (dict(loss_fn=3), "loss_fn must be callable as loss_fn\\(model, batch\\), got 3"),
        (dict(monitor=3), "monitor must be a metric name \\(str\\) or None, got 3"),
        (dict(batch_size_attr="batch size"), "batch_size_attr must be an attribute name"),
        (dict(noise_window=1), "noise_window must be an integer ≥ 2, got 1"),
        (dict(noise_stride=0), "noise_stride must be an integer ≥ 1, got 0"),
    ],
)
def test_bad_arguments_raise_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KramersCallback(**kwargs)


def test_defaults_and_top_level_export():
    import kramers_callback

    assert kramers_callback.KramersCallback is KramersCallback
    cb = KramersCallback()
    assert cb.policy.value == "hybrid" and cb.overhead_budget == 0.05 and cb.compute_cost == 0.0


def test_an_argument_reassigned_after_construction_raises_instead_of_doing_nothing():
    import copy
    import pickle

    cb = KramersCallback(lr_min=1e-4)
    with pytest.raises(AttributeError, match=r"lr_min is fixed at construction \(got 0.001"):
        cb.lr_min = 1e-3
    assert cb.lr_min == 1e-4
    cb.history = []  # state that is not an argument stays assignable
    # Copies and pickles restore the attributes without assigning them.
    for clone in (copy.deepcopy(cb), pickle.loads(pickle.dumps(cb))):
        assert clone.lr_min == 1e-4
        with pytest.raises(AttributeError, match="fixed at construction"):
            clone.compute_cost = 1.0


# -- refused setups ------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", [FSDPStrategy, DeepSpeedStrategy])
def test_sharded_strategies_are_refused(strategy):
    fake = types.SimpleNamespace(strategy=strategy.__new__(strategy))
    with pytest.raises(MisconfigurationException, match="Use strategy='ddp'"):
        KramersCallback().setup(fake, TinyClassifier(), "fit")


@pytest.mark.parametrize(
    ("module", "callback", "match"),
    [
        (dict(manual=True), {}, "does not support manual optimization"),
        (dict(optimizer="rmsprop"), {}, "supports torch.optim.SGD and the Adam family"),
        (dict(scheduler=True), dict(policy="lr"), "cannot run with an LR scheduler"),
        (dict(scheduler=True), {}, "use policy='batch' or 'observe' to keep it"),
    ],
)
def test_unsupported_setups_are_refused_at_setup(module, callback, match):
    cb = KramersCallback(**{**FAST, **callback})
    with pytest.raises(MisconfigurationException, match=match):
        trainer(callbacks=[cb]).fit(TinyClassifier(**module), datamodule=BlobsData())


def test_several_optimizers_are_refused():
    # Lightning itself allows several optimizers only with manual optimization (refused above);
    # the callback's own check covers any other route.
    module = TinyClassifier(optimizer="two")
    fake = types.SimpleNamespace(optimizers=module.configure_optimizers())
    with pytest.raises(MisconfigurationException, match="supports exactly one optimizer, got 2"):
        KramersCallback().on_fit_start(fake, module)


def test_an_unbounded_budget_is_refused():
    cb = KramersCallback(**FAST)
    with pytest.raises(MisconfigurationException, match="needs a finite training budget"):
        trainer(callbacks=[cb], max_epochs=-1).fit(TinyClassifier(), datamodule=BlobsData())


def test_batch_policy_composes_with_a_user_lr_scheduler():
    """Documented composition: outside lr/hybrid the scheduler owns the learning rate."""
    pl.seed_everything(0)
    cb = KramersCallback("batch", **FAST)
    module = TinyClassifier(lr=0.2, scheduler=True)
    trainer(callbacks=[cb], max_epochs=2).fit(module, datamodule=BlobsData())
    lrs = [g["lr"] for g in module.trainer.optimizers[0].param_groups]
    # StepLR(step_size=1, gamma=0.1) stepped once per epoch: 0.2 → 0.002 (and its half).
    assert lrs == pytest.approx([0.2 * 0.01, 0.1 * 0.01])


@pytest.mark.parametrize("scheduler", [False, True])
def test_a_user_lr_scheduler_starts_a_new_dwell_at_each_change(scheduler):
    """The equilibrium test reads one temperature: a StepLR stepping every epoch leaves the
    dwell with the last epoch's blocks only, and checkpoints the knobs it was trained at."""
    pl.seed_everything(0)
    cb = KramersCallback("observe", **FAST)
    module = TinyClassifier(lr=0.2, scheduler=scheduler)
    trainer(callbacks=[cb], max_epochs=3).fit(module, datamodule=BlobsData())
    per_epoch = 192 // 16  # BlobsData's batches, one block each
    assert len(cb._decision.dwell.blocks) == (per_epoch if scheduler else 3 * per_epoch)
    # The last epoch trained at StepLR's 0.2 · 0.1² (read at its start: Lightning steps an
    # epoch-interval scheduler before the epoch-end hooks).
    assert cb.state_dict()["dwell_knobs"] == pytest.approx(
        [0.2 * (0.01 if scheduler else 1), 16, 0.0, 1.0]
    )


# -- observe is invisible ------------------------------------------------------------------------
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_observe_is_bit_identical_to_no_callback(momentum):
    def fit(callbacks):
        pl.seed_everything(3)
        module = TinyClassifier(lr=0.1, momentum=momentum)
        trainer(callbacks=callbacks, max_epochs=3).fit(module, datamodule=BlobsData())
        return flat_parameters(module), torch.get_rng_state()

    cb = KramersCallback("observe", **FAST)
    with_cb, rng_with = fit([cb])
    without, rng_without = fit([])
    assert sum(h["estimate"] == "ok" for h in cb.history) == 3
    assert torch.equal(with_cb, without) and torch.equal(rng_with, rng_without)


# -- metrics -------------------------------------------------------------------------------------
def test_metrics_reach_callback_metrics_logger_and_progress_bar(tmp_path):
    pl.seed_everything(0)
    cb = KramersCallback("observe", **WELL)
    logger = CSVLogger(tmp_path, name="run")
    t = trainer(callbacks=[cb], max_epochs=2, logger=logger)
    t.fit(DoubleWellModule(), datamodule=DoubleWellDataModule(num_samples=800))
    assert set(METRICS) <= set(t.callback_metrics)
    assert {"kramers/temperature", "kramers/escape_rate"} <= set(t.progress_bar_metrics)
    with open(logger.log_dir + "/metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    logged = {k for row in rows for k, v in row.items() if v != ""}
    assert set(METRICS) <= logged
    last = cb.history[-1]["metrics"]
    assert t.callback_metrics["kramers/temperature"].item() == pytest.approx(
        last["kramers/temperature"], rel=1e-6
    )
    # expected escapes = rate × remaining steps (after the last epoch: none remain).
    first = cb.history[0]
    assert first["metrics"]["kramers/expected_escapes"] == pytest.approx(
        first["metrics"]["kramers/escape_rate"] * first["remaining_steps"], rel=1e-9
    )
    assert first["remaining_steps"] == pytest.approx(800 / 16)


def test_metrics_without_a_logger():
    pl.seed_everything(0)
    cb = KramersCallback("observe", **WELL)
    t = trainer(callbacks=[cb], max_epochs=3, logger=False)
    t.fit(DoubleWellModule(), datamodule=DoubleWellDataModule(num_samples=800))
    assert set(METRICS) <= set(t.callback_metrics)
    assert math.isfinite(t.callback_metrics["kramers/critical_temperature"].item())


# -- optimizers and precision --------------------------------------------------------------------
def test_sgd_with_momentum_measures_the_effective_step():
    pl.seed_everything(0)
    cb = KramersCallback("observe", **FAST)
    trainer(callbacks=[cb], max_epochs=1).fit(
        TinyClassifier(lr=0.05, momentum=0.9), datamodule=BlobsData()
    )
    assert cb.last_estimate.lr == pytest.approx(0.05 / (1 - 0.9))


def test_adamw_runs_with_one_warning_and_a_preconditioner(monkeypatch):
    import kramers_callback._estimate_schedule as module

    seen = []
    real = module.run_estimate

    def spy(*args, **kwargs):
        seen.append(kwargs["preconditioner"])
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "run_estimate", spy)
    pl.seed_everything(0)
    cb = KramersCallback("hybrid", **FAST)
    module = TinyClassifier(lr=0.01, optimizer="adamw")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(callbacks=[cb], max_epochs=3).fit(module, datamodule=BlobsData())
    cb_optimizer = lambda _: module.trainer.optimizers[0]  # noqa: E731
    messages = [str(w.message) for w in caught if "diagonal-preconditioner" in str(w.message)]
    assert len(messages) == 1
    assert len(seen) == 3
    # P = 1/(sqrt(v̂) + ε) from AdamW's own state, rebuilt here; no step ran after the last
    # estimate, so the state is the one it saw.
    optimizer = cb_optimizer(cb)
    expected = []
    for p in optimizer.param_groups[0]["params"]:
        state = optimizer.state[p]
        correction = 1 - 0.999 ** float(state["step"])
        expected.append(1 / ((state["exp_avg_sq"] / correction).sqrt() + 1e-8))
    assert torch.allclose(seen[-1], torch.cat([e.reshape(-1) for e in expected]), rtol=1e-6)


def test_bf16_mixed_runs_and_estimates_in_float32():
    dtypes, autocast = [], []

    def loss_fn(model, batch):
        out = model.per_sample_loss(batch)
        dtypes.append(out.dtype)
        autocast.append(torch.is_autocast_enabled("cpu"))
        return out

    pl.seed_everything(0)
    cb = KramersCallback("hybrid", loss_fn=loss_fn, **FAST)
    trainer(callbacks=[cb], max_epochs=2, precision="bf16-mixed").fit(
        TinyClassifier(), datamodule=BlobsData()
    )
    assert dtypes and set(dtypes) == {torch.float32} and not any(autocast)
    assert cb.last_estimate is not None and cb.last_estimate.finite


class _PlainModule(pl.LightningModule):
    """A module as users write it: training_step, configure_optimizers, nothing else."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
        )

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def test_a_module_with_only_training_step_runs_and_logs_temperature_and_curvature():
    cb = KramersCallback(overhead_budget=math.inf, probe_size=64, top_k=1, max_scan_evals=10)
    pl.seed_everything(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = trainer(callbacks=[cb], max_epochs=2)
        t.fit(_PlainModule(), datamodule=BlobsData())
    said = [str(w.message) for w in caught if "batch-mean loss of training_step" in str(w.message)]
    assert len(said) == 1
    assert [h["estimate"] for h in cb.history] == ["ok", "ok"]
    for name in ("kramers/temperature", "kramers/lambda_max"):
        value = float(t.callback_metrics[name])
        assert math.isfinite(value) and value > 0
    # The estimate's own training_step calls logged nothing: train_loss is the training's.
    assert "train_loss" in t.callback_metrics


def test_unmeasured_pathways_are_counted_not_read_as_zero_rates():
    cb = KramersCallback(
        "observe", overhead_budget=math.inf, probe_size=64, top_k=1, max_scan_evals=10
    )
    pl.seed_everything(0)
    trainer(callbacks=[cb], max_epochs=2).fit(TinyClassifier(), datamodule=BlobsData())
    est = cb.last_estimate
    assert est is not None
    unmeasured = sum(p.rate is None for p in est.pathways)
    logged = cb.history[-1]["metrics"]["kramers/unmeasured_pathways"]
    assert logged == unmeasured == len(est.pathways) - sum(p.rate is not None for p in est.pathways)
    assert len(est.pathways) >= 2  # top-1 in both signs at least

"""The training_step fallback (kramers_callback.step_loss): batch-mean losses for estimates.

A plain LightningModule (``training_step``, ``configure_optimizers``, nothing else) must give the
same curvature as the per-sample path and a temperature within the micro-batch estimator's
stated spread, with no trace in the logger, the module, its metrics, the RNG or the optimizer.
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics import MeanMetric

from kramers_callback import estimate
from kramers_callback._probe import BatchMeanLoss, ProbeLoss
from kramers_callback.estimate import noise_estimator_for
from kramers_callback.noise import directional_variance, micro_batch_relative_error
from kramers_callback.step_loss import (
    TRAINING_STEP_LOSS,
    LossPath,
    per_sample_loss_method,
    resolve_loss,
    training_step_warning,
)

DTYPE = torch.float64
SETTINGS = dict(lr=0.1, batch_size=16, top_k=1, compute_trace=False, tol=1e-9, max_scan_evals=20)
"""Quick estimates of the 83-parameter MLP; ``tol`` tight so that λ_max agrees to rounding."""


def gaussian_classes(n: int = 512, seed: int = 1) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=generator)
    centres = torch.randn(3, 6, generator=generator, dtype=DTYPE)
    return centres[y] + torch.randn(n, 6, generator=generator, dtype=DTYPE), y


class PlainModule(pl.LightningModule):
    """What users write: ``training_step`` returns the batch-mean loss and logs; no per-sample loss.

    ``returns``: ``"tensor"``, ``"dict"`` (``{"loss": …, "logits": …}``) or ``"none"``.
    ``training_step`` also logs from a helper and through ``log_dict``, updates a torchmetrics
    metric, counts its calls in a buffer and draws from every global RNG.
    """

    def __init__(self, returns: str = "tensor", lr: float = 0.1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to(DTYPE)
        self.returns, self.lr = returns, lr
        self.mean_loss = MeanMetric().to(DTYPE)
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def _log_size(self, batch_size: int) -> None:
        self.log("seen_batch_size", float(batch_size), on_step=True)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        self.calls += 1
        self.mean_loss(loss.detach())
        self.log("train_loss", loss, on_step=True)
        self.log_dict({"dict_batch_size": float(len(y))}, on_step=True)
        self._log_size(len(y))
        # Draws that must neither change the loss nor leave the global RNG moved.
        _ = torch.rand(()), random.random(), np.random.rand()  # noqa: NPY002
        if self.returns == "dict":
            return {"loss": loss, "logits": logits}
        if self.returns == "none":
            return None
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def per_sample_cross_entropy(model: nn.Module, batch: Any) -> Tensor:
    """The per-sample losses whose batch mean ``PlainModule.training_step`` returns."""
    return F.cross_entropy(model.net(batch[0]), batch[1], reduction="none")


def probe_batches(n: int = 512, size: int = 64) -> list[tuple[Tensor, Tensor]]:
    x, y = gaussian_classes(n)
    return [(x[i : i + size], y[i : i + size]) for i in range(0, n, size)]


def test_curvature_and_noise_match_the_per_sample_path() -> None:
    model, batches = PlainModule(), probe_batches()
    b = 8
    m = 512 // b
    fallback = estimate(model, TRAINING_STEP_LOSS, batches, micro_batch_size=b, **SETTINGS)
    exact = estimate(model, per_sample_cross_entropy, batches, **SETTINGS)
    same_partition = estimate(
        model,
        per_sample_cross_entropy,
        batches,
        noise="micro_batch",
        micro_batch_size=b,
        **SETTINGS,
    )
    # The mean loss is the same function: curvature agrees to the solver's tolerance.
    assert fallback.lambda_max == pytest.approx(exact.lambda_max, rel=1e-8)
    assert fallback.lambda_min == pytest.approx(exact.lambda_min, rel=1e-6)
    # The same micro-batches from a per-sample loss: the same numbers, up to rounding.
    assert fallback.temperature == pytest.approx(same_partition.temperature, rel=1e-10)
    assert fallback.noise_scale == pytest.approx(same_partition.noise_scale, rel=1e-10)
    # Against the exact per-sample noise: within 3 stated standard errors.
    spread = 3 * micro_batch_relative_error(m)
    assert abs(fallback.temperature / exact.temperature - 1) < spread
    assert abs(fallback.noise_scale / exact.noise_scale - 1) < spread
    for ours, reference in zip(fallback.pathways, exact.pathways, strict=True):
        assert ours.name == reference.name
        assert abs(ours.temperature / reference.temperature - 1) < spread


def test_a_dict_output_gives_the_same_estimate_as_a_tensor_output() -> None:
    batches = probe_batches(128, 32)
    as_tensor = estimate(PlainModule("tensor"), TRAINING_STEP_LOSS, batches, **SETTINGS)
    as_dict = estimate(PlainModule("dict"), TRAINING_STEP_LOSS, batches, **SETTINGS)
    assert as_dict.temperature == as_tensor.temperature
    assert as_dict.lambda_max == as_tensor.lambda_max
    assert as_dict.pathways == as_tensor.pathways


def test_a_step_returning_none_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"training_step must return.*got None"):
        estimate(PlainModule("none"), TRAINING_STEP_LOSS, probe_batches(64, 32), **SETTINGS)


def test_a_dict_without_loss_and_a_non_tensor_are_refused() -> None:
    class NoLoss(PlainModule):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return {"objective": super().training_step(batch, batch_idx)}

    class Float(PlainModule):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return float(super().training_step(batch, batch_idx))

    with pytest.raises(ValueError, match=r"keys \['objective'\]"):
        estimate(NoLoss(), TRAINING_STEP_LOSS, probe_batches(64, 32), **SETTINGS)
    with pytest.raises(ValueError, match="got float"):
        estimate(Float(), TRAINING_STEP_LOSS, probe_batches(64, 32), **SETTINGS)


def test_a_batch_mean_loss_must_return_one_element() -> None:
    loss = BatchMeanLoss(per_sample_cross_entropy)  # per-sample, not a mean
    with pytest.raises(ValueError, match=r"one element, got \(32,\)"):
        estimate(PlainModule(), loss, probe_batches(64, 32), **SETTINGS)


def test_a_step_without_batch_idx_is_called_with_the_batch_only() -> None:
    class BatchOnly(PlainModule):
        def training_step(self, batch: Any) -> Any:  # type: ignore[override]
            return super().training_step(batch, 0)

    batches = probe_batches(128, 32)
    ours = estimate(BatchOnly(), TRAINING_STEP_LOSS, batches, **SETTINGS)
    reference = estimate(PlainModule(), TRAINING_STEP_LOSS, batches, **SETTINGS)
    assert ours.lambda_max == reference.lambda_max


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")  # the setup step, no trainer
def test_model_metric_rng_and_optimizer_state_are_left_bit_identical() -> None:
    model = PlainModule()
    optimizer = model.configure_optimizers()
    x, y = gaussian_classes(32, seed=3)
    model.training_step((x, y), 0).backward()  # a gradient, metric state and momentum to keep
    optimizer.step()
    params = {k: v.clone() for k, v in model.named_parameters()}
    grads = {k: v.grad.clone() for k, v in model.named_parameters()}
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    metric = {k: v.clone() for k, v in model.mean_loss.metric_state.items()}
    updates = model.mean_loss._update_count
    momentum = {k: v["momentum_buffer"].clone() for k, v in optimizer.state.items()}
    rng = torch.get_rng_state(), random.getstate(), np.random.get_state()  # noqa: NPY002

    estimate(model, TRAINING_STEP_LOSS, probe_batches(128, 32), **SETTINGS)

    for k, v in model.named_parameters():
        assert torch.equal(v, params[k]) and torch.equal(v.grad, grads[k])
    for k, v in model.named_buffers():
        assert torch.equal(v, buffers[k])
    assert int(model.calls) == 1  # restored: the estimate called training_step many times
    for k, v in model.mean_loss.metric_state.items():
        assert torch.equal(v, metric[k])
    assert model.mean_loss._update_count == updates
    for k, v in optimizer.state.items():
        assert torch.equal(v["momentum_buffer"], momentum[k])
    assert torch.equal(torch.get_rng_state(), rng[0])
    assert random.getstate() == rng[1]
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), rng[2], strict=True))  # noqa: NPY002
    assert "log" not in model.__dict__ and "log_dict" not in model.__dict__


class _Recorder(Logger):
    """Keeps every ``log_metrics`` call in memory."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[dict[str, float]] = []

    @property
    def name(self) -> str:
        return "recorder"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.records.append(dict(metrics))


class _EstimateEveryStep(pl.Callback):
    """Runs the fallback estimate where the callback does (a training batch hook); with
    ``bypass``, also calls ``training_step`` directly, as an unprotected estimate would."""

    def __init__(self, batches: list[Any], bypass: bool) -> None:
        self.batches, self.bypass = batches, bypass
        self.estimates = 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, *args: Any) -> None:
        estimate(pl_module, TRAINING_STEP_LOSS, self.batches, micro_batch_size=8, **SETTINGS)
        self.estimates += 1
        if self.bypass:
            pl_module.training_step(self.batches[0], 0)


@pytest.mark.parametrize("bypass", [False, True])
def test_logging_inside_training_step_reaches_neither_logger_nor_callback_metrics(
    tmp_path: Any, bypass: bool
) -> None:
    """Training batches have 16 samples; probe batches 48 and micro-batches 8. Any logged batch
    size other than 16 came from an estimate (the bypass run shows that the check can fail)."""
    x, y = gaussian_classes(64, seed=2)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    recorder = _Recorder()
    probe = _EstimateEveryStep(probe_batches(96, 48), bypass)
    trainer = pl.Trainer(
        max_steps=3,
        logger=recorder,
        log_every_n_steps=1,
        callbacks=[probe],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        accelerator="cpu",
    )
    trainer.fit(PlainModule(), loader)
    assert probe.estimates == 3
    logged = {
        float(r[key]) for r in recorder.records for key in ("seen_batch_size", "dict_batch_size")
    }
    seen = {float(trainer.callback_metrics[k]) for k in ("seen_batch_size", "dict_batch_size")}
    if bypass:
        assert 48.0 in logged | seen
    else:
        assert logged == {16.0} and seen == {16.0}


def test_resolution_order() -> None:
    class WithPerSample(PlainModule):
        def per_sample_loss(self, batch: Any) -> Tensor:
            return per_sample_cross_entropy(self, batch)

    class Nothing(pl.LightningModule):
        pass

    assert resolve_loss(per_sample_cross_entropy, WithPerSample()).path is LossPath.LOSS_FN
    resolved = resolve_loss(None, WithPerSample())
    assert resolved.path is LossPath.PER_SAMPLE_LOSS and resolved.loss_fn is per_sample_loss_method
    resolved = resolve_loss(None, PlainModule())
    assert resolved.path is LossPath.TRAINING_STEP and resolved.loss_fn is TRAINING_STEP_LOSS
    with pytest.raises(MisconfigurationException, match=r"per_sample_loss.*training_step"):
        resolve_loss(None, Nothing())


def test_noise_options_with_a_batch_mean_loss() -> None:
    assert noise_estimator_for(None, TRAINING_STEP_LOSS) == "micro_batch"
    assert noise_estimator_for("micro_batch", TRAINING_STEP_LOSS) == "micro_batch"
    assert noise_estimator_for(None, per_sample_cross_entropy) == "per_sample"
    with pytest.raises(ValueError, match=r"noise must be 'micro_batch'.*got 'per_sample'"):
        estimate(
            PlainModule(), TRAINING_STEP_LOSS, probe_batches(64, 32), noise="per_sample", **SETTINGS
        )
    probe = ProbeLoss(PlainModule(), TRAINING_STEP_LOSS, probe_batches(64, 32))
    with pytest.raises(ValueError, match="directional_variance needs per-sample losses"):
        directional_variance(probe, torch.eye(probe.dim, dtype=DTYPE)[:1])


def test_relative_error_matches_simulated_gaussian_micro_batches() -> None:
    """``sd(vᵀΣ̂₁v)/vᵀΣ₁v = √(2/(m−1))`` for Gaussian ``G_j``, and ``tr Σ̂₁`` spreads less when
    the noise is spread over ``r`` directions (``√(2/((m−1) r))``)."""
    generator = torch.Generator().manual_seed(0)
    m, b, reps = 9, 4, 40_000
    sigma = torch.tensor([3.0, 1.0, 1.0, 0.5], dtype=DTYPE)  # per-sample sd along 4 axes
    grads = torch.randn(reps, m, 4, generator=generator, dtype=DTYPE) * sigma / math.sqrt(b)
    scatter = (grads - grads.mean(1, keepdim=True)).square().sum(1)  # [reps, 4]
    estimates = scatter * b / (m - 1)
    bound = micro_batch_relative_error(m)
    one_axis = estimates[:, 0]
    assert float(one_axis.mean()) == pytest.approx(9.0, rel=0.01)
    assert float(one_axis.std() / one_axis.mean()) == pytest.approx(bound, rel=0.03)
    trace = estimates.sum(1)
    r = float(sigma.square().sum() ** 2 / sigma.pow(4).sum())
    assert float(trace.std() / trace.mean()) == pytest.approx(bound / math.sqrt(r), rel=0.03)


def test_warning_names_the_path_and_its_cost() -> None:
    text = training_step_warning(num_samples=256)
    m = 256 // (256 // 8)
    assert "training_step" in text and f"m = {m} " in text and "b = 32" in text
    assert f"{micro_batch_relative_error(m):.0%}" in text
    assert "b = 4" in training_step_warning(num_samples=256, micro_batch_size=4)
    with pytest.raises(ValueError, match="num_micro_batches"):
        training_step_warning(num_samples=10, micro_batch_size=8)

r"""Outcome benchmark: the Kramers callback at its default settings against what a user would pick.

On scikit-learn's digits and on MNIST-1D (:data:`DATASETS`), for several seeds, the same
network is trained with SGD (momentum 0.9, no weight decay) from the same initial learning rate
over the same epoch budget under

- ``constant``: a constant learning rate;
- ``step``: step decay, ×0.1 at 50% and at 75% of the budget (``MultiStepLR``);
- ``cosine``: ``CosineAnnealingLR`` over the budget (per epoch);
- ``early_stop``: a constant learning rate with ``EarlyStopping(monitor="val_acc",
  mode="max", patience=P)``;
- ``plateau``: ``ReduceLROnPlateau(mode="min", factor=0.1, patience=3)`` on ``val_loss``,
  stepped once per epoch;
- ``sasa``: SASA+ (Zhang, Lang, Liu, Xiao 2020, "Statistical adaptive stochastic gradient
  methods"), the stationarity-test optimizer of the ``statopt`` package, with the same
  effective step and momentum (:data:`SASA_OPTIONS`); skipped, with the reason printed, where
  ``statopt`` does not import or run;
- ``kramers_hybrid`` and ``kramers_lr``: ``KramersCallback(policy=..., compute_cost=10)``,
  every other argument at its default (:data:`KRAMERS_OPTIONS`);
- ``kramers_default``: ``KramersCallback()``, every argument at its default (``compute_cost``
  is 0 there: it never stops, and cools down to the coldest allowed setting);
- ``kramers_lr_monitor`` and ``kramers_hybrid_monitor``: as ``kramers_lr`` and
  ``kramers_hybrid``, with ``monitor="val_loss"`` and ``cooling_patience=3`` (``plateau``'s
  patience), so a stalled validation loss also cools (docs/theory.md section 7.7).

Two more problems stand outside the pair the callback was developed on: ``mnist1d_noisy``,
the MNIST-1D CNN with 20% of its training labels redrawn (:class:`NoisyLabelMNIST1D`: a loss
floor no network reaches without memorising), and ``mnist1d_mlp``, an MLP on the clean data
(:func:`mnist1d_mlp`: another architecture, one that overfits); ``mnist1d_adamw`` trains
the CNN with AdamW at its usual defaults (no ``sasa`` arm there: SASA+ is an SGD method).

Per run it records the best and final validation accuracy, epochs, optimizer steps, training
samples (the sum of the batch sizes seen in ``on_train_batch_end``), the compute in counted
sample-passes (training: 3 per sample, one forward and a backward of about twice its cost;
estimates: the callback's own count; total: their sum), the wall time of ``trainer.fit`` and
the seconds spent inside estimates, the changes of η or B (epoch, old η, new η, old B, new B,
reason), the stop epoch and reason, the mean training loss of every epoch, and the callback's
per-epoch ``kramers/cooling_gain`` and ``kramers/noise_floor``. Each finished run is appended
as one JSON line to ``OUT/runs.jsonl`` (runs already there are skipped, so an interrupted
benchmark resumes), and ``OUT/summary.md`` is rewritten after every run with

- the outcome table per data set and epoch scale (means ± sample standard deviations);
- the target check: a Kramers arm's mean final validation accuracy within 0.3 points of the
  best baseline's (the non-Kramers arm with the highest mean final accuracy), at ≤ 60% of
  that baseline's mean total compute;
- when the Kramers arms cooled and why, and why they stopped;
- the noise-floor ratio: the measured drop of the mean training loss across each cooling step
  (epoch before minus epoch after) over the predicted one (the logged cooling gain);
- budget robustness, where runs at ``--epochs-scale 2`` and at 1 are both present: per arm the
  compute ratio and the accuracy difference (target for a Kramers arm: compute within 10%,
  accuracy within 0.3 points; a fixed schedule doubles its cost).

Usage (each data set as its own process, the doubled budget in the same runs file, then one
summary over both)::

    python benchmarks/bench_outcome.py --datasets digits --out benchmarks/output/outcome_digits
    python benchmarks/bench_outcome.py --datasets digits --epochs-scale 2 \
        --methods step cosine kramers_hybrid kramers_lr --out benchmarks/output/outcome_digits
    # the same two with mnist1d and benchmarks/output/outcome_mnist1d, then
    cat benchmarks/output/outcome_{digits,mnist1d}/runs.jsonl > benchmarks/output/outcome/runs.jsonl
    python benchmarks/bench_outcome.py --summary-only --out benchmarks/output/outcome

This is a script, not a test; it needs the ``examples`` extra (scikit-learn, mnist1d) and,
for the ``sasa`` arm, ``statopt``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from _harness import VALIDATED_TRAINER
from pytorch_lightning.callbacks import Callback, EarlyStopping

from kramers_callback.examples import (
    MNIST1DCNN,
    ClassifierModule,
    DigitsCNN,
    DigitsDataModule,
    MNIST1DDataModule,
)

SCHEDULES = ("constant", "step", "cosine", "plateau", "sasa")
"""The arms that differ only in the module's ``configure_optimizers``."""
BASELINES = ("constant", "step", "cosine", "early_stop", "plateau", "sasa")
KRAMERS_ARMS = (
    "kramers_hybrid",
    "kramers_lr",
    "kramers_default",
    "kramers_hybrid_monitor",
    "kramers_lr_monitor",
)
METHODS = (*BASELINES, *KRAMERS_ARMS)

KRAMERS_COMPUTE_COST = 10.0
"""``c`` of the stop rule: stop once what is left to gain (escapes, and the noise floor that
cooling could still remove) is worth less than ``1/c`` of a budget's compute."""

KRAMERS_OPTIONS: dict[str, dict[str, Any]] = {
    "kramers_hybrid": {"policy": "hybrid", "compute_cost": KRAMERS_COMPUTE_COST},
    "kramers_lr": {"policy": "lr", "compute_cost": KRAMERS_COMPUTE_COST},
    "kramers_default": {},
}
"""The Kramers arms' callbacks: in the first three only ``policy`` and ``compute_cost`` are
chosen, everything else (overhead budget, probe, limits, ``max_change``, patience, no monitor)
is the default; the ``_monitor`` arms add the validation loss as ``monitor`` with
``cooling_patience``."""
for _arm in ("kramers_hybrid", "kramers_lr"):
    KRAMERS_OPTIONS[f"{_arm}_monitor"] = {
        **KRAMERS_OPTIONS[_arm],
        "monitor": "val_loss",
        "cooling_patience": 3,
    }

SASA_OPTIONS: dict[str, Any] = {
    "drop_factor": 10.0,
    "significance": 0.05,
    "warmup": 0,
    "leak_ratio": 4,
    "minN_stats": 100,
}
"""SASA+'s test settings. The drop ×0.1 matches ``step`` and ``plateau``; the test runs once
per epoch (``testfreq`` = optimizer steps per epoch, as in the paper). The package defaults
(``warmup=1000``, ``minN_stats=1000`` kept statistics at ``leak_ratio=8``) need about 8 000
steps before the first test, more than either budget, so the smallest statistics window the
package allows (100, at ``leak_ratio=4``: 400 steps) is used instead. Its step is
``α = η₀/(1 − β)``: QHM's dampened momentum (``h ← βh + (1 − β)g``, ``x ← x − αh``) then takes
the same steps as SGD with momentum ``β`` and learning rate ``η₀``."""


ACCURACY_TOLERANCE = 0.3
"""Target: Kramers final accuracy within this many percentage points of the best baseline."""
COMPUTE_FRACTION = 0.6
"""Target: Kramers total compute at most this fraction of the best baseline's."""
ROBUST_COMPUTE = 0.10
"""Budget robustness target: a Kramers arm's compute changes by at most this fraction when
the epoch budget doubles."""
TRAINING_PASSES_PER_SAMPLE = 3
"""Counted sample-passes per training sample: a forward and a backward of about twice its cost
(the convention of the callback's overhead budget)."""


class NoisyLabelMNIST1D(MNIST1DDataModule):
    """MNIST-1D whose training labels are replaced, with probability ``share``, by a class drawn
    uniformly (a fixed draw from generator seed 0, so every arm and seed sees the same labels);
    validation keeps the clean labels. The training loss then has a floor no network reaches
    without memorising the flipped labels: the regime whose noise floor the theory describes
    with state-independent noise (docs/theory.md, "The equilibrium regime")."""

    def __init__(self, batch_size: int, seed: int, share: float = 0.2) -> None:
        super().__init__(batch_size=batch_size, seed=seed)
        self.share = share

    def setup(self, stage: str | None = None) -> None:
        fresh = self.train_set is None
        super().setup(stage)
        if fresh:
            x, y = self.train_set.tensors
            generator = torch.Generator().manual_seed(0)
            flip = torch.rand(len(y), generator=generator) < self.share
            drawn = torch.randint(0, self.num_classes, (len(y),), generator=generator)
            self.train_set = torch.utils.data.TensorDataset(x, torch.where(flip, drawn, y))


def mnist1d_mlp() -> torch.nn.Module:
    """A two-hidden-layer ReLU MLP on the raw MNIST-1D sequence (40 → 256 → 256 → 10): the
    architecture without the convolutions' translation prior, which Greydanus & Steinbach
    (2020) report far below the CNN (about 68% against 94%) and which overfits."""
    return torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(40, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 10),
    )


@dataclass(frozen=True)
class DatasetConfig:
    """One data set of the benchmark: network, data module, SGD settings and epoch budget."""

    name: str
    epochs: int
    lr: float
    batch_size: int
    net: Callable[[], torch.nn.Module]
    data: Callable[..., pl.LightningDataModule]
    momentum: float = 0.0
    early_stop_patience: int = 5
    optimizer: str = "sgd"
    weight_decay: float = 0.0

    def make_net(self) -> torch.nn.Module:
        return self.net()

    def make_data(self, seed: int) -> pl.LightningDataModule:
        return self.data(batch_size=self.batch_size, seed=seed)


DATASETS = {
    # digits: 1 348 training images, 43 steps per epoch at B = 32.
    "digits": DatasetConfig("digits", 20, 0.05, 32, DigitsCNN, DigitsDataModule, momentum=0.9),
    # MNIST-1D: 4 000 training sequences, 125 steps per epoch at B = 32.
    "mnist1d": DatasetConfig("mnist1d", 30, 0.05, 32, MNIST1DCNN, MNIST1DDataModule, momentum=0.9),
    # Two problems outside the tuned pair, for the class of problems rather than the
    # benchmarks: the CNN with 20% of its training labels redrawn (a real loss floor), and an
    # MLP on the clean data (another architecture, one that overfits).
    "mnist1d_noisy": DatasetConfig(
        "mnist1d_noisy", 30, 0.05, 32, MNIST1DCNN, NoisyLabelMNIST1D, momentum=0.9
    ),
    "mnist1d_mlp": DatasetConfig(
        "mnist1d_mlp", 30, 0.05, 32, mnist1d_mlp, MNIST1DDataModule, momentum=0.9
    ),
    # The CNN under AdamW at its usual defaults (η = 10⁻³, decoupled weight decay 0.01): the
    # optimizer most users pick, which the callback reads through its diagonal preconditioner.
    "mnist1d_adamw": DatasetConfig(
        "mnist1d_adamw",
        30,
        1e-3,
        32,
        MNIST1DCNN,
        MNIST1DDataModule,
        optimizer="adamw",
        weight_decay=0.01,
    ),
}


def epoch_budget(dataset: str, epochs: int | None, scale: float) -> int:
    """The epoch budget: ``epochs`` (default: the data set's) times ``scale``, at least 1."""
    return max(1, round((epochs or DATASETS[dataset].epochs) * scale))


# -- SASA+ ---------------------------------------------------------------------------------------
_SASA_DEPRECATION = ".*This overload of add_? is deprecated.*"
"""statopt 0.2 calls ``Tensor.add_(Number, Tensor)``, deprecated in torch but still working."""


def make_sasa(params: Any, *, lr: float, momentum: float, testfreq: int) -> torch.optim.Optimizer:
    """SASA+ with :data:`SASA_OPTIONS`, stepping like SGD(``lr``, ``momentum``)."""
    from statopt import SASA

    optimizer = SASA(
        params,
        lr=lr / (1.0 - momentum),
        momentum=momentum,
        testfreq=max(1, testfreq),
        **SASA_OPTIONS,
    )
    # statopt 0.2 accepts only var_mode 'mb' but computes batch means only for 'bm' (anything
    # else falls back to the i.i.d. variance, which autocorrelated SGD statistics violate): set
    # the paper's batch-means estimator directly.
    optimizer.state["var_mode"] = "bm"
    return optimizer


def sasa_unavailable() -> str | None:
    """``None`` where SASA+ imports and takes steps on this torch, else why not (the error)."""
    try:
        net = torch.nn.Linear(4, 2)
        optimizer = make_sasa(net.parameters(), lr=0.05, momentum=0.9, testfreq=1)
        generator = torch.Generator().manual_seed(0)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_SASA_DEPRECATION)
            for _ in range(3):
                optimizer.zero_grad()
                net(torch.randn(8, 4, generator=generator)).pow(2).mean().backward()
                optimizer.step()
    except Exception as error:  # any failure means: skip the arm, and say why
        return f"{type(error).__name__}: {error}"
    return None


# -- training ------------------------------------------------------------------------------------
class ScheduledClassifier(ClassifierModule):
    """:class:`ClassifierModule` with one of the benchmark's learning-rate schedules.

    ``schedule``: ``"constant"`` (no scheduler), ``"step"`` (×0.1 at 50% and 75% of
    ``epochs``), ``"cosine"`` (``CosineAnnealingLR(T_max=epochs)``), ``"plateau"``
    (``ReduceLROnPlateau`` on ``val_loss``), all stepped once per epoch, or ``"sasa"`` (the
    SASA+ optimizer, testing once per epoch).
    """

    def __init__(
        self,
        net: torch.nn.Module,
        *,
        schedule: str,
        epochs: int,
        lr: float,
        momentum: float,
        optimizer: str = "sgd",
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(
            net, lr=lr, momentum=momentum, optimizer=optimizer, weight_decay=weight_decay
        )
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        self.schedule = schedule
        self.epochs = epochs

    def configure_optimizers(self) -> Any:
        if self.schedule == "sasa":
            steps = self.trainer.estimated_stepping_batches // max(1, self.trainer.max_epochs)
            return make_sasa(
                self.parameters(), lr=self.lr, momentum=self.momentum, testfreq=int(steps)
            )
        optimizer = super().configure_optimizers()
        if self.schedule == "constant":
            return optimizer
        config: dict[str, Any] = {"interval": "epoch"}
        if self.schedule == "step":
            milestones = [max(1, round(0.5 * self.epochs)), max(2, round(0.75 * self.epochs))]
            config["scheduler"] = torch.optim.lr_scheduler.MultiStepLR(
                optimizer, milestones=milestones, gamma=0.1
            )
        elif self.schedule == "cosine":
            config["scheduler"] = torch.optim.lr_scheduler.CosineAnnealingLR(
                optimizer, T_max=self.epochs
            )
        else:
            config["scheduler"] = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=0.1, patience=3
            )
            config["monitor"] = "val_loss"
        return {"optimizer": optimizer, "lr_scheduler": config}


class Recorder(Callback):
    """Counts the training samples and records, per epoch, the mean training loss, the
    validation accuracy, the loader's batch size and the learning rate.

    ``samples`` is the sum of the batch sizes seen in ``on_train_batch_end`` (so it follows a
    batch size that a callback changes mid-run); ``train_loss[e]`` is the sample-weighted mean
    of the ``loss`` that ``training_step`` returned during epoch ``e``.
    """

    def __init__(self) -> None:
        self.samples = 0
        self.batch_sizes: list[int] = []
        self.lrs: list[float] = []
        self.val_acc: list[float] = []
        self.train_loss: list[float] = []
        self._loss_sum: torch.Tensor | None = None
        self._loss_count = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        size = getattr(trainer.train_dataloader, "batch_size", None)
        if isinstance(size, int):
            self.batch_sizes.append(size)
        self.lrs.append(float(trainer.optimizers[0].param_groups[0]["lr"]))
        self._loss_sum, self._loss_count = None, 0

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        count = len(batch[1])
        self.samples += count
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            # Accumulated as a tensor: one host read per epoch, not one per step.
            weighted = loss.detach().float() * count
            self._loss_sum = weighted if self._loss_sum is None else self._loss_sum + weighted
            self._loss_count += count

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        mean = math.nan
        if self._loss_sum is not None and self._loss_count:
            mean = float(self._loss_sum) / self._loss_count
        self.train_loss.append(mean)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get("val_acc")
        if value is not None:
            self.val_acc.append(float(value))


@dataclass
class RunResult:
    """What one (dataset, method, seed, scale) run measured; one JSON line of ``runs.jsonl``."""

    dataset: str
    method: str
    seed: int
    epochs_scale: float
    epochs_budget: int
    epochs_run: int
    best_val_acc: float
    final_val_acc: float
    optimizer_steps: int
    samples: int
    training_work: float
    """Counted training sample-passes: :data:`TRAINING_PASSES_PER_SAMPLE` × ``samples``."""
    estimate_work: float
    """Counted estimate sample-passes (0 for the baselines)."""
    estimate_work_source: str
    total_work: float
    wall_s: float
    estimate_s: float
    """Wall-clock seconds inside estimates: the sum of the logged ``kramers/estimate_seconds``."""
    lr_final: float
    batch_size_final: int | None
    stop_epoch: int | None = None
    stop_reason: str | None = None
    changes: list[list[Any]] = field(default_factory=list)
    """Every change of η or B: ``[epoch, old lr, new lr, old B, new B, reason, phase]``; it
    takes effect from epoch ``epoch + 1``."""
    train_loss: list[float] = field(default_factory=list)
    val_acc_history: list[float] = field(default_factory=list)
    lr_history: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    kramers_epochs: list[dict[str, Any]] = field(default_factory=list)
    """Per epoch end: epoch, phase, ``kramers/cooling_gain``, ``kramers/noise_floor``."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """The Kramers callback's ``history``: one record per epoch end (measured, decided, why)."""


def make_kramers_callback(
    method: str,
    extra: Mapping[str, Any] | None = None,
    estimate_epochs: Sequence[int] | None = None,
) -> Callback:
    """A Kramers arm's callback (:data:`KRAMERS_OPTIONS`, plus ``extra`` arguments).

    ``estimate_epochs``: estimate at the ends of exactly these epochs (0-based), at the size
    the budget would choose, instead of when measured time allows. A diagnostic replay of one
    run's estimate schedule, which otherwise depends on the machine's load.
    """
    from kramers_callback.callback import KramersCallback

    callback = KramersCallback(**KRAMERS_OPTIONS[method], **(extra or {}))
    if estimate_epochs is not None:
        budget, pinned = callback.budget, frozenset(estimate_epochs)
        plan = budget.plan

        def pinned_plan(*, epochs_done: int, epochs_left: float = math.inf) -> Any:
            chosen = plan(epochs_done=epochs_done, epochs_left=epochs_left)
            return replace(chosen, run=epochs_done - 1 in pinned, reason="pinned schedule")

        budget.plan = pinned_plan  # type: ignore[method-assign]
    return callback


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _stop_info(
    kramers: Callback | None, early: EarlyStopping | None
) -> tuple[int | None, str | None]:
    """The stop epoch and reason, read defensively from the stopping callback's attributes."""
    if early is not None:
        epoch = int(getattr(early, "stopped_epoch", 0) or 0)
        return (epoch, "early_stopping") if epoch > 0 else (None, None)
    if kramers is None:
        return None, None
    rule = getattr(kramers, "termination", None)
    reason = getattr(kramers, "stop_reason", getattr(rule, "reason", None))
    reason = getattr(reason, "value", reason)
    if reason is None or reason == "not_stopped":
        return None, None
    epoch = getattr(rule, "stopped_epoch", None)
    message = getattr(rule, "message", None)
    text = f"{reason}: {message}" if message else str(reason)
    return (None if epoch is None else int(epoch)), text


def _estimate_work(kramers: Callback | None, history: list[dict[str, Any]]) -> tuple[float, str]:
    """Counted estimate sample-passes and where they were read: the callback's budget, else
    the largest logged ``kramers/estimate_work`` (cumulative), else ``nan``."""
    if kramers is None:
        return 0.0, "none"
    value = _finite(getattr(getattr(kramers, "budget", None), "estimate_work", None))
    if value is not None:
        return value, "budget.estimate_work"
    logged = [
        v
        for h in history
        if (v := _finite(h.get("metrics", {}).get("kramers/estimate_work"))) is not None
    ]
    if logged:
        return max(logged), "history kramers/estimate_work"
    return (0.0, "no estimate") if history else (math.nan, "unavailable")


def _changes(history: list[dict[str, Any]]) -> list[list[Any]]:
    out = []
    for h in history:
        lr_before, lr = h.get("lr_before"), h.get("lr")
        batch_before, batch = h.get("batch_before"), h.get("batch_size")
        if lr_before != lr or batch_before != batch:
            out.append(
                [
                    h.get("epoch"),
                    lr_before,
                    lr,
                    batch_before,
                    batch,
                    h.get("reason"),
                    h.get("phase"),
                ]
            )
    return out


def run_one(
    dataset: str,
    method: str,
    seed: int,
    *,
    budget: int,
    scale: float,
    threads: int,
    kramers_extra: Mapping[str, Any] | None = None,
    estimate_epochs: Sequence[int] | None = None,
) -> RunResult:
    """Train one (dataset, method, seed) over ``budget`` epochs and measure it;
    ``kramers_extra``: more arguments for a Kramers arm's callback; ``estimate_epochs``: its
    estimates at these epoch ends only (:func:`make_kramers_callback`)."""
    config = DATASETS[dataset]
    torch.set_num_threads(threads)
    pl.seed_everything(seed, workers=True, verbose=False)
    schedule = method if method in SCHEDULES else "constant"
    model = ScheduledClassifier(
        config.make_net(),
        schedule=schedule,
        epochs=budget,
        lr=config.lr,
        momentum=config.momentum,
        optimizer=config.optimizer,
        weight_decay=config.weight_decay,
    )
    data = config.make_data(seed)
    callbacks: list[Callback] = []
    kramers = early = None
    if method == "early_stop":
        early = EarlyStopping(monitor="val_acc", mode="max", patience=config.early_stop_patience)
        callbacks.append(early)
    elif method in KRAMERS_ARMS:
        kramers = make_kramers_callback(method, kramers_extra, estimate_epochs)
        callbacks.append(kramers)
    recorder = Recorder()
    callbacks.append(recorder)
    trainer = pl.Trainer(
        max_epochs=budget, callbacks=callbacks, deterministic=False, **VALIDATED_TRAINER
    )
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_SASA_DEPRECATION)
        trainer.fit(model, datamodule=data)
    wall = time.perf_counter() - started
    history = _jsonable(getattr(kramers, "history", []))
    stop_epoch, stop_reason = _stop_info(kramers, early)
    estimate_work, source = _estimate_work(kramers, history)
    training_work = float(TRAINING_PASSES_PER_SAMPLE * recorder.samples)
    seconds = [
        v
        for h in history
        if (v := _finite(h.get("metrics", {}).get("kramers/estimate_seconds"))) is not None
    ]
    return RunResult(
        dataset=dataset,
        method=method,
        seed=seed,
        epochs_scale=scale,
        epochs_budget=budget,
        epochs_run=len(recorder.val_acc),
        best_val_acc=100 * max(recorder.val_acc),
        final_val_acc=100 * recorder.val_acc[-1],
        optimizer_steps=int(trainer.global_step),
        samples=recorder.samples,
        training_work=training_work,
        estimate_work=estimate_work,
        estimate_work_source=source,
        total_work=training_work + estimate_work,
        wall_s=wall,
        estimate_s=math.fsum(seconds),
        lr_final=float(trainer.optimizers[0].param_groups[0]["lr"]),
        batch_size_final=getattr(data, "batch_size", None),
        stop_epoch=stop_epoch,
        stop_reason=stop_reason,
        changes=_changes(history),
        train_loss=recorder.train_loss,
        val_acc_history=[100 * a for a in recorder.val_acc],
        lr_history=recorder.lrs,
        batch_sizes=recorder.batch_sizes,
        kramers_epochs=[
            {
                "epoch": h.get("epoch"),
                "phase": h.get("phase"),
                "cooling_gain": h.get("metrics", {}).get("kramers/cooling_gain"),
                "noise_floor": h.get("metrics", {}).get("kramers/noise_floor"),
            }
            for h in history
        ],
        history=history,
    )


def _jsonable(value: Any) -> Any:
    """``value`` with every non-JSON leaf as a float or a string (NaN/inf stay floats)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


# -- summary -------------------------------------------------------------------------------------
Runs = list[dict[str, Any]]


def _scale(run: dict[str, Any]) -> float:
    return float(run.get("epochs_scale", 1.0))


def _total(run: dict[str, Any]) -> float:
    """Total counted compute; older records (samples only) count 3 passes per sample."""
    if "total_work" in run:
        return float(run["total_work"])
    return float(TRAINING_PASSES_PER_SAMPLE * run["samples"])


def _mean(runs: Runs, key: str | Callable[[dict[str, Any]], float]) -> float:
    values = [key(r) if callable(key) else float(r[key]) for r in runs]
    return statistics.fmean(values)


def _fmt(values: Sequence[float], digits: int) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "n/a"
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _optimizer_name(config: DatasetConfig) -> str:
    if config.optimizer == "adamw":
        return f"AdamW (weight decay {config.weight_decay:g}),"
    return "SGD"


def _cooled(change: list[Any]) -> bool:
    """Whether a change lowered the temperature ``T ∝ η/B`` (the momentum factor cancels) from
    a settled phase: a lowering while descending is the stability clamp, one of the other
    changes."""
    _, lr_before, lr, batch_before, batch = change[:5]
    if len(change) > 6 and change[6] == "descending":
        return False
    try:
        return lr / batch < lr_before / batch_before
    except (TypeError, ZeroDivisionError):
        return False


def _quartiles(values: list[float]) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3g}"
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return f"{q2:.3g} [{q1:.3g}, {q3:.3g}]"


def summarise(runs: Runs, notes: Sequence[str] = ()) -> str:
    """Markdown: per data set and epoch scale the outcome table, the target check, when the
    Kramers arms cooled and why, and the noise-floor ratio; then the budget robustness."""
    lines: list[str] = [f"- {note}" for note in notes]
    if lines:
        lines.append("")
    for dataset in DATASETS:
        for scale in sorted({_scale(r) for r in runs if r["dataset"] == dataset}):
            rows = [r for r in runs if r["dataset"] == dataset and _scale(r) == scale]
            by_method = {m: [r for r in rows if r["method"] == m] for m in METHODS}
            by_method = {m: g for m, g in by_method.items() if g}
            lines += _outcome_table(dataset, scale, by_method)
            lines += _target_check(by_method)
            lines += _cooling_table(by_method)
            lines += _noise_floor_table(by_method)
        lines += _robustness_table(dataset, [r for r in runs if r["dataset"] == dataset])
    return "\n".join(lines)


def _outcome_table(dataset: str, scale: float, by_method: dict[str, Runs]) -> list[str]:
    config = DATASETS[dataset]
    budgets = sorted({r["epochs_budget"] for g in by_method.values() for r in g})
    lines = [
        f"### {dataset}, epoch scale {scale:g} (budget {', '.join(map(str, budgets))} epochs, "
        f"{_optimizer_name(config)} η₀ = {config.lr}, momentum {config.momentum}, "
        f"B₀ = {config.batch_size})",
        "",
        "| method | seeds | best val acc (%) | final val acc (%) | epochs | optimizer steps "
        "| samples | training passes | estimate passes | total compute | wall (s) "
        "| estimates (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, group in by_method.items():
        lines.append(
            f"| {method} | {len(group)} "
            f"| {_fmt([r['best_val_acc'] for r in group], 2)} "
            f"| {_fmt([r['final_val_acc'] for r in group], 2)} "
            f"| {_fmt([r['epochs_run'] for r in group], 1)} "
            f"| {_fmt([r['optimizer_steps'] for r in group], 0)} "
            f"| {_fmt([r['samples'] for r in group], 0)} "
            f"| {_fmt([r.get('training_work', math.nan) for r in group], 0)} "
            f"| {_fmt([r.get('estimate_work', math.nan) for r in group], 0)} "
            f"| {_fmt([_total(r) for r in group], 0)} "
            f"| {_fmt([r['wall_s'] for r in group], 1)} "
            f"| {_fmt([r.get('estimate_s', 0.0) for r in group], 1)} |"
        )
    return [*lines, ""]


def _target_check(by_method: dict[str, Runs]) -> list[str]:
    baselines = {m: g for m, g in by_method.items() if m not in KRAMERS_ARMS}
    arms = [m for m in KRAMERS_ARMS if m in by_method]
    if not arms or not baselines:
        return ["Target check: needs a Kramers arm and at least one baseline.", ""]
    best = max(baselines, key=lambda m: _mean(baselines[m], "final_val_acc"))
    best_acc = _mean(baselines[best], "final_val_acc")
    best_total = _mean(baselines[best], _total)
    best_wall = _mean(baselines[best], "wall_s")
    out = [
        f"Target check (final val acc within {ACCURACY_TOLERANCE} points of the best baseline, "
        f"total compute ≤ {COMPUTE_FRACTION:.0%} of its): best baseline `{best}`, "
        f"{best_acc:.2f}%, total compute {best_total:.0f} sample-passes.",
        "",
    ]
    for arm in arms:
        acc = _mean(by_method[arm], "final_val_acc")
        fraction = _mean(by_method[arm], _total) / best_total
        wall = _mean(by_method[arm], "wall_s") / best_wall
        ok_acc = acc - best_acc >= -ACCURACY_TOLERANCE
        ok_compute = fraction <= COMPUTE_FRACTION
        out.append(
            f"- `{arm}`: {acc:.2f}% ({acc - best_acc:+.2f} points: "
            f"{'ok' if ok_acc else 'missed'}), total compute {fraction:.0%} of the baseline's "
            f"({'ok' if ok_compute else 'missed'}; wall time {wall:.0%}) → "
            f"**{'MET' if ok_acc and ok_compute else 'MISSED'}**"
        )
    return [*out, ""]


def _head(reason: Any) -> str:
    """A reason's kind: its text before the first ':' or '(' (the numbers follow)."""
    text = str(reason or "none")
    for mark in (":", "("):
        text = text.split(mark)[0]
    return text.strip() or "none"


def _counted(items: list[str]) -> str:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return "; ".join(f"{k} ×{v}" for k, v in sorted(counts.items())) or "none"


def _why(change: list[Any]) -> str:
    """A cooling's reason without its numbers (they follow in parentheses), led by its phase."""
    reason = str(change[5] or "none").split("(")[0].strip()
    phase = str(change[6]) if len(change) > 6 else ""
    return reason if reason.startswith(phase) else f"{phase}: {reason}"


def _cooling_table(by_method: dict[str, Runs]) -> list[str]:
    arms = [m for m in KRAMERS_ARMS if m in by_method]
    if not arms:
        return []
    lines = [
        "When it cooled and why (a cooling lowers η/B; a change of η or B at epoch e acts from "
        "e + 1):",
        "",
        "| arm | runs that cooled | median first cooling epoch (from 0) | coolings per run "
        "| other changes of η or B | why it cooled | stop reasons |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm in arms:
        group = by_method[arm]
        first, counts, why = [], [], []
        others = 0
        for run in group:
            changes = run.get("changes", [])
            cooled = [c for c in changes if _cooled(c)]
            others += len(changes) - len(cooled)
            counts.append(len(cooled))
            if cooled:
                first.append(cooled[0][0])
            why += [_why(c) for c in cooled]
        stops = [_head(r.get("stop_reason") or "budget exhausted") for r in group]
        lines.append(
            f"| {arm} | {len(first)} of {len(group)} "
            f"| {statistics.median(first) if first else 'n/a'} | {_fmt(counts, 1)} | {others} "
            f"| {_counted(why)} | {_counted(stops)} |"
        )
    return [*lines, ""]


def _noise_floor_events(run: dict[str, Any]) -> tuple[list[tuple[float, float]], int]:
    """``(measured, predicted)`` drops of the training loss at each cooling of ``run``, and the
    number of coolings without both (no epoch after it, or no finite positive prediction)."""
    by_epoch = {e.get("epoch"): e for e in run.get("kramers_epochs", [])}
    losses = run.get("train_loss", [])
    events, skipped = [], 0
    for change in run.get("changes", []):
        if not _cooled(change):
            continue
        epoch = change[0]
        predicted = _finite(by_epoch.get(epoch, {}).get("cooling_gain"))
        if (
            not isinstance(epoch, int)
            or epoch + 1 >= len(losses)
            or predicted is None
            or predicted <= 0
            or not math.isfinite(losses[epoch] - losses[epoch + 1])
        ):
            skipped += 1
            continue
        events.append((losses[epoch] - losses[epoch + 1], predicted))
    return events, skipped


def _noise_floor_table(by_method: dict[str, Runs]) -> list[str]:
    arms = [m for m in KRAMERS_ARMS if m in by_method]
    if not arms:
        return []
    lines = [
        "Noise-floor ratio: measured drop (mean training loss of the epoch of the decision "
        "minus that of the next) over predicted drop (`kramers/cooling_gain` at the decision); "
        "median [interquartile range]:",
        "",
        "| arm | events | not measurable | measured / predicted | measured drop | predicted drop |",
        "|---|---|---|---|---|---|",
    ]
    for arm in arms:
        events: list[tuple[float, float]] = []
        skipped = 0
        for run in by_method[arm]:
            found, missed = _noise_floor_events(run)
            events += found
            skipped += missed
        lines.append(
            f"| {arm} | {len(events)} | {skipped} "
            f"| {_quartiles([m / p for m, p in events])} "
            f"| {_quartiles([m for m, _ in events])} | {_quartiles([p for _, p in events])} |"
        )
    return [*lines, ""]


def _robustness_table(dataset: str, rows: Runs) -> list[str]:
    """Per arm and every epoch scale ``s ≠ 1``: compute ratio and accuracy difference against
    scale 1 over the seeds run at both."""
    scales = sorted({_scale(r) for r in rows} - {1.0})
    lines: list[str] = []
    for scale in scales:
        table = []
        for method in METHODS:
            base = {r["seed"]: r for r in rows if r["method"] == method and _scale(r) == 1.0}
            other = {r["seed"]: r for r in rows if r["method"] == method and _scale(r) == scale}
            seeds = sorted(base.keys() & other.keys())
            if not seeds:
                continue
            longer, shorter = [other[s] for s in seeds], [base[s] for s in seeds]
            ratio = _mean(longer, _total) / _mean(shorter, _total)
            diff = _mean(longer, "final_val_acc") - _mean(shorter, "final_val_acc")
            verdict = "—"
            if method in KRAMERS_ARMS:
                ok = abs(ratio - 1) <= ROBUST_COMPUTE and diff >= -ACCURACY_TOLERANCE
                verdict = "MET" if ok else "MISSED"
            table.append(f"| {method} | {len(seeds)} | {ratio:.2f} | {diff:+.2f} | {verdict} |")
        if table:
            lines += [
                f"### {dataset}: budget robustness, epoch scale {scale:g} vs 1",
                "",
                f"Target for a Kramers arm: compute within {ROBUST_COMPUTE:.0%}, final accuracy "
                f"no more than {ACCURACY_TOLERANCE} points lower.",
                "",
                "| method | seeds | total compute ratio | final val acc difference (points) "
                "| target |",
                "|---|---|---|---|---|",
                *table,
                "",
            ]
    return lines


def load_runs(path: Path) -> Runs:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _run_key(run: dict[str, Any]) -> tuple[str, str, int, float, int]:
    return run["dataset"], run["method"], run["seed"], _scale(run), run["epochs_budget"]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--epochs", type=int, default=None, help="epoch budget before scaling (default: per set)"
    )
    parser.add_argument(
        "--epochs-scale", type=float, default=1.0, help="multiplies each data set's epoch budget"
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/output/outcome"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument(
        "--noise-stride",
        type=int,
        default=None,
        help="the Kramers arms' noise_stride (default: the callback's); use its own --out",
    )
    parser.add_argument(
        "--estimate-epochs",
        nargs="+",
        type=int,
        default=None,
        help="the Kramers arms estimate at these epoch ends only (0-based), a diagnostic replay "
        "of a schedule that measured time otherwise sets; use its own --out",
    )
    parser.add_argument(
        "--summary-only", action="store_true", help="only rewrite the summary from runs.jsonl"
    )
    args = parser.parse_args(argv)
    if not (args.epochs_scale > 0 and math.isfinite(args.epochs_scale)):
        parser.error(f"--epochs-scale must be a positive number, got {args.epochs_scale}")
    if args.noise_stride is not None and args.noise_stride < 1:
        parser.error(f"--noise-stride must be an integer >= 1, got {args.noise_stride}")
    if args.estimate_epochs is not None and min(args.estimate_epochs) < 0:
        parser.error(f"--estimate-epochs must be epochs >= 0, got {args.estimate_epochs}")
    extra = {} if args.noise_stride is None else {"noise_stride": args.noise_stride}

    args.out.mkdir(parents=True, exist_ok=True)
    runs_path = args.out / "runs.jsonl"
    summary_path = args.out / "summary.md"
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated.*")

    notes: list[str] = []
    methods = list(args.methods)
    if "sasa" in methods:
        why = sasa_unavailable()
        if why is not None:
            methods.remove("sasa")
            notes.append(f"`sasa` skipped: statopt's SASA+ does not run here ({why}).")
            print(notes[-1], flush=True)

    runs = load_runs(runs_path)
    if not args.summary_only:
        done = {_run_key(r) for r in runs}
        # Seed-major order: an interrupted benchmark still has every method on the first seeds.
        for dataset in args.datasets:
            budget = epoch_budget(dataset, args.epochs, args.epochs_scale)
            for seed in args.seeds:
                for method in methods:
                    key = (dataset, method, seed, args.epochs_scale, budget)
                    if key in done:
                        continue
                    with contextlib.redirect_stdout(io.StringIO()):
                        result = run_one(
                            dataset,
                            method,
                            seed,
                            budget=budget,
                            scale=args.epochs_scale,
                            threads=args.threads,
                            kramers_extra=extra,
                            estimate_epochs=args.estimate_epochs,
                        )
                    record = asdict(result)
                    runs.append(record)
                    with runs_path.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                    print(
                        f"{dataset:8s} {method:14s} seed {seed} ×{args.epochs_scale:g}: "
                        f"best {result.best_val_acc:.2f}% final {result.final_val_acc:.2f}% "
                        f"epochs {result.epochs_run} steps {result.optimizer_steps} "
                        f"compute {result.total_work:.0f} ({result.estimate_work:.0f} estimates) "
                        f"{result.wall_s:.1f} s ({result.estimate_s:.1f} s estimates) "
                        f"changes {len(result.changes)}"
                        + (f" stop: {result.stop_reason}" if result.stop_reason else ""),
                        flush=True,
                    )
                    summary_path.write_text(summarise(runs, notes) + "\n")
    text = summarise(runs, notes)
    summary_path.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

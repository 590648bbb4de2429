"""Shared plumbing of the wall-time benchmarks: one timed ``trainer.fit``, arms run alternately,
the per-step timer, and what a callback's history says about its estimates.

Not a benchmark itself; imported by ``bench_gpu.py``, ``bench_overhead.py`` and
``bench_overhead_default.py``, and for its quiet Trainer options by ``bench_outcome.py`` (the
scripts' folder is on ``sys.path`` when they run as scripts).
"""

from __future__ import annotations

import itertools
import logging
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytorch_lightning as pl
import torch

from kramers_callback.callback import KramersCallback


def quiet() -> None:
    """Silence Lightning's per-fit banners and the warnings a benchmark repeats every fit."""
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="pytorch_lightning")
    warnings.filterwarnings("ignore", module="lightning_fabric")


STATS_OFF_BUDGET = 1e-12
"""``overhead_budget`` that defers every estimate the budget can defer: the callback then does
only its per-step statistics (loss blocks, running noise) and the one first estimate it makes
at the smallest size to measure its cost; :class:`EpochTimer` keeps that one out of the
per-step time, which is read between the epoch boundaries."""


def synchronize(device: torch.device | str) -> None:
    """Wait for the device (a no-op on CPU), so that a clock read means the work is done."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EpochTimer(pl.Callback):
    """Training seconds of each epoch, from its start to its end, before any other callback's
    epoch-end work (put it first in ``callbacks``), and the steps it made.

    The device is synchronised at both ends only, as the Kramers callback does.
    """

    def __init__(self) -> None:
        self.epoch_seconds: list[float] = []
        self.steps = 0
        self._started = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        synchronize(pl_module.device)
        self._started = time.perf_counter()

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self.steps += 1

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        synchronize(pl_module.device)
        self.epoch_seconds.append(time.perf_counter() - self._started)

    def seconds_per_step(self, skip_epochs: int = 1) -> float:
        """Training seconds per step, leaving out the first ``skip_epochs`` epochs (warm-up)."""
        kept = self.epoch_seconds[skip_epochs:] or self.epoch_seconds
        steps_per_epoch = self.steps / max(len(self.epoch_seconds), 1)
        return sum(kept) / (len(kept) * steps_per_epoch)


class RecordingKramers(KramersCallback):
    """``KramersCallback`` that keeps the Hessian-vector products and the probe forward passes
    of every estimate it makes (the history keeps their seconds)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("verbose", False)
        super().__init__(*args, **kwargs)
        self.products: list[int] = []
        self.forwards: list[int] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        before = self.last_estimate
        super().on_train_epoch_end(trainer, pl_module)
        est = self.last_estimate
        if est is not None and est is not before:
            self.products.append(int(est.num_hvp))
            self.forwards.append(int(est.num_forward))


QUIET_TRAINER: dict[str, Any] = {
    "devices": 1,
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
    "limit_val_batches": 0,
}
"""``pl.Trainer`` options of a timed fit: one device, no validation, logging or checkpoints."""

VALIDATED_TRAINER: dict[str, Any] = {
    **{k: v for k, v in QUIET_TRAINER.items() if k != "limit_val_batches"},
    "accelerator": "cpu",
}
"""``pl.Trainer`` options of an outcome run: the quiet options on one CPU process, with
validation after every epoch."""


@dataclass
class FitResult:
    seconds: float
    timer: EpochTimer
    callback: Any = None


def fit(
    make_module: Callable[[], pl.LightningModule],
    make_data: Callable[[], pl.LightningDataModule],
    *,
    epochs: int,
    callback: Any = None,
    accelerator: str = "cpu",
    precision: str = "32-true",
    seed: int = 0,
    **trainer_options: Any,
) -> FitResult:
    """One ``trainer.fit`` from ``seed``, without validation, logging or checkpoints (further
    ``pl.Trainer`` arguments in ``trainer_options``); its wall seconds (device synchronised at
    the end), the epoch timer and the callback."""
    pl.seed_everything(seed, verbose=False)
    module, data = make_module(), make_data()
    timer = EpochTimer()
    trainer = pl.Trainer(
        accelerator=accelerator,
        max_epochs=epochs,
        precision=precision,
        callbacks=[timer] if callback is None else [timer, callback],
        **QUIET_TRAINER,
        **trainer_options,
    )
    started = time.perf_counter()
    trainer.fit(module, datamodule=data)
    synchronize(module.device)
    return FitResult(time.perf_counter() - started, timer, callback)


@dataclass
class Arms:
    """Results of arms run alternately: ``results[name]`` in repeat order."""

    results: dict[str, list[FitResult]] = field(default_factory=dict)

    def seconds(self, name: str) -> list[float]:
        return [r.seconds for r in self.results[name]]

    def median_seconds(self, name: str) -> float:
        return statistics.median(self.seconds(name))

    def ratio(self, name: str, base: str = "plain") -> float:
        """Median of the paired ratios ``name / base`` (same repeat, run next to each other)."""
        return statistics.median(
            a / b for a, b in zip(self.seconds(name), self.seconds(base), strict=True)
        )

    def step_ratio(self, name: str, base: str = "plain") -> float:
        """Median of the paired ratios of training seconds per step."""
        return statistics.median(
            a.timer.seconds_per_step() / b.timer.seconds_per_step()
            for a, b in zip(self.results[name], self.results[base], strict=True)
        )

    def step_difference(self, name: str, base: str = "plain") -> float:
        """Median of the paired differences of training seconds per step."""
        return statistics.median(
            a.timer.seconds_per_step() - b.timer.seconds_per_step()
            for a, b in zip(self.results[name], self.results[base], strict=True)
        )

    def median_step_seconds(self, name: str) -> float:
        return statistics.median(r.timer.seconds_per_step() for r in self.results[name])


def alternate(
    arms: dict[str, Callable[[], FitResult]], repeats: int, *, verbose: bool = True
) -> Arms:
    """Run each arm ``repeats`` times, rotating the order every repeat, so that a drift in the
    machine's load hits every arm alike."""
    out = Arms({name: [] for name in arms})
    names = list(arms)
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            result = arms[name]()
            out.results[name].append(result)
            if verbose:
                print(f"  repeat {repeat} {name:10s} {result.seconds:8.2f} s", flush=True)
    return out


@dataclass(frozen=True)
class EstimateLog:
    """What a callback's history says about its estimates."""

    num_estimates: int
    num_deferred: int
    first_epoch: int | None
    """0-based epoch of the first estimate (``None``: none ran)."""
    epochs: list[int]
    statuses: list[str]
    """The history's ``estimate`` of each (``"ok"``, ``"not_converged"``, …)."""
    seconds: list[float]
    products: list[int]
    """Hessian-vector products of each estimate."""
    overhead: float
    counted_overhead: float

    def max_gap(self, total_epochs: int) -> int | None:
        """Most epochs from the start to the first estimate, between two, or from the last to
        one past the end (``g`` means ``g − 1`` epochs in a row without one; "an estimate at
        least every 3 epochs" is ``g ≤ 3``). ``None``: no estimate."""
        if not self.epochs:
            return None
        points = [0, *(e + 1 for e in self.epochs), total_epochs + 1]
        return max(b - a for a, b in itertools.pairwise(points))


def estimate_log(callback: RecordingKramers) -> EstimateLog:
    ran = [h for h in callback.history if h.get("estimate") != "deferred"]
    return EstimateLog(
        num_estimates=callback.budget.num_estimates,
        num_deferred=callback.budget.num_deferred,
        first_epoch=ran[0]["epoch"] if ran else None,
        epochs=[int(h["epoch"]) for h in ran],
        statuses=[str(h["estimate"]) for h in ran],
        seconds=[float(h["metrics"].get("kramers/estimate_seconds", float("nan"))) for h in ran],
        products=list(callback.products),
        overhead=float(callback.budget.overhead),
        counted_overhead=float(callback.budget.counted_overhead),
    )


def fmt_list(values: Sequence[float], scale: float = 1.0) -> str:
    """``a, b, c`` with each value times ``scale``, rounded (``–`` when empty)."""
    return ", ".join(f"{scale * v:.0f}" for v in values) or "–"

r"""Outcome benchmark (issue 4, item 3a): the Kramers callback against standard LR schedules.

On scikit-learn's digits and on MNIST-1D, for several seeds, the same network is trained with
plain SGD from the same initial learning rate over the same epoch budget under

- ``constant``: a constant learning rate;
- ``step``: step decay, ×0.1 at 50% and at 75% of the budget (``MultiStepLR``);
- ``cosine``: ``CosineAnnealingLR`` over the budget (per epoch);
- ``early_stop``: a constant learning rate with ``EarlyStopping(monitor="val_acc",
  mode="max", patience=P)``;
- ``kramers``: ``KramersCallback(policy="hybrid")`` with its stop rule on
  (``compute_cost = c > 0``, see :data:`KRAMERS_COMPUTE_COST`) and the optional guard "only
  while the validation accuracy has stopped improving" (:data:`KRAMERS_OPTIONS`);
- ``kramers_unguarded``: the same without that guard (the seed's stop rule alone).

Per run it records the best and final validation accuracy, optimizer steps, training samples
processed (the sum of the batch sizes seen in ``on_train_batch_end``), the wall time of
``trainer.fit``, and for the Kramers arm the epoch it stopped, its stop reason and the final
``kramers/*`` metrics. Each finished run is appended as one JSON line to ``OUT/runs.jsonl``
(runs already there are skipped, so an interrupted benchmark resumes), and the summary table
(means ± sample standard deviations over seeds) is rewritten to ``OUT/summary.md`` after every
run.

Target check (issue 4): a Kramers arm's mean final validation accuracy is within 0.3 points
of the best baseline's (the baseline arm with the highest mean final validation accuracy),
while it processes at most 70% of that baseline's mean samples.

Usage::

    python benchmarks/bench_outcome.py --datasets digits mnist1d --seeds 0 1 2 3 4 \
        --methods constant step cosine early_stop kramers kramers_unguarded \
        --out benchmarks/output/outcome

This is a script, not a test; it needs the ``examples`` extra (scikit-learn, mnist1d).
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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, EarlyStopping

from kramers_callback.examples import (
    MNIST1DCNN,
    ClassifierModule,
    DigitsCNN,
    DigitsDataModule,
    MNIST1DDataModule,
)

BASELINES = ("constant", "step", "cosine", "early_stop")
KRAMERS_ARMS = ("kramers", "kramers_unguarded")
METHODS = (*BASELINES, *KRAMERS_ARMS)

KRAMERS_COMPUTE_COST = 10.0
"""``c`` of the stop rule ``k·R·c < 1``: stop once fewer than ``1/c = 0.1`` escapes are
expected in the remaining budget, i.e. when continuing has under a 10% chance of finding
another basin. ``c = 10`` values a basin change at ten budgets of compute; a smaller ``c``
stops earlier."""

KRAMERS_OPTIONS: dict[str, Any] = {
    "policy": "hybrid",
    "compute_cost": KRAMERS_COMPUTE_COST,
    # The default 5% overhead budget never pays for one estimate on these small data sets (an
    # epoch of digits is 1 348 samples, the smallest estimate ~15 000 counted sample-passes),
    # so the callback would never act: estimate at full size at every epoch end instead and
    # report the cost (wall time, kramers/overhead).
    "overhead_budget": math.inf,
    # SPEC 5's optional guard: stop only while the validation accuracy has stopped improving.
    "monitor": "val_acc",
    "mode": "max",
    "patience": 3,
    "verbose": False,
}
"""The ``kramers`` arm's callback; every other argument keeps its default (probe 256 samples,
top_k 3, κ = 20, lr bounds [η₀/1000, η₀], batch bounds [B₀, epoch size], ×2 per decision)."""

KRAMERS_UNGUARDED_OPTIONS: dict[str, Any] = {
    k: v for k, v in KRAMERS_OPTIONS.items() if k not in ("monitor", "mode")
}
"""The ``kramers_unguarded`` arm: the same, without the validation-metric guard (the seed's
stop rule alone, with ``patience`` 3)."""

ACCURACY_TOLERANCE = 0.3
"""Target: Kramers accuracy within this many percentage points of the best baseline."""
SAMPLE_FRACTION = 0.7
"""Target: Kramers processes at most this fraction of the best baseline's samples."""


@dataclass(frozen=True)
class DatasetConfig:
    """One data set of the benchmark: network, data module, SGD settings and epoch budget."""

    name: str
    epochs: int
    lr: float
    batch_size: int
    momentum: float = 0.0
    early_stop_patience: int = 5

    def make_net(self) -> torch.nn.Module:
        if self.name == "digits":
            return DigitsCNN()
        return MNIST1DCNN()

    def make_data(self, seed: int) -> pl.LightningDataModule:
        if self.name == "digits":
            return DigitsDataModule(batch_size=self.batch_size, seed=seed)
        return MNIST1DDataModule(batch_size=self.batch_size, seed=seed)


DATASETS = {
    # digits: 1 348 training images, 43 steps per epoch at B = 32.
    "digits": DatasetConfig("digits", epochs=20, lr=0.05, batch_size=32, momentum=0.9),
    # MNIST-1D: 4 000 training sequences, 125 steps per epoch at B = 32.
    "mnist1d": DatasetConfig("mnist1d", epochs=30, lr=0.05, batch_size=32, momentum=0.9),
}


class ScheduledClassifier(ClassifierModule):
    """:class:`ClassifierModule` with one of the benchmark's learning-rate schedules.

    ``schedule``: ``"constant"`` (no scheduler), ``"step"`` (×0.1 at 50% and 75% of
    ``epochs``) or ``"cosine"`` (``CosineAnnealingLR(T_max=epochs)``); both step once per
    epoch.
    """

    def __init__(
        self, net: torch.nn.Module, *, schedule: str, epochs: int, lr: float, momentum: float
    ) -> None:
        super().__init__(net, lr=lr, momentum=momentum)
        if schedule not in ("constant", "step", "cosine"):
            raise ValueError(f"schedule must be one of constant, step, cosine, got {schedule!r}")
        self.schedule = schedule
        self.epochs = epochs

    def configure_optimizers(self) -> Any:
        optimizer = super().configure_optimizers()
        if self.schedule == "constant":
            return optimizer
        if self.schedule == "step":
            milestones = [max(1, round(0.5 * self.epochs)), max(2, round(0.75 * self.epochs))]
            scheduler: Any = torch.optim.lr_scheduler.MultiStepLR(
                optimizer, milestones=milestones, gamma=0.1
            )
        else:
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.epochs)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }


class WorkCounter(Callback):
    """Counts the training samples processed and records the validation accuracy per epoch.

    ``samples`` is the sum of the batch sizes seen in ``on_train_batch_end`` (so it follows a
    batch size that a callback changes mid-run); ``val_acc`` holds one value per validation
    epoch; ``kramers_history`` the ``kramers/*`` metrics at the end of each epoch.
    """

    def __init__(self, kramers: Callback | None = None) -> None:
        self.kramers = kramers
        self._last_estimate: Any = None
        self.samples = 0
        self.batch_sizes: list[int] = []
        self.val_acc: list[float] = []
        self.kramers_history: list[dict[str, Any]] = []

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:
        self.samples += len(batch[1])

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loader = trainer.train_dataloader
        size = getattr(loader, "batch_size", None)
        if isinstance(size, int):
            self.batch_sizes.append(size)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get("val_acc")
        if value is not None:
            self.val_acc.append(float(value))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics: dict[str, Any] = _kramers_metrics(trainer)
        if not metrics:
            return
        metrics["epoch"] = float(trainer.current_epoch)
        if self.val_acc:
            metrics["val_acc"] = self.val_acc[-1]
        estimate = getattr(self.kramers, "last_estimate", None)
        if estimate is not None and estimate is not self._last_estimate:
            self._last_estimate = estimate
            metrics["pathways"] = [
                {
                    "name": p.name,
                    "status": getattr(p.status, "value", str(p.status)),
                    "curvature": p.curvature,
                    "temperature": p.temperature,
                    "barrier": p.barrier,
                    "rate": p.rate,
                }
                for p in estimate.pathways
            ]
            metrics["num_hvp"] = estimate.num_hvp
        self.kramers_history.append(metrics)


def _kramers_metrics(trainer: pl.Trainer) -> dict[str, float]:
    out = {}
    for name, value in trainer.callback_metrics.items():
        if name.startswith("kramers/"):
            with contextlib.suppress(TypeError, ValueError):
                out[name] = float(value)
    return out


@dataclass
class RunResult:
    """What one (dataset, method, seed) run measured; one JSON line of ``runs.jsonl``."""

    dataset: str
    method: str
    seed: int
    epochs_budget: int
    epochs_run: int
    best_val_acc: float
    final_val_acc: float
    optimizer_steps: int
    samples: int
    wall_s: float
    lr_final: float
    batch_size_final: int | None
    stop_epoch: int | None = None
    stop_reason: str | None = None
    kramers_final: dict[str, float] = field(default_factory=dict)
    kramers_history: list[dict[str, Any]] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    val_acc_history: list[float] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    """The Kramers callback's ``history``: one record per epoch end (measured, decided, why)."""


def make_kramers_callback(method: str) -> Callback:
    """The Kramers arms' callback: hybrid policy, stop rule on (``compute_cost > 0``)."""
    from kramers_callback.callback import KramersCallback

    options = KRAMERS_OPTIONS if method == "kramers" else KRAMERS_UNGUARDED_OPTIONS
    return KramersCallback(**options)


def _stop_info(callback: Callback | None) -> tuple[int | None, str | None]:
    """The Kramers callback's stop epoch and reason, read defensively from its attributes."""
    if callback is None:
        return None, None
    rule = getattr(callback, "termination", None)
    epoch = getattr(rule, "stopped_epoch", None)
    reason = getattr(rule, "reason", None)
    message = getattr(rule, "message", None)
    if reason is not None and hasattr(reason, "value"):
        reason = reason.value
    text = None if reason is None else str(reason)
    if message:
        text = f"{text}: {message}" if text else str(message)
    return (None if epoch is None else int(epoch)), text


def run_one(dataset: str, method: str, seed: int, epochs: int | None, threads: int) -> RunResult:
    """Train one (dataset, method, seed) and measure it."""
    config = DATASETS[dataset]
    budget = epochs or config.epochs
    torch.set_num_threads(threads)
    pl.seed_everything(seed, workers=True, verbose=False)
    schedule = method if method in ("constant", "step", "cosine") else "constant"
    model = ScheduledClassifier(
        config.make_net(), schedule=schedule, epochs=budget, lr=config.lr, momentum=config.momentum
    )
    data = config.make_data(seed)
    callbacks: list[Callback] = []
    kramers = None
    if method == "early_stop":
        callbacks.append(
            EarlyStopping(monitor="val_acc", mode="max", patience=config.early_stop_patience)
        )
    elif method in KRAMERS_ARMS:
        kramers = make_kramers_callback(method)
        callbacks.append(kramers)
    # Last, so that at each epoch end it sees the Kramers callback's fresh estimate.
    counter = WorkCounter(kramers)
    callbacks.append(counter)
    trainer = pl.Trainer(
        max_epochs=budget,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        deterministic=False,
    )
    started = time.perf_counter()
    trainer.fit(model, datamodule=data)
    wall = time.perf_counter() - started
    stop_epoch, stop_reason = _stop_info(kramers)
    optimizer = trainer.optimizers[0]
    return RunResult(
        dataset=dataset,
        method=method,
        seed=seed,
        epochs_budget=budget,
        epochs_run=len(counter.val_acc),
        best_val_acc=100 * max(counter.val_acc),
        final_val_acc=100 * counter.val_acc[-1],
        optimizer_steps=int(trainer.global_step),
        samples=counter.samples,
        wall_s=wall,
        lr_final=float(optimizer.param_groups[0]["lr"]),
        batch_size_final=getattr(data, "batch_size", None),
        stop_epoch=stop_epoch,
        stop_reason=stop_reason,
        kramers_final=_kramers_metrics(trainer) if kramers is not None else {},
        kramers_history=_jsonable(counter.kramers_history),
        batch_sizes=counter.batch_sizes,
        val_acc_history=[100 * a for a in counter.val_acc],
        decisions=_jsonable(getattr(kramers, "history", [])),
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
def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


def _fmt(values: Sequence[float], digits: int) -> str:
    mean, std = _mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def summarise(runs: list[dict[str, Any]]) -> str:
    """Markdown: one table per data set (means ± std over seeds) and the target check."""
    lines: list[str] = []
    for dataset in DATASETS:
        rows = [r for r in runs if r["dataset"] == dataset]
        if not rows:
            continue
        config = DATASETS[dataset]
        budget = rows[0]["epochs_budget"]
        lines += [
            f"### {dataset} (budget {budget} epochs, SGD η₀ = {config.lr}, "
            f"momentum {config.momentum}, B₀ = {config.batch_size})",
            "",
            "| method | seeds | best val acc (%) | final val acc (%) | epochs | optimizer steps "
            "| samples | wall (s) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        by_method: dict[str, list[dict[str, Any]]] = {}
        for method in METHODS:
            group = [r for r in rows if r["method"] == method]
            if not group:
                continue
            by_method[method] = group
            lines.append(
                f"| {method} | {len(group)} "
                f"| {_fmt([r['best_val_acc'] for r in group], 2)} "
                f"| {_fmt([r['final_val_acc'] for r in group], 2)} "
                f"| {_fmt([r['epochs_run'] for r in group], 1)} "
                f"| {_fmt([r['optimizer_steps'] for r in group], 0)} "
                f"| {_fmt([r['samples'] for r in group], 0)} "
                f"| {_fmt([r['wall_s'] for r in group], 1)} |"
            )
        lines.append("")
        lines += _target_check(by_method)
        lines.append("")
    return "\n".join(lines)


def _target_check(by_method: dict[str, list[dict[str, Any]]]) -> list[str]:
    baselines = {m: g for m, g in by_method.items() if m in BASELINES}
    arms = [m for m in KRAMERS_ARMS if m in by_method]
    if not arms or not baselines:
        return ["Target check: needs a Kramers arm and at least one baseline."]
    out = []
    for metric in ("final_val_acc", "best_val_acc"):
        best_method = max(
            baselines, key=lambda m: statistics.fmean(r[metric] for r in baselines[m])
        )
        best_acc = statistics.fmean(r[metric] for r in baselines[best_method])
        best_samples = statistics.fmean(r["samples"] for r in baselines[best_method])
        label = "final" if metric == "final_val_acc" else "best"
        for arm in arms:
            acc = statistics.fmean(r[metric] for r in by_method[arm])
            samples = statistics.fmean(r["samples"] for r in by_method[arm])
            gap = acc - best_acc
            fraction = samples / best_samples
            ok_acc = gap >= -ACCURACY_TOLERANCE
            ok_samples = fraction <= SAMPLE_FRACTION
            verdict = "MET" if ok_acc and ok_samples else "MISSED"
            out.append(
                f"- `{arm}`, {label} val acc: best baseline `{best_method}` {best_acc:.2f}%; "
                f"`{arm}` {acc:.2f}% ({gap:+.2f} points, needs ≥ −{ACCURACY_TOLERANCE}: "
                f"{'ok' if ok_acc else 'missed'}), samples {fraction:.0%} of the baseline's "
                f"(needs ≤ {SAMPLE_FRACTION:.0%}: {'ok' if ok_samples else 'missed'}) "
                f"→ **{verdict}**"
            )
    for arm in arms:
        out += _kramers_diagnostics(arm, by_method[arm])
    return out


def _kramers_diagnostics(arm: str, group: list[dict[str, Any]]) -> list[str]:
    """What the Kramers arm measured and did: the evidence for why a target was met or missed."""
    estimates = barrier_estimates = changed = decisions = 0
    statuses: dict[str, int] = {}
    temperatures, lambda_max, expected, reach, overhead = [], [], [], [], []
    for run in group:
        for entry in run.get("kramers_history", []):
            pathways = entry.get("pathways")
            if pathways is None:
                continue
            estimates += 1
            # The scan's reach: a barrier higher than κ·T_v (κ = 20) is "not within reach".
            hottest = max((p["temperature"] for p in pathways), default=math.nan)
            if math.isfinite(hottest):
                reach.append(20 * hottest)
            barrier_estimates += any(p.get("rate") is not None for p in pathways)
            for p in pathways:
                # "top…" pathways follow the top eigenvectors, "min…" the λ_min eigenvector.
                key = f"{'min' if p['name'].startswith('min') else 'top-k'} {p['status']}"
                statuses[key] = statuses.get(key, 0) + 1
        for record in run.get("decisions", []):
            decisions += 1
            changed += record.get("lr") != record.get("lr_before") or record.get(
                "batch_size"
            ) != record.get("batch_before")
        final = run.get("kramers_final", {})
        for name, into in (
            ("kramers/temperature", temperatures),
            ("kramers/lambda_max", lambda_max),
            ("kramers/expected_escapes", expected),
            ("kramers/overhead", overhead),
        ):
            value = final.get(name)
            if value is not None and math.isfinite(value):
                into.append(value)
    reasons: dict[str, int] = {}
    for run in group:
        reason = (run.get("stop_reason") or "none").split(":")[0]
        reasons[reason] = reasons.get(reason, 0) + 1

    def median(values: list[float]) -> str:
        return f"{statistics.median(values):.3g}" if values else "n/a"

    status_text = ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())) or "none"
    reason_text = ", ".join(f"{k} ×{v}" for k, v in sorted(reasons.items()))
    return [
        f"- `{arm}` diagnostics: {estimates} estimates over {len(group)} runs, "
        f"{barrier_estimates} with a Kramers rate on at least one pathway (a barrier along a "
        f"direction of positive curvature; pathway statuses by direction: "
        f"{status_text}); {changed} of {decisions} epoch-end decisions changed η or B; "
        f"stop reasons: {reason_text}; at the end (medians over runs): T = "
        f"{median(temperatures)}, λ_max = {median(lambda_max)}, expected escapes in the "
        f"remaining budget = {median(expected)}, counted estimation work / training work = "
        f"{median(overhead)}; the scans' reach 20·max T_v (median over estimates) = "
        f"{median(reach)} in loss units."
    ]


def load_runs(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--epochs", type=int, default=None, help="epoch budget (default: per data set)"
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/output/outcome"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument(
        "--summary-only", action="store_true", help="only rewrite the summary from runs.jsonl"
    )
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    runs_path = args.out / "runs.jsonl"
    summary_path = args.out / "summary.md"
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")

    runs = load_runs(runs_path)
    if not args.summary_only:
        done = {(r["dataset"], r["method"], r["seed"], r["epochs_budget"]) for r in runs}
        # Seed-major order: an interrupted benchmark still has every method on the first seeds.
        for dataset in args.datasets:
            budget = args.epochs or DATASETS[dataset].epochs
            for seed in args.seeds:
                for method in args.methods:
                    if (dataset, method, seed, budget) in done:
                        continue
                    with contextlib.redirect_stdout(io.StringIO()):
                        result = run_one(dataset, method, seed, args.epochs, args.threads)
                    record = asdict(result)
                    runs.append(record)
                    with runs_path.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                    print(
                        f"{dataset:8s} {method:10s} seed {seed}: best {result.best_val_acc:.2f}% "
                        f"final {result.final_val_acc:.2f}% epochs {result.epochs_run} "
                        f"steps {result.optimizer_steps} samples {result.samples} "
                        f"{result.wall_s:.1f} s"
                        + (f" stop: {result.stop_reason}" if result.stop_reason else ""),
                        flush=True,
                    )
                    summary_path.write_text(summarise(runs) + "\n")
    text = summarise(runs)
    summary_path.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

"""Observe-mode wall ratio at default settings, with estimates actually taken, on three models.

For each model, three arms run alternately (the order rotated every repeat) in one process,
each a full ``trainer.fit`` from the same seed:

- ``plain``: no callback;
- ``observe``: ``KramersCallback(policy="observe")`` at its defaults (5% overhead budget, so
  its own spacing of estimates);
- ``stats``: the callback with every deferrable estimate deferred (``overhead_budget=1e-12``):
  its training seconds per step, read between the epoch boundaries, against ``plain`` give the
  cost of the per-step statistics (loss blocks, the running noise estimator).

Reported per model: median plain fit seconds; the median of the paired wall ratios
observe / plain (target ≤ 1.05); the estimates made, the 1-based epoch of the first (MNIST-1D
target: ≤ 2) and the longest gap in epochs (MNIST-1D target: ≤ 3); the callback's measured
overhead (``budget.overhead``, estimate seconds / training seconds) and its counted one; the
per-step statistics' cost. The models:

- ``digits``: :class:`~kramers_callback.examples.DigitsCNN` (9 802 parameters), 1 348 images,
  SGD lr 0.05, momentum 0.9, B = 32 (43 steps per epoch);
- ``mnist1d``: :class:`~kramers_callback.examples.MNIST1DCNN`, 4 000 sequences, the same SGD,
  B = 32 (125 steps per epoch);
- ``resnet``: the CIFAR ResNet-18 of ``bench_gpu.py`` at width 8 (175 k parameters) on 2 048
  synthetic 16×16 images, SGD lr 0.1, momentum 0.9, B = 128.

Usage::

    python benchmarks/bench_overhead_default.py --repeats 3 --epochs digits=30 mnist1d=12

Single-threaded by default (``--threads``).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch
from _harness import STATS_OFF_BUDGET, RecordingKramers, alternate, estimate_log, fit, quiet
from bench_gpu import ResNet18, SyntheticCIFAR

from kramers_callback.examples import (
    MNIST1DCNN,
    ClassifierModule,
    DigitsCNN,
    DigitsDataModule,
    MNIST1DDataModule,
)


@dataclass(frozen=True)
class Model:
    epochs: int
    make_module: Callable[[], pl.LightningModule]
    make_data: Callable[[], pl.LightningDataModule]


MODELS = {
    "digits": Model(
        30,
        lambda: ClassifierModule(DigitsCNN(), lr=0.05, momentum=0.9),
        lambda: DigitsDataModule(batch_size=32),
    ),
    "mnist1d": Model(
        12,
        lambda: ClassifierModule(MNIST1DCNN(), lr=0.05, momentum=0.9),
        lambda: MNIST1DDataModule(batch_size=32),
    ),
    "resnet": Model(
        6,
        lambda: ClassifierModule(ResNet18(width=8), lr=0.1, momentum=0.9),
        lambda: SyntheticCIFAR(2048, 16, batch_size=128),
    ),
}


def bench_model(name: str, epochs: int, repeats: int) -> dict[str, Any]:
    model = MODELS[name]

    def run(callback: Any) -> Any:
        return fit(model.make_module, model.make_data, epochs=epochs, callback=callback)

    print(f"{name}: {epochs} epochs", flush=True)
    # Untimed: pays the process's one-time costs (first autograd, vmap, data) before timing.
    fit(
        model.make_module,
        model.make_data,
        epochs=2,
        callback=RecordingKramers("observe", overhead_budget=math.inf),
    )
    arms = alternate(
        {
            "plain": lambda: run(None),
            "observe": lambda: run(RecordingKramers("observe")),
            "stats": lambda: run(RecordingKramers("observe", overhead_budget=STATS_OFF_BUDGET)),
        },
        repeats,
    )
    logs = [estimate_log(r.callback) for r in arms.results["observe"]]
    log = logs[-1]
    plain_step = arms.median_step_seconds("plain")
    row = {
        "model": name,
        "epochs": epochs,
        "plain_s": arms.median_seconds("plain"),
        "ratio": arms.ratio("observe"),
        "estimates": [g.num_estimates for g in logs],
        "first_epoch": None if log.first_epoch is None else log.first_epoch + 1,
        "estimate_epochs": [e + 1 for e in log.epochs],
        "max_gap": log.max_gap(epochs),
        "products": log.products,
        "statuses": sorted({f"{log.statuses.count(k)}× {k}" for k in log.statuses}),
        "estimate_s": log.seconds,
        "overhead": [g.overhead for g in logs],
        "counted_overhead": log.counted_overhead,
        "step_ms": 1000 * plain_step,
        "stats_step_ratio": arms.step_ratio("stats"),
        "stats_step_ms": 1000 * arms.step_difference("stats"),
    }
    print(
        f"  ratio {row['ratio']:.3f}; estimates {row['estimates']} at epochs "
        f"{row['estimate_epochs']} (1-based), products {row['products']}, seconds "
        f"{[round(s, 2) for s in row['estimate_s']]}, {row['statuses']}; measured overhead "
        f"{[f'{o:.1%}' for o in row['overhead']]}, counted {row['counted_overhead']:.1%}; "
        f"step {row['step_ms']:.2f} ms, per-step statistics ×{row['stats_step_ratio']:.4f} "
        f"({row['stats_step_ms']:+.3f} ms)",
        flush=True,
    )
    return row


def table(rows: list[dict[str, Any]], repeats: int) -> str:
    lines = [
        "| model | epochs | plain fit (s) | wall ratio observe/plain | estimates (per repeat) "
        "| first at epoch | longest gap (epochs, end counted) | products per estimate "
        "| estimate status | measured overhead | counted overhead | step (ms) "
        "| per-step statistics |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['epochs']} | {r['plain_s']:.2f} | {r['ratio']:.3f} "
            f"| {', '.join(map(str, r['estimates']))} | {r['first_epoch']} | {r['max_gap']} "
            f"| {', '.join(map(str, r['products']))} | {', '.join(r['statuses'])} "
            f"| {', '.join(f'{o:.1%}' for o in r['overhead'])} | {r['counted_overhead']:.1%} "
            f"| {r['step_ms']:.2f} | ×{r['stats_step_ratio']:.3f} ({r['stats_step_ms']:+.3f} ms) |"
        )
    lines.append(
        f"\nMedians of {repeats} paired, alternated repeats; wall ratio of whole `trainer.fit` "
        "calls; per-step statistics: training seconds per step (between the epoch boundaries) "
        "with the callback at `overhead_budget=1e-12` / without."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument(
        "--epochs", nargs="*", default=[], help="NAME=EPOCHS overrides, e.g. digits=30"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    quiet()
    torch.set_num_threads(args.threads)
    epochs = {name: MODELS[name].epochs for name in MODELS}
    for item in args.epochs:
        name, _, value = item.partition("=")
        if name not in MODELS or not value.isdigit():
            parser.error(f"--epochs takes NAME=EPOCHS with NAME in {list(MODELS)}, got {item!r}")
        epochs[name] = int(value)
    rows = [bench_model(name, epochs[name], args.repeats) for name in args.models]
    print(table(rows, args.repeats))
    return rows


if __name__ == "__main__":
    main()

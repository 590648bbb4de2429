r"""When must the first cooling come? The callback's cooling shape as a fixed schedule.

The Kramers arms of ``bench_outcome.py`` hold η for some epochs, then cool by a factor per
epoch a few times, and stop one epoch after the last cooling (``thermalized: cool by 0.5``
three times, then ``cooling_not_worth``). This script runs that shape as a fixed schedule whose
first cooling comes at a chosen epoch, with no callback and no estimates, on the same network,
data, seeds and SGD settings as ``bench_outcome.py``:

.. math::

    \eta_e = \eta_0\, r^{\max(0,\ \min(k,\ e - h + 1))},\qquad e = 0, \dots, h + k - 1,

with ``h`` the epochs at ``η₀`` (``--starts``), ``r`` the factor (``--factor``) and ``k`` the
coolings (``--coolings``); ``h + k`` epochs in all. It answers a question the callback's rule
cannot answer about itself: at which ``h`` the shape still ends within 0.3 points of the best
baseline, and what share of the baseline's compute (its full epoch budget) that costs. A
callback that cools at that epoch also pays its estimates' compute on top.

Usage::

    python benchmarks/bench_cooling_onset.py --datasets mnist1d --starts 11 12 13 14 15
    python benchmarks/bench_cooling_onset.py --datasets mnist1d --starts 13 15 --factor 0.1 \
        --coolings 2

Each run prints one JSON line (data set, ``h``, ``r``, ``k``, seed, epochs, training
sample-passes, final and best validation accuracy); after each ``h``'s runs one line gives
their mean ± standard error. A script, not a test; it needs the ``examples`` extra.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import warnings
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from _harness import VALIDATED_TRAINER
from bench_outcome import DATASETS, TRAINING_PASSES_PER_SAMPLE, Recorder, ScheduledClassifier


def cooling_factors(*, start: int, factor: float, coolings: int) -> list[float]:
    """The per-epoch multipliers of ``η₀``: ``start`` ones, then ``factor¹ … factor^coolings``."""
    return [1.0] * start + [factor**i for i in range(1, coolings + 1)]


class CoolingShapeClassifier(ScheduledClassifier):
    """The benchmark's classifier, its learning rate multiplied per epoch by ``factors``."""

    def __init__(
        self, net: torch.nn.Module, *, factors: Sequence[float], lr: float, momentum: float
    ) -> None:
        super().__init__(net, schedule="constant", epochs=len(factors), lr=lr, momentum=momentum)
        self.factors = list(factors)

    def configure_optimizers(self) -> Any:
        optimizer = super().configure_optimizers()
        last = len(self.factors) - 1
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda epoch: self.factors[min(epoch, last)]
        )
        config = {"scheduler": scheduler, "interval": "epoch"}
        return {"optimizer": optimizer, "lr_scheduler": config}


def run_one(dataset: str, *, start: int, factor: float, coolings: int, seed: int) -> dict:
    config = DATASETS[dataset]
    torch.set_num_threads(1)
    pl.seed_everything(seed, workers=True, verbose=False)
    factors = cooling_factors(start=start, factor=factor, coolings=coolings)
    model = CoolingShapeClassifier(
        config.make_net(), factors=factors, lr=config.lr, momentum=config.momentum
    )
    recorder = Recorder()
    trainer = pl.Trainer(max_epochs=len(factors), callbacks=[recorder], **VALIDATED_TRAINER)
    trainer.fit(model, datamodule=config.make_data(seed))
    return {
        "dataset": dataset,
        "start": start,
        "factor": factor,
        "coolings": coolings,
        "seed": seed,
        "epochs": len(factors),
        "training_work": TRAINING_PASSES_PER_SAMPLE * recorder.samples,
        "final_val_acc": 100 * recorder.val_acc[-1],
        "best_val_acc": 100 * max(recorder.val_acc),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["mnist1d"], choices=list(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--starts",
        nargs="+",
        type=int,
        required=True,
        help="epochs at the initial learning rate before the first cooling",
    )
    parser.add_argument("--factor", type=float, default=0.5, help="cooling factor per epoch")
    parser.add_argument("--coolings", type=int, default=3, help="coolings, one per epoch")
    args = parser.parse_args(argv)
    if not 0 < args.factor < 1:
        parser.error(f"--factor must lie in (0, 1), got {args.factor}")
    if args.coolings < 1 or min(args.starts) < 1:
        parser.error(f"--coolings and --starts must be >= 1, got {args.coolings}, {args.starts}")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    for dataset in args.datasets:
        for start in args.starts:
            runs = [
                run_one(dataset, start=start, factor=args.factor, coolings=args.coolings, seed=s)
                for s in args.seeds
            ]
            for run in runs:
                print(json.dumps(run), flush=True)
            accs = [r["final_val_acc"] for r in runs]
            error = statistics.stdev(accs) / len(accs) ** 0.5 if len(accs) > 1 else float("nan")
            # The share of a full-budget run's training compute: an epoch's samples are fixed.
            share = runs[0]["epochs"] / DATASETS[dataset].epochs
            print(
                f"{dataset} start {start} factor {args.factor:g} coolings {args.coolings}: "
                f"{runs[0]['epochs']} epochs ({share:.0%} of the budget's training compute), "
                f"final val acc {statistics.mean(accs):.2f} ± {error:.2f} over {len(runs)} seeds",
                flush=True,
            )


if __name__ == "__main__":
    main()

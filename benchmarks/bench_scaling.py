r"""Scaling: one estimate's cost against probe size and model size, and the data-set size above
which an estimate per epoch fits in 5% of training.

Model family: :class:`~kramers_callback.examples.MNIST1DCNN` at ``--widths`` channels on
MNIST-1D (4 000 sequences), SGD lr 0.05, momentum 0.9, B = 32. Per width:

1. two epochs of training in a plain loop (no Lightning), the second timed: **training
   seconds per sample** ``t_s`` (a plain loop is the fastest training there is, so the ratios
   below are conservative);
2. an estimate on a 256-sample probe, one more epoch, then **warm** estimates (started from
   it, as the callback's are) at each ``--probes`` size, in batches of 64, at the callback's
   defaults (top-3, ``max_products=300``, trace, line scans on: the thermalized case; and
   scans off: the descending case).

From them:

.. math::

    R = \frac{t_\text{estimate}}{t_s}\ \text{(the estimate in training samples)},\qquad
    N^* = \frac{R}{0.05},

the data-set size above which an estimate every epoch costs at most 5% of the epoch. The
log-log slopes of ``t_estimate`` against the probe size ``n`` and of ``R`` against the
parameter count ``d`` extrapolate ``N*`` to a ResNet-18 (11.2 M parameters) on CIFAR-10
(``N`` = 50 000) and a ResNet-50 (25.6 M) on ImageNet (``N`` = 1 281 167): an extrapolation
over two to three decades of ``d``, from a 1-D CNN on a CPU; it says where the budget would
sit if the measured trends held, not what a GPU run would show (``bench_gpu.py`` measures
that).

Usage::

    python benchmarks/bench_scaling.py --widths 16 32 64 --probes 64 128 256 512

Single-threaded by default (``--threads``).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kramers_callback.estimate import estimate
from kramers_callback.examples import MNIST1DCNN, MNIST1DDataModule

BATCH, LR, MOMENTUM, PROBE_BATCH, BUDGET = 32, 0.05, 0.9, 64, 0.05
TARGETS = (
    ("ResNet-18, CIFAR-10", 11_173_962, 50_000),
    ("ResNet-50, ImageNet", 25_557_032, 1_281_167),
)


def per_sample_ce(model: nn.Module, batch: Any) -> Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y, reduction="none")


def train_epoch(model: nn.Module, loader: Any, optimizer: torch.optim.Optimizer) -> float:
    """One epoch; its seconds per sample."""
    model.train()
    samples, started = 0, time.perf_counter()
    for x, y in loader:
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        samples += len(y)
    return (time.perf_counter() - started) / samples


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ``log y`` against ``log x``."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum(
        (a - mx) ** 2 for a in lx
    )


def bench_width(width: int, probes: list[int], repeats: int, seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    data = MNIST1DDataModule(batch_size=BATCH, seed=seed)
    data.setup("fit")
    loader = data.train_dataloader()
    x, y = data.train_set.tensors
    model = MNIST1DCNN(channels=width)
    dim = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    train_epoch(model, loader, optimizer)
    per_sample = [train_epoch(model, loader, optimizer)]
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))

    def probe(n: int) -> list[tuple[Tensor, Tensor]]:
        index = order[:n]
        return [
            (x[index[i : i + PROBE_BATCH]], y[index[i : i + PROBE_BATCH]])
            for i in range(0, n, PROBE_BATCH)
        ]

    common = {"lr": LR, "batch_size": BATCH, "momentum": MOMENTUM, "dataset_size": len(y)}
    previous = estimate(model, per_sample_ce, probe(256), **common)
    per_sample.append(train_epoch(model, loader, optimizer))
    t_sample = statistics.median(per_sample)
    rows = []
    for n in probes:
        for scans in (True, False):
            runs = []
            for r in range(repeats):
                started = time.perf_counter()
                est = estimate(
                    model,
                    per_sample_ce,
                    probe(n),
                    warm_start=previous,
                    scan_barriers=scans,
                    seed=seed + r,
                    **common,
                )
                runs.append((time.perf_counter() - started, est.num_hvp, est.num_forward))
            seconds = statistics.median(r[0] for r in runs)
            rows.append(
                {
                    "probe": n,
                    "scans": scans,
                    "seconds": seconds,
                    "products": statistics.median(r[1] for r in runs),
                    "forwards": statistics.median(r[2] for r in runs),
                    "samples_equivalent": seconds / t_sample,
                    "n_star": seconds / (BUDGET * t_sample),
                }
            )
    print(
        f"  width {width}: d = {dim}, {1e6 * t_sample:.1f} µs per training sample; "
        + "; ".join(
            f"n={r['probe']} {'scan' if r['scans'] else 'noscan'} {r['seconds']:.2f} s "
            f"{r['products']:.0f} HVP N*={r['n_star']:.0f}"
            for r in rows
        ),
        flush=True,
    )
    return {"width": width, "dim": dim, "t_sample": t_sample, "rows": rows}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--probes", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    widths = [bench_width(w, args.probes, args.repeats, args.seed) for w in args.widths]

    lines = [
        "| width | d | train µs/sample | probe n | scans | estimate (s) | products "
        "| probe forwards | R (training samples) | N* (5%) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for w in widths:
        for r in w["rows"]:
            lines.append(
                f"| {w['width']} | {w['dim']} | {1e6 * w['t_sample']:.1f} | {r['probe']} "
                f"| {'on' if r['scans'] else 'off'} | {r['seconds']:.2f} | {r['products']:.0f} "
                f"| {r['forwards']:.0f} | {r['samples_equivalent']:.0f} | {r['n_star']:.0f} |"
            )
    print("\n".join(lines))

    summary: dict[str, Any] = {"widths": widths, "slopes": {}, "extrapolated": []}
    for scans in (True, False):
        label = "scans on" if scans else "scans off"
        probe_slopes = [
            slope(
                [r["probe"] for r in w["rows"] if r["scans"] is scans],
                [r["seconds"] for r in w["rows"] if r["scans"] is scans],
            )
            for w in widths
        ]
        at = 256 if 256 in args.probes else args.probes[-1]
        dims = [w["dim"] for w in widths]
        ratios = [
            next(
                r["samples_equivalent"]
                for r in w["rows"]
                if r["probe"] == at and r["scans"] is scans
            )
            for w in widths
        ]
        d_slope = slope(dims, ratios) if len(widths) > 1 else 0.0
        summary["slopes"][label] = {"probe": probe_slopes, "dim": d_slope}
        print(
            f"\n{label}: slope of log t_estimate vs log n = "
            + ", ".join(f"{s:.2f}" for s in probe_slopes)
            + f" (per width); slope of log R vs log d at n = {at}: {d_slope:.2f}"
        )
        for name, dim, n_data in TARGETS:
            r_target = ratios[-1] * (dim / dims[-1]) ** d_slope
            n_star = r_target / BUDGET
            row = {
                "scans": scans,
                "target": name,
                "dim": dim,
                "N": n_data,
                "R": r_target,
                "n_star": n_star,
                "fraction": r_target / n_data,
            }
            summary["extrapolated"].append(row)
            print(
                f"  {name} (d = {dim}, N = {n_data}): R ≈ {r_target:.3g} training samples, "
                f"N* ≈ {n_star:.3g}; an estimate per epoch ≈ {row['fraction']:.2%} of the epoch"
            )
    return summary


if __name__ == "__main__":
    main()

"""What one estimate costs, part by part, cold and warm, native against PyHessian, and Cockpit.

The model is :class:`~kramers_callback.examples.DigitsCNN` (9 802 parameters) after
``--epochs`` epochs of SGD (lr 0.05, momentum 0.9, B = 32) on the digits; the probe is the
callback's default, 256 training images in 4 batches of 64. A first estimate is taken one
epoch before the measured point: its eigenvectors are the **warm** start; **cold** starts
from random vectors. At the measured point, on the same probe, each part is timed on its own
(``--repeats`` times, medians), with the callback's defaults (``top_k=3``, ``tol=1e-3``,
``max_products=300``, ``trace_tol=1e-2``, ``max_trace_samples=100``, ``max_scan_evals=60``):

- **setup**: the probe's forward and backward pass whose graph the products reuse;
- **top-k**: :meth:`top_eigenpairs` alone; **λ_min**: :meth:`min_eigenpair` alone;
- **ends**: :meth:`spectrum_ends`, top-k and ``λ_min`` together (native: one Lanczos run;
  PyHessian: its two power iterations sharing the cap);
- **trace**: after the ends (native: Hutch++ on the Lanczos basis; PyHessian: Hutchinson);
- **noise**: :func:`~kramers_callback.noise.per_sample_noise` along the escape directions;
- **scans**: the line scans along every escape direction (top-k in both signs, ``λ_min``'s
  where negative), at the directional temperatures the estimate measured; probe-batch
  forward passes counted;
- **estimate()** whole, without line scans (as while descending) and with them.

Cockpit (Schneider et al. 2021, ``cockpit-for-pytorch``), if it imports, runs on a copy of
the same model: its ``"economy"`` configuration's extra time per training step (B = 32) and
on the probe as one batch, and its ``HessMaxEV`` quantity (in its ``"full"`` configuration)
on the probe, against the native ``λ_max``. Cockpit 1.0.2 imports ``pkg_resources`` only to
read its own version; setuptools ≥ 81 no longer ships it, so a stand-in module is put in its
place when it is missing.

Usage::

    python benchmarks/bench_estimate_cost.py --repeats 3

Single-threaded by default (``--threads``).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import types
from collections.abc import Callable
from importlib import metadata
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kramers_callback._probe import ProbeLoss
from kramers_callback.curvature import make_curvature
from kramers_callback.estimate import KramersEstimate, _directions, _scan_pathway, estimate
from kramers_callback.examples import DigitsCNN, DigitsDataModule
from kramers_callback.noise import per_sample_noise

TOP_K, TOL, MAX_PRODUCTS, TRACE_TOL, TRACE_SAMPLES = 3, 1e-3, 300, 1e-2, 100
KAPPA, SCAN_EVALS = 20.0, 60
PROBE, PROBE_BATCH, BATCH, LR, MOMENTUM = 256, 64, 32, 0.05, 0.9


def per_sample_ce(model: nn.Module, batch: Any) -> Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y, reduction="none")


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def train(model: nn.Module, loader: Any, epochs: int, optimizer: torch.optim.Optimizer) -> None:
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()


def parts(
    model: nn.Module, batches: list[Any], backend: str, warm: KramersEstimate | None, seed: int
) -> dict[str, tuple[float, int]]:
    """``{part: (seconds, products or forward passes)}`` of one cold or warm estimate's parts."""
    top_init = None if warm is None else warm.eigenvectors[:TOP_K]
    min_init = None if warm is None else warm.min_eigenvector
    out: dict[str, tuple[float, int]] = {}
    generator = torch.Generator().manual_seed(seed)
    model.eval()
    probe = ProbeLoss(model, per_sample_ce, batches)
    curvature, seconds = timed(lambda: make_curvature(backend, probe))
    out["setup"] = (seconds, 0)
    with curvature:
        top, seconds = timed(
            lambda: curvature.top_eigenpairs(
                TOP_K, init=top_init, tol=TOL, max_products=MAX_PRODUCTS, generator=generator
            )
        )
        out["top-k"] = (seconds, top.num_products)
        before = curvature.num_products
        _, seconds = timed(
            lambda: curvature.min_eigenpair(
                init=min_init, tol=TOL, max_products=MAX_PRODUCTS, generator=generator
            )
        )
        out["λ_min"] = (seconds, curvature.num_products - before)
    with make_curvature(backend, probe) as curvature:
        ends, seconds = timed(
            lambda: curvature.spectrum_ends(
                TOP_K,
                top_init=top_init,
                bottom_init=min_init,
                tol=TOL,
                max_products=MAX_PRODUCTS,
                generator=generator,
            )
        )
        out["ends (top-k + λ_min)"] = (seconds, ends.num_products)
        before = curvature.num_products
        budget = min(TRACE_SAMPLES, MAX_PRODUCTS - before)
        seconds = float("nan")
        if budget >= 2:  # as in estimate(): the trace gets what the ends left of the cap
            _, seconds = timed(
                lambda: curvature.trace(
                    tol=TRACE_TOL, max_samples=budget, generator=generator, basis=ends.basis
                )
            )
        out["trace"] = (seconds, curvature.num_products - before)
    names, directions, curvatures = _directions(ends.top, ends.bottom)
    # A direction and its negative share T_v (as in estimate()): one noise pass per line.
    moments, seconds = timed(lambda: per_sample_noise(probe, directions=directions[::2]))
    out["noise"] = (seconds, 0)
    slopes = (directions @ moments.mean_gradient).tolist()
    for scan in (False, True):
        est, seconds = timed(
            lambda scan=scan: estimate(
                model,
                per_sample_ce,
                batches,
                lr=LR,
                batch_size=BATCH,
                momentum=MOMENTUM,
                dataset_size=1348,
                backend=backend,
                warm_start=warm,
                seed=seed,
                scan_barriers=scan,
            )
        )
        out[f"estimate(), scans {'on' if scan else 'off'}"] = (seconds, est.num_hvp)
        out[f"forwards, scans {'on' if scan else 'off'}"] = (0.0, est.num_forward)
    # The line scans alone, at the temperatures estimate() measured along the same directions.
    temperatures = {p.name: p.temperature for p in est.pathways}
    fallback = statistics.median(temperatures.values())
    before, started = probe.num_forward, time.perf_counter()
    for name, direction, lam, slope in zip(names, directions, curvatures, slopes, strict=True):
        _scan_pathway(
            probe,
            name=name,
            direction=direction,
            curvature=lam,
            temperature=temperatures.get(name, fallback),
            lr=est.lr,
            kappa=KAPPA,
            max_evals=SCAN_EVALS,
            slope=slope,
        )
    out["scans"] = (time.perf_counter() - started, probe.num_forward - before)
    out["converged"] = (float(ends.top.converged and ends.bottom.converged), 0)
    out["lambda_max_value"] = (float(ends.top.eigenvalues[0]), 0)
    return out


def import_cockpit() -> Any:
    """``cockpit`` (with a stand-in ``pkg_resources`` where setuptools no longer has it)."""
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        shim = types.ModuleType("pkg_resources")

        class DistributionNotFound(Exception):
            pass

        def get_distribution(name: str) -> Any:
            raise DistributionNotFound(name)

        shim.DistributionNotFound = DistributionNotFound  # type: ignore[attr-defined]
        shim.get_distribution = get_distribution  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = shim
    import cockpit

    return cockpit


def bench_cockpit(
    model: nn.Module, loader: Any, probe_batch: tuple[Tensor, Tensor], repeats: int
) -> dict[str, Any]:
    """Cockpit economy's extra seconds per step, and HessMaxEV on the probe (one batch)."""
    try:
        cockpit = import_cockpit()
        from backpack import extend
        from cockpit import quantities
        from cockpit.utils import schedules
        from cockpit.utils.configuration import configuration
    except Exception as err:  # report why, do not fail the benchmark
        return {"error": f"{type(err).__name__}: {err}"}
    net = extend(copy.deepcopy(model))
    net.train()
    loss_fn = extend(nn.CrossEntropyLoss())
    optimizer = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
    every = schedules.linear(interval=1, offset=0)

    def step(batch: tuple[Tensor, Tensor], ck: Any, index: int, opt: Any = optimizer) -> float:
        x, y = batch
        started = time.perf_counter()
        opt.zero_grad()
        logits = net(x)
        loss = loss_fn(logits, y)
        if ck is None:
            loss.backward()
        else:
            info = {
                "batch_size": len(y),
                "individual_losses": F.cross_entropy(logits, y, reduction="none"),
                "loss": loss,
                "optimizer": opt,
            }
            with ck(index, info=info):
                loss.backward(create_graph=ck.create_graph(index))
        opt.step()
        return time.perf_counter() - started

    # HessMaxEV first, at the probe's point: a zero step size keeps every repeat there.
    frozen = torch.optim.SGD(net.parameters(), lr=0.0)
    probe_plain = statistics.median(step(probe_batch, None, 0, frozen) for _ in range(repeats))
    hess = cockpit.Cockpit(net.parameters(), quantities=[quantities.HessMaxEV(every)])
    hess_s = [step(probe_batch, hess, i, frozen) - probe_plain for i in range(repeats)]
    batches = [b for _, b in zip(range(20), loader, strict=False)]
    economy = cockpit.Cockpit(net.parameters(), quantities=configuration("economy", every))
    plain_s, economy_s = [], []
    for index, batch in enumerate(batches):
        plain_s.append(step(batch, None, index))
        economy_s.append(step(batch, economy, index))
    keep = slice(2, None)  # the first steps pay one-time costs
    # Cockpit's quantities cache by step index: the economy steps are numbered consecutively.
    probe_economy = statistics.median(
        step(probe_batch, economy, len(batches) + i) for i in range(repeats)
    )
    value = float(hess.get_output()[0]["HessMaxEV"])
    return {
        "version": metadata.version("cockpit-for-pytorch"),
        "step_plain_ms": 1000 * statistics.median(plain_s[keep]),
        "step_economy_ms": 1000 * statistics.median(economy_s[keep]),
        "probe_plain_ms": 1000 * probe_plain,
        "probe_economy_ms": 1000 * probe_economy,
        "hessmaxev_ms": 1000 * statistics.median(hess_s),
        "hessmaxev_value": value,
    }


ROWS = (
    "setup",
    "top-k",
    "λ_min",
    "ends (top-k + λ_min)",
    "trace",
    "noise",
    "scans",
    "estimate(), scans off",
    "estimate(), scans on",
    "converged",
)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="SGD epochs before the probe")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-cockpit", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = DigitsDataModule(batch_size=BATCH, seed=args.seed)
    data.setup("fit")
    loader = data.train_dataloader()
    model = DigitsCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    train(model, loader, args.epochs - 1, optimizer)
    x, y = data.train_set.tensors
    index = torch.randperm(len(y), generator=torch.Generator().manual_seed(args.seed))[:PROBE]
    batches = [
        (x[index[i : i + PROBE_BATCH]], y[index[i : i + PROBE_BATCH]])
        for i in range(0, PROBE, PROBE_BATCH)
    ]
    common = {"lr": LR, "batch_size": BATCH, "momentum": MOMENTUM, "dataset_size": 1348}
    previous = estimate(model, per_sample_ce, batches, **common)
    train(model, loader, 1, optimizer)

    results: dict[str, dict[str, list[tuple[float, int]]]] = {}
    for repeat in range(args.repeats):
        for backend in ("native", "pyhessian"):
            for start, warm in (("cold", None), ("warm", previous)):
                got = parts(model, batches, backend, warm, seed=args.seed + repeat)
                cell = results.setdefault(f"{backend} {start}", {})
                for name, value in got.items():
                    cell.setdefault(name, []).append(value)
        print(f"  repeat {repeat} done", flush=True)

    columns = list(results)
    lines = [
        "| part | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for name in ROWS:
        cells = []
        for column in columns:
            values = results[column][name]
            ms = 1000 * statistics.median(v[0] for v in values)
            count = statistics.median(v[1] for v in values)
            if name == "converged":
                cells.append(f"{sum(v[0] for v in values):.0f}/{len(values)}")
                continue
            unit = " fwd" if name == "scans" else ""
            cells.append(f"{ms:.0f} ms / {count:.0f}{unit}" if count else f"{ms:.0f} ms")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    print(
        "\nms / products (median of "
        f"{args.repeats}); scans: ms / probe-batch forward passes; native ends are one Lanczos "
        "run, PyHessian's two power iterations."
    )
    lam = {c: statistics.median(v[0] for v in results[c]["lambda_max_value"]) for c in columns}
    print("λ_max per column: " + ", ".join(f"{c} {v:.4g}" for c, v in lam.items()))
    report: dict[str, Any] = {"parts": results, "lambda_max": lam}
    if not args.no_cockpit:
        probe_batch = (x[index], y[index])
        report["cockpit"] = ck = bench_cockpit(model, loader, probe_batch, args.repeats)
        if "error" in ck:
            print(f"Cockpit did not run: {ck['error']}")
        else:
            print(
                f"Cockpit {ck['version']} economy: training step (B = {BATCH}) "
                f"{ck['step_economy_ms']:.1f} ms against {ck['step_plain_ms']:.1f} ms plain; "
                f"on the probe as one batch of {PROBE}: {ck['probe_economy_ms']:.1f} ms against "
                f"{ck['probe_plain_ms']:.1f} ms. HessMaxEV on the probe: "
                f"+{ck['hessmaxev_ms']:.0f} ms, λ_max {ck['hessmaxev_value']:.4g} "
                f"(native {lam['native warm']:.4g})"
            )
    return report


if __name__ == "__main__":
    main()

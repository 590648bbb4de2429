r"""Estimator accuracy against exact references (issue 4, item 3b).

Every number :func:`kramers_callback.estimate` reports is compared, in float64 on small
problems, with an independent exact reference:

1. **Curvature** (tiny tanh MLPs, cross-entropy, at initialisation and after full-batch
   gradient descent): ``λ_max``, the top-3 eigenvalues, ``λ_min`` and ``tr H`` from
   ``estimate()`` against ``eigvalsh`` of the dense Hessian from ``torch.func.hessian``; the
   Hutchinson trace's error against its number of probes.
2. **Gradient noise** ``tr Σ₁`` (tiny MLP, 256 samples): the reference is a naive loop of one
   ``torch.autograd.grad`` per sample; against it the exact ``vmap`` estimator
   (:func:`~kramers_callback.noise.per_sample_noise`), the micro-batch estimator for several
   micro-batch sizes, and the running two-batch estimator
   (:class:`~kramers_callback.noise.RunningNoiseEstimator`) fed ``K`` batch gradients at a
   fixed point, then along an SGD trajectory (where it has a known drift bias).
3. **Barrier** on ``L = x⁴ − 3x² + y²`` with per-sample noise: ``ΔL``, ``λ_b``, ``s*`` and the
   well curvature from ``estimate()`` at the minimum against ``9/4``, ``−6``, ``√1.5`` and
   ``12``; seed 8.1's determinant heuristic for contrast.
4. **Escape rate**: ``estimate()``'s Kramers rate (probe = all samples, and probes of 256)
   against a vectorised SGD simulation (walkers, real mini-batches of the per-sample tilts,
   transitions counted with the example's hysteresis) for ``ΔL/T_x`` = 4, 5, 6.
5. **Hessian-vector products, cold vs warm start**: ``estimate()`` on the digits CNN at the
   end of each epoch of SGD, from scratch and warm-started from the previous epoch's estimate.

Usage::

    python benchmarks/bench_estimators.py --seeds 0 1 2 3 4 --out benchmarks/output/estimators

Writes ``OUT/estimators.md`` (the tables) and ``OUT/estimators.json`` (every raw number).
This is a script, not a test. Single-threaded by default (``--threads``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kramers_callback._probe import ProbeLoss
from kramers_callback.barriers import logdet_barrier, scan_for_barrier
from kramers_callback.curvature import (
    HessianOperator,
    hutchinson_trace,
    min_eigenpair,
    top_eigenpairs,
)
from kramers_callback.estimate import estimate
from kramers_callback.examples import DigitsCNN, DigitsDataModule
from kramers_callback.examples.double_well import (
    BARRIER_HEIGHT,
    MINIMUM_X,
    SADDLE_CURVATURE_X,
    WELL_CURVATURE_X,
    DoubleWellModule,
    centred_samples,
    double_well_loss,
    next_well,
    predicted_escape_rate,
)
from kramers_callback.noise import RunningNoiseEstimator, micro_batch_noise, per_sample_noise

DTYPE = torch.float64

Row = dict[str, Any]


# -- helpers ---------------------------------------------------------------------------------
def rel_err(estimate_value: float, exact: float) -> float:
    """``|estimate − exact| / |exact|``."""
    return abs(estimate_value - exact) / abs(exact)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def fmt(value: float, digits: int = 2) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    if value == 0:
        return "0"
    if abs(value) < 1e-3 or abs(value) >= 1e4:
        return f"{value:.{digits}e}"
    return f"{value:.{digits + 1}g}"


def per_sample_ce(model: nn.Module, batch: Any) -> Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y, reduction="none")


def tiny_mlp(seed: int, inputs: int = 4, hidden: int = 16, classes: int = 3) -> nn.Module:
    """``Linear(4→16) → tanh → Linear(16→3)`` in float64 (131 parameters), seeded."""
    generator = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, classes))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(max(p.shape[-1], 1)))
    return model.to(DTYPE)


def teacher_data(seed: int, n: int, inputs: int = 4, classes: int = 3) -> tuple[Tensor, Tensor]:
    """Gaussian inputs labelled by a random linear teacher with 10% label noise (seeded)."""
    generator = torch.Generator().manual_seed(10_000 + seed)
    x = torch.randn(n, inputs, generator=generator, dtype=DTYPE)
    w = torch.randn(inputs, classes, generator=generator, dtype=DTYPE)
    y = (x @ w).argmax(dim=1)
    flip = torch.rand(n, generator=generator) < 0.1
    y[flip] = torch.randint(0, classes, (int(flip.sum()),), generator=generator)
    return x, y


def gradient_descent(model: nn.Module, batch: tuple[Tensor, Tensor], steps: int, lr: float) -> None:
    """Full-batch gradient descent in place (to reach a point near a minimum)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        per_sample_ce(model, batch).mean().backward()
        optimizer.step()


def dense_spectrum(model: nn.Module, batches: list[Any]) -> Tensor:
    """Exact eigenvalues (ascending) of the probe-set Hessian: ``torch.func.hessian`` + eigvalsh."""
    probe = ProbeLoss(model, per_sample_ce, batches, dtype=DTYPE)
    hessian = torch.func.hessian(probe.mean_loss)(probe.x0)
    return torch.linalg.eigvalsh((hessian + hessian.T) / 2)


# -- 1. curvature ----------------------------------------------------------------------------
def bench_curvature(seeds: Sequence[int]) -> dict[str, Any]:
    rows: list[Row] = []
    for seed in seeds:
        batch = teacher_data(seed, 64)
        for state in ("init", "trained"):
            model = tiny_mlp(seed)
            if state == "trained":
                gradient_descent(model, batch, steps=300, lr=0.5)
            exact = dense_spectrum(model, [batch])
            est = estimate(
                model,
                per_sample_ce,
                [batch],
                lr=0.1,
                batch_size=8,
                top_k=3,
                seed=seed,
                dtype=DTYPE,
            )
            top_exact = exact.flip(0)[:3].tolist()
            lam_max, lam_min = float(exact[-1]), float(exact[0])
            rows.append(
                {
                    "seed": seed,
                    "state": state,
                    "dim": est.dim,
                    "lambda_max": lam_max,
                    "lambda_min": lam_min,
                    "trace": float(exact.sum()),
                    "err_lambda_max": rel_err(est.lambda_max, lam_max),
                    "err_top3": max(
                        rel_err(a, b) for a, b in zip(est.eigenvalues, top_exact, strict=True)
                    ),
                    "err_lambda_min": rel_err(est.lambda_min, lam_min),
                    "err_lambda_min_vs_max": abs(est.lambda_min - lam_min) / abs(lam_max),
                    "err_trace": rel_err(est.hessian_trace, float(exact.sum())),
                    "num_hvp": est.num_hvp,
                    "converged": dict(est.converged),
                }
            )
    # Hutchinson's error against its number of probes (no stopping rule: tol = 0+).
    trace_rows: list[Row] = []
    for seed in seeds:
        batch = teacher_data(seed, 64)
        model = tiny_mlp(seed)
        exact = float(dense_spectrum(model, [batch]).sum())
        op = HessianOperator(ProbeLoss(model, per_sample_ce, [batch], dtype=DTYPE))
        for samples in (10, 100, 1000):
            result = hutchinson_trace(
                op,
                tol=1e-12,
                min_samples=samples,
                max_samples=samples,
                generator=torch.Generator().manual_seed(seed),
            )
            trace_rows.append(
                {
                    "seed": seed,
                    "samples": samples,
                    "err": rel_err(result.value, exact),
                    "stderr_rel": result.stderr / abs(exact),
                }
            )
    return {"rows": rows, "trace_rows": trace_rows}


def curvature_table(data: dict[str, Any]) -> list[str]:
    lines = [
        "| point | quantity | exact range (over seeds) | median rel. error | max rel. error "
        "| converged |",
        "|---|---|---|---|---|---|",
    ]
    for state in ("init", "trained"):
        rows = [r for r in data["rows"] if r["state"] == state]
        for key, name, solver in (
            ("lambda_max", "λ_max", "top"),
            ("top3", "top-3 eigenvalues (worst of 3)", "top"),
            ("lambda_min", "λ_min (error / abs λ_min)", "min"),
            ("lambda_min_vs_max", "λ_min (error / λ_max)", "min"),
            ("trace", "tr H (Hutch++ on the Lanczos basis, ≤ 100 probes)", "trace"),
        ):
            exact_key = {"top3": "lambda_max", "lambda_min_vs_max": "lambda_min"}.get(key, key)
            values = [r[exact_key] for r in rows]
            errors = [r[f"err_{key}"] for r in rows]
            converged = sum(bool(r["converged"].get(solver)) for r in rows)
            lines.append(
                f"| {state} | {name} | {fmt(min(values))} … {fmt(max(values))} "
                f"| {fmt(median(errors))} | {fmt(max(errors))} | {converged}/{len(rows)} |"
            )
    hvps = [r["num_hvp"] for r in data["rows"]]
    lines += [
        "",
        "Default settings of `estimate()` (tol = 1e-3, trace_tol = 1e-2, max_trace_samples = "
        f"100). Hessian-vector products per estimate (top-3 and min in one Lanczos run, then "
        f"the trace, all within max_products): median "
        f"{median(hvps):.0f}, range {min(hvps)}–{max(hvps)}; d = {data['rows'][0]['dim']}; "
        f"{len(hvps) // 2} seeds × 2 points.",
        "",
        "| Hutchinson probes | median rel. error of tr H | median reported std. error / tr H |",
        "|---|---|---|",
    ]
    for samples in (10, 100, 1000):
        rows = [r for r in data["trace_rows"] if r["samples"] == samples]
        lines.append(
            f"| {samples} | {fmt(median([r['err'] for r in rows]))} "
            f"| {fmt(median([r['stderr_rel'] for r in rows]))} |"
        )
    return lines


# -- 2. gradient noise -----------------------------------------------------------------------
def naive_noise_trace(model: nn.Module, batch: tuple[Tensor, Tensor]) -> float:
    """Reference ``tr Σ₁``: one ``autograd.grad`` per sample, unbiased sample covariance."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = []
    x, y = batch
    for i in range(len(y)):
        loss = per_sample_ce(model, (x[i : i + 1], y[i : i + 1])).sum()
        grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    g = torch.stack(grads)
    return float(((g - g.mean(dim=0)) ** 2).sum() / (len(y) - 1))


def batch_gradient(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    loss = per_sample_ce(model, batch).mean()
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])


def epoch_batches(n: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """Index batches of one epoch: a random permutation cut into ``⌊n/B⌋`` disjoint batches."""
    order = torch.randperm(n, generator=generator)
    return [order[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


def bench_noise(seeds: Sequence[int]) -> dict[str, Any]:
    n, batch_size = 256, 8
    rows: list[Row] = []
    checkpoints = (64, 256, 1024, 4096)
    for seed in seeds:
        x, y = teacher_data(seed, n)
        model = tiny_mlp(seed)
        gradient_descent(model, (x, y), steps=50, lr=0.5)
        started = time.perf_counter()
        reference = naive_noise_trace(model, (x, y))
        naive_s = time.perf_counter() - started
        probe = ProbeLoss(model, per_sample_ce, [(x, y)], dtype=DTYPE)
        started = time.perf_counter()
        exact = per_sample_noise(probe).noise_trace
        vmap_s = time.perf_counter() - started
        row: Row = {
            "seed": seed,
            "reference": reference,
            "naive_s": naive_s,
            "vmap_s": vmap_s,
            "err_per_sample": rel_err(exact, reference),
            "micro": {},
            "running": {},
        }
        for b in (4, 8, 16, 32):
            errors = []
            for draw in range(20):
                generator = torch.Generator().manual_seed(1000 * seed + draw)
                est = micro_batch_noise(probe, micro_batch_size=b, generator=generator)
                errors.append((est.noise_trace - reference) / reference)
            row["micro"][b] = errors
        # Running two-batch estimator at a fixed point: disjoint batches of one epoch, w = 2.
        running = RunningNoiseEstimator(window=2, dataset_size=n)
        generator = torch.Generator().manual_seed(seed)
        steps = 0
        while steps < checkpoints[-1]:
            for index in epoch_batches(n, batch_size, generator):
                running.update(batch_gradient(model, (x[index], y[index])), batch_size)
                steps += 1
                if steps in checkpoints:
                    value = float(running.compute()["noise_trace"])
                    row["running"][steps] = (value - reference) / reference
                if steps >= checkpoints[-1]:
                    break
        row["drift"] = running_along_sgd(seed, x, y, batch_size)
        rows.append(row)
    return {"rows": rows, "n": n, "batch_size": batch_size, "checkpoints": checkpoints}


def running_along_sgd(seed: int, x: Tensor, y: Tensor, batch_size: int) -> Row:
    """The running estimator fed by real SGD steps, vs the exact ``tr Σ₁`` along the path.

    Its known bias (``RunningNoiseEstimator`` docstring): ``+η tr(HΣ₁)/tr Σ₁ ≤ η λ_max``
    relative, plus a drift term, both positive.
    """
    lr, steps = 0.1, 1024
    model = tiny_mlp(seed)
    gradient_descent(model, (x, y), steps=50, lr=0.5)
    lam_max = float(dense_spectrum(model, [(x, y)])[-1])
    running = RunningNoiseEstimator(window=2, dataset_size=len(y))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed + 77)
    exact_values = []
    step = 0
    while step < steps:
        for index in epoch_batches(len(y), batch_size, generator):
            if step % 32 == 0:
                exact_values.append(naive_noise_trace(model, (x, y)))
            optimizer.zero_grad()
            loss = per_sample_ce(model, (x[index], y[index])).mean()
            loss.backward()
            flat = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
            running.update(flat.detach().clone(), batch_size)
            optimizer.step()
            step += 1
            if step >= steps:
                break
    exact_mean = statistics.fmean(exact_values)
    value = float(running.compute()["noise_trace"])
    return {"lr": lr, "lambda_max": lam_max, "ratio": value / exact_mean, "steps": steps}


def noise_table(data: dict[str, Any]) -> list[str]:
    rows = data["rows"]
    n = data["n"]
    lines = [
        f"Reference: a naive loop of {n} `autograd.grad` calls (one per sample), unbiased sample "
        f"covariance; tiny MLP (131 parameters) after 50 steps of gradient descent; "
        f"{len(rows)} seeds.",
        "",
        "| estimator | setting | median abs. rel. error | RMS rel. error | expected spread (the "
        "bound is the rank-one case) | median time |",
        "|---|---|---|---|---|---|",
        f"| per-sample (`vmap`) | all {n} samples | "
        f"{fmt(median([r['err_per_sample'] for r in rows]))} | – | 0 (exact) "
        f"| {fmt(1000 * median([r['vmap_s'] for r in rows]))} ms "
        f"(naive loop {fmt(1000 * median([r['naive_s'] for r in rows]))} ms) |",
    ]
    for b in (4, 8, 16, 32):
        errors = [e for r in rows for e in r["micro"][b]]
        m = n // b
        lines.append(
            f"| micro-batch | b = {b} (m = {m} micro-batches, 20 partitions × seeds) "
            f"| {fmt(median([abs(e) for e in errors]))} "
            f"| {fmt(math.sqrt(statistics.fmean([e * e for e in errors])))} "
            f"| ≤ √(2/(m−1)) = {fmt(math.sqrt(2 / (m - 1)))} | – |"
        )
    for k in data["checkpoints"]:
        errors = [r["running"][k] for r in rows]
        lines.append(
            f"| running two-batch (fixed θ) | K = {k} steps of B = {data['batch_size']}, w = 2 "
            f"| {fmt(median([abs(e) for e in errors]))} "
            f"| {fmt(math.sqrt(statistics.fmean([e * e for e in errors])))} | ∝ 1/√K | – |"
        )
    drift = [r["drift"] for r in rows]
    lam_max = [d["lambda_max"] for d in drift]
    lines.append(
        f"| running two-batch (along SGD) | η = {drift[0]['lr']}, {drift[0]['steps']} steps, "
        f"ratio to the exact tr Σ₁ averaged along the path | median ratio "
        f"{fmt(median([d['ratio'] for d in drift]))} | range "
        f"{fmt(min(d['ratio'] for d in drift))}–{fmt(max(d['ratio'] for d in drift))} "
        f"| bias ≤ 1 + ηλ_max = {fmt(1 + drift[0]['lr'] * median(lam_max))} + drift term | – |"
    )
    return lines


# -- 3. barrier and 4. escape rate on the double well ------------------------------------------
def double_well_case(ratio: float, lr: float, batch_size: int) -> dict[str, float]:
    """Noise covariance ``diag(Σ_xx, 100)`` giving ``ΔL/T_x = ratio`` with replacement."""
    temperature = BARRIER_HEIGHT / ratio
    sigma_xx = 2 * batch_size * temperature / lr
    return {"ratio": ratio, "temperature": temperature, "sigma_xx": sigma_xx, "sigma_yy": 100.0}


def double_well_loss_fn(model: nn.Module, batch: Any) -> Tensor:
    return model.per_sample_loss(batch)  # type: ignore[operator]


def estimate_double_well(samples: Tensor, lr: float, batch_size: int, seed: int) -> Any:
    model = DoubleWellModule(lr=lr)
    batches = [(samples[i : i + 4096],) for i in range(0, len(samples), 4096)]
    return estimate(
        model,
        double_well_loss_fn,
        batches,
        lr=lr,
        batch_size=batch_size,
        dataset_size=None,
        top_k=2,
        seed=seed,
        dtype=DTYPE,
    )


def simulate_escape_rate(
    samples: Tensor,
    *,
    lr: float,
    batch_size: int,
    walkers: int,
    steps: int,
    seed: int,
) -> tuple[float, int]:
    """Escapes per step of SGD walkers on the tilted double well; ``(rate, escapes)``.

    Each walker starts at ``(√1.5, 0)`` and steps ``θ ← θ − η(∇L(θ) + ā_B)`` with ``ā_B`` the
    mean tilt of ``B`` samples drawn with replacement (private generator); a transition counts
    on reaching the other well's core ``|x| ≥ √1.5/2`` (:func:`next_well`).
    """
    generator = torch.Generator().manual_seed(seed)
    theta = torch.zeros(walkers, 2, dtype=DTYPE)
    theta[:, 0] = MINIMUM_X
    well = torch.ones(walkers, dtype=torch.int64)
    escapes = torch.zeros((), dtype=torch.int64)
    core = 0.5 * MINIMUM_X
    n = len(samples)
    for _ in range(steps):
        index = torch.randint(0, n, (walkers, batch_size), generator=generator)
        tilt = samples[index].mean(dim=1)
        x, y = theta[:, 0], theta[:, 1]
        grad = torch.stack((4 * x**3 - 6 * x, 2 * y), dim=1) + tilt
        theta = theta - lr * grad
        new = next_well(well, theta[:, 0], core)
        escapes += (new != well).sum()
        well = new
    count = int(escapes)
    return count / (walkers * steps), count


def bench_double_well(seeds: Sequence[int], walkers: int, target_escapes: int) -> dict[str, Any]:
    lr, batch_size, n = 0.01, 16, 16_000
    barrier_rows: list[Row] = []
    rate_rows: list[Row] = []
    for ratio in (4.0, 5.0, 6.0):
        case = double_well_case(ratio, lr, batch_size)
        cov = [[case["sigma_xx"], 0.0], [0.0, case["sigma_yy"]]]
        exact_rate = predicted_escape_rate(lr, case["sigma_xx"] / batch_size)
        for seed in seeds:
            samples = centred_samples(n, cov, seed=seed)
            est = estimate_double_well(samples, lr, batch_size, seed)
            barrier = [p for p in est.pathways if p.rate is not None]
            dominant = max(barrier, key=lambda p: p.rate)
            barrier_rows.append(
                {
                    "ratio": ratio,
                    "seed": seed,
                    "barrier": dominant.barrier,
                    "barrier_curvature": dominant.barrier_curvature,
                    "distance": dominant.distance,
                    "curvature": dominant.curvature,
                    "lambda_min": est.lambda_min,
                    "temperature_v": dominant.temperature,
                    "temperature_exact": case["temperature"],
                    "num_forward": dominant.num_forward,
                    "statuses": [p.status.value for p in est.pathways],
                }
            )
            # Probes of 256 samples, as the callback's default: the T_x error is amplified by
            # the exponential, δk/k ≈ (ΔL/T)·δT/T.
            small: dict[str, list[Row]] = {"raw": [], "centred": []}
            for draw in range(10):
                generator = torch.Generator().manual_seed(100 * seed + draw)
                subset = samples[torch.randperm(n, generator=generator)[:256]]
                # "raw": the probe's mean tilt ā ≠ 0 shifts its landscape (ΔL by ≈ ā_x·√1.5);
                # "centred": ā removed, so only the T_x sampling error remains.
                for kind, probe in (("raw", subset), ("centred", subset - subset.mean(dim=0))):
                    sub = estimate_double_well(probe, lr, batch_size, seed)
                    best = max(
                        (p for p in sub.pathways if p.rate is not None),
                        key=lambda p: p.rate,
                        default=None,
                    )
                    small[kind].append(
                        {
                            "rate": sub.escape_rate,
                            "barrier": None if best is None else best.barrier,
                            "temperature_v": None if best is None else best.temperature,
                            "tilt_x": float(subset[:, 0].mean()),
                        }
                    )
            steps = math.ceil(target_escapes / (walkers * exact_rate))
            started = time.perf_counter()
            measured, count = simulate_escape_rate(
                samples, lr=lr, batch_size=batch_size, walkers=walkers, steps=steps, seed=seed
            )
            rate_rows.append(
                {
                    "ratio": ratio,
                    "seed": seed,
                    "exact_formula": exact_rate,
                    "estimate_full": est.escape_rate,
                    "estimate_256": small,
                    "temperature_exact": case["temperature"],
                    "measured": measured,
                    "escapes": count,
                    "walker_steps": walkers * steps,
                    "sim_s": time.perf_counter() - started,
                }
            )
    # The line scan alone on the exact 1-D profile, with first steps from tiny to coarse.
    scan_rows = []
    for initial_step in (1e-3, 1e-2, 1e-1, 0.5):
        result = scan_for_barrier(
            lambda s: float(double_well_loss(torch.tensor([MINIMUM_X - s, 0.0], dtype=DTYPE))),
            threshold=20 * 0.5,
            initial_step=initial_step,
        )
        scan_rows.append(
            {
                "initial_step": initial_step,
                "barrier": result.barrier,
                "barrier_curvature": result.barrier_curvature,
                "distance": result.distance,
                "num_evals": result.num_evals,
            }
        )
    heuristic = logdet_barrier(
        temperature=BARRIER_HEIGHT / 5.0,
        logdet_well=math.log(WELL_CURVATURE_X * 2.0),
        logdet_saddle=math.log(abs(SADDLE_CURVATURE_X) * 2.0),
    )
    return {
        "lr": lr,
        "batch_size": batch_size,
        "n": n,
        "walkers": walkers,
        "barrier_rows": barrier_rows,
        "rate_rows": rate_rows,
        "scan_rows": scan_rows,
        "logdet_heuristic_at_ratio_5": heuristic,
    }


def barrier_table(data: dict[str, Any]) -> list[str]:
    rows = data["barrier_rows"]
    lines = [
        f"`estimate()` at the minimum (√1.5, 0), probe = all {data['n']} samples, "
        f"η = {data['lr']}, B = {data['batch_size']}, ΔL/T_x ∈ {{4, 5, 6}} × "
        f"{len({r['seed'] for r in rows})} noise seeds ({len(rows)} estimates).",
        "",
        "| quantity | exact | median estimate | max rel. error |",
        "|---|---|---|---|",
    ]
    for key, name, exact in (
        ("barrier", "ΔL", BARRIER_HEIGHT),
        ("barrier_curvature", "λ_b", SADDLE_CURVATURE_X),
        ("distance", "s* (distance to the saddle)", MINIMUM_X),
        ("curvature", "λ₀ = vᵀHv (well, along x)", WELL_CURVATURE_X),
        ("lambda_min", "λ_min (along y)", 2.0),
    ):
        values = [r[key] for r in rows]
        lines.append(
            f"| {name} | {fmt(exact, 4)} | {fmt(median(values), 6)} "
            f"| {fmt(max(rel_err(v, exact) for v in values))} |"
        )
    t_err = [rel_err(r["temperature_v"], r["temperature_exact"]) for r in rows]
    lines.append(
        f"| T_x (directional temperature, 16 000-sample probe) | η Σ_xx/(2B) "
        f"| – | {fmt(max(t_err))} |"
    )
    lines += [
        "",
        "Line scan alone on the exact profile φ(s) = L(√1.5 − s, 0) (threshold 10):",
        "",
        "| first step | ΔL | λ_b | s* | evaluations |",
        "|---|---|---|---|---|",
    ]
    for r in data["scan_rows"]:
        lines.append(
            f"| {r['initial_step']} | {fmt(r['barrier'], 8)} | {fmt(r['barrier_curvature'], 6)} "
            f"| {fmt(r['distance'], 6)} | {r['num_evals']} |"
        )
    lines += [
        "",
        f"The seed's determinant heuristic at ΔL/T = 5 gives ΔL ≈ "
        f"{fmt(data['logdet_heuristic_at_ratio_5'], 3)} (negative; the true barrier is 9/4), as "
        "docs/theory.md section 3.2 warns: it is not used by the estimate.",
    ]
    return lines


def rate_table(data: dict[str, Any]) -> list[str]:
    rows = data["rate_rows"]
    lines = [
        f"SGD simulation: {data['walkers']} walkers per run, B = {data['batch_size']} tilts drawn "
        f"with replacement from N = {data['n']}, η = {data['lr']}; an escape is a transition to "
        "the other well's core (|x| ≥ √1.5/2). Rates per step; the noise seeds draw different "
        "tilt sets and simulations.",
        "",
        "| ΔL/T_x | Kramers formula (exact T_x) | `estimate()`, all samples | measured (SGD) "
        "| measured / formula (seed range) | measured / estimate | escapes counted |",
        "|---|---|---|---|---|---|---|",
    ]
    for ratio in sorted({r["ratio"] for r in rows}):
        group = [r for r in rows if r["ratio"] == ratio]
        spread = [r["measured"] / r["exact_formula"] for r in group]
        lines.append(
            f"| {ratio:g} | {fmt(median([r['exact_formula'] for r in group]))} "
            f"| {fmt(median([r['estimate_full'] for r in group]))} "
            f"| {fmt(median([r['measured'] for r in group]))} "
            f"| {fmt(median(spread))} ({fmt(min(spread))}–{fmt(max(spread))}) "
            f"| {fmt(median([r['measured'] / r['estimate_full'] for r in group]))} "
            f"| {sum(r['escapes'] for r in group)} |"
        )
    lines += [
        "",
        "The same estimate from random 256-sample probes (the callback's default probe size), "
        "10 probes per seed; `raw` is the subset as drawn, `centred` has its mean tilt removed:",
        "",
        "| ΔL/T_x | probe | estimate / measured: median [10th, 90th percentile] "
        "| probes with rate 0 | ΔL: median [min, max] | T_x rel. error: median |",
        "|---|---|---|---|---|---|",
    ]
    for ratio in sorted({r["ratio"] for r in rows}):
        group = [r for r in rows if r["ratio"] == ratio]
        for kind in ("raw", "centred"):
            ratios = sorted(
                e["rate"] / r["measured"] for r in group for e in r["estimate_256"][kind]
            )
            barriers = [
                e["barrier"] for r in group for e in r["estimate_256"][kind] if e["barrier"]
            ]
            t_err = [
                abs(e["temperature_v"] / r["temperature_exact"] - 1)
                for r in group
                for e in r["estimate_256"][kind]
                if e["temperature_v"]
            ]
            lo, hi = ratios[len(ratios) // 10], ratios[(9 * len(ratios)) // 10]
            zero = sum(v == 0 for v in ratios)
            lines.append(
                f"| {ratio:g} | {kind} | {fmt(median(ratios))} [{fmt(lo)}, {fmt(hi)}] "
                f"| {zero}/{len(ratios)} "
                f"| {fmt(median(barriers), 3)} [{fmt(min(barriers, default=math.nan), 3)}, "
                f"{fmt(max(barriers, default=math.nan), 3)}] | {fmt(median(t_err))} |"
            )
    return lines


# -- 5. Hessian-vector products, cold vs warm ------------------------------------------------
def solver_products(
    model: nn.Module, probe: list[Any], seed: int, top_init: Tensor | None, min_init: Tensor | None
) -> tuple[Row, Tensor, Tensor]:
    """Products of the top-3 and the min eigensolve, as :func:`estimate` runs them."""
    model.eval()
    op = HessianOperator(ProbeLoss(model, per_sample_ce, probe))
    generator = torch.Generator().manual_seed(seed)
    top = top_eigenpairs(op, 3, init=top_init, generator=generator)
    low = min_eigenpair(
        op, init=min_init, generator=generator, upper_bound=abs(float(top.eigenvalues[0]))
    )
    model.train()
    row = {
        "top": top.num_products,
        "min": low.num_products,
        "top_converged": top.converged,
        "min_converged": low.converged,
        "lambda_max": float(top.eigenvalues[0]),
    }
    return row, top.eigenvectors, low.eigenvectors[0]


def bench_warm_start(seeds: Sequence[int], epochs: int) -> dict[str, Any]:
    rows: list[Row] = []
    for seed in seeds:
        data = DigitsDataModule(batch_size=32, seed=seed)
        data.setup()
        assert data.train_set is not None
        x_all, y_all = data.train_set.tensors
        generator = torch.Generator().manual_seed(seed)
        probe_index = torch.randperm(len(y_all), generator=generator)[:256]
        probe = [
            (x_all[probe_index[i : i + 64]], y_all[probe_index[i : i + 64]])
            for i in range(0, 256, 64)
        ]
        with torch.random.fork_rng():
            # The CNN's default initialisation draws from the global RNG: seed it, then restore.
            torch.manual_seed(seed)
            model = DigitsCNN()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        warm = None
        top_prev: Tensor | None = None
        min_prev: Tensor | None = None
        for epoch in range(epochs):
            for index in epoch_batches(len(y_all), 32, generator):
                optimizer.zero_grad()
                per_sample_ce(model, (x_all[index], y_all[index])).mean().backward()
                optimizer.step()
            common: dict[str, Any] = {
                "lr": 0.05,
                "batch_size": 32,
                "momentum": 0.9,
                "top_k": 3,
                "compute_trace": False,
                "seed": seed,
            }
            cold = estimate(model, per_sample_ce, probe, **common)
            hot = estimate(model, per_sample_ce, probe, warm_start=warm, **common)
            cold_split, _, _ = solver_products(model, probe, seed, None, None)
            warm_split, top_prev, min_prev = solver_products(model, probe, seed, top_prev, min_prev)
            rows.append(
                {
                    "seed": seed,
                    "epoch": epoch,
                    "cold_hvp": cold.num_hvp,
                    "warm_hvp": hot.num_hvp,
                    "cold_converged": cold.all_converged,
                    "warm_converged": hot.all_converged,
                    "lambda_max_cold": cold.lambda_max,
                    "lambda_max_warm": hot.lambda_max,
                    "cold_split": cold_split,
                    "warm_split": warm_split,
                    "first": warm is None,
                }
            )
            warm = hot
    return {"rows": rows, "dim": sum(p.numel() for p in DigitsCNN().parameters())}


def warm_table(data: dict[str, Any]) -> list[str]:
    rows = [r for r in data["rows"] if not r["first"]]
    ratio = [r["warm_hvp"] / r["cold_hvp"] for r in rows]
    agree = [rel_err(r["lambda_max_warm"], r["lambda_max_cold"]) for r in rows]

    def split(kind: str, part: str) -> str:
        values = [r[f"{kind}_split"][part] for r in rows]
        return f"{median(values):.0f} ({min(values)}–{max(values)})"

    def converged(kind: str) -> str:
        count = sum(
            r[f"{kind}_split"]["top_converged"] and r[f"{kind}_split"]["min_converged"]
            for r in rows
        )
        return f"{count}/{len(rows)}"

    return [
        f"Digits CNN (d = {data['dim']}), SGD η = 0.05, momentum 0.9, B = 32; at the end of each "
        f"epoch `estimate(top_k=3, compute_trace=False)` on a 256-sample probe (float32, default "
        f"tol = 1e-3, max_products = 300), cold and warm-started from the previous epoch's "
        f"estimate; the first epoch has no warm start and is excluded: {len(rows)} pairs over "
        f"{len({r['seed'] for r in rows})} seeds. The split by solver repeats the two "
        f"eigensolves of `estimate()` directly (same settings).",
        "",
        "| start | `estimate()` HVPs (top-3 + min): median (range) | top-3 solve | min solve "
        "| all converged |",
        "|---|---|---|---|---|",
        f"| cold | {median([r['cold_hvp'] for r in rows]):.0f} "
        f"({min(r['cold_hvp'] for r in rows)}–{max(r['cold_hvp'] for r in rows)}) "
        f"| {split('cold', 'top')} | {split('cold', 'min')} | {converged('cold')} |",
        f"| warm | {median([r['warm_hvp'] for r in rows]):.0f} "
        f"({min(r['warm_hvp'] for r in rows)}–{max(r['warm_hvp'] for r in rows)}) "
        f"| {split('warm', 'top')} | {split('warm', 'min')} | {converged('warm')} |",
        "",
        f"Warm/cold ratio of `estimate()` products: median {fmt(median(ratio))}; λ_max warm vs "
        f"cold: median rel. difference {fmt(median(agree))}, max {fmt(max(agree))}.",
    ]


# -- main ------------------------------------------------------------------------------------
def timed(name: str, fn: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    out = fn()
    print(f"[{name}: {time.perf_counter() - started:.1f} s]", flush=True)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--rate-seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--walkers", type=int, default=1000)
    parser.add_argument("--target-escapes", type=int, default=2000)
    parser.add_argument("--warm-seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--warm-epochs", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/output/estimators"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    results = {
        "curvature": timed("curvature", lambda: bench_curvature(args.seeds)),
        "noise": timed("noise", lambda: bench_noise(args.seeds)),
        "double_well": timed(
            "double well",
            lambda: bench_double_well(args.rate_seeds, args.walkers, args.target_escapes),
        ),
        "warm": timed("warm start", lambda: bench_warm_start(args.warm_seeds, args.warm_epochs)),
    }
    lines = [
        "### Curvature: λ_max, λ_min, tr H vs dense Hessian + eigvalsh",
        "",
        *curvature_table(results["curvature"]),
        "",
        "### Gradient noise tr Σ₁",
        "",
        *noise_table(results["noise"]),
        "",
        "### Barrier and λ_b on x⁴ − 3x² + y²",
        "",
        *barrier_table(results["double_well"]),
        "",
        "### Escape rate: `estimate()` vs SGD simulation",
        "",
        *rate_table(results["double_well"]),
        "",
        "### Hessian-vector products: cold vs warm start",
        "",
        *warm_table(results["warm"]),
    ]
    text = "\n".join(lines)
    (args.out / "estimators.md").write_text(text + "\n")
    (args.out / "estimators.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(text)
    print(f"\n[total {time.perf_counter() - started:.0f} s]")


if __name__ == "__main__":
    main()

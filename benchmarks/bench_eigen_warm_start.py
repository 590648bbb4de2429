r"""Hessian-vector products for the top eigenpairs between SGD steps: cold vs warm start.

A tanh MLP on sklearn's digits (64-32-32-10, 3 466 parameters by default) is trained with SGD.
At a point ``θ_a`` the top-``k`` eigenvectors are estimated (``tol = 1e-3``, as the estimate
does); after ``--steps`` more SGD steps, at ``θ_b``, the top-``k`` eigenpairs are estimated
again, cold (a random start vector) and warm (from ``θ_a``'s eigenvectors). Counted, in
Hessian-vector products on the whole probe set (512 samples):

* **to 1 % on λ_max**: the smallest budget ``m`` with which
  :func:`kramers_callback.curvature.top_eigenpairs` returns ``|λ̂₁ − λ₁| ≤ 0.01 λ₁``, ``λ₁``
  from a tight solve (``tol = 1e-10``, cross-checked with ``scipy.sparse.linalg.eigsh``);
* **to tol**: products until every returned pair has residual ``≤ tol·|λ_i|``, for this
  package's Lanczos and, on the same operator, ``scipy.sparse.linalg.eigsh`` (ARPACK,
  ``ncv = 2k + 4``, warm: ``v0`` = sum of the previous vectors) and ``lobpcg`` (warm: ``X`` =
  the previous vectors; its tolerance is absolute, so it is given ``tol·λ_k`` from the
  reference, an advantage). Scipy's results are then checked against the true residual with
  extra products that are *not* counted; the column ``ok`` gives the fraction that passed.

Medians over ``--seeds`` (model initialisation, data order, start vectors) and ``--rounds``
pairs of points per seed. Usage::

    python benchmarks/bench_eigen_warm_start.py --seeds 0 1 2 3 4 --steps 1 10 100

Prints a markdown table. This is a script, not a test.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.sparse.linalg import eigsh, lobpcg
from sklearn.datasets import load_digits
from torch import Tensor, nn

from kramers_callback._probe import ProbeLoss
from kramers_callback.curvature import HessianOperator, top_eigenpairs

TARGET = 0.01
"""Relative error on ``λ_max`` that counts as reached."""


def cross_entropy(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    inputs, labels = batch
    return nn.functional.cross_entropy(model(inputs), labels, reduction="none")


def make_mlp(hidden: int, dtype: torch.dtype) -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, hidden),
        nn.Tanh(),
        nn.Linear(hidden, hidden),
        nn.Tanh(),
        nn.Linear(hidden, 10),
    ).to(dtype)


def sgd_steps(
    model: nn.Module, data: tuple[Tensor, Tensor], steps: int, lr: float, g: torch.Generator
) -> None:
    inputs, labels = data
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(0, len(inputs), (32,), generator=g)
        optimizer.zero_grad()
        cross_entropy(model, (inputs[idx], labels[idx])).mean().backward()
        optimizer.step()


def products_to_target(op: HessianOperator, k: int, init: Tensor | None, ref: float) -> int:
    """Smallest budget at which the returned ``λ̂₁`` is within ``TARGET`` of ``ref``.

    The solver's product sequence does not depend on the budget, so budget ``m`` shows the
    state after ``m`` products.
    """
    for m in range(k, 400):
        g = torch.Generator().manual_seed(0)
        r = top_eigenpairs(op, k, init=init, tol=1e-14, max_products=m, generator=g)
        if abs(float(r.eigenvalues[0]) - ref) <= TARGET * abs(ref):
            return m
    return 400


def true_residuals_ok(A: Any, values: np.ndarray, vectors: np.ndarray, tol: float) -> bool:
    residuals = np.linalg.norm(A @ vectors - vectors * values, axis=0)
    return bool(np.all(residuals <= tol * np.abs(values) * (1 + 1e-9)))


def scipy_runs(
    op: HessianOperator, k: int, init: Tensor | None, tol: float, ref_k: float, seed: int
) -> dict[str, tuple[int, bool]]:
    """Products (and true-residual success) of eigsh and lobpcg, cold or warm."""
    A = op.as_linear_operator()
    rng = np.random.default_rng(seed)
    out: dict[str, tuple[int, bool]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lobpcg warns when it stops at maxiter
        start = op.num_products
        v0 = rng.standard_normal(op.dim) if init is None else init.double().numpy().sum(axis=0)
        values, vectors = eigsh(A, k=k, which="LA", tol=tol, v0=v0, ncv=min(op.dim, 2 * k + 4))
        used = op.num_products - start
        out["eigsh"] = (used, true_residuals_ok(A, values, vectors, tol))
        start = op.num_products
        X = rng.standard_normal((op.dim, k)) if init is None else init.double().numpy().T.copy()
        values, vectors = lobpcg(A, X, tol=tol * abs(ref_k), maxiter=300, largest=True)
        used = op.num_products - start
        out["lobpcg"] = (used, true_residuals_ok(A, values, vectors, tol))
    return out


def measure(args: argparse.Namespace, seed: int, steps: int) -> list[dict[str, Any]]:
    dtype = {"float64": torch.float64, "float32": torch.float32}[args.dtype]
    digits_x, digits_y = load_digits(return_X_y=True)
    inputs = torch.tensor(digits_x / 16.0, dtype=dtype)
    labels = torch.tensor(digits_y)
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make_mlp(args.hidden, dtype)
    sgd_steps(model, (inputs, labels), args.pretrain, args.lr, g)
    probe_idx = torch.randperm(len(inputs), generator=g)[: 2 * args.probe_batch]
    half = args.probe_batch
    batches = [
        (inputs[probe_idx[:half]], labels[probe_idx[:half]]),
        (inputs[probe_idx[half:]], labels[probe_idx[half:]]),
    ]
    rows = []
    for _ in range(args.rounds):
        previous = {
            k: top_eigenpairs(
                HessianOperator(ProbeLoss(model, cross_entropy, batches)),
                k,
                tol=args.tol,
                generator=torch.Generator().manual_seed(seed),
            ).eigenvectors
            for k in args.k
        }
        sgd_steps(model, (inputs, labels), steps, args.lr, g)
        op = HessianOperator(ProbeLoss(model, cross_entropy, batches))
        kmax = max(args.k)
        tight = top_eigenpairs(op, kmax, tol=1e-10, max_products=3000)
        check = eigsh(op.as_linear_operator(), k=1, which="LA", tol=1e-12)[0][0]
        assert abs(check - float(tight.eigenvalues[0])) <= 1e-6 * abs(check), (check, tight)
        for k in args.k:
            ref = float(tight.eigenvalues[0])
            ref_k = float(tight.eigenvalues[k - 1])
            row: dict[str, Any] = {"steps": steps, "k": k, "seed": seed}
            for mode, init in (("cold", None), ("warm", previous[k])):
                row[f"target_{mode}"] = products_to_target(op, k, init, ref)
                start = op.num_products
                r = top_eigenpairs(
                    op, k, init=init, tol=args.tol, generator=torch.Generator().manual_seed(seed)
                )
                row[f"ours_{mode}"] = (op.num_products - start, r.converged)
                for name, value in scipy_runs(op, k, init, args.tol, ref_k, seed).items():
                    row[f"{name}_{mode}"] = value
            rows.append(row)
    return rows


def median(values: Sequence[float]) -> str:
    m = statistics.median(values)
    return f"{m:g}"


def table(rows: list[dict[str, Any]], tol: float) -> str:
    header = (
        "| SGD steps between | k | to 1% on λ_max: cold | warm "
        f"| to tol={tol:g}: ours cold | ours warm | eigsh cold | eigsh warm "
        "| lobpcg cold | lobpcg warm |"
    )
    lines = [header, "|" + "---|" * 10]
    keys = sorted({(r["steps"], r["k"]) for r in rows})
    for steps, k in keys:
        group = [r for r in rows if r["steps"] == steps and r["k"] == k]
        cells = [str(steps), str(k)]
        cells += [median([r[f"target_{m}"] for r in group]) for m in ("cold", "warm")]
        for name in ("ours", "eigsh", "lobpcg"):
            for mode in ("cold", "warm"):
                used = [r[f"{name}_{mode}"][0] for r in group]
                ok = sum(r[f"{name}_{mode}"][1] for r in group) / len(group)
                cells.append(f"{median(used)} (ok {ok:.0%})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--k", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--rounds", type=int, default=2, help="pairs of points per seed")
    parser.add_argument("--pretrain", type=int, default=300, help="SGD steps before measuring")
    parser.add_argument("--lr", type=float, default=0.2)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--probe-batch", type=int, default=256, help="two probe batches of this")
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    rows = [
        row for seed in args.seeds for steps in args.steps for row in measure(args, seed, steps)
    ]
    d = sum(p.numel() for p in make_mlp(args.hidden, torch.float64).parameters())
    print(
        f"digits MLP 64-{args.hidden}-{args.hidden}-10 (d = {d}), {args.dtype}, probe "
        f"{2 * args.probe_batch} samples, lr {args.lr}, {args.pretrain} SGD steps before; "
        f"medians over {len(args.seeds)} seeds x {args.rounds} rounds; "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{time.perf_counter() - started:.0f} s"
    )
    print()
    print(table(rows, args.tol))


if __name__ == "__main__":
    main()

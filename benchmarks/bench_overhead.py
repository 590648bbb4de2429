"""Wall-time overhead of ``KramersCallback(policy="observe")`` on a small CNN on sklearn's digits.

Trains :class:`~kramers_callback.examples.DigitsCNN` (9 802 parameters) with SGD (lr 0.1,
batch 32) on :class:`~kramers_callback.examples.DigitsDataModule` (1 348 training images) for
a fixed number of epochs, alternately without and with the callback (default arguments, so the
default 5% overhead budget), from the same seed, in one process. Reports the median wall time
of ``trainer.fit`` of each arm, their ratio (target ≤ 1.05), and the callback's own account:
estimates run and deferred, counted overhead (estimate work / training work, in
sample-passes), and the summed wall seconds of its estimates.

Usage::

    python benchmarks/bench_overhead.py --epochs 150 --repeats 3

A first, untimed warm-up fit with the callback (two epochs, unlimited budget) pays the
one-time costs of the process (imports, first autograd and ``vmap`` calls) before the
alternation starts. The ``observe`` runs are bit-identical to the plain ones in their
parameters (checked at the end), so the two arms do the same training work.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Any

import pytorch_lightning as pl
import torch
from _harness import QUIET_TRAINER

from kramers_callback.callback import KramersCallback
from kramers_callback.examples import ClassifierModule, DigitsCNN, DigitsDataModule

HOOKS = (
    "setup",
    "on_fit_start",
    "on_train_start",
    "on_train_epoch_start",
    "on_train_batch_start",
    "on_train_batch_end",
    "on_before_optimizer_step",
    "on_train_epoch_end",
)


class TimedKramersCallback(KramersCallback):
    """``KramersCallback`` that adds up the wall time spent inside its own hooks.

    The sum is the callback's self-time: unlike the difference of two runs' wall times, it
    does not drown in the machine's load noise. Lightning's cost of calling one more
    callback's hooks is not in it (it is in the wall-time ratio).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.self_seconds = 0.0
        for name in HOOKS:
            setattr(self, name, self._timed(getattr(self, name)))

    def _timed(self, hook: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return hook(*args, **kwargs)
            finally:
                self.self_seconds += time.perf_counter() - started

        return timed


def fit(
    epochs: int, callback: KramersCallback | None, seed: int
) -> tuple[float, float, torch.Tensor]:
    """Train once; return the wall and process-CPU seconds of ``trainer.fit`` and the final
    parameters."""
    pl.seed_everything(seed, verbose=False)
    module = ClassifierModule(DigitsCNN(), lr=0.1)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        callbacks=[] if callback is None else [callback],
        **QUIET_TRAINER,
    )
    data = DigitsDataModule(batch_size=32, seed=seed)
    data.setup("fit")
    started, cpu_started = time.perf_counter(), time.process_time()
    trainer.fit(module, datamodule=data)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return seconds, cpu, torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per arm")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    fit(2, KramersCallback("observe", overhead_budget=math.inf, verbose=False), args.seed)
    plain: list[float] = []
    observed: list[float] = []
    plain_cpu: list[float] = []
    observed_cpu: list[float] = []
    callbacks: list[TimedKramersCallback] = []
    self_time: list[float] = []
    final: dict[str, torch.Tensor] = {}
    for repeat in range(args.repeats):
        # Alternate which arm goes first, so a drift in machine load hits both alike.
        order = ("plain", "kramers") if repeat % 2 == 0 else ("kramers", "plain")
        for arm in order:
            callback = TimedKramersCallback("observe", verbose=False) if arm == "kramers" else None
            seconds, cpu, params = fit(args.epochs, callback, args.seed)
            (observed if arm == "kramers" else plain).append(seconds)
            (observed_cpu if arm == "kramers" else plain_cpu).append(cpu)
            final[arm] = params
            if callback is not None:
                callbacks.append(callback)
                self_time.append(callback.self_seconds / seconds)
            print(f"repeat {repeat} {arm:8s} {seconds:8.2f} s wall {cpu:8.2f} s cpu", flush=True)

    cb = callbacks[-1]
    kinds = [h["estimate"] for h in cb.history]
    ran = [h for h in cb.history if h["estimate"] != "deferred"]
    estimate_seconds = sum(h["metrics"].get("kramers/estimate_seconds", 0.0) for h in ran)
    result = {
        "epochs": args.epochs,
        "repeats": args.repeats,
        "threads": args.threads,
        "plain_s": plain,
        "kramers_s": observed,
        "plain_median_s": statistics.median(plain),
        "kramers_median_s": statistics.median(observed),
        "ratio": statistics.median(observed) / statistics.median(plain),
        "paired_ratio_median": statistics.median(
            k / p for k, p in zip(observed, plain, strict=True)
        ),
        "plain_cpu_median_s": statistics.median(plain_cpu),
        "kramers_cpu_median_s": statistics.median(observed_cpu),
        "cpu_ratio": statistics.median(observed_cpu) / statistics.median(plain_cpu),
        "self_time_fraction_median": statistics.median(self_time),
        "estimates": sum(k != "deferred" for k in kinds),
        "deferred": kinds.count("deferred"),
        "first_estimate_epoch": ran[0]["epoch"] if ran else None,
        "counted_overhead": cb.budget.overhead,
        "estimate_wall_s": estimate_seconds,
        "identical_parameters": bool(torch.equal(final["plain"], final["kramers"])),
    }
    print(
        f"median plain {result['plain_median_s']:.2f} s, with callback "
        f"{result['kramers_median_s']:.2f} s: ratio {result['ratio']:.3f} (target ≤ 1.05; "
        f"median of paired ratios {result['paired_ratio_median']:.3f}, process CPU time "
        f"ratio {result['cpu_ratio']:.3f}); callback self-time "
        f"{result['self_time_fraction_median']:.1%} of the fit; "
        f"{result['estimates']} estimates ({result['estimate_wall_s']:.2f} s), "
        f"{result['deferred']} deferred, counted overhead {result['counted_overhead']:.1%}, "
        f"identical parameters {result['identical_parameters']}"
    )
    return result


if __name__ == "__main__":
    main()

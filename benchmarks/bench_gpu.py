"""ResNet-18 on synthetic CIFAR-shaped data: what the Kramers callback costs on one GPU.

The network is the CIFAR variant of ResNet-18 (He et al. 2016; 3×3 stem, no max-pool, four
stages of two BasicBlocks with 64-128-256-512 channels, 11.2 M parameters at ``--width 64``),
written here so that nothing beyond torch is needed. The data are a fixed seeded random tensor
set (``--samples`` images of ``3 × S × S``, 10 classes labelled by a random linear teacher, so
the loss can fall); nothing is downloaded. SGD (lr 0.1, momentum 0.9), batch 256.

For each precision (``bf16-mixed``, ``32-true``) it runs, in one process:

1. a **warm-up fit with an estimate every epoch** (``overhead_budget=inf``, ``observe``): the
   Hessian-vector products and milliseconds of each estimate, the first cold, the later ones
   warm-started, and their cost in training steps;
2. four arms, **alternated** ``--repeats`` times, each a full ``trainer.fit``: no callback
   (``plain``); ``KramersCallback("observe")`` and ``KramersCallback("hybrid")`` at their
   defaults (5% budget); and ``stats``, the callback with every deferrable estimate deferred
   (``overhead_budget=1e-12``), whose training seconds per step (read between the epoch
   boundaries, so its one measuring estimate is not in them) against ``plain`` give the cost of
   the per-step statistics (loss blocks and the running noise estimator).

It prints the median paired wall ratios (callback / none), the estimates each arm made, the
per-estimate products and milliseconds, and the per-step statistics' cost. The defaults
finish in about 3–4 minutes on one H100/H200-class GPU.

Usage::

    python benchmarks/bench_gpu.py                      # one GPU, the defaults
    python benchmarks/bench_gpu.py --device cpu --width 4 --samples 16 --image-size 8 --epochs 2

Importing this module needs no GPU.
"""

from __future__ import annotations

import argparse
import math
import statistics
from typing import Any

import torch
from _harness import (
    STATS_OFF_BUDGET,
    RecordingKramers,
    alternate,
    estimate_log,
    fit,
    fmt_list,
    quiet,
)
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from kramers_callback.examples import ClassifierModule
from kramers_callback.examples._sampler import SeededTensorDataModule

PRECISIONS = ("bf16-mixed", "32-true")


class BasicBlock(nn.Module):
    """``conv3×3 → BN → ReLU → conv3×3 → BN`` plus the shortcut (a 1×1 conv + BN where the
    shape changes), then ReLU."""

    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.shortcut = nn.Sequential()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(
                nn.Conv2d(inputs, outputs, 1, stride=stride, bias=False), nn.BatchNorm2d(outputs)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR ResNet-18: 3×3 stem, no max-pool, stages of 2 BasicBlocks with ``w, 2w, 4w, 8w``
    channels (strides 1, 2, 2, 2), global average pool, linear head."""

    def __init__(self, width: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        blocks: list[nn.Module] = []
        inputs = width
        for stage, outputs in enumerate((width, 2 * width, 4 * width, 8 * width)):
            for block in range(2):
                stride = 2 if stage > 0 and block == 0 else 1
                blocks.append(BasicBlock(inputs, outputs, stride))
                inputs = outputs
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(inputs, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


class SyntheticCIFAR(SeededTensorDataModule):
    """``samples`` random images ``[3, S, S]`` (standard normal, seed ``data_seed``), labelled
    by the arg-max of a random linear map to 10 classes; no validation set."""

    num_classes = 10

    def __init__(
        self,
        samples: int,
        image_size: int,
        batch_size: int = 256,
        seed: int = 0,
        data_seed: int = 0,
    ) -> None:
        super().__init__(batch_size, seed, eval_batch_size=batch_size)
        self.samples, self.image_size, self.data_seed = samples, image_size, data_seed

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        generator = torch.Generator().manual_seed(self.data_seed)
        x = torch.randn(self.samples, 3, self.image_size, self.image_size, generator=generator)
        teacher = torch.randn(x[0].numel(), self.num_classes, generator=generator)
        y = (x.flatten(1) @ teacher).argmax(dim=1)
        self.train_set = TensorDataset(x, y)


def run_precision(args: argparse.Namespace, precision: str) -> dict[str, Any]:
    accelerator = "gpu" if args.device == "cuda" else "cpu"

    def run(callback: Any, epochs: int = args.epochs) -> Any:
        return fit(
            lambda: ClassifierModule(ResNet18(args.width), lr=0.1, momentum=0.9),
            lambda: SyntheticCIFAR(args.samples, args.image_size, args.batch_size, args.seed),
            epochs=epochs,
            callback=callback,
            accelerator=accelerator,
            precision=precision,
            seed=args.seed,
            limit_train_batches=args.steps,
        )

    every = run(
        RecordingKramers("observe", overhead_budget=math.inf),
        epochs=args.estimate_epochs,
    )
    every_log = estimate_log(every.callback)
    step_s = every.timer.seconds_per_step(skip_epochs=0)
    arms = alternate(
        {
            "plain": lambda: run(None),
            "observe": lambda: run(RecordingKramers("observe")),
            "hybrid": lambda: run(RecordingKramers("hybrid")),
            "stats": lambda: run(RecordingKramers("observe", overhead_budget=STATS_OFF_BUDGET)),
        },
        args.repeats,
    )
    logs = {name: estimate_log(arms.results[name][-1].callback) for name in ("observe", "hybrid")}
    first = logs["observe"].first_epoch  # 0-based; printed 1-based
    plain_step = arms.median_step_seconds("plain")
    warm = every_log.seconds[1:]
    result = {
        "precision": precision,
        "step_ms": 1000 * plain_step,
        "ratio_observe": arms.ratio("observe"),
        "ratio_hybrid": arms.ratio("hybrid"),
        "estimates_observe": logs["observe"].num_estimates,
        "estimates_hybrid": logs["hybrid"].num_estimates,
        "statuses_observe": logs["observe"].statuses,
        "first_epoch_observe": None if first is None else first + 1,
        "overhead_observe": logs["observe"].overhead,
        "overhead_hybrid": logs["hybrid"].overhead,
        "products": every_log.products,
        "estimate_ms": [1000 * s for s in every_log.seconds],
        "stats_step_ratio": arms.step_ratio("stats"),
        "stats_step_ms": 1000 * arms.step_difference("stats"),
    }
    batch = min(args.batch_size, args.samples)
    print(
        f"{precision}: training step {result['step_ms']:.2f} ms (plain, B = {batch})\n"
        f"  wall ratio observe {result['ratio_observe']:.3f} "
        f"({result['estimates_observe']} estimates, first at epoch (1-based) "
        f"{result['first_epoch_observe']}, status {result['statuses_observe']}, measured "
        f"overhead {result['overhead_observe']:.1%}); "
        f"hybrid {result['ratio_hybrid']:.3f} ({result['estimates_hybrid']} estimates, "
        f"overhead {result['overhead_hybrid']:.1%}); median of {args.repeats} paired repeats\n"
        f"  per estimate (estimate every epoch): products {fmt_list(every_log.products)}, "
        f"ms per estimate {fmt_list(every_log.seconds, 1000)} (first cold, then warm); "
        f"warm estimate = {statistics.median(warm or every_log.seconds) / step_s:.0f} "
        f"training steps\n"
        f"  per-step statistics: step time with the callback's per-step hooks / without "
        f"{result['stats_step_ratio']:.4f} ({result['stats_step_ms']:+.3f} ms per step)",
        flush=True,
    )
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument("--samples", type=int, default=20_480, help="training set size")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--width", type=int, default=64, help="channels of the first stage")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=6, help="epochs of each timed fit")
    parser.add_argument(
        "--steps", type=int, default=None, help="training steps per epoch at most (all: None)"
    )
    parser.add_argument("--estimate-epochs", type=int, default=3, help="epochs of the warm-up")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    quiet()
    if args.device not in ("cuda", "cpu"):
        parser.error(f"--device must be cuda or cpu, got {args.device!r}")
    if args.device == "cpu":
        torch.set_num_threads(1)
    parameters = sum(p.numel() for p in ResNet18(args.width).parameters())
    print(
        f"ResNet-18 (width {args.width}, {parameters} parameters), {args.samples} synthetic "
        f"images {args.image_size}², device "
        f"{torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'}",
        flush=True,
    )
    return {p: run_precision(args, p) for p in args.precision}


if __name__ == "__main__":
    main()

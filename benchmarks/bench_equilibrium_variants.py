r"""Which equilibrium test? Variants of the thermalization rule on the MNIST-1D CNN.

A minimal controller outside the callback, so that the test alone varies: plain SGD
(η₀ = 0.05, momentum 0.9, B = 32, no weight decay), at every epoch end the dwell's loss blocks
are tested by :func:`kramers_callback.signals.equilibrium.equilibrium_test` against the floor
``F = η_eff tr Σ_B / 4`` from exact per-sample gradients of a fixed 512-sample probe; when
thermalized and cooling is still worth it (``F ≥ L/c``) the learning rate is halved and the
dwell starts again; when thermalized and not worth it for ``patience`` epochs, training stops.

Variants (``--variant``):

- ``upper``: thermalized iff the trend's drop at its one-standard-error upper bound,
  ``max(0, −b̂ + se)·W``, is at most the cooling gain ``G`` (half-epoch minimum window; the
  residual standard error; stop when ``G < L/c`` at the first check).
- ``noise``: the shipped statistic ``max(0, −b̂)·W / max(G, 2·se·W) ≤ 1`` (one-epoch minimum
  window, stop on the whole removable floor ``F < L/c`` held for ``patience`` checks), without
  the first-dwell rule.
- ``shipped``: ``noise`` plus the first-dwell rule (``F ≥ L/2`` before the first cooling).

Per run it prints one line per epoch and a final line with the epochs run and the final
validation accuracy. Usage::

    python benchmarks/bench_equilibrium_variants.py --variant shipped --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from _harness import VALIDATED_TRAINER
from pytorch_lightning.callbacks import Callback

from kramers_callback._loss_blocks import Dwell, LossBlocks
from kramers_callback._probe import ProbeLoss
from kramers_callback.examples import MNIST1DCNN, ClassifierModule, MNIST1DDataModule
from kramers_callback.noise import per_sample_noise
from kramers_callback.noise.floor import cooling_gain, noise_floor
from kramers_callback.signals.equilibrium import equilibrium_test, loss_trend

VARIANTS = ("upper", "noise", "shipped")


def _upper_bound_test(blocks, *, floor: float, min_blocks: int):
    """The ``upper`` variant: one-standard-error upper bound of the drop against ``G``."""
    reading = equilibrium_test(blocks, floor=floor, min_blocks=min_blocks)
    if not reading.num_blocks:
        return reading
    window = list(blocks[len(blocks) - reading.num_blocks :])
    slope, error = loss_trend(window)
    drop = max(0.0, -slope + error) * reading.window_samples
    statistic = drop / reading.gain if reading.gain > 0 else math.nan
    return dataclasses.replace(reading, statistic=statistic, thermalized=statistic <= 1.0)


class _Controller(Callback):
    def __init__(self, variant: str, compute_cost: float, patience: int, probe: int) -> None:
        self.variant, self.c, self.patience, self.probe = variant, compute_cost, patience, probe
        self.blocks, self.dwell = LossBlocks(16), Dwell()
        self.seen, self.wait, self.cooled = 0, 0, False
        self.rows: list[dict[str, float | str]] = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.blocks.start_epoch(trainer.num_training_batches, pl_module.device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        n = len(batch[1])
        self.seen += n
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.blocks.add(loss, batch_idx=batch_idx, samples=n, position=self.seen)

    def _floor(self, trainer, pl_module, lr: float) -> float:
        data = trainer.datamodule.train_dataloader().dataset
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
        items = [data[int(i)] for i in order[: self.probe]]
        batch = (torch.stack([x for x, _ in items]), torch.stack([y for _, y in items]))
        pl_module.eval()
        moments = per_sample_noise(ProbeLoss(pl_module, lambda m, b: m.per_sample_loss(b), [batch]))
        pl_module.train()
        return noise_floor(
            lr=lr / (1 - 0.9),
            noise_trace=float(moments.noise_trace),
            batch_size=32,
            dataset_size=len(data),
        )

    def on_train_epoch_end(self, trainer, pl_module):
        epoch_blocks = self.blocks.read()
        self.dwell.extend(epoch_blocks)
        optimizer = trainer.optimizers[0]
        lr = optimizer.param_groups[0]["lr"]
        floor = self._floor(trainer, pl_module, lr)
        loss = sum(b.mean for b in epoch_blocks) / len(epoch_blocks)
        if self.variant == "upper":
            reading = _upper_bound_test(self.dwell.blocks, floor=floor, min_blocks=8)
            removable = cooling_gain(floor=floor)
        else:
            share = 0.5 if self.variant == "shipped" and not self.cooled else 0.0
            reading = equilibrium_test(
                self.dwell.blocks, floor=floor, min_blocks=16, min_floor_share=share
            )
            removable = floor
        action = ""
        if reading.thermalized and removable < loss / self.c:
            self.wait += 1
            action = f"wait {self.wait}"
            if self.wait >= self.patience:
                action, trainer.should_stop = "stop", True
        else:
            self.wait = 0
            if reading.thermalized:
                for group in optimizer.param_groups:
                    group["lr"] *= 0.5
                self.dwell.reset()
                self.cooled, action = True, "cool"
        accuracy = float(trainer.callback_metrics.get("val_acc", math.nan))
        self.rows.append(
            dict(
                epoch=trainer.current_epoch,
                lr=lr,
                loss=loss,
                floor=floor,
                statistic=reading.statistic,
                val_acc=accuracy,
                action=action,
            )
        )
        print(
            f"epoch {trainer.current_epoch:2d} lr {lr:.4g} loss {loss:.3f} floor {floor:.3f} "
            f"E {reading.statistic:.3g} val_acc {accuracy:.3f} {action}",
            flush=True,
        )


def run(variant: str, seed: int, *, epochs: int, compute_cost: float, patience: int) -> dict:
    torch.set_num_threads(1)
    pl.seed_everything(seed, verbose=False)
    module = ClassifierModule(MNIST1DCNN(), lr=0.05, momentum=0.9)
    controller = _Controller(variant, compute_cost, patience if variant != "upper" else 1, 512)
    trainer = pl.Trainer(max_epochs=epochs, callbacks=[controller], **VALIDATED_TRAINER)
    started = time.perf_counter()
    trainer.fit(module, datamodule=MNIST1DDataModule(batch_size=32, seed=seed))
    last = controller.rows[-1]
    return dict(
        variant=variant,
        seed=seed,
        epochs=len(controller.rows),
        final_val_acc=last["val_acc"],
        seconds=time.perf_counter() - started,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=VARIANTS, default="shipped")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--compute-cost", type=float, default=10.0)
    parser.add_argument("--patience", type=int, default=2)
    args = parser.parse_args(argv)
    for seed in args.seeds:
        result = run(
            args.variant,
            seed,
            epochs=args.epochs,
            compute_cost=args.compute_cost,
            patience=args.patience,
        )
        print("final", result, flush=True)


if __name__ == "__main__":
    main()

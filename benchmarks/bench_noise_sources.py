r"""Which ``tr Σ₁`` the noise floor should read: a fixed probe at one iterate, or the running
two-batch estimator along the epoch's trajectory, against the exact full-data value.

The MNIST-1D CNN is trained in a plain loop (SGD, η = 0.05, momentum 0.9, B = 32, no weight
decay, the settings of the outcome benchmark). At the chosen epoch ends it computes

- the exact ``tr Σ₁ = (1/(N−1)) Σ_i ‖g_i − ḡ‖²`` over all ``N`` training samples, from
  per-sample gradients (:func:`kramers_callback.noise.per_sample_gradients`);
- the same statistic on fixed probe sets, as the callback draws them once per fit (several
  seeded draws, at the budget ladder's smallest probe, 32 samples, and the default 256);
- the running two-batch estimate of the epoch
  (:class:`kramers_callback.noise.running.RunningNoiseEstimator`, fed as the callback feeds
  it: windows of 2 optimizer steps, one window in every ``noise_stride`` = 16);

and prints each as a ratio to the exact value. The floor ``F = η_eff tr Σ_B / 4`` is a
stationary average (docs/theory.md section 7.1, "Which noise"), so an estimator whose ratio
scatters far from 1 moves the floor, and with it the cooling decisions, by as much.

Usage::

    python benchmarks/bench_noise_sources.py --epochs 20 --at 1 9 13 19 --seed 0

A script, not a test; it needs the ``examples`` extra (mnist1d). Cost: one training run plus
one full per-sample gradient pass per chosen epoch (seconds on a CPU).
"""

from __future__ import annotations

import argparse
import statistics

import torch

from kramers_callback._probe import ProbeLoss
from kramers_callback.examples import MNIST1DCNN, MNIST1DDataModule
from kramers_callback.noise import per_sample_gradients
from kramers_callback.noise.running import RunningNoiseEstimator

NOISE_WINDOW = 2
NOISE_STRIDE = 16
"""The callback's defaults (``noise_window``, ``noise_stride``)."""


def per_sample_cross_entropy(model: torch.nn.Module, batch: tuple) -> torch.Tensor:
    x, y = batch
    return torch.nn.functional.cross_entropy(model(x), y, reduction="none")


def all_sample_gradients(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[N, d]``: every training sample's gradient at the current parameters
    (:func:`kramers_callback.noise.per_sample_gradients`)."""
    net.eval()  # no dropout or BatchNorm here; as the estimators take it
    try:
        probe = ProbeLoss(net, per_sample_cross_entropy, [(x, y)])
        return per_sample_gradients(probe, probe.batches[0], chunk_size=500)
    finally:
        net.train()


def noise_trace(gradients: torch.Tensor) -> float:
    """``(1/(n−1)) Σ_i ‖g_i − ḡ‖²`` of ``n`` per-sample gradients."""
    centred = gradients - gradients.mean(dim=0)
    return float(centred.pow(2).sum() / (len(gradients) - 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--at", type=int, nargs="+", default=[1, 9, 13, 19])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--probes", type=int, default=5, help="fixed probe draws per size")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    data = MNIST1DDataModule(batch_size=32, seed=args.seed)
    data.setup("fit")
    dataset = data.train_dataloader().dataset
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    y = torch.stack([torch.as_tensor(dataset[i][1]) for i in range(len(dataset))])
    n = len(x)
    probes = {
        size: [
            torch.randperm(n, generator=torch.Generator().manual_seed(k))[:size]
            for k in range(args.probes)
        ]
        for size in (32, 256)
    }
    net = MNIST1DCNN()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    print(
        "| epoch | train loss | exact tr Σ₁ | fixed probe 32 / exact | fixed probe 256 / exact "
        "| running two-batch / exact |"
    )
    print("|---|---|---|---|---|---|")
    for epoch in range(args.epochs):
        running = RunningNoiseEstimator(window=NOISE_WINDOW, dataset_size=n)
        order = torch.randperm(n)
        losses = []
        for step, start in enumerate(range(0, n - 31, 32)):
            batch = order[start : start + 32]
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(x[batch]), y[batch])
            loss.backward()
            losses.append(float(loss.detach()))
            if not (step // NOISE_WINDOW) % NOISE_STRIDE:
                flat = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
                running.update(flat, len(batch))
            optimizer.step()
        if epoch not in args.at:
            continue
        gradients = all_sample_gradients(net, x, y)
        exact = noise_trace(gradients)

        def ratios(size: int, gradients: torch.Tensor = gradients, exact: float = exact) -> str:
            values = sorted(noise_trace(gradients[i]) / exact for i in probes[size])
            return ", ".join(f"{v:.2f}" for v in values)

        two_batch = float(running.compute()["noise_trace"]) / exact
        print(
            f"| {epoch} | {statistics.fmean(losses):.3f} | {exact:.3g} | {ratios(32)} "
            f"| {ratios(256)} | {two_batch:.2f} |"
        )


if __name__ == "__main__":
    main()

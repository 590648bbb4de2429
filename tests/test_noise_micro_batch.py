"""Micro-batch noise estimates (kramers_callback.noise.micro_batch): exactness and unbiasedness."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from reference_problems import classification_data, classifier_mlp, cross_entropy, init_weights
from torch import nn

from kramers_callback._probe import ProbeLoss, concat_batches
from kramers_callback.noise import micro_batch_noise, micro_batch_noise_trace, per_sample_noise

DTYPE = torch.float64


def _squared_error(model: nn.Module, batch: Any) -> torch.Tensor:
    return 0.5 * (model(batch[0]).squeeze(-1) - batch[1]) ** 2


def _micro_batch_gradients(model: nn.Module, loss_fn, x, y, groups: list[torch.Tensor]):
    """``G_j`` of each index group, by autograd on the model's own parameters."""
    params = list(model.parameters())
    rows = []
    for idx in groups:
        loss = loss_fn(model, (x[idx], y[idx])).mean()
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    return torch.stack(rows)


def _by_hand(grads: torch.Tensor, b: int) -> tuple[float, float]:
    m = len(grads)
    scatter = (grads - grads.mean(0)).square().sum()
    trace = float(scatter * b / (m - 1))
    return trace, float(grads.mean(0).square().sum()) - trace / (m * b)


@pytest.mark.parametrize("train_mode_batchnorm", [False, True])
def test_matches_a_hand_computation_on_the_same_permutation(train_mode_batchnorm: bool) -> None:
    if train_mode_batchnorm:
        # Micro-batches are ordinary batches: BatchNorm in training mode is fine.
        model = init_weights(
            nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 3)).to(DTYPE)
        ).train()
    else:
        model = classifier_mlp()
    x, y = classification_data(n=20)
    b, m = 3, 6  # 2 samples left over
    probe = ProbeLoss(model, cross_entropy, [(x[:7], y[:7]), (x[7:], y[7:])])
    directions = torch.eye(probe.dim, dtype=DTYPE)[:2]
    moments = micro_batch_noise(
        probe,
        micro_batch_size=b,
        generator=torch.Generator().manual_seed(11),
        directions=directions,
    )
    order = torch.randperm(20, generator=torch.Generator().manual_seed(11))
    grads = _micro_batch_gradients(
        model, cross_entropy, x, y, [order[j * b : (j + 1) * b] for j in range(m)]
    )
    trace, norm_sq = _by_hand(grads, b)
    assert moments.noise_trace == pytest.approx(trace, rel=1e-10)
    assert moments.gradient_norm_sq == pytest.approx(norm_sq, rel=1e-10, abs=1e-12)
    torch.testing.assert_close(moments.mean_gradient, grads.mean(0), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(
        moments.directional_variance, grads[:, :2].var(0) * b, rtol=1e-10, atol=1e-12
    )
    assert moments.num_samples == m * b and moments.num_forward == m


def _regression_probe(n: int, seed: int = 4) -> tuple[ProbeLoss, nn.Module]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=DTYPE)
    y = x @ torch.tensor([1.0, -1.0, 2.0], dtype=DTYPE) + torch.randn(n, generator=g, dtype=DTYPE)
    model = init_weights(nn.Linear(3, 1).to(DTYPE))
    return ProbeLoss(model, _squared_error, [(x[:11], y[:11]), (x[11:], y[11:])]), model


def test_average_over_random_partitions_converges_to_the_per_sample_reference() -> None:
    # Unbiased for the finite probe (docstring derivation), remainder dropped: n = 26, b = 4.
    probe, _ = _regression_probe(n=26)
    directions = torch.eye(probe.dim, dtype=DTYPE)[[0, 3]]
    exact = per_sample_noise(probe, directions=directions)
    estimates = []
    for seed in range(16 * 32):
        est = micro_batch_noise(
            probe,
            micro_batch_size=4,
            generator=torch.Generator().manual_seed(seed),
            directions=directions,
        )
        estimates.append(
            [est.noise_trace, est.gradient_norm_sq, *est.directional_variance.tolist()]
        )
    # replicate × partition × statistic
    values = torch.tensor(estimates, dtype=DTYPE).reshape(16, 32, 4)
    target = torch.tensor(
        [exact.noise_trace, exact.gradient_norm_sq, *exact.directional_variance.tolist()],
        dtype=DTYPE,
    )
    spread = values.std(dim=(0, 1))  # one partition's spread, per statistic

    def rms_error(num_partitions: int) -> torch.Tensor:
        means = values[:, :num_partitions].mean(dim=1)
        return ((means - target) ** 2).mean(0).sqrt() / spread

    # 1/√R: sixteen times the partitions, about a quarter of the error, for every statistic.
    small, large = rms_error(2), rms_error(32)
    assert bool((large < small / 2).all()), (small, large)
    # All 512 partitions: the mean is within 3.4 standard errors (0.15 = 3.4/√512) of the target.
    grand_error = (values.mean(dim=(0, 1)) - target).abs() / spread
    assert bool((grand_error < 0.15).all()), grand_error


def test_class_ordered_data_biases_a_contiguous_split_but_not_the_shuffled_estimate() -> None:
    # Regression with an intercept and class-dependent targets, stored class by class: the
    # intercept gradient −y_i is ±3 by class, so contiguous micro-batches are class-pure.
    g = torch.Generator().manual_seed(7)
    n, b = 24, 4
    x = 0.3 * torch.randn(n, 2, generator=g, dtype=DTYPE)
    y = torch.cat([torch.full((12,), 3.0), torch.full((12,), -3.0)]).to(DTYPE)
    y = y + 0.3 * torch.randn(n, generator=g, dtype=DTYPE)
    model = nn.Linear(2, 1).to(DTYPE)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
    probe = ProbeLoss(model, _squared_error, [(x, y)])
    exact = per_sample_noise(probe).noise_trace

    contiguous = _micro_batch_gradients(
        model, _squared_error, x, y, [torch.arange(j * b, (j + 1) * b) for j in range(n // b)]
    )
    scatter = float((contiguous - contiguous.mean(0)).square().sum())
    biased = micro_batch_noise_trace(scatter=scatter, num_micro_batches=n // b, micro_batch_size=b)
    assert biased > 2.5 * exact  # about b = 4 times the between-class part

    shuffled = [
        micro_batch_noise(probe, micro_batch_size=b, generator=torch.Generator().manual_seed(s))
        for s in range(200)
    ]
    average = sum(est.noise_trace for est in shuffled) / len(shuffled)
    assert average == pytest.approx(exact, rel=0.1)


def test_private_generator_is_the_only_randomness() -> None:
    probe, _ = _regression_probe(n=26)
    global_state = torch.get_rng_state()
    first = micro_batch_noise(probe, micro_batch_size=5, generator=torch.Generator().manual_seed(3))
    second = micro_batch_noise(
        probe, micro_batch_size=5, generator=torch.Generator().manual_seed(3)
    )
    other = micro_batch_noise(probe, micro_batch_size=5, generator=torch.Generator().manual_seed(4))
    assert torch.equal(torch.get_rng_state(), global_state)
    assert first.noise_trace == second.noise_trace
    assert first.noise_trace != other.noise_trace


def test_non_finite_loss_raises() -> None:
    x, y = classification_data(n=12)
    x[5, 0] = float("nan")
    probe = ProbeLoss(classifier_mlp(), cross_entropy, [(x, y)])
    with pytest.raises(
        ValueError, match=r"must be finite \(the loss or its gradient is not finite"
    ):
        micro_batch_noise(probe, micro_batch_size=3, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"micro_batch_size": 0}, r"micro_batch_size must be an integer ≥ 1, got 0"),
        (
            {"micro_batch_size": 11},
            r"micro_batch_size must be ≤ 10 \(at least 2 micro-batches of the 20 probe samples\)"
            r", got 11",
        ),
        ({"micro_batch_size": 2, "generator": 0}, r"generator must be a torch.Generator, got 0"),
        (
            {"micro_batch_size": 2, "directions": torch.ones(3, 2, dtype=DTYPE)},
            r"directions must be a tensor of shape \[k, 45\]",
        ),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    x, y = classification_data(n=20)
    probe = ProbeLoss(classifier_mlp(), cross_entropy, [(x, y)])
    kwargs = {"generator": torch.Generator().manual_seed(0), **kwargs}
    with pytest.raises(ValueError, match=match):
        micro_batch_noise(probe, **kwargs)


def test_pure_trace_needs_two_micro_batches() -> None:
    assert micro_batch_noise_trace(scatter=6.0, num_micro_batches=4, micro_batch_size=3) == 6.0
    with pytest.raises(ValueError, match=r"num_micro_batches must be an integer ≥ 2, got 1"):
        micro_batch_noise_trace(scatter=1.0, num_micro_batches=1, micro_batch_size=3)


def test_dict_batches_spanning_probe_batches_give_the_same_estimate() -> None:
    x, y = classification_data(n=20)
    pairs = [(x[:7], y[:7]), (x[7:], y[7:])]
    dicts = [{"x": a, "y": b, "split": "train"} for a, b in pairs]

    def dict_loss(model: nn.Module, batch: dict) -> torch.Tensor:
        assert batch["split"] == "train"
        return cross_entropy(model, (batch["x"], batch["y"]))

    model = classifier_mlp()
    kwargs = {"micro_batch_size": 6}
    expected = micro_batch_noise(
        ProbeLoss(model, cross_entropy, pairs),
        generator=torch.Generator().manual_seed(9),
        **kwargs,
    )
    got = micro_batch_noise(
        ProbeLoss(model, dict_loss, dicts), generator=torch.Generator().manual_seed(9), **kwargs
    )
    assert got.noise_trace == pytest.approx(expected.noise_trace, rel=1e-12)


def test_concat_batches_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match=r"batches must hold tensors that agree beyond the batch"):
        concat_batches([torch.ones(2, 3), torch.ones(2, 4)])
    with pytest.raises(ValueError, match=r"batches must be a non-empty sequence"):
        concat_batches([])

"""The per-sample reference (kramers_callback.noise.per_sample) against naive autograd loops."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from reference_problems import classification_batches, classifier_mlp, cross_entropy, unit_rows
from torch import nn

from kramers_callback._probe import ProbeLoss, batch_size_of, select_samples
from kramers_callback.noise import per_sample_gradients, per_sample_noise

DTYPE = torch.float64


def naive_per_sample_gradients(model: nn.Module, loss_fn, batches: list[Any]) -> torch.Tensor:
    """One ``torch.autograd.grad`` of the model's own parameters per sample: the reference."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for batch in batches:
        for i in range(batch_size_of(batch)):
            loss = loss_fn(model, select_samples(batch, slice(i, i + 1))).sum()
            rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    return torch.stack(rows)


def reference_moments(grads: torch.Tensor, directions: torch.Tensor | None = None) -> dict:
    n = len(grads)
    trace = grads.var(dim=0, unbiased=True).sum()
    out = {
        "mean": grads.mean(0),
        "noise_trace": float(trace),
        "gradient_norm_sq": float(grads.mean(0).square().sum() - trace / n),
    }
    if directions is not None:
        out["directional"] = (grads @ directions.T).var(dim=0, unbiased=True)
    return out


def _assert_matches(moments, ref: dict, tol: float = 1e-10) -> None:
    assert moments.noise_trace == pytest.approx(ref["noise_trace"], rel=tol, abs=tol)
    assert moments.gradient_norm_sq == pytest.approx(ref["gradient_norm_sq"], rel=tol, abs=tol)
    torch.testing.assert_close(moments.mean_gradient, ref["mean"], rtol=tol, atol=tol)
    if "directional" in ref:
        torch.testing.assert_close(
            moments.directional_variance, ref["directional"], rtol=tol, atol=tol
        )


@pytest.mark.parametrize("chunk_size", [1, 4, 64])
def test_mlp_matches_naive_loop(chunk_size: int) -> None:
    model = classifier_mlp()
    batches = classification_batches()
    probe = ProbeLoss(model, cross_entropy, batches)
    directions = unit_rows(3, probe.dim)
    moments = per_sample_noise(probe, directions=directions, chunk_size=chunk_size)
    ref = reference_moments(naive_per_sample_gradients(model, cross_entropy, batches), directions)
    _assert_matches(moments, ref)
    assert moments.num_samples == 23
    # One batched (vmap) forward per chunk: ⌈10/c⌉ + ⌈13/c⌉.
    assert moments.num_forward == -(-10 // chunk_size) + -(-13 // chunk_size)
    assert moments.directional_variance.shape == (3,)


def test_linear_regression_matches_closed_form_covariance() -> None:
    # ℓ_i = ½(x_iᵀθ − y_i)², g_i = r_i x_i with r = Xθ − y: Σ₁ from the data by matrix algebra.
    g = torch.Generator().manual_seed(2)
    n, p = 40, 4
    x = torch.randn(n, p, generator=g, dtype=DTYPE)
    y = x @ torch.randn(p, generator=g, dtype=DTYPE) + 0.3 * torch.randn(
        n, generator=g, dtype=DTYPE
    )
    model = nn.Linear(p, 1, bias=False).to(DTYPE)
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, p, generator=g, dtype=DTYPE))

    def loss_fn(m: nn.Module, batch: Any) -> torch.Tensor:
        return 0.5 * (m(batch[0]).squeeze(-1) - batch[1]) ** 2

    r = x @ model.weight.detach().squeeze(0) - y
    mean = x.T @ r / n
    cov = (x.T @ (r.square()[:, None] * x) - n * torch.outer(mean, mean)) / (n - 1)
    directions = unit_rows(2, p)

    probe = ProbeLoss(model, loss_fn, [(x[:25], y[:25]), (x[25:], y[25:])])
    moments = per_sample_noise(probe, directions=directions)
    assert moments.noise_trace == pytest.approx(float(torch.trace(cov)), rel=1e-12)
    torch.testing.assert_close(moments.mean_gradient, mean, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(
        moments.directional_variance, torch.einsum("kp,pq,kq->k", directions, cov, directions)
    )
    assert moments.gradient_norm_sq == pytest.approx(
        float(mean.square().sum() - torch.trace(cov) / n), rel=1e-12
    )


def test_linear_regression_at_the_truth_converges_to_the_population_covariance() -> None:
    # At θ = w*, r_i = −ε_i independent of x_i ~ N(0, I): Σ₁ = s² I, tr Σ₁ = p s².
    p, s = 3, 0.5
    w_star = torch.tensor([1.0, -2.0, 0.5], dtype=DTYPE)

    def loss_fn(m: nn.Module, batch: Any) -> torch.Tensor:
        return 0.5 * (m(batch[0]).squeeze(-1) - batch[1]) ** 2

    errors = {}
    for n in (200, 20000):
        replicate_errors = []
        for seed in range(3):
            g = torch.Generator().manual_seed(100 + seed)
            x = torch.randn(n, p, generator=g, dtype=DTYPE)
            y = x @ w_star + s * torch.randn(n, generator=g, dtype=DTYPE)
            model = nn.Linear(p, 1, bias=False).to(DTYPE)
            with torch.no_grad():
                model.weight.copy_(w_star[None])
            moments = per_sample_noise(ProbeLoss(model, loss_fn, [(x, y)]), chunk_size=4096)
            replicate_errors.append(abs(moments.noise_trace - p * s**2))
        errors[n] = max(replicate_errors)
    assert errors[20000] < errors[200] / 3
    assert errors[20000] < 0.05 * p * s**2


def test_preconditioning_scale_multiplies_per_sample_gradients() -> None:
    model = classifier_mlp()
    batches = classification_batches()
    plain = ProbeLoss(model, cross_entropy, batches)
    scale = torch.linspace(0.5, 2.0, plain.dim, dtype=DTYPE)
    scaled = ProbeLoss(model, cross_entropy, batches, scale=scale)
    grads = naive_per_sample_gradients(model, cross_entropy, batches)

    torch.testing.assert_close(
        per_sample_gradients(scaled, batches[1], chunk_size=5),
        scale * grads[10:],
        rtol=1e-12,
        atol=1e-14,
    )
    _assert_matches(per_sample_noise(scaled), reference_moments(scale * grads))


class _ItemModel(nn.Module):
    """Calls ``.item()`` in forward, which ``vmap`` cannot batch."""

    def __init__(self) -> None:
        super().__init__()
        self.net = classifier_mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.abs().max().item() > 1e6:  # data-dependent Python control flow
            x = x.clamp(-1e6, 1e6)
        return self.net(x)


def test_vmap_failure_falls_back_to_a_loop_with_one_warning() -> None:
    model = _ItemModel()
    batches = classification_batches()
    probe = ProbeLoss(model, cross_entropy, batches)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        moments = per_sample_noise(probe, chunk_size=4)
    fallbacks = [w for w in caught if "vmap failed" in str(w.message)]
    assert len(fallbacks) == 1
    _assert_matches(
        moments, reference_moments(naive_per_sample_gradients(model, cross_entropy, batches))
    )
    assert moments.num_forward == 1 + 23  # the failed vmap trace, then one pass per sample


def test_batchnorm_in_eval_mode() -> None:
    model = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 3)).to(DTYPE)
    batches = classification_batches()
    with torch.no_grad():  # non-trivial running statistics
        for x, _ in batches:
            model(3.0 * x + 1.0)
    model.eval()
    probe = ProbeLoss(model, cross_entropy, batches)
    moments = per_sample_noise(probe, chunk_size=8)
    _assert_matches(
        moments, reference_moments(naive_per_sample_gradients(model, cross_entropy, batches))
    )


def test_dict_batches_with_non_tensor_leaves() -> None:
    model = classifier_mlp()
    pairs = classification_batches()
    batches = [{"x": x, "y": y, "split": "train"} for x, y in pairs]

    def loss_fn(m: nn.Module, batch: dict) -> torch.Tensor:
        assert batch["split"] == "train"
        return nn.functional.cross_entropy(m(batch["x"]), batch["y"], reduction="none")

    moments = per_sample_noise(ProbeLoss(model, loss_fn, batches), chunk_size=6)
    _assert_matches(
        moments, reference_moments(naive_per_sample_gradients(model, cross_entropy, pairs))
    )


def test_non_finite_loss_raises() -> None:
    model = classifier_mlp()
    batches = classification_batches()
    batches[1][0][2, 1] = float("nan")  # probe index 12
    with pytest.raises(ValueError, match=r"not finite .* first at probe index 12"):
        per_sample_noise(ProbeLoss(model, cross_entropy, batches))


def test_wrongly_shaped_loss_is_reported_not_swallowed_by_the_fallback() -> None:
    model = classifier_mlp()
    batches = classification_batches()

    def mean_loss(m: nn.Module, batch: Any) -> torch.Tensor:
        return cross_entropy(m, batch).mean()

    with pytest.raises(ValueError, match=r"loss_fn must return per-sample losses of shape \[1\]"):
        per_sample_noise(ProbeLoss(model, mean_loss, batches))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"chunk_size": 0}, r"chunk_size must be an integer ≥ 1, got 0"),
        (
            {"directions": torch.ones(39, dtype=DTYPE)},
            r"directions must be a tensor of shape \[k, 45\] with k ≥ 1, got \(39,\)",
        ),
        (
            {"directions": torch.full((1, 45), float("inf"), dtype=DTYPE)},
            r"directions must have finite entries, got non-finite values",
        ),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    probe = ProbeLoss(classifier_mlp(), cross_entropy, classification_batches())
    with pytest.raises(ValueError, match=match):
        per_sample_noise(probe, **kwargs)


def test_one_sample_probe_raises() -> None:
    x, y = classification_batches()[0]
    probe = ProbeLoss(classifier_mlp(), cross_entropy, [(x[:1], y[:1])])
    with pytest.raises(
        ValueError, match=r"probe must hold at least 2 samples for a variance, got 1"
    ):
        per_sample_noise(probe)

"""Temperatures and their factors (kramers_callback.noise.temperature), against enumeration."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from kramers_callback._probe import ProbeLoss
from kramers_callback.noise import (
    directional_temperature,
    directional_variance,
    effective_lr,
    finite_population_factor,
    gradient_noise_scale,
    isotropic_temperature,
    per_sample_noise,
)

DTYPE = torch.float64


def _tiny_data(n: int = 6, p: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, p, generator=g, dtype=DTYPE)


def _population_variance(data: torch.Tensor) -> torch.Tensor:
    """``σ² = (1/N) Σ (x − x̄)(x − x̄)ᵀ``, the data set's own covariance.

    This is the ``Σ₁`` of docs/theory.md section 2.3.
    """
    centred = data - data.mean(0)
    return centred.T @ centred / len(data)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 4, 5, 6])
def test_finite_population_factor_is_the_exact_variance_of_a_batch_without_replacement(
    batch_size: int,
) -> None:
    data = _tiny_data()
    n = len(data)
    means = torch.stack(
        [data[list(s)].mean(0) for s in itertools.combinations(range(n), batch_size)]
    )
    # Every subset is equally likely: the exact covariance of the batch mean.
    exact = (means - data.mean(0)).T @ (means - data.mean(0)) / len(means)
    factor = finite_population_factor(batch_size=batch_size, dataset_size=n)
    torch.testing.assert_close(exact, _population_variance(data) * factor, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_factor_without_dataset_size_is_the_variance_of_a_batch_with_replacement(
    batch_size: int,
) -> None:
    data = _tiny_data(n=5)
    n = len(data)
    means = torch.stack(
        [data[list(s)].mean(0) for s in itertools.product(range(n), repeat=batch_size)]
    )
    exact = (means - data.mean(0)).T @ (means - data.mean(0)) / len(means)
    factor = finite_population_factor(batch_size=batch_size)
    assert factor == pytest.approx(1.0 / batch_size)
    torch.testing.assert_close(exact, _population_variance(data) * factor, rtol=1e-12, atol=1e-14)


def test_directional_temperature_is_half_the_sgd_step_variance_along_v_over_lr() -> None:
    # Projecting θ ← θ − η g_B on v: Var = η² vᵀΣ_B v = 2 η T_v (docs/theory.md section 2.2),
    # enumerated exactly.
    data = _tiny_data(n=7, p=3)
    n, lr, batch_size = len(data), 0.3, 3
    v = torch.tensor([1.0, -2.0, 0.5], dtype=DTYPE)
    v = v / v.norm()
    steps = torch.stack(
        [-lr * data[list(s)].mean(0) @ v for s in itertools.combinations(range(n), batch_size)]
    )
    step_variance = float(((steps - steps.mean()) ** 2).mean())
    t_v = directional_temperature(
        lr=lr,
        directional_variance=float(v @ _population_variance(data) @ v),
        batch_size=batch_size,
        dataset_size=n,
    )
    assert step_variance == pytest.approx(2.0 * lr * t_v, rel=1e-12)


class _IsotropicNoise(nn.Module):
    """``ℓ_i(θ) = ½‖θ‖² + a_iᵀθ``: per-sample gradients ``θ + a_i``, so ``Σ₁ = Cov(a)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.linspace(-1.0, 1.0, dim, dtype=DTYPE))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.theta.square().sum() + a @ self.theta


def _isotropic_offsets(n: int, dim: int, sigma: float) -> torch.Tensor:
    """Centred ``a_i`` whose sample covariance (``1/(n − 1)``) is exactly ``σ² I``."""
    g = torch.Generator().manual_seed(0)
    basis = torch.cat(
        [torch.ones(n, 1, dtype=DTYPE), torch.randn(n, dim, generator=g, dtype=DTYPE)], 1
    )
    q, _ = torch.linalg.qr(basis)
    return sigma * math.sqrt(n - 1) * q[:, 1:]  # orthonormal columns, orthogonal to 1


def test_isotropic_and_directional_temperature_agree_for_isotropic_noise() -> None:
    dim, n, sigma = 5, 12, 0.7
    model = _IsotropicNoise(dim)
    a = _isotropic_offsets(n, dim, sigma)
    probe = ProbeLoss(model, lambda m, batch: m(batch), [a[:5], a[5:]])
    moments = per_sample_noise(probe)
    assert moments.noise_trace == pytest.approx(dim * sigma**2, rel=1e-12)

    g = torch.Generator().manual_seed(1)
    directions = torch.randn(4, dim, generator=g, dtype=DTYPE)
    directions = directions / directions.norm(dim=1, keepdim=True)
    variances = directional_variance(probe, directions)
    torch.testing.assert_close(variances, torch.full((4,), sigma**2, dtype=DTYPE))

    kwargs = {"lr": effective_lr(lr=0.05, momentum=0.9), "batch_size": 4, "dataset_size": 1000}
    t_iso = isotropic_temperature(noise_trace=moments.noise_trace, dim=dim, **kwargs)
    t_dir = directional_temperature(directional_variance=variances, **kwargs)
    assert isinstance(t_dir, torch.Tensor) and t_dir.shape == (4,)
    torch.testing.assert_close(t_dir, torch.full((4,), t_iso, dtype=DTYPE))


def test_temperature_scales_as_lr_over_batch_size() -> None:
    # docs/theory.md section 2.1: T ∝ η/B (exactly, with replacement).
    base = isotropic_temperature(lr=0.1, noise_trace=3.0, dim=10, batch_size=8)
    assert base == pytest.approx(0.1 * 3.0 / 8 / 20)
    assert isotropic_temperature(lr=0.2, noise_trace=3.0, dim=10, batch_size=16) == pytest.approx(
        base
    )
    assert isotropic_temperature(lr=0.1, noise_trace=3.0, dim=10, batch_size=16) == pytest.approx(
        base / 2
    )


def test_full_batch_has_zero_temperature() -> None:
    assert (
        isotropic_temperature(lr=0.1, noise_trace=3.0, dim=4, batch_size=50, dataset_size=50) == 0
    )


def test_effective_lr() -> None:
    assert effective_lr(lr=0.1) == pytest.approx(0.1)
    assert effective_lr(lr=0.1, momentum=0.9) == pytest.approx(1.0)


def test_gradient_noise_scale() -> None:
    assert gradient_noise_scale(noise_trace=6.0, gradient_norm_sq=2.0) == pytest.approx(3.0)
    assert gradient_noise_scale(noise_trace=6.0, gradient_norm_sq=0.0) == math.inf
    assert gradient_noise_scale(noise_trace=6.0, gradient_norm_sq=-0.5) == math.inf


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: finite_population_factor(batch_size=0),
            r"batch_size must be an integer ≥ 1, got 0",
        ),
        (
            lambda: finite_population_factor(batch_size=11, dataset_size=10),
            r"batch_size must be ≤ dataset_size = 10, got 11",
        ),
        (
            lambda: finite_population_factor(batch_size=1, dataset_size=1),
            r"dataset_size must be an integer ≥ 2, got 1",
        ),
        (lambda: effective_lr(lr=0.1, momentum=1.0), r"momentum must be in \[0.0, 1.0\), got 1.0"),
        (lambda: effective_lr(lr=-0.1), r"lr must be a finite number ≥ 0, got -0.1"),
        (
            lambda: isotropic_temperature(lr=0.1, noise_trace=-1.0, dim=3, batch_size=2),
            r"noise_trace must be a finite number ≥ 0, got -1.0",
        ),
        (
            lambda: isotropic_temperature(lr=0.1, noise_trace=1.0, dim=0, batch_size=2),
            r"dim must be an integer ≥ 1, got 0",
        ),
        (
            lambda: directional_temperature(
                lr=0.1, directional_variance=torch.tensor([1.0, -1.0]), batch_size=2
            ),
            r"directional_variance must hold finite numbers ≥ 0, got tensor",
        ),
        (
            lambda: directional_temperature(lr=0.1, directional_variance=math.nan, batch_size=2),
            r"directional_variance must be a finite number ≥ 0, got nan",
        ),
        (
            lambda: gradient_noise_scale(noise_trace=1.0, gradient_norm_sq=math.nan),
            r"gradient_norm_sq must be a finite number, got nan",
        ),
    ],
)
def test_bad_arguments_raise_with_the_rule(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()

"""Directional variances by forward-mode JVP (kramers_callback.noise.directional)."""

from __future__ import annotations

import warnings

import pytest
import torch
from reference_problems import classification_batches, classifier_mlp, cross_entropy, unit_rows
from torch import nn

from kramers_callback._probe import ProbeLoss
from kramers_callback.noise import directional_variance, per_sample_noise

DTYPE = torch.float64


def test_jvp_matches_the_per_sample_reference() -> None:
    probe = ProbeLoss(classifier_mlp(), cross_entropy, classification_batches())
    directions = unit_rows(4, probe.dim)
    reference = per_sample_noise(probe, directions=directions).directional_variance
    before = probe.num_forward
    variances = directional_variance(probe, directions)
    torch.testing.assert_close(variances, reference, rtol=1e-10, atol=1e-12)
    assert probe.num_forward - before == 4 * 2  # one forward-mode pass per direction and batch


def test_preconditioned_coordinates_match_the_reference() -> None:
    plain = ProbeLoss(classifier_mlp(), cross_entropy, classification_batches())
    scale = torch.linspace(0.3, 3.0, plain.dim, dtype=DTYPE)
    probe = ProbeLoss(classifier_mlp(), cross_entropy, classification_batches(), scale=scale)
    directions = unit_rows(2, probe.dim)
    reference = per_sample_noise(probe, directions=directions).directional_variance
    torch.testing.assert_close(
        directional_variance(probe, directions), reference, rtol=1e-10, atol=1e-12
    )


def test_central_difference_converges_to_the_jvp() -> None:
    probe = ProbeLoss(classifier_mlp(), cross_entropy, classification_batches())
    directions = unit_rows(3, probe.dim)
    exact = directional_variance(probe, directions)
    errors = [
        float(
            (directional_variance(probe, directions, method="central_difference", step=h) - exact)
            .abs()
            .max()
        )
        for h in (1e-1, 1e-2, 1e-3)
    ]
    # Truncation error O(h²): each tenfold smaller step, about a hundredfold smaller error.
    assert errors[1] < errors[0] / 30 and errors[2] < errors[1] / 30
    default = directional_variance(probe, directions, method="central_difference")
    torch.testing.assert_close(default, exact, rtol=1e-7, atol=1e-10)


class _NoForwardAD(torch.autograd.Function):
    """An old-style custom op: reverse mode only, unusable by torch.func transforms."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.tanh(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * (1 - torch.tanh(x) ** 2)


class _CustomOpModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = classifier_mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](_NoForwardAD.apply(self.net[0](x)))


def test_missing_forward_ad_falls_back_to_central_difference_with_one_warning() -> None:
    # The reference: same network with torch.tanh (identical maths, forward AD available).
    directions = unit_rows(
        2, ProbeLoss(classifier_mlp(), cross_entropy, classification_batches()).dim
    )
    reference = directional_variance(
        ProbeLoss(classifier_mlp(), cross_entropy, classification_batches()), directions
    )
    probe = ProbeLoss(_CustomOpModel(), cross_entropy, classification_batches())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        variances = directional_variance(probe, directions)
    assert len([w for w in caught if "falling back to central differences" in str(w.message)]) == 1
    torch.testing.assert_close(variances, reference, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("method", ["jvp", "central_difference"])
def test_non_finite_loss_raises(method: str) -> None:
    batches = classification_batches()
    batches[0][0][4, 0] = float("nan")
    probe = ProbeLoss(classifier_mlp(), cross_entropy, batches)
    with pytest.raises(ValueError, match=r"directional derivatives must be finite .*not finite"):
        directional_variance(probe, unit_rows(1, probe.dim), method=method)


@pytest.mark.parametrize(
    ("directions", "kwargs", "match"),
    [
        (torch.ones(45, dtype=DTYPE), {}, r"directions must be a tensor of shape \[k, 45\]"),
        (torch.ones(2, 44, dtype=DTYPE), {}, r"directions must be a tensor of shape \[k, 45\]"),
        (torch.zeros(1, 45, dtype=DTYPE), {}, r"directions must have non-zero rows"),
        (torch.ones(1, 45, dtype=DTYPE), {"method": "fd"}, r"method must be one of .*, got 'fd'"),
        (
            torch.ones(1, 45, dtype=DTYPE),
            {"step": 0.0},
            r"step must be a finite number > 0, got 0.0",
        ),
    ],
)
def test_bad_arguments(directions: torch.Tensor, kwargs: dict, match: str) -> None:
    probe = ProbeLoss(classifier_mlp(), cross_entropy, classification_batches())
    with pytest.raises(ValueError, match=match):
        directional_variance(probe, directions, **kwargs)

"""SGD's batch-noise temperature from gradient-noise moments (docs/theory.md section 2).

Pure maths on plain numbers (and, for directional variances, tensors): no model, no autograd.
Every argument is validated, so a bad one raises
``ValueError("<argument> must be <rule>, got <value>")``.

Symbols (docs/theory.md section 0): ``Σ₁ = Cov_i(g_i)`` is the per-sample gradient covariance, ``B``
the samples per optimizer step, ``N`` the training-set size, ``d`` the number of parameters and
``lr`` the effective step size ``η_eff = η / (1 − β)`` (see :func:`effective_lr`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from kramers_callback._validation import (
    check_in_range,
    check_non_negative,
    check_positive_int,
)

__all__ = [
    "directional_temperature",
    "effective_lr",
    "finite_population_factor",
    "gradient_noise_scale",
    "isotropic_temperature",
]


def effective_lr(*, lr: float, momentum: float = 0.0) -> float:
    r"""The step size that enters the temperature for SGD with heavy-ball momentum ``β``.

    .. math::

        \eta_\text{eff} = \frac{\eta}{1 - \beta}.

    Source: docs/theory.md section 0. With momentum the update is a geometric sum of past gradients,
    ``Σ_k β^k = 1/(1 − β)``, so over times long compared with ``1/(1 − β)`` steps the drift and
    the noise are both those of plain SGD with step ``η/(1 − β)``. Assumes the loss changes
    little over ``1/(1 − β)`` steps; holds for Nesterov momentum to the same order.
    Cost: ``O(1)``.
    """
    lr = check_non_negative("lr", lr)
    momentum = check_in_range("momentum", momentum, 0.0, 1.0, high_open=True)
    return lr / (1.0 - momentum)


def finite_population_factor(*, batch_size: int, dataset_size: int | None = None) -> float:
    r"""``Σ_B / Σ₁``: the covariance of a batch-mean gradient per unit per-sample covariance.

    .. math::

        \Sigma_B = \Sigma_1\,\frac{N - B}{B\,(N - 1)} \quad\text{(without replacement)},
        \qquad \Sigma_B = \frac{\Sigma_1}{B} \quad\text{(with replacement, } N = \text{None)}.

    Source: docs/theory.md section 2.3; the variance of a simple random sample mean (Cochran,
    *Sampling Techniques*, 1977, theorem 2.2). Here ``Σ₁ = (1/N) Σ_i (g_i − g)(g_i − g)ᵀ`` is the
    data set's own covariance; the probe estimators (sample covariance with ``1/(n − 1)``) are
    unbiased for ``N/(N − 1)·Σ₁``, a relative difference ``1/(N − 1)`` that is ignored. A full
    batch (``B = N``) has no noise. Assumes each batch is a uniformly random subset (a
    shuffled loader). Cost: ``O(1)``.
    """
    b = check_positive_int("batch_size", batch_size)
    if dataset_size is None:
        return 1.0 / b
    n = check_positive_int("dataset_size", dataset_size, minimum=2)
    if b > n:
        raise ValueError(f"batch_size must be ≤ dataset_size = {n}, got {b}")
    return (n - b) / (b * (n - 1))


def isotropic_temperature(
    *,
    lr: float,
    noise_trace: float,
    dim: int,
    batch_size: int,
    dataset_size: int | None = None,
) -> float:
    r"""The seed's isotropic temperature.

    .. math::

        T = \frac{\eta_\text{eff}\,\operatorname{tr}\Sigma_B}{2d},
        \qquad \operatorname{tr}\Sigma_B = \operatorname{tr}\Sigma_1 \cdot
        \text{finite\_population\_factor}(B, N).

    Source: docs/theory.md section 2.1 (the seed's ``T = η⟨‖∇L_B − ∇L‖²⟩/2d``, with
    ``⟨‖∇L_B − ∇L‖²⟩ = tr Σ_B``). ``lr`` is ``η_eff`` (:func:`effective_lr`). Assumes the noise is
    spread evenly over the ``d`` directions; SGD noise is not, so escapes use
    :func:`directional_temperature`. Cost: ``O(1)``.
    """
    lr = check_non_negative("lr", lr)
    noise_trace = check_non_negative("noise_trace", noise_trace)
    d = check_positive_int("dim", dim)
    factor = finite_population_factor(batch_size=batch_size, dataset_size=dataset_size)
    return lr * noise_trace * factor / (2.0 * d)


def directional_temperature(
    *,
    lr: float,
    directional_variance: float | Tensor,
    batch_size: int,
    dataset_size: int | None = None,
) -> float | Tensor:
    r"""Temperature of the SGD noise along a unit direction ``v`` (elementwise over a tensor).

    .. math::

        T_v = \frac{\eta_\text{eff}\, v^\top \Sigma_B v}{2},
        \qquad v^\top\Sigma_B v = v^\top\Sigma_1 v \cdot \text{finite\_population\_factor}(B, N).

    Source: docs/theory.md section 2.2. Projecting ``θ ← θ − η g_B`` on ``v`` gives a noise variance
    ``η² vᵀΣ_B v`` per step, which is ``2ηT_v`` in the Langevin form
    ``dθ = −η∇L dt + √(2ηT) dW``. For isotropic ``Σ₁ = σ²I`` it equals
    :func:`isotropic_temperature`. Assumes ``‖v‖ = 1`` (for another length the result scales
    with ``‖v‖²``). ``directional_variance`` is ``vᵀΣ₁v``, a float or a tensor of them; a tensor
    comes back as a tensor on its device. Cost: ``O(k)``.
    """
    lr = check_non_negative("lr", lr)
    factor = finite_population_factor(batch_size=batch_size, dataset_size=dataset_size)
    if isinstance(directional_variance, Tensor):
        values = directional_variance.detach()
        if not bool(torch.isfinite(values).all()) or bool((values < 0).any()):
            raise ValueError(
                f"directional_variance must hold finite numbers ≥ 0, got {directional_variance!r}"
            )
        return directional_variance * (lr * factor / 2.0)
    variance = check_non_negative("directional_variance", directional_variance)
    return lr * variance * factor / 2.0


def gradient_noise_scale(*, noise_trace: float, gradient_norm_sq: float) -> float:
    r"""The gradient noise scale (the "critical batch size" of McCandlish et al. 2018).

    .. math::

        B_\text{noise} = \frac{\operatorname{tr}\Sigma_1}{\|g\|^2}.

    Source: McCandlish et al. 2018, "An empirical model of large-batch training", eq. 2.7
    (``B_simple``). Batches much smaller than ``B_noise`` are noise-dominated. Returns ``inf``
    when ``‖g‖² ≤ 0`` (an unbiased estimate of ``‖g‖²`` can be ``≤ 0`` at a minimum).
    Cost: ``O(1)``.
    """
    noise_trace = check_non_negative("noise_trace", noise_trace)
    try:
        norm_sq = float(gradient_norm_sq)
    except (TypeError, ValueError):
        norm_sq = math.nan
    if not math.isfinite(norm_sq):
        raise ValueError(f"gradient_norm_sq must be a finite number, got {gradient_norm_sq!r}")
    if norm_sq <= 0.0:
        return math.inf
    return noise_trace / norm_sq

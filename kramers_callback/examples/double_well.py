"""The double well ``L(x, y) = x⁴ − 3x² + y²`` with exact per-sample noise.

Each sample ``i`` tilts the landscape by a fixed vector ``a_i``:

.. math::

    ℓ_i(θ) = x^4 - 3x^2 + y^2 + a_i^⊤ θ, \\qquad θ = (x, y),

so ``g_i = ∇L(θ) + a_i``. The ``a_i`` are built exactly centred (``Σ_i a_i = 0``) with an
exactly chosen covariance ``Σ₁ = (1/N) Σ_i a_i a_iᵀ``: then the mean loss is ``L`` itself and
the per-sample gradient covariance is ``Σ₁`` at every ``θ``. SGD on
batches of ``B`` samples drawn without replacement is the Langevin-like walk

.. math::

    θ ← θ - η\\,(∇L(θ) + \\bar a_B),\\qquad \\operatorname{Cov}(\\bar a_B) = Σ_B
    = Σ_1 \\frac{N - B}{B(N - 1)},

whose temperature along ``x`` is ``T_x = η Σ_{B,xx} / 2`` and whose escape rate over the saddle
``(0, 0)`` is, per step (docs/theory.md section 1.2),

.. math::

    k = η\\,\\frac{\\sqrt{λ_0 |λ_b|}}{2π}\\,e^{-ΔL/T_x}, \\qquad λ_0 = 12,\\ λ_b = -6,\\ ΔL = 9/4.

Minima ``(±√1.5, 0)``; saddle ``(0, 0)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from kramers_callback._validation import check_in_range, check_positive, check_positive_int
from kramers_callback.examples._sampler import EpochSeededSampler

MINIMUM_X = math.sqrt(1.5)
"""The minima are at ``(±√1.5, 0)``."""
BARRIER_HEIGHT = 9.0 / 4.0
"""``ΔL = L(0, 0) − L(±√1.5, 0)``."""
WELL_CURVATURE_X = 12.0
"""``∂²L/∂x²`` at a minimum (``∂²L/∂y² = 2`` everywhere)."""
SADDLE_CURVATURE_X = -6.0
"""``∂²L/∂x²`` at the saddle."""


# -- pure maths --------------------------------------------------------------------------------
def double_well_loss(theta: Tensor) -> Tensor:
    """``L(θ) = x⁴ − 3x² + y²`` for ``θ = (x, y)`` in the last dimension."""
    x, y = theta[..., 0], theta[..., 1]
    return x**4 - 3 * x**2 + y**2


def batch_covariance(covariance: Tensor, batch_size: int, num_samples: int) -> Tensor:
    """``Σ_B = Σ₁ (N − B) / (B (N − 1))``: covariance of a batch mean drawn without replacement."""
    return covariance * (num_samples - batch_size) / (batch_size * (num_samples - 1))


def predicted_escape_rate(lr: float, noise_variance_x: float) -> float:
    """Kramers rate per step out of either well, ``η √(λ₀|λ_b|)/(2π) · exp(−ΔL / T_x)``.

    ``noise_variance_x`` is ``Σ_{B,xx}``, the variance of the batch-mean tilt along ``x``;
    ``T_x = η Σ_{B,xx} / 2``. Assumes ``ΔL / T_x ≳ 4`` (Kramers' high-barrier limit) and a small
    step ``η λ₀ ≪ 2``; docs/theory.md section 1.3 reports measured rates at 0.90–0.96 of
    it for ``η = 0.01``.
    """
    temperature = lr * noise_variance_x / 2
    prefactor = lr * math.sqrt(WELL_CURVATURE_X * abs(SADDLE_CURVATURE_X)) / (2 * math.pi)
    return prefactor * math.exp(-BARRIER_HEIGHT / temperature)


def centred_samples(
    num_samples: int, covariance: Tensor | Sequence[Sequence[float]], seed: int = 0
) -> Tensor:
    """``N`` vectors ``a_i`` with ``Σ_i a_i = 0`` and ``(1/N) Σ_i a_i a_iᵀ = covariance`` exactly.

    Gaussian draws ``z_i`` (private generator) are centred, then mapped by
    ``a_i = L_S L_C^{-1} z_i`` with ``C = (1/N) Σ z_i z_iᵀ = L_C L_Cᵀ`` and ``S = L_S L_Sᵀ`` the
    chosen covariance (Cholesky factors), so the sample covariance is ``L_S L_Sᵀ = S`` up to
    float64 rounding. Cost ``O(N d² + d³)``.

    Returns: float64 ``Tensor[N, d]``.
    """
    check_positive_int("seed", seed, minimum=0)
    target = torch.as_tensor(covariance, dtype=torch.float64)
    if target.dim() != 2 or target.shape[0] != target.shape[1]:
        raise ValueError(f"covariance must be a square matrix, got shape {tuple(target.shape)}")
    dim = target.shape[0]
    check_positive_int("num_samples", num_samples, minimum=dim + 1)
    chol_target, info = torch.linalg.cholesky_ex(target)
    if not torch.equal(target, target.T) or int(info) != 0:
        raise ValueError(f"covariance must be symmetric positive definite, got {target.tolist()}")
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(num_samples, dim, generator=generator, dtype=torch.float64)
    z = z - z.mean(dim=0)
    chol_sample = torch.linalg.cholesky(z.T @ z / num_samples)
    whitened = torch.linalg.solve_triangular(chol_sample, z.T, upper=False).T
    return whitened @ chol_target.T


def next_well(well: Tensor, x: Tensor, core: float) -> Tensor:
    """Well labels (+1 right, −1 left) after a step to ``x`` (elementwise, any shape).

    A walker changes well only on reaching the other well's core, ``well·x ≤ −core``. The
    hysteresis keeps a walker that jitters across the saddle from counting as many escapes:
    only a committed transition counts, which is what the Kramers rate describes.
    """
    return torch.where(well * x <= -core, -well, well)


# -- Lightning plumbing ------------------------------------------------------------------------
class DoubleWellModule(pl.LightningModule):
    """SGD on the double well with per-sample tilts from :class:`DoubleWellDataModule`.

    The parameters are ``θ = (x, y)``, initialised in the right-hand well ``(√1.5, 0)``.
    Each optimizer step updates the current well with :func:`next_well` and counts escapes
    (transitions to the other well's core). Logged on the steps the logger writes
    (``trainer.log_every_n_steps``): ``well`` (±1), ``escapes`` (the running count, which
    includes every step), ``x``, ``y``, ``potential`` (``L(θ)`` without the tilt) and
    ``train_loss``. ``well`` and ``escapes`` are buffers, so they are saved in checkpoints.

    Args:
        lr: learning rate ``η > 0``; stable below ``2/12``.
        momentum: SGD momentum ``β ∈ [0, 1)``.
        init: starting point ``(x, y)``; defaults to the right-hand minimum.
        core: ``|x|`` at which a walker counts as having reached a well, in ``(0, √1.5]``.
    """

    def __init__(
        self,
        lr: float = 0.02,
        momentum: float = 0.0,
        init: tuple[float, float] | None = None,
        core: float = 0.5 * MINIMUM_X,
    ) -> None:
        super().__init__()
        check_positive("lr", lr)
        check_in_range("momentum", momentum, 0.0, 1.0, high_open=True)
        check_in_range("core", core, 0.0, MINIMUM_X, low_open=True)
        start = (MINIMUM_X, 0.0) if init is None else tuple(init)
        if len(start) != 2 or not all(math.isfinite(float(v)) for v in start):
            raise ValueError(f"init must be two finite numbers (x, y), got {init!r}")
        self.save_hyperparameters()
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.core = float(core)
        self.theta = nn.Parameter(torch.tensor([float(v) for v in start]))
        self.register_buffer("well", torch.tensor(-1 if start[0] < 0 else 1, dtype=torch.int64))
        self.register_buffer("escapes", torch.tensor(0, dtype=torch.int64))

    def per_sample_loss(self, batch: Any) -> Tensor:
        """``ℓ_i(θ) = L(θ) + a_iᵀθ`` for ``batch = (a,)`` or ``a`` of shape ``[n, 2]``."""
        a = batch[0] if isinstance(batch, (list, tuple)) else batch
        return double_well_loss(self.theta) + a.to(self.theta.dtype) @ self.theta

    def _logging_step(self) -> bool:
        # A step of this model costs far less than a call of self.log, so values are logged
        # only on the steps the logger writes (every trainer.log_every_n_steps).
        connector = getattr(self._trainer, "_logger_connector", None)
        return bool(getattr(connector, "should_update_logs", True))

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        losses = self.per_sample_loss(batch)
        loss = losses.mean()
        if self._logging_step():
            self.log("train_loss", loss, batch_size=len(losses))
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        theta = self.theta.detach()
        well = next_well(self.well, theta[0], self.core)
        self.escapes += (well != self.well).long()
        self.well.copy_(well)
        if self._logging_step():
            self.log_dict(
                {
                    "well": self.well.float(),
                    "escapes": self.escapes.float(),
                    "x": theta[0],
                    "y": theta[1],
                    "potential": double_well_loss(theta),
                },
                batch_size=1,
            )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum)


class DoubleWellDataModule(pl.LightningDataModule):
    """``N`` tilt vectors ``a_i`` with exactly zero mean and exactly the chosen covariance.

    With the defaults (``N = 16 000``, ``B = 16``, ``Σ₁ = diag(900, 100)``) and the recipe's
    ``η = 0.02``: ``Σ_{B,xx} = 56.2``, ``T_x = 0.562``, ``ΔL/T_x = 4.0`` and the predicted rate
    is about ``4.9·10⁻⁴`` escapes per step (simulation: about 0.93 of it): an escape about
    every other 1 000-step epoch, about ten in the recipe's 20 epochs. The ``y`` noise is
    weaker on purpose: the isotropic temperature ``η tr Σ_B / (2d)`` then understates ``T_x``,
    the case docs/theory.md section 2.2 warns about.

    ``batch_size`` is read by :meth:`train_dataloader` on every call; shuffling is drawn from
    ``(seed, epoch)``. Batches are ``[a]`` with ``a`` of shape ``[n, 2]`` (float32).

    Args:
        num_samples: ``N``.
        batch_size: ``B``.
        covariance: ``Σ₁``, a symmetric positive definite 2×2 matrix.
        seed: seeds the samples and the shuffling.
    """

    def __init__(
        self,
        num_samples: int = 16_000,
        batch_size: int = 16,
        covariance: list[list[float]] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.num_samples = check_positive_int("num_samples", num_samples, minimum=3)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.seed = check_positive_int("seed", seed, minimum=0)
        self.covariance = [[900.0, 0.0], [0.0, 100.0]] if covariance is None else covariance
        shape = tuple(torch.as_tensor(self.covariance, dtype=torch.float64).shape)
        if shape != (2, 2):
            raise ValueError(f"covariance must be a 2×2 matrix, got {self.covariance!r}")
        # Built here, not in setup, so bad covariances fail at construction.
        self.samples = centred_samples(num_samples, self.covariance, seed).to(torch.float32)
        self.train_set = TensorDataset(self.samples)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=EpochSeededSampler(self.train_set, self.seed),
        )

"""``estimate()``: temperature, curvature, barriers and escape rate of a model on a probe set.

This module is torch plumbing only: the maths lives in :mod:`kramers_callback.kramers`
(closed forms), :mod:`kramers_callback.noise`, :mod:`kramers_callback.curvature` and
:mod:`kramers_callback.barriers`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import Tensor

from kramers_callback.barriers.line_scan import PathwayStatus


@dataclass(frozen=True)
class Pathway:
    """One escape direction ``v`` and what the Kramers formula makes of it.

    ``rate`` is ``None`` unless ``status`` is :attr:`PathwayStatus.BARRIER`.
    """

    name: str
    """``"top1+"``, ``"top1-"``, …, ``"min+"``, ``"min-"``."""
    curvature: float
    """``λ₀ = vᵀHv`` at the current point."""
    temperature: float
    """Directional temperature ``T_v = η_eff vᵀΣ_B v / 2``."""
    status: PathwayStatus
    barrier: float | None = None
    """``ΔL = φ(s*) − φ(0)``."""
    barrier_curvature: float | None = None
    """``λ_b = φ''(s*) < 0``."""
    distance: float | None = None
    """``s*``: the barrier top is at ``x₀ + s*·v``."""
    rate: float | None = None
    """Escapes per optimizer step along this pathway."""
    num_forward: int = 0
    """Loss evaluations the scan used."""


@dataclass
class KramersEstimate:
    """Everything one call of :func:`estimate` measured. Rates are per optimizer step."""

    temperature: float
    """The seed's isotropic temperature ``T = η_eff tr Σ_B / (2d)``."""
    noise_trace: float
    """``tr Σ₁``: per-sample gradient variance summed over coordinates."""
    gradient_norm_sq: float
    """Unbiased estimate of ``‖g‖²`` on the probe set."""
    noise_scale: float
    """``B_noise = tr Σ₁ / ‖g‖²`` (McCandlish et al. 2018); ``inf`` when ``‖g‖² ≤ 0``."""
    lambda_max: float
    lambda_min: float
    """Most negative (or smallest) Hessian eigenvalue: the saddle curvature."""
    eigenvalues: list[float]
    """Top-k eigenvalues, descending."""
    hessian_trace: float
    escape_rate: float
    """All pathways in parallel (seed 7.1): ``Σ_i k_i``."""
    escape_time: float
    """``1 / escape_rate`` steps (``inf`` for a zero rate)."""
    barrier: float | None
    """Barrier of the dominant (fastest) pathway; ``None`` when no pathway has a barrier."""
    attempt_frequency: float
    """``A = Σ_i η_eff ω₀ᵢ ω_bᵢ / 2π`` over the pathways with a barrier."""
    pathways: list[Pathway]
    lr: float
    """``η_eff = η / (1 − β)``."""
    batch_size: int
    dim: int
    num_samples: int
    """Probe samples used."""
    converged: dict[str, bool] = field(default_factory=dict)
    """Per iterative routine: ``{"top": …, "min": …, "trace": …}``."""
    num_hvp: int = 0
    num_forward: int = 0
    seconds: float = 0.0
    eigenvectors: Tensor | None = field(default=None, repr=False)
    """Top-k eigenvectors ``[k, d]`` in the estimate's coordinates, for a warm start."""
    min_eigenvector: Tensor | None = field(default=None, repr=False)

    @property
    def finite(self) -> bool:
        """All headline numbers are finite (``inf`` escape time and noise scale are allowed)."""
        values = [
            self.temperature,
            self.noise_trace,
            self.lambda_max,
            self.lambda_min,
            self.hessian_trace,
            self.escape_rate,
        ]
        return all(math.isfinite(v) for v in values)

    @property
    def all_converged(self) -> bool:
        return all(self.converged.values())

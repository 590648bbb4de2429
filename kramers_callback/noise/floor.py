r"""The noise floor: the part of the training loss that SGD's temperature holds up.

Pure maths on plain numbers (docs/theory.md section "The equilibrium regime").

In a locally quadratic basin ``L ≈ L₀ + ½ δθᵀHδθ`` SGD with step ``η_eff`` and batch-noise
covariance ``Σ_B`` has, for small ``η_eff λ``, a stationary covariance ``S`` that solves the
Lyapunov equation ``HS + SH = η_eff Σ_B`` (Mandt, Hoffman & Blei 2017, "Stochastic gradient
descent as approximate Bayesian inference", eq. 12). Then ``E[L − L₀] = ½ tr(HS) =
η_eff tr Σ_B / 4``: the trace of ``HS + SH`` is ``2 tr(HS)``, whatever ``H`` is. Cooling the
temperature by a factor ``r`` (``η → rη`` or ``B → B/r``) lowers the floor to ``r`` of itself,
so one cooling step can remove ``(1 − r)`` of it, after a relaxation time of order
``1/(2 r η_eff λ)`` steps in a direction of curvature ``λ``.
"""

from __future__ import annotations

import math

from kramers_callback._validation import check_in_range, check_non_negative
from kramers_callback.noise.temperature import finite_population_factor

__all__ = ["COOLING_FACTOR", "cooling_factor", "cooling_gain", "noise_floor"]

COOLING_FACTOR = 0.5
r"""The factor ``r`` by which one cooling step multiplies the temperature.

A step from ``T`` to ``rT`` removes ``(1 − r)F`` of the floor ``F``, and the walker needs a
relaxation time ``∝ 1/(rη)`` steps (cooling by ``η``) or the same number of samples (cooling by
``B → B/r``, each step ``1/r`` times dearer) to collect it. The gain per unit of compute is
``∝ r(1 − r)``, largest at ``r = 1/2``; as every later step has the same shape (the floor and
the relaxation rate both scale with ``T``), cooling by halves is also the fastest way down a
sequence of floors. It depends on no property of the network or the data.
"""


def noise_floor(
    *, lr: float, noise_trace: float, batch_size: int, dataset_size: int | None = None
) -> float:
    r"""Predicted excess loss of SGD's stationary state above the basin's bottom.

    .. math::

        F = E[L - L_0] = \frac{\eta_{\text{eff}}\,\operatorname{tr}\Sigma_B}{4},
        \qquad \Sigma_B = \Sigma_1\,\frac{N - B}{B (N - 1)}

    (``1/B`` with replacement). Equals ``d·T/2`` with the seed's isotropic temperature
    ``T = η_eff tr Σ_B / 2d`` (equipartition: ``T/2`` per direction).

    Args:
        lr: ``η_eff`` (momentum included: :func:`~kramers_callback.noise.effective_lr`).
        noise_trace: ``tr Σ₁`` of the per-sample gradients.
        batch_size: ``B`` samples per optimizer step.
        dataset_size: ``N`` for the finite-population factor, ``None`` with replacement.

    Assumptions: locally quadratic loss, ``η_eff λ_max ≪ 1``, ``Σ_B`` constant over the
    basin, every direction relaxed (directions with a relaxation time longer than the time
    since the last change hold less than their share). Cost: ``O(1)``.
    """
    lr = check_non_negative("lr", lr)
    noise_trace = check_non_negative("noise_trace", noise_trace)
    factor = finite_population_factor(batch_size=batch_size, dataset_size=dataset_size)
    return lr * noise_trace * factor / 4.0


def cooling_gain(*, floor: float, factor: float = COOLING_FACTOR) -> float:
    r"""Loss that one cooling step by ``factor = r`` removes from a floor ``F``:
    ``(1 − r)·F``. Cost: ``O(1)``."""
    floor = check_non_negative("floor", floor, allow_inf=True)
    factor = check_in_range("factor", factor, 0.0, 1.0, low_open=True)
    return (1.0 - factor) * floor


def cooling_factor(*, max_change: float) -> float:
    r"""The cooling factor within one decision's limit: ``max(COOLING_FACTOR, 1/max_change)``.

    ``max_change`` bounds how far one decision moves a knob
    (``KramersCallback(max_change=...)``), so a limit below 2 makes each cooling step smaller
    than the optimum ``r = 1/2``. Cost: ``O(1)``.
    """
    max_change = check_in_range(
        "max_change", max_change, 1.0, math.inf, low_open=True, high_open=True
    )
    return max(COOLING_FACTOR, 1.0 / max_change)

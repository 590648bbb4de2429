"""Gradient-noise variance along given directions, without per-sample gradients
(docs/theory.md section 2.2).

The directional temperature ``T_v = η_eff vᵀΣ_B v / 2`` needs only ``vᵀΣ₁v = Var_i(vᵀg_i)``,
and ``vᵀg_i`` is the directional derivative of the per-sample loss ``ℓ_i`` along ``v``: one
forward-mode product per direction, never a ``d``-sized per-sample gradient.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.func import jvp

from kramers_callback._probe import ProbeLoss
from kramers_callback._validation import check_choice, check_positive
from kramers_callback.noise.moments import StreamingMoments, check_directions, describe_error

__all__ = ["directional_variance"]

METHODS = ("jvp", "central_difference")


def _losses_fn(probe: ProbeLoss, batch: Any) -> Callable[[Tensor], Tensor]:
    def losses(x: Tensor) -> Tensor:
        return probe.check_losses(probe.per_sample_losses(x, batch), batch).to(probe.dtype)

    return losses


def _jvp_derivatives(probe: ProbeLoss, x: Tensor, batch: Any, v: Tensor) -> Tensor:
    """``vᵀ∇ℓ_i(x)`` for the samples of ``batch``: one forward-mode pass."""
    losses, derivatives = jvp(_losses_fn(probe, batch), (x,), (v,))
    # A non-finite loss would otherwise surface as a plausible-looking derivative.
    return torch.where(torch.isfinite(losses), derivatives, torch.full_like(derivatives, math.nan))


def _central_derivatives(probe: ProbeLoss, x: Tensor, batch: Any, v: Tensor, step: float) -> Tensor:
    """``(ℓ_i(x + h v) − ℓ_i(x − h v)) / 2h`` with ``h ‖v‖ = step``: two forward passes."""
    h = step / float(v.norm())
    losses = _losses_fn(probe, batch)
    with torch.no_grad():
        return (losses(x + h * v) - losses(x - h * v)) / (2.0 * h)


def directional_variance(
    probe: ProbeLoss,
    directions: Tensor,
    *,
    method: str = "jvp",
    step: float | None = None,
) -> Tensor:
    r"""Unbiased per-sample variance of the directional derivatives ``vᵀg_i``, one per row ``v``.

    .. math::

        \widehat{v^\top\Sigma_1 v}
        = \frac{1}{n-1}\sum_{i=1}^{n}\big(\partial_v\ell_i - \overline{\partial_v\ell}\big)^2,
        \qquad \partial_v\ell_i = v^\top\nabla_x\ell_i(x_0)
        = \frac{d}{ds}\,\ell_i(x_0 + s v)\Big|_{s=0}.

    Source: docs/theory.md section 2.2 (``vᵀg_i`` is a directional derivative of the per-sample
    losses); it equals the ``directional_variance`` of
    :func:`~kramers_callback.noise.per_sample_noise`, without its ``d``-sized gradients.

    ``method="jvp"`` (default): ``torch.func.jvp`` of the per-sample losses along ``v``, exact
    to rounding. If forward-mode AD is missing for an op of the model, one warning and the
    central difference below. ``method="central_difference"``:

    .. math::

        \partial_v\ell_i \approx \frac{\ell_i(x_0 + h v) - \ell_i(x_0 - h v)}{2h},
        \qquad h\,\|v\| = \text{step},

    with error ``O(h²‖v‖³ ∂³ℓ)`` from truncation plus ``O(ε_mach |ℓ| / h)`` from rounding;
    the default ``step = ε_mach^{1/3}`` balances the two for losses and derivatives of order
    one (about ``6·10⁻⁶`` in float64, ``5·10⁻³`` in float32). A line scan along ``v``
    evaluates ``ℓ_i(x₀ ± h v)`` anyway, so it can share these passes.

    Args:
        probe: the probe-set loss; the model should be in eval mode (each sample's loss
            must depend on that sample only).
        directions: ``[k, d]``, one direction per row in the probe's coordinates; for the
            directional temperature the rows are unit vectors.
        method: ``"jvp"`` or ``"central_difference"``.
        step: displacement length ``h‖v‖`` of the central difference.

    Returns:
        ``Tensor[k]`` of unbiased variances ``vᵀΣ₁v``.

    Cost: per direction and probe batch, one forward-mode pass (about 1.5–3 forward passes;
    counted as one in ``probe.num_forward``) or two forward passes for the central difference;
    memory ``O(n_b·k)`` besides one forward pass. Raises ``ValueError`` when a loss or
    directional derivative is not finite, the probe has fewer than 2 samples, or its loss is a
    :class:`~kramers_callback._probe.BatchMeanLoss` (no per-sample spread to measure).
    """
    check_choice("method", method, METHODS)
    probe.require_per_sample("directional_variance")
    n = probe.num_samples
    if n < 2:
        raise ValueError(f"probe must hold at least 2 samples for a variance, got {n}")
    x = probe.x0.detach()
    if step is None:
        step = torch.finfo(x.dtype).eps ** (1.0 / 3.0)
    step = check_positive("step", step)
    V = check_directions(directions, probe.dim, x)
    assert V is not None
    if bool((V.norm(dim=1) == 0).any()):
        raise ValueError("directions must have non-zero rows, got a zero row")
    use_jvp = method == "jvp"
    moments = StreamingMoments()
    for batch in probe.batches:
        columns = []
        for v in V:
            if use_jvp:
                try:
                    columns.append(_jvp_derivatives(probe, x, batch, v))
                    continue
                except (RuntimeError, NotImplementedError) as err:
                    # A genuine model error reappears in the central difference and propagates.
                    use_jvp = False
                    warnings.warn(
                        "directional_variance: forward-mode AD (torch.func.jvp) failed for this "
                        f"model ({describe_error(err)}); falling back to central differences of "
                        "the per-sample losses",
                        UserWarning,
                        stacklevel=2,
                    )
            columns.append(_central_derivatives(probe, x, batch, v, step))
        block = torch.stack(columns, dim=1)
        if not bool(torch.isfinite(block).all()):
            raise ValueError(
                "per-sample directional derivatives must be finite (the loss or its gradient is "
                "not finite at the current parameters), got non-finite values"
            )
        moments.update(block)
    return moments.variance()

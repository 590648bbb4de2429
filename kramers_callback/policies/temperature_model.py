r"""The temperature model ``T(η, B)`` against a target ``T*(η, B)``, and the clamped one-knob
moves every policy is built from (docs/theory.md section 4.3).

.. math::

    T(\eta, B) = \frac{\eta_{\text{eff}}\,\operatorname{tr}\Sigma_1}{2d}\,g(B),
    \qquad \eta_{\text{eff}} = \frac{\eta}{1 - \beta},
    \qquad g(B) = \frac{N - B}{B (N - 1)} \ \text{(or } 1/B \text{ with replacement)}.

Every directional temperature ``T_v`` has the same ``η_eff·g(B)`` factor, so steering ``T``
steers all of them by the same ratio (the common multiplier of
:func:`kramers_callback.kramers.critical_temperature_scale`). Pure maths: no Lightning.
"""

from __future__ import annotations

import math

from kramers_callback.limits import ControlLimits, stability_limit
from kramers_callback.noise.temperature import effective_lr, isotropic_temperature
from kramers_callback.policies.base import TargetFn

__all__ = ["TemperatureModel"]


class TemperatureModel:
    """The temperature model ``T(η, B)``, the target ``T*(η, B)`` and the clamped moves.

    Both moves solve ``T = T*`` along one knob inside its clamp window. The gap
    ``ln T − ln T*`` increases with ``η`` (``T ∝ η``; ``T*`` falls as the attempt frequency
    ``A ∝ η`` grows) and decreases with ``B`` (``T`` falls; ``T*`` rises as the step budget
    ``τ = samples/B`` shrinks), so each solve is a bisection on a monotone function. A target
    that is undefined (``nan``: no escape reachable) counts as "too cold".
    """

    def __init__(
        self,
        *,
        target: TargetFn,
        noise_trace: float,
        dim: int,
        dataset_size: int | None,
        momentum: float,
        lambda_max: float,
        limits: ControlLimits,
    ) -> None:
        self.target = target
        self.noise_trace = noise_trace
        self.dim = dim
        self.dataset_size = dataset_size
        self.momentum = momentum
        self.limits = limits
        self.stability = stability_limit(lambda_max=lambda_max, momentum=momentum)
        self.limited_by: list[str] = []

    def temperature(self, lr: float, batch_size: int) -> float:
        return isotropic_temperature(
            lr=effective_lr(lr=lr, momentum=self.momentum),
            noise_trace=self.noise_trace,
            dim=self.dim,
            batch_size=batch_size,
            dataset_size=self.dataset_size,
        )

    def gap(self, lr: float, batch_size: int) -> float:
        """``ln T(η, B) − ln T*(η, B)``: positive means too hot."""
        target = float(self.target(lr, batch_size))
        if not (math.isfinite(target) and target > 0):
            return -math.inf
        temperature = self.temperature(lr, batch_size)
        return math.log(temperature) - math.log(target) if temperature > 0 else -math.inf

    def _note(self, name: str) -> None:
        if name not in self.limited_by:
            self.limited_by.append(name)

    def cap_lr(self, lr: float) -> float:
        """``η`` brought strictly under the stability limit, which beats every other clamp:
        no target is worth an unstable step size."""
        if lr >= self.stability:
            self._note("stability")
            return math.nextafter(self.stability, 0.0)
        return lr

    def move_lr(self, lr: float, batch_size: int) -> tuple[float, bool]:
        """``η'`` solving ``T = T*`` at fixed ``B`` within the clamps, and whether it sits at
        its upper bound (``lr_max`` or the stability limit), where heating turns to ``B``."""
        limits = self.limits
        low, low_name = max((lr / limits.max_change, "max_change"), (limits.lr_min, "lr_min"))
        high, high_name = min((lr * limits.max_change, "max_change"), (limits.lr_max, "lr_max"))
        if high >= self.stability:
            high, high_name = math.nextafter(self.stability, 0.0), "stability"
        if low > high:  # the stability limit is below every allowed η
            self._note("stability")
            return high, True
        if self.gap(low, batch_size) >= 0:
            new = low
            if low < lr:
                self._note(low_name)
        elif self.gap(high, batch_size) <= 0:
            new = high
            if high > lr or high_name == "stability":
                self._note(high_name)
        else:
            a, b = math.log(low), math.log(high)
            for _ in range(80):  # relative precision ~ 2^-80 of the window: far below float
                mid = 0.5 * (a + b)
                if self.gap(math.exp(mid), batch_size) > 0:
                    b = mid
                else:
                    a = mid
            new = math.exp(0.5 * (a + b))
        at_upper = new == high and high_name in ("lr_max", "stability")
        return new, at_upper

    def move_batch(self, lr: float, batch_size: int) -> tuple[int, bool]:
        """``B'`` on a multiple of the unit nearest (in ``|ln T − ln T*|``) to ``T = T*`` at
        fixed ``η`` within the clamps, and whether it sits at ``batch_max`` (growing) or
        ``batch_min`` (shrinking)."""
        limits = self.limits
        unit = limits.batch_multiple
        low = max(limits.batch_min, batch_size / limits.max_change)
        high = min(limits.batch_max, batch_size * limits.max_change)
        first, last = math.ceil(low / unit), math.floor(high / unit)
        if first > last:  # no multiple of the unit inside the window: hold
            return batch_size, False
        gap = lambda k: self.gap(lr, k * unit)  # noqa: E731 — decreasing in k
        if gap(first) <= 0:
            k = first
            if gap(first) < 0 and first * unit < batch_size:
                self._note("batch_min" if low == limits.batch_min else "max_change")
        elif gap(last) >= 0:
            k = last
            if gap(last) > 0 and last * unit > batch_size:
                self._note("batch_max" if high == limits.batch_max else "max_change")
        else:
            a, b = first, last  # gap(a) > 0 ≥ gap(b)
            while b - a > 1:
                mid = (a + b) // 2
                a, b = (mid, b) if gap(mid) > 0 else (a, mid)
            k = a if abs(gap(a)) < abs(gap(b)) else b
        new = k * unit
        growing = new > batch_size or (new == batch_size and self.gap(lr, new) > 0)
        at_bound = new + unit > limits.batch_max if growing else new - unit < limits.batch_min
        return new, at_bound

r"""A nearly free ``tr Σ₁`` estimate from the training steps' own gradients.

The two-batch estimator (McCandlish et al. 2018, "An empirical model of large-batch
training", appendix A): the squared norm of a batch gradient ``G_B`` obeys

.. math::

    \mathbb E\,\|G_B\|^2 = \|g\|^2 + \operatorname{tr}\Sigma_1 \cdot x_B, \qquad
    x_B = \text{finite\_population\_factor}(B, N)\ (= 1/B \text{ with replacement}),

a line in ``x_B``. Two batch sizes give two points on it: its slope is ``tr Σ₁`` and its
intercept ``‖g‖²``. :class:`RunningNoiseEstimator` gets the two sizes from the training loop
for free: ``window`` consecutive step gradients (small batches of ``B``) and their
sample-weighted mean (one big batch of ``window·B``), or each data-parallel rank's local
gradient and the all-reduced one (:meth:`RunningNoiseEstimator.update_pair`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from kramers_callback._validation import check_positive_int
from kramers_callback.noise.temperature import finite_population_factor, gradient_noise_scale

__all__ = [
    "RunningNoiseEstimator",
    "two_batch_gradient_norm_sq",
    "two_batch_noise_trace",
]

Number = float | Tensor


def _check_factors(small_factor: Number, big_factor: Number) -> None:
    if isinstance(small_factor, Tensor) or isinstance(big_factor, Tensor):
        return
    if not (math.isfinite(small_factor) and math.isfinite(big_factor) and big_factor >= 0):
        raise ValueError(
            f"big_factor must be a finite number ≥ 0 and small_factor finite, got "
            f"{big_factor!r} and {small_factor!r}"
        )
    if not small_factor > big_factor:
        raise ValueError(
            f"small_factor must be > big_factor = {big_factor!r} (the small batch is the "
            f"noisier one), got {small_factor!r}"
        )


def two_batch_noise_trace(
    *, small_sq_norm: Number, small_factor: Number, big_sq_norm: Number, big_factor: Number
) -> Number:
    r"""Unbiased ``tr Σ₁`` from the squared norms of a small- and a big-batch gradient.

    .. math::

        \widehat{\operatorname{tr}\Sigma_1}
        = \frac{\|G_\text{small}\|^2 - \|G_\text{big}\|^2}{x_\text{small} - x_\text{big}},
        \qquad x = \text{finite\_population\_factor}(B, N);

    with ``x = 1/B`` this is McCandlish et al. 2018, eq. A.2,
    ``(|G_small|² − |G_big|²)/(1/B_small − 1/B_big)``. Assumes both gradients are taken at
    the same parameters from uniformly random batches. Unbiased, but not positive: a single
    pair is very noisy, so average many (as :class:`RunningNoiseEstimator` does).
    Cost: ``O(1)``.
    """
    _check_factors(small_factor, big_factor)
    return (small_sq_norm - big_sq_norm) / (small_factor - big_factor)


def two_batch_gradient_norm_sq(
    *, small_sq_norm: Number, small_factor: Number, big_sq_norm: Number, big_factor: Number
) -> Number:
    r"""Unbiased ``‖g‖²`` from the squared norms of a small- and a big-batch gradient.

    .. math::

        \widehat{\|g\|^2}
        = \frac{x_\text{small}\,\|G_\text{big}\|^2 - x_\text{big}\,\|G_\text{small}\|^2}
               {x_\text{small} - x_\text{big}};

    with ``x = 1/B`` this is McCandlish et al. 2018, eq. A.1,
    ``(B_big|G_big|² − B_small|G_small|²)/(B_big − B_small)``. Same assumptions and cost as
    :func:`two_batch_noise_trace`; may be negative.
    """
    _check_factors(small_factor, big_factor)
    return (small_factor * big_sq_norm - big_factor * small_sq_norm) / (small_factor - big_factor)


class RunningNoiseEstimator(Metric):
    r"""Running two-batch estimate of ``tr Σ₁``, ``‖g‖²`` and ``B_noise`` from training steps.

    Feed it every optimizer step's gradient (``update``) or, under data parallelism, each
    step's local-vs-global pair (``update_pair``); read it with ``compute()``.

    **Windows.** ``update(gradient, batch_size)`` adds the step gradient ``G_t`` (the flat
    gradient the optimizer sees, after gradient accumulation and before momentum, of ``B_t``
    samples) to the current window. After ``window = w`` steps it forms one pair:

    .. math::

        y_\text{small} = \frac1w\sum_t\|G_t\|^2,\quad x_\text{small} = \frac1w\sum_t x_{B_t};
        \qquad
        y_\text{big} = \Big\|\frac{\sum_t B_t G_t}{\sum_t B_t}\Big\|^2,\quad
        x_\text{big} = x_{\sum_t B_t},

    (the big batch is the union of the window's disjoint batches, so its gradient is their
    sample-weighted mean), and adds :func:`two_batch_noise_trace` and
    :func:`two_batch_gradient_norm_sq` of the pair to sum states. Each pair is unbiased
    (batch sizes may change between and within windows), so their average is:
    ``compute()`` returns the averages and ``B_noise`` as the ratio of the two averages (not
    an average of ratios, which would be biased; McCandlish et al. 2018, appendix A).

    **Bias from parameter drift within a window.** The window's gradients are taken at
    ``θ_1, …, θ_w`` along the SGD path, not at one point. For a locally quadratic loss with
    Hessian ``H`` and ``θ_{t+1} = θ_t − η G_t``, writing ``g_t = ∇L(θ_t)`` and ``ḡ_w`` their
    window mean,

    .. math::

        \mathbb E\,\widehat{\operatorname{tr}\Sigma_1} - \operatorname{tr}\Sigma_1
        = \eta\,\operatorname{tr}(H\Sigma_1)
        \;+\; \frac{wB}{w-1}\cdot\frac1w\sum_t\mathbb E\,\|g_t - \bar g_w\|^2

    (with replacement, constant ``B``). The first term is the correlation between a step's
    noise ``ξ_s`` and the later gradients it moved (``g_t = g_s − ηH(… + ξ_s)`` for
    ``t > s``), a relative bias ``η tr(HΣ₁)/tr Σ₁ ≤ η λ_max`` whatever ``w``; the second is
    the spread of the true gradient over the window, ``O(η²)`` and growing like ``w²`` in a
    steady drift. Both are positive: the estimate overstates the noise (``‖g‖²`` is
    understated by about ``x_big`` times as much). Example, checked in the tests: in 1-D
    with ``λ = 1``, ``η = 0.5``, ``B = 4``, ``w = 2`` at stationarity the estimate is
    ``5/3`` of ``tr Σ₁``. So this estimator is a cheap *monitor*: use the probe estimators
    for temperatures that feed a rate when ``η λ_max`` is not small. The data-parallel pairs
    of :meth:`update_pair` are taken at one ``θ`` and have no such bias.

    **State.** The sums are torchmetrics states with ``dist_reduce_fx="sum"`` (sufficient
    statistics: ranks and checkpoints merge by addition) and ``persistent=True``
    (``state_dict``/``load_state_dict`` carry them). The partial window (fewer than ``w``
    steps, one ``d``-vector) is local and not checkpointed: a reload or :meth:`reset`
    restarts the window, losing at most ``w − 1`` steps and biasing nothing. A window with a
    non-finite gradient (e.g. a step skipped by AMP loss scaling) is dropped and counted in
    ``num_dropped``, without a host-device synchronisation.

    Args:
        window: steps per window ``w ≥ 2``.
        dataset_size: the training-set size ``N`` for the finite-population factor (batches
            of an epoch are drawn without replacement); ``None`` treats batches as drawn with
            replacement (``x_B = 1/B``, the usual approximation when ``N ≫ w B``).
        **kwargs: torchmetrics ``Metric`` options (``sync_on_compute``, ``process_group``, …).

    Cost: per step ``O(d)`` arithmetic and one ``d``-vector of memory; nothing is synchronised
    before ``compute()``.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    noise_trace_sum: Tensor
    gradient_norm_sq_sum: Tensor
    num_pairs: Tensor
    num_dropped: Tensor

    def __init__(self, window: int = 2, dataset_size: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.window = check_positive_int("window", window, minimum=2)
        if dataset_size is not None:
            check_positive_int("dataset_size", dataset_size, minimum=2)
        self.dataset_size = dataset_size
        for name in ("noise_trace_sum", "gradient_norm_sq_sum", "num_pairs", "num_dropped"):
            self.add_state(
                name,
                default=torch.tensor(0.0, dtype=torch.float64),
                dist_reduce_fx="sum",
                persistent=True,
            )
        # update_pair changes the states too: it must invalidate compute()'s cache as update does.
        self.update_pair = self._wrap_update(self.update_pair)  # type: ignore[method-assign]
        self._reset_window()

    # -- window ------------------------------------------------------------------------------
    @property
    def window_open(self) -> bool:
        """Whether a window has taken some of its ``w`` steps (a partial window is not in the
        state, so a resume starts with none open)."""
        return self._window_steps > 0

    def _reset_window(self) -> None:
        self._window_sum: Tensor | None = None  # Σ_t B_t G_t
        self._window_sq_norm: Tensor | None = None  # Σ_t ‖G_t‖²
        self._window_factor = 0.0  # Σ_t x_{B_t}
        self._window_samples = 0  # Σ_t B_t
        self._window_steps = 0

    def _factor(self, batch_size: int) -> float:
        return finite_population_factor(batch_size=batch_size, dataset_size=self.dataset_size)

    def update(self, gradient: Tensor, batch_size: int) -> None:
        """Add one optimizer step's flat gradient ``G_t`` of ``batch_size`` samples."""
        if not isinstance(gradient, Tensor) or gradient.dim() != 1 or gradient.numel() == 0:
            got = tuple(gradient.shape) if isinstance(gradient, Tensor) else type(gradient).__name__
            raise ValueError(f"gradient must be a flat tensor of shape [d], got {got!r}")
        b = check_positive_int("batch_size", batch_size)
        factor = self._factor(b)
        if self.dataset_size is not None and self._window_samples + b > self.dataset_size:
            raise ValueError(
                f"batch_size must keep a window's {self.window} batches within dataset_size = "
                f"{self.dataset_size} (disjoint batches of one epoch), got {b} after "
                f"{self._window_samples} samples in the window"
            )
        g = gradient.detach()
        if self._window_sum is None or self._window_sq_norm is None:
            self._window_sum = g * b
            self._window_sq_norm = g.square().sum().to(torch.float64)
        else:
            if g.shape != self._window_sum.shape:
                raise ValueError(
                    f"gradient must have the {self._window_sum.numel()} entries of the window's "
                    f"earlier gradients, got {g.numel()}"
                )
            self._window_sum = self._window_sum + g * b
            self._window_sq_norm = self._window_sq_norm + g.square().sum().to(torch.float64)
        self._window_factor += factor
        self._window_samples += b
        self._window_steps += 1
        if self._window_steps == self.window:
            self._close_window()

    def _close_window(self) -> None:
        assert self._window_sum is not None and self._window_sq_norm is not None
        steps = self._window_steps
        big = self._window_sum / self._window_samples
        self._add_pair(
            small_sq_norm=self._window_sq_norm / steps,
            small_factor=self._window_factor / steps,
            big_sq_norm=big.square().sum().to(torch.float64),
            big_factor=self._factor(self._window_samples),
        )
        self._reset_window()

    # -- pairs -------------------------------------------------------------------------------
    def _add_pair(
        self, *, small_sq_norm: Tensor, small_factor: float, big_sq_norm: Tensor, big_factor: float
    ) -> None:
        device = self.noise_trace_sum.device
        small_sq_norm = small_sq_norm.to(device=device, dtype=torch.float64)
        big_sq_norm = big_sq_norm.to(device=device, dtype=torch.float64)
        pair = {
            "small_sq_norm": small_sq_norm,
            "small_factor": small_factor,
            "big_sq_norm": big_sq_norm,
            "big_factor": big_factor,
        }
        noise_trace = two_batch_noise_trace(**pair)
        norm_sq = two_batch_gradient_norm_sq(**pair)
        # torch.where instead of an `if`: no host-device synchronisation per window.
        valid = torch.isfinite(noise_trace) & torch.isfinite(norm_sq)
        zero = torch.zeros_like(noise_trace)
        self.noise_trace_sum = self.noise_trace_sum + torch.where(valid, noise_trace, zero)
        self.gradient_norm_sq_sum = self.gradient_norm_sq_sum + torch.where(valid, norm_sq, zero)
        self.num_pairs = self.num_pairs + valid.to(torch.float64)
        self.num_dropped = self.num_dropped + (~valid).to(torch.float64)

    def update_pair(
        self,
        small_sq_norm: float | Tensor,
        small_batch: int,
        big_sq_norm: float | Tensor,
        big_batch: int,
    ) -> None:
        """Add one two-batch pair: ``‖G‖²`` of a small batch and of a big batch at the same θ.

        The data-parallel form: ``small_sq_norm`` is this rank's local gradient's squared norm
        (``small_batch`` samples, before the all-reduce), ``big_sq_norm`` the all-reduced
        gradient's (``big_batch = world_size·small_batch`` samples). Every rank adds its own
        pair; the sum states then average them over ranks at ``compute()``.
        """
        b_small = check_positive_int("small_batch", small_batch)
        b_big = check_positive_int("big_batch", big_batch)
        if b_big <= b_small:
            raise ValueError(f"big_batch must be > small_batch = {b_small}, got {b_big}")
        self._add_pair(
            small_sq_norm=torch.as_tensor(small_sq_norm).detach(),
            small_factor=self._factor(b_small),
            big_sq_norm=torch.as_tensor(big_sq_norm).detach(),
            big_factor=self._factor(b_big),
        )

    # -- results -----------------------------------------------------------------------------
    def compute(self) -> dict[str, Tensor]:
        """``{"noise_trace", "gradient_norm_sq", "noise_scale"}`` as float64 scalars.

        ``noise_trace`` and ``gradient_norm_sq`` are the averages of the pairs' unbiased
        estimates and can be negative while few pairs are in; ``noise_scale`` is
        ``max(noise_trace, 0) / gradient_norm_sq`` (``inf`` when ``gradient_norm_sq ≤ 0``).
        All three are NaN before the first complete pair.
        """
        count = float(self.num_pairs)
        if count == 0:
            nan = torch.tensor(math.nan, dtype=torch.float64, device=self.num_pairs.device)
            return {"noise_trace": nan, "gradient_norm_sq": nan.clone(), "noise_scale": nan.clone()}
        noise_trace = self.noise_trace_sum / count
        norm_sq = self.gradient_norm_sq_sum / count
        scale = gradient_noise_scale(
            noise_trace=max(float(noise_trace), 0.0), gradient_norm_sq=float(norm_sq)
        )
        return {
            "noise_trace": noise_trace,
            "gradient_norm_sq": norm_sq,
            "noise_scale": torch.tensor(scale, dtype=torch.float64, device=noise_trace.device),
        }

    def reset(self) -> None:
        """Clear the sums and the partial window."""
        super().reset()
        self._reset_window()

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args)
        # Loaded sums are data: drop a stale compute() cache, and count them as an update so
        # compute() does not warn that update() was never called.
        self._computed = None
        if float(self.num_pairs) > 0:
            self._update_count = max(self._update_count, 1)

    def __getstate__(self) -> dict[str, Any]:
        # The wrapped update_pair is bound to this instance: a copy must wrap its own.
        state = super().__getstate__()
        state.pop("update_pair", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.update_pair = self._wrap_update(self.update_pair)  # type: ignore[method-assign]

    def forward(self, gradient: Tensor, batch_size: int) -> None:  # type: ignore[override]
        """Same as :meth:`update`: one step carries no two-batch information of its own.

        (torchmetrics' ``forward`` would reset and re-merge the states around ``update``,
        which would discard the partial window.)
        """
        self.update(gradient, batch_size)

"""``estimate()``: temperature, curvature, barriers and escape rate of a model on a probe set.

This module is torch plumbing only: the maths lives in :mod:`kramers_callback.kramers`
(closed forms), :mod:`kramers_callback.noise`, :mod:`kramers_callback.curvature` and
:mod:`kramers_callback.barriers`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from kramers_callback import kramers
from kramers_callback._model_state import preserved_model_state
from kramers_callback._probe import BatchMeanLoss, LossFn, ProbeLoss, map_leaves
from kramers_callback._validation import (
    check_bool,
    check_choice,
    check_in_range,
    check_positive,
    check_positive_int,
)
from kramers_callback.barriers.line_scan import (
    PathwayStatus,
    initial_step_for,
    scan_for_barrier,
    untilted,
)
from kramers_callback.curvature import BACKENDS, EigenResult, make_curvature
from kramers_callback.noise import (
    default_micro_batch_size,
    directional_temperature,
    directional_variance,
    effective_lr,
    isotropic_temperature,
    micro_batch_noise,
    per_sample_noise,
)


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
    hessian_trace: float | None
    """Hutchinson estimate of ``tr H``; ``None`` when ``compute_trace=False``."""
    escape_rate: float
    """All pathways in parallel (docs/theory.md section 1.5): ``Σ_i k_i``."""
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
            self.escape_rate,
        ]
        if self.hessian_trace is not None:
            values.append(self.hessian_trace)
        return all(math.isfinite(v) for v in values)

    @property
    def all_converged(self) -> bool:
        return all(self.converged.values())


class NonFiniteLossError(ValueError):
    """The probe loss is not finite at the current parameters, so nothing can be estimated."""


NOISE_ESTIMATORS = ("per_sample", "micro_batch")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _optional(check: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    return lambda name, value: None if value is None else check(name, value)


def _check_warm_start(name: str, value: Any) -> Any:
    # Only the eigenvectors are read, so anything that carries them will do.
    if not (hasattr(value, "eigenvectors") and hasattr(value, "min_eigenvector")):
        raise ValueError(
            f"{name} must be a KramersEstimate (or hold its eigenvectors and min_eigenvector) "
            f"or None, got {value!r}"
        )
    return value


def _check_dtype(name: str, value: Any) -> torch.dtype:
    if value not in _FLOAT_DTYPES:
        raise ValueError(f"{name} must be a floating torch.dtype or None, got {value!r}")
    return value


def _check_preconditioner(name: str, value: Any) -> Tensor:
    if not isinstance(value, Tensor):
        raise ValueError(f"{name} must be a Tensor[d] or None, got {type(value).__name__}")
    if not (bool(torch.all(value > 0)) and bool(torch.isfinite(value).all())):
        raise ValueError(f"{name} must hold finite values > 0, got other values")
    return value


_OPTION_RULES: dict[str, Callable[[str, Any], Any]] = {
    "lr": check_positive,
    "batch_size": check_positive_int,
    "momentum": lambda n, v: check_in_range(n, v, 0.0, 1.0, high_open=True),
    "dataset_size": _optional(lambda n, v: check_positive_int(n, v, minimum=2)),
    "top_k": check_positive_int,
    "noise": _optional(lambda n, v: check_choice(n, v, NOISE_ESTIMATORS)),
    "micro_batch_size": _optional(check_positive_int),
    "backend": lambda n, v: check_choice(n, v, BACKENDS),
    "kappa": check_positive,
    "tol": check_positive,
    "max_products": lambda n, v: check_positive_int(n, v, minimum=2),
    "trace_tol": check_positive,
    "max_trace_samples": lambda n, v: check_positive_int(n, v, minimum=2),
    "compute_trace": check_bool,
    "warm_start": _optional(_check_warm_start),
    "preconditioner": _optional(_check_preconditioner),
    "seed": lambda n, v: check_positive_int(n, v, minimum=0),
    "max_scan_evals": lambda n, v: check_positive_int(n, v, minimum=3),
    "dtype": _optional(_check_dtype),
    "centre_probe": check_bool,
    "scan_barriers": check_bool,
}
ESTIMATE_OPTIONS = tuple(_OPTION_RULES)
"""The keywords of :func:`estimate` after ``model, loss_fn, batches``."""


def validate_estimate_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Check keywords of :func:`estimate` by the rules :func:`estimate` itself applies.

    Any subset of :data:`ESTIMATE_OPTIONS` may be given, so a caller that forwards keywords
    (the callback's ``estimate_options``) can refuse a bad value before the first estimate.
    ``dataset_size ≥ batch_size`` is checked when both are given. Rules that need the model
    (``top_k ≤ d``: :func:`check_top_k`; the preconditioner's length) are checked at the
    estimate. Cost: none beyond a pass over a tensor ``preconditioner``.

    Returns:
        A new dict with the same keys and the checked values (numbers as ``float``/``int``).

    Raises:
        ValueError: ``"<name> must be <rule>, got <value>"`` for the first bad value, or an
            unknown key.
    """
    if not isinstance(options, Mapping):
        raise ValueError(f"options must be a mapping of estimate keywords, got {options!r}")
    unknown = sorted(set(options) - set(_OPTION_RULES))
    if unknown:
        raise ValueError(
            f"estimate options must have keys among {list(ESTIMATE_OPTIONS)}, got {unknown}"
        )
    checked = {name: _OPTION_RULES[name](name, value) for name, value in options.items()}
    if checked.get("dataset_size") is not None and "batch_size" in checked:
        check_positive_int(
            "dataset_size", checked["dataset_size"], minimum=max(checked["batch_size"], 2)
        )
    return checked


def check_top_k(top_k: int, dim: int) -> int:
    """``1 ≤ top_k ≤ d``: no more eigenpairs than trainable parameters ``d``.

    Cost: none. Raises ``ValueError`` naming ``top_k``, the rule and the value.
    """
    check_positive_int("top_k", top_k)
    if top_k > dim:
        raise ValueError(
            f"top_k must be an integer ≤ d = {dim} (the number of trainable parameters), "
            f"got {top_k}"
        )
    return top_k


def noise_estimator_for(noise: str | None, loss_fn: LossFn) -> str:
    """The noise estimator ``estimate`` uses: ``noise``, or by default the exact one ``loss_fn``
    allows (``"per_sample"``; ``"micro_batch"`` for a :class:`BatchMeanLoss`, which has no
    per-sample losses). Raises ``ValueError`` for an unknown name or ``"per_sample"`` with a
    :class:`BatchMeanLoss`."""
    batch_mean = isinstance(loss_fn, BatchMeanLoss)
    if noise is None:
        return "micro_batch" if batch_mean else "per_sample"
    check_choice("noise", noise, NOISE_ESTIMATORS)
    if batch_mean and noise != "micro_batch":
        raise ValueError(
            f"noise must be 'micro_batch' (or None) when loss_fn is a BatchMeanLoss, which gives "
            f"one mean loss per batch and no per-sample losses, got {noise!r}"
        )
    return noise


def _directions(top: EigenResult, minimum: EigenResult) -> tuple[list[str], Tensor, list[float]]:
    """Escape directions: top-k eigenvectors in both signs, and the λ_min vector when negative."""
    names: list[str] = []
    vectors: list[Tensor] = []
    curvatures: list[float] = []
    for i, (value, vector) in enumerate(zip(top.eigenvalues, top.eigenvectors, strict=True)):
        for sign, suffix in ((1.0, "+"), (-1.0, "-")):
            names.append(f"top{i + 1}{suffix}")
            vectors.append(sign * vector)
            curvatures.append(float(value))
    lam_min = float(minimum.eigenvalues[0])
    if lam_min < 0:
        for sign, suffix in ((1.0, "+"), (-1.0, "-")):
            names.append(f"min{suffix}")
            vectors.append(sign * minimum.eigenvectors[0])
            curvatures.append(lam_min)
    return names, torch.stack(vectors), curvatures


def _scan_pathway(
    probe: ProbeLoss,
    *,
    name: str,
    direction: Tensor,
    curvature: float,
    temperature: float,
    lr: float,
    kappa: float,
    max_evals: int,
    slope: float = 0.0,
    scan: bool = True,
) -> Pathway:
    if not scan:
        return Pathway(name, curvature, temperature, PathwayStatus.NOT_SCANNED)
    if not temperature > 0:
        # Without noise along v no barrier is ever crossed: nothing to scan for.
        return Pathway(name, curvature, temperature, PathwayStatus.NO_BARRIER_WITHIN_REACH)
    before = probe.num_forward
    scan = scan_for_barrier(
        untilted(probe.loss_along(direction), slope),
        threshold=kappa * temperature,
        initial_step=initial_step_for(temperature=temperature, curvature=curvature),
        max_evals=max_evals,
    )
    used = probe.num_forward - before
    if scan.status is not PathwayStatus.BARRIER:
        return Pathway(name, curvature, temperature, scan.status, num_forward=used)
    rate = None
    if curvature > 0:
        # Kramers needs a well along v; a barrier beyond a descent is reported without a rate.
        rate = kramers.escape_rate(
            lr=lr,
            omega_0=math.sqrt(curvature),
            omega_b=math.sqrt(abs(scan.barrier_curvature)),
            barrier=max(scan.barrier, 0.0),
            temperature=temperature,
        )
    return Pathway(
        name,
        curvature,
        temperature,
        PathwayStatus.BARRIER,
        barrier=scan.barrier,
        barrier_curvature=scan.barrier_curvature,
        distance=scan.distance,
        rate=rate,
        num_forward=used,
    )


def estimate(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[Any],
    *,
    lr: float,
    batch_size: int,
    momentum: float = 0.0,
    dataset_size: int | None = None,
    top_k: int = 3,
    noise: str | None = None,
    micro_batch_size: int | None = None,
    backend: str = "native",
    kappa: float = 20.0,
    tol: float = 1e-3,
    max_products: int = 300,
    trace_tol: float = 1e-2,
    max_trace_samples: int = 100,
    compute_trace: bool = True,
    warm_start: KramersEstimate | None = None,
    preconditioner: Tensor | None = None,
    seed: int = 0,
    max_scan_evals: int = 60,
    dtype: torch.dtype | None = None,
    centre_probe: bool = True,
    scan_barriers: bool = True,
) -> KramersEstimate:
    r"""Measure temperature, curvature, barriers and the Kramers escape rate on a probe set.

    .. math::

        T = \frac{\eta_\text{eff}\,\operatorname{tr}\Sigma_B}{2d},\qquad
        T_v = \frac{\eta_\text{eff}\, v^\top\Sigma_B v}{2},\qquad
        k = \sum_i \eta_\text{eff}\,\frac{\omega_{0,i}\,\omega_{b,i}}{2\pi}
            \exp\!\Big(-\frac{\Delta L_i}{T_{v_i}}\Big)

    with :math:`\Sigma_B = \Sigma_1 (N-B)/(B(N-1))` (or :math:`\Sigma_1/B` without
    ``dataset_size``), :math:`\eta_\text{eff} = \eta/(1-\beta)`, and one pathway per escape
    direction: the top-``top_k`` Hessian eigenvectors in both signs, plus the :math:`\lambda_\min`
    eigenvector when :math:`\lambda_\min < 0`. Along each, a line scan finds the barrier
    :math:`\Delta L` and its curvature :math:`\lambda_b`; :math:`\omega_0 = \sqrt{v^\top H v}`,
    :math:`\omega_b = \sqrt{|\lambda_b|}`.

    Source: docs/theory.md sections 1.2, 1.5, 2 and 3.1, which correct the seed (the rate per step
    carries :math:`\eta` as a factor; escapes use the directional temperature).

    Assumptions: the model is near a well of the probe-set loss; SGD noise is approximated as
    Gaussian with the per-sample covariance; the loss is evaluated with the model in eval mode
    (dropout off, BatchNorm on running statistics) so that the Hessian is defined.

    Cost: ``top_k`` eigenpairs, the minimum eigenpair and the trace in Hessian-vector products
    (each about two forward-backward passes over the probe; fewer with ``warm_start``); the exact
    per-sample noise is one ``vmap`` gradient pass over the probe (``noise="micro_batch"``: one
    gradient per micro-batch, which also gives the ``T_v`` for a ``BatchMeanLoss``); each line
    scan ``≤ max_scan_evals`` probe forward passes.

    Args:
        model: any ``nn.Module``; left exactly as found (parameters, buffers, ``.grad``,
            training flags, global RNG states).
        loss_fn: ``loss_fn(model, batch) -> Tensor[n]``, one loss per sample; or a
            :class:`~kramers_callback._probe.BatchMeanLoss` of one mean loss per batch (a
            ``training_step``): curvature and line scans then use probe-batch means weighted
            by batch size, and the noise (``T``, ``T_v``, ``B_noise``) micro-batch gradients.
        batches: the probe set, an iterable of batches (tensors, tuples, lists or dicts).
        lr: the optimizer's learning rate ``η``.
        batch_size: samples per optimizer step ``B`` (loader batch × accumulation × world size).
        momentum: SGD momentum ``β``; the temperature uses ``η/(1−β)``.
        dataset_size: ``N`` for the finite-population factor; ``None`` means with replacement.
        top_k: number of top eigenpairs, hence ``2·top_k`` escape directions (plus two along
            ``λ_min`` when negative).
        noise: ``"per_sample"`` (exact, the reference) or ``"micro_batch"``; ``None`` (default)
            means ``"per_sample"``, or ``"micro_batch"`` (the only valid choice) for a
            :class:`~kramers_callback._probe.BatchMeanLoss`.
        micro_batch_size: micro-batch size for ``noise="micro_batch"`` (default ``n // 8``); the
            relative standard error of ``T`` and ``T_v`` is then at most ``√(2/(m − 1))`` for
            ``m = ⌊n/b⌋`` micro-batches
            (:func:`~kramers_callback.noise.micro_batch.micro_batch_relative_error`).
        backend: curvature backend, ``"native"`` or ``"pyhessian"``.
        kappa: a rise of ``κ·T_v`` without a maximum ends a scan as "no barrier within reach".
        tol: relative residual tolerance of the eigensolvers.
        max_products: hard cap on the Hessian-vector products of the whole curvature
            estimate (``num_hvp ≤ max_products``): the top-``k`` and ``λ_min`` come from one
            Lanczos run (``backend="pyhessian"``: two runs sharing the cap), and the trace gets
            what is left, at most ``max_trace_samples`` (no trace when fewer than 2 are left:
            ``hessian_trace=None``, ``converged["trace"]=False``).
        trace_tol: relative standard error at which Hutchinson stops.
        max_trace_samples: trace probes at most (native: Hutch++ on the Lanczos basis).
        compute_trace: skip the trace (``hessian_trace=None``) to save products.
        warm_start: a previous estimate whose eigenvectors start the eigensolvers.
        preconditioner: diagonal ``P`` (``Tensor[d]``) of an adaptive optimizer; the estimate is
            then taken in coordinates ``θ = P^{1/2} x`` (see ``docs/theory.md``).
        seed: seeds the private generators (probe vectors, micro-batch partitions).
        max_scan_evals: loss evaluations per line scan.
        dtype: estimation dtype (default: the parameters' dtype, at least float32).
        centre_probe: scan ``φ_c(s) = φ(s) − s·vᵀḡ`` with the probe's own mean slope removed,
            so that the probe's sampling noise does not tilt the barrier (exact when ``x₀`` is a
            stationary point of the full-data loss; see ``docs/theory.md`` section 3.1);
            ``False``: the raw ``φ(s)``.
        scan_barriers: ``False`` skips the line scans (no forward passes): every pathway is
            :attr:`~kramers_callback.barriers.line_scan.PathwayStatus.NOT_SCANNED`, unmeasured,
            and the rate sums no pathway. The callback scans only where its phase asks a
            barrier question (not while descending).

    Raises:
        ValueError: for invalid arguments (:func:`validate_estimate_options`, and
            :func:`check_top_k` against the parameter count), empty ``batches`` or empty
            batches, or a loss of the wrong shape or without a graph to the parameters.
        TypeError: for a loss that is not floating point, or batches whose floating dtype the
            model cannot take at the estimation dtype.
        NonFiniteLossError: when the probe loss is not finite at the current parameters.
    """
    validate_estimate_options(
        {
            "lr": lr,
            "batch_size": batch_size,
            "momentum": momentum,
            "dataset_size": dataset_size,
            "top_k": top_k,
            "noise": noise,
            "micro_batch_size": micro_batch_size,
            "backend": backend,
            "kappa": kappa,
            "tol": tol,
            "max_products": max_products,
            "trace_tol": trace_tol,
            "max_trace_samples": max_trace_samples,
            "compute_trace": compute_trace,
            "warm_start": warm_start,
            "preconditioner": preconditioner,
            "seed": seed,
            "max_scan_evals": max_scan_evals,
            "dtype": dtype,
            "centre_probe": centre_probe,
            "scan_barriers": scan_barriers,
        }
    )
    noise = noise_estimator_for(noise, loss_fn)
    batches = list(batches)
    if not batches:
        raise ValueError(
            "batches must hold at least one batch (the probe set), got an empty iterable"
        )

    started = time.perf_counter()
    lr_eff = effective_lr(lr=lr, momentum=momentum)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    with preserved_model_state(model), torch.inference_mode(False), torch.enable_grad():
        model.eval()
        scale = None if preconditioner is None else preconditioner.sqrt()
        probe = ProbeLoss(model, loss_fn, batches, scale=scale, dtype=dtype)
        if scale is not None and scale.numel() != probe.dim:
            raise ValueError(
                f"preconditioner must have one entry per trainable parameter ({probe.dim}), "
                f"got {scale.numel()}"
            )
        _check_probe_losses(probe)

        curvature = make_curvature(backend, probe)
        k = check_top_k(top_k, probe.dim)
        top_init, min_init = _warm_start_vectors(warm_start, probe.dim, k)
        ends = curvature.spectrum_ends(
            k,
            top_init=top_init,
            bottom_init=min_init,
            tol=tol,
            max_products=max_products,
            generator=generator,
        )
        top, minimum = ends.top, ends.bottom
        lambda_max = float(top.eigenvalues[0])
        converged = {"top": bool(top.converged), "min": bool(minimum.converged)}
        trace_value = None
        # max_products caps the whole curvature estimate: the trace gets what is left.
        trace_budget = min(max_trace_samples, max_products - curvature.num_products)
        if compute_trace and trace_budget >= 2:
            trace = curvature.trace(
                tol=trace_tol, max_samples=trace_budget, generator=generator, basis=ends.basis
            )
            trace_value = float(trace.value)
            converged["trace"] = bool(trace.converged)
        elif compute_trace:
            converged["trace"] = False

        names, directions, curvatures = _directions(top, minimum)
        # A direction and its negative share T_v: measure each line once.
        unique = directions[::2]
        if noise == "per_sample":
            moments = per_sample_noise(probe, directions=unique)
            variances = moments.directional_variance
        else:
            # Without per-sample losses the T_v come from the same micro-batch gradients.
            moments = micro_batch_noise(
                probe,
                micro_batch_size=micro_batch_size or default_micro_batch_size(probe.num_samples),
                generator=generator,
                directions=None if probe.per_sample else unique,
            )
            variances = (
                directional_variance(probe, unique)
                if probe.per_sample
                else moments.directional_variance
            )
        temperatures = directional_temperature(
            lr=lr_eff,
            directional_variance=variances,
            batch_size=batch_size,
            dataset_size=dataset_size,
        ).repeat_interleave(2)
        temperature = float(
            isotropic_temperature(
                lr=lr_eff,
                noise_trace=moments.noise_trace,
                dim=probe.dim,
                batch_size=batch_size,
                dataset_size=dataset_size,
            )
        )

        # The probe's own mean slope along each direction, removed from its line scan.
        slopes = (
            (directions @ moments.mean_gradient).tolist() if centre_probe else [0.0] * len(names)
        )
        pathways = [
            _scan_pathway(
                probe,
                name=name,
                direction=direction,
                curvature=lam,
                temperature=float(t_v),
                lr=lr_eff,
                kappa=kappa,
                max_evals=max_scan_evals,
                slope=slope,
                scan=scan_barriers,
            )
            for name, direction, lam, t_v, slope in zip(
                names, directions, curvatures, temperatures, slopes, strict=True
            )
        ]

    with_rate = [p for p in pathways if p.rate is not None]
    total_rate = float(kramers.parallel_rate([p.rate for p in with_rate]))
    dominant = max(with_rate, key=lambda p: p.rate, default=None)
    attempt = float(
        sum(
            kramers.attempt_frequency(
                lr=lr_eff,
                omega_0=math.sqrt(p.curvature),
                omega_b=math.sqrt(abs(p.barrier_curvature)),
            )
            for p in with_rate
        )
    )
    return KramersEstimate(
        temperature=temperature,
        noise_trace=float(moments.noise_trace),
        gradient_norm_sq=float(moments.gradient_norm_sq),
        noise_scale=float(moments.noise_scale),
        lambda_max=lambda_max,
        lambda_min=float(minimum.eigenvalues[0]),
        eigenvalues=[float(v) for v in top.eigenvalues],
        hessian_trace=trace_value,
        escape_rate=total_rate,
        escape_time=float(kramers.mean_escape_time(total_rate)),
        barrier=None if dominant is None else dominant.barrier,
        attempt_frequency=attempt,
        pathways=pathways,
        lr=lr_eff,
        batch_size=batch_size,
        dim=probe.dim,
        num_samples=probe.num_samples,
        converged=converged,
        num_hvp=int(curvature.num_products),
        num_forward=int(probe.num_forward),
        seconds=time.perf_counter() - started,
        eigenvectors=top.eigenvectors.detach().clone(),
        min_eigenvector=minimum.eigenvectors[0].detach().clone(),
    )


def _check_probe_losses(probe: ProbeLoss) -> None:
    """Fail early, with the rule, on a loss of the wrong shape, type or graph, or non-finite."""
    for index, batch in enumerate(probe.batches):
        # The first batch also shows that the loss is differentiable in the parameters.
        first = index == 0
        x = probe.x0.detach().requires_grad_(first)
        with torch.set_grad_enabled(first):
            try:
                losses = probe.per_sample_losses(x, batch)
            except RuntimeError as err:
                _raise_on_dtype_mismatch(probe, batch, index, err)
                raise
            losses = probe.check_losses(losses, batch)
        if first:
            _check_differentiable(losses)
        if not bool(torch.isfinite(losses).all()):
            bad = int((~torch.isfinite(losses)).sum())
            raise NonFiniteLossError(
                f"loss_fn must return finite losses at the current parameters, got {bad} "
                f"non-finite value(s) out of {losses.numel()}"
            )


def _check_differentiable(losses: Tensor) -> None:
    if not losses.is_floating_point():
        raise TypeError(
            "loss_fn must return floating-point losses (differentiable in the parameters), "
            f"got dtype {losses.dtype}"
        )
    if not losses.requires_grad:
        raise ValueError(
            "loss_fn must return losses with a graph to the trainable parameters (not detached, "
            "not computed under no_grad, not from .item() or argmax), got a tensor with "
            "requires_grad=False"
        )


def _raise_on_dtype_mismatch(probe: ProbeLoss, batch: Any, index: int, err: Exception) -> None:
    """A ``TypeError`` naming the dtypes when the failed forward pass met mismatched floats."""
    found: set[torch.dtype] = set()
    map_leaves(batch, lambda leaf: found.add(leaf.dtype) if _is_float_tensor(leaf) else None)
    other = sorted(str(d) for d in found if d != probe.dtype)
    if other:
        raise TypeError(
            f"batches must hold floating tensors the model takes at the estimation dtype "
            f"{probe.dtype} (cast them, or pass dtype=), got {', '.join(other)} in batch "
            f"{index}; the forward pass failed with: {err}"
        ) from err


def _is_float_tensor(leaf: Any) -> bool:
    return isinstance(leaf, Tensor) and leaf.is_floating_point()


def _warm_start_vectors(
    warm_start: KramersEstimate | None, dim: int, top_k: int
) -> tuple[Tensor | None, Tensor | None]:
    """Previous eigenvectors when they fit this problem; a mismatch silently means a cold start."""
    if warm_start is None or warm_start.eigenvectors is None:
        return None, None
    vectors = warm_start.eigenvectors
    if vectors.shape[-1] != dim:
        return None, None
    top_init = vectors[:top_k] if vectors.shape[0] >= top_k else None
    min_init = warm_start.min_eigenvector
    if min_init is not None and min_init.shape[-1] != dim:
        min_init = None
    return top_init, min_init

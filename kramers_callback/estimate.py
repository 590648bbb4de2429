"""``estimate()``: temperature, curvature, barriers and escape rate of a model on a probe set.

This module is torch plumbing only: the maths lives in :mod:`kramers_callback.kramers`
(closed forms), :mod:`kramers_callback.noise`, :mod:`kramers_callback.curvature` and
:mod:`kramers_callback.barriers`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from kramers_callback import kramers
from kramers_callback._model_state import preserved_model_state
from kramers_callback._probe import BatchMeanLoss, LossFn, ProbeLoss
from kramers_callback._validation import (
    check_choice,
    check_in_range,
    check_positive,
    check_positive_int,
)
from kramers_callback.barriers.line_scan import PathwayStatus, initial_step_for, scan_for_barrier
from kramers_callback.curvature import EigenResult, make_curvature
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
) -> Pathway:
    if not temperature > 0:
        # Without noise along v no barrier is ever crossed: nothing to scan for.
        return Pathway(name, curvature, temperature, PathwayStatus.NO_BARRIER_WITHIN_REACH)
    before = probe.num_forward
    scan = scan_for_barrier(
        probe.loss_along(direction),
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

    Source: seed 000 sections 2.2, 3.1, 7.1 as corrected by SPEC sections 2–4 (the rate per step
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
        max_products: Hessian-vector products allowed per eigensolve.
        trace_tol: relative standard error at which Hutchinson stops.
        max_trace_samples: Hutchinson probes at most.
        compute_trace: skip the trace (``hessian_trace=None``) to save products.
        warm_start: a previous estimate whose eigenvectors start the eigensolvers.
        preconditioner: diagonal ``P`` (``Tensor[d]``) of an adaptive optimizer; the estimate is
            then taken in coordinates ``θ = P^{1/2} x`` (see ``docs/theory.md``).
        seed: seeds the private generators (probe vectors, micro-batch partitions).
        max_scan_evals: loss evaluations per line scan.
        dtype: estimation dtype (default: the parameters' dtype, at least float32).

    Raises:
        ValueError: for invalid arguments, empty ``batches`` or a loss of the wrong shape.
        NonFiniteLossError: when the probe loss is not finite at the current parameters.
    """
    check_positive("lr", lr)
    check_positive_int("batch_size", batch_size)
    check_in_range("momentum", momentum, 0.0, 1.0, high_open=True)
    if dataset_size is not None:
        check_positive_int("dataset_size", dataset_size, minimum=max(batch_size, 2))
    check_positive_int("top_k", top_k)
    noise = noise_estimator_for(noise, loss_fn)
    if micro_batch_size is not None:
        check_positive_int("micro_batch_size", micro_batch_size)
    check_positive("kappa", kappa)
    check_positive("tol", tol)
    check_positive_int("max_products", max_products, minimum=2)
    check_positive("trace_tol", trace_tol)
    check_positive_int("max_trace_samples", max_trace_samples, minimum=2)
    check_positive_int("max_scan_evals", max_scan_evals, minimum=3)
    check_positive_int("seed", seed, minimum=0)
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
        scale = None
        if preconditioner is not None:
            if not bool(torch.all(preconditioner > 0)) or not bool(
                torch.isfinite(preconditioner).all()
            ):
                raise ValueError("preconditioner must hold finite values > 0, got other values")
            scale = preconditioner.sqrt()
        probe = ProbeLoss(model, loss_fn, batches, scale=scale, dtype=dtype)
        if scale is not None and scale.numel() != probe.dim:
            raise ValueError(
                f"preconditioner must have one entry per trainable parameter ({probe.dim}), "
                f"got {scale.numel()}"
            )
        _check_probe_losses(probe)

        curvature = make_curvature(backend, probe)
        # A model smaller than top_k (the toys) has only dim eigenpairs to find.
        k = min(top_k, probe.dim)
        top_init, min_init = _warm_start_vectors(warm_start, probe.dim, k)
        top = curvature.top_eigenpairs(
            k, init=top_init, tol=tol, max_products=max_products, generator=generator
        )
        lambda_max = float(top.eigenvalues[0])
        minimum = curvature.min_eigenpair(
            init=min_init,
            tol=tol,
            max_products=max_products,
            generator=generator,
            upper_bound=abs(lambda_max),
        )
        converged = {"top": bool(top.converged), "min": bool(minimum.converged)}
        trace_value = None
        if compute_trace:
            trace = curvature.trace(
                tol=trace_tol, max_samples=max_trace_samples, generator=generator
            )
            trace_value = float(trace.value)
            converged["trace"] = bool(trace.converged)

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
            )
            for name, direction, lam, t_v in zip(
                names, directions, curvatures, temperatures, strict=True
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
    """Fail early, with the rule, on a wrongly shaped or non-finite probe loss."""
    with torch.no_grad():
        for batch in probe.batches:
            losses = probe.check_losses(probe.per_sample_losses(probe.x0, batch), batch)
            if not bool(torch.isfinite(losses).all()):
                bad = int((~torch.isfinite(losses)).sum())
                raise NonFiniteLossError(
                    f"loss_fn must return finite losses at the current parameters, got {bad} "
                    f"non-finite value(s) out of {losses.numel()}"
                )


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

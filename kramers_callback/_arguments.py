"""``KramersCallback``'s arguments: validated once at construction, and compared on a resume.

Like Lightning's own callbacks, argument errors are ``ValueError`` at construction (naming the
argument, the rule and the value); conditions that need the Trainer wait for ``setup``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pytorch_lightning.utilities.exceptions import MisconfigurationException
from pytorch_lightning.utilities.rank_zero import rank_zero_info, rank_zero_warn

from kramers_callback._budget import EstimateSize, check_budget
from kramers_callback._probe import LossFn
from kramers_callback._validation import (
    check_choice,
    check_in_range,
    check_non_negative,
    check_positive,
    check_positive_int,
)
from kramers_callback.estimate import validate_estimate_options
from kramers_callback.policies import Policy

__all__ = [
    "APPLIED_CHANGES",
    "ESTIMATE_OPTIONS",
    "REFUSED_CHANGES",
    "CallbackArguments",
    "check_resumed_arguments",
]

ESTIMATE_OPTIONS = (
    "noise",
    "micro_batch_size",
    "backend",
    "kappa",
    "tol",
    "trace_tol",
    "centre_probe",
)
"""The keywords of :func:`kramers_callback.estimate` that ``estimate_options`` may pass."""

REFUSED_CHANGES = {
    "probe_size": "the stored probe set has that many samples (a different size would mix "
    "the stored draw with the new setting)",
    "monitor": "the stop rule's stored best value and patience count belong to that metric",
    "mode": "the stop rule's stored best value was ranked in that mode",
}
"""Arguments a resume refuses to change, with why (the checkpoint's state depends on them)."""
APPLIED_CHANGES = (
    "probe_seed",
    "top_k",
    "lr_min",
    "lr_max",
    "overhead_budget",
    "cooling_patience",
)
"""Arguments (with ``policy``) whose change on a resume applies from the resume on."""


@dataclass(frozen=True)
class CallbackArguments:
    """The arguments of :class:`~kramers_callback.KramersCallback` (see its docstring),
    validated and normalised in ``__post_init__``; ``full_size`` gathers the estimate's size."""

    policy: Any = "hybrid"
    loss_fn: LossFn | None = None
    probe_size: int = 256
    probe_batch_size: int = 64
    probe_seed: int = 0
    top_k: int = 3
    max_products: int = 300
    compute_trace: bool = True
    max_trace_samples: int = 100
    max_scan_evals: int = 60
    estimate_options: dict[str, Any] | None = None
    overhead_budget: float = 0.05
    compute_cost: float = 0.0
    min_epochs: int = 0
    patience: int = 1
    monitor: str | None = None
    cooling_patience: int | None = None
    min_delta: float = 0.0
    mode: str = "min"
    lr_min: float | None = None
    lr_max: float | None = None
    batch_min: int | None = None
    batch_max: int | None = None
    batch_multiple: int = 1
    max_change: float = 2.0
    batch_size_attr: str = "batch_size"
    noise_window: int = 2
    noise_stride: int = 16
    check_finite: bool = True
    strict: bool = True
    report_at_estimates: bool = False
    verbose: bool = True
    full_size: EstimateSize = field(init=False)

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        put("policy", Policy(check_choice("policy", self.policy, [p.value for p in Policy])))
        loss_fn = self.loss_fn
        if loss_fn is not None and not callable(loss_fn):
            raise ValueError(f"loss_fn must be callable as loss_fn(model, batch), got {loss_fn!r}")
        put("probe_size", check_positive_int("probe_size", self.probe_size, minimum=2))
        put("probe_batch_size", check_positive_int("probe_batch_size", self.probe_batch_size))
        put("probe_seed", check_positive_int("probe_seed", self.probe_seed, minimum=0))
        put(
            "full_size",
            EstimateSize(
                probe_size=self.probe_size,
                probe_batch_size=min(self.probe_batch_size, self.probe_size),
                top_k=check_positive_int("top_k", self.top_k),
                max_products=check_positive_int("max_products", self.max_products, minimum=2),
                compute_trace=bool(self.compute_trace),
                max_trace_samples=check_positive_int(
                    "max_trace_samples", self.max_trace_samples, minimum=2
                ),
                max_scan_evals=check_positive_int("max_scan_evals", self.max_scan_evals, minimum=3),
            ),
        )
        for name in ("top_k", "max_products", "compute_trace", "max_trace_samples"):
            put(name, getattr(self.full_size, name))
        put("max_scan_evals", self.full_size.max_scan_evals)
        options = dict(self.estimate_options or {})
        unknown = sorted(set(options) - set(ESTIMATE_OPTIONS))
        if unknown:
            raise ValueError(
                f"estimate_options must have keys among {list(ESTIMATE_OPTIONS)}, got {unknown}"
            )
        put("estimate_options", validate_estimate_options(options))
        put("overhead_budget", check_budget("overhead_budget", self.overhead_budget))
        put("compute_cost", check_non_negative("compute_cost", self.compute_cost))
        put("min_epochs", check_positive_int("min_epochs", self.min_epochs, minimum=0))
        put("patience", check_positive_int("patience", self.patience))
        monitor = self.monitor
        if monitor is not None and not isinstance(monitor, str):
            raise ValueError(f"monitor must be a metric name (str) or None, got {monitor!r}")
        if self.cooling_patience is not None:
            put("cooling_patience", check_positive_int("cooling_patience", self.cooling_patience))
            if monitor is None:
                raise ValueError(
                    f"cooling_patience={self.cooling_patience!r} needs a monitor: it counts the "
                    "epoch ends at which the monitored metric did not improve, got monitor=None"
                )
        put("min_delta", check_non_negative("min_delta", self.min_delta))
        put("mode", check_choice("mode", self.mode, ("min", "max")))
        for low, high, check in (
            ("lr_min", "lr_max", check_positive),
            ("batch_min", "batch_max", check_positive_int),
        ):
            for name in (low, high):
                value = getattr(self, name)
                put(name, None if value is None else check(name, value))
            low_value, high_value = getattr(self, low), getattr(self, high)
            if low_value is not None and high_value is not None and high_value < low_value:
                raise ValueError(f"{high} must be ≥ {low} = {low_value!r}, got {high_value!r}")
        put("batch_multiple", check_positive_int("batch_multiple", self.batch_multiple))
        put(
            "max_change",
            check_in_range(
                "max_change", self.max_change, 1.0, math.inf, low_open=True, high_open=True
            ),
        )
        attr = self.batch_size_attr
        if not isinstance(attr, str) or not attr.isidentifier():
            raise ValueError(
                f"batch_size_attr must be an attribute name (identifier), got {attr!r}"
            )
        put("noise_window", check_positive_int("noise_window", self.noise_window, minimum=2))
        put("noise_stride", check_positive_int("noise_stride", self.noise_stride))
        for name in ("check_finite", "strict", "report_at_estimates"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        put("verbose", bool(self.verbose))

    def resume_state(self) -> dict[str, Any]:
        """What a checkpoint stores for :func:`check_resumed_arguments` (plain values)."""
        names = (*REFUSED_CHANGES, *APPLIED_CHANGES)
        return {**{name: getattr(self, name) for name in names}, "policy": self.policy.value}


def check_resumed_arguments(
    stored: dict[str, Any] | None, now: dict[str, Any], *, probe: bool, verbose: bool
) -> None:
    """Refuse the changes a resume cannot honour (:data:`REFUSED_CHANGES`); say which changes
    apply from now on (``policy`` and :data:`APPLIED_CHANGES`). ``stored`` and ``now`` are
    :meth:`CallbackArguments.resume_state`; ``probe``: the checkpoint holds a probe set."""
    if not stored:
        return  # a checkpoint from before the arguments were stored
    for name in REFUSED_CHANGES:
        if name == "mode" and now["monitor"] is None:
            continue  # without a monitor the mode is never read
        if name in stored and stored[name] != now[name]:
            raise MisconfigurationException(
                f"KramersCallback: cannot resume with {name}={now[name]!r}: the checkpoint "
                f"was written with {name}={stored[name]!r}, and {REFUSED_CHANGES[name]}. "
                f"Resume with {name}={stored[name]!r}, or start a new run without ckpt_path."
            )
    if probe and "probe_seed" in stored and stored["probe_seed"] != now["probe_seed"]:
        rank_zero_warn(
            f"KramersCallback: resuming with probe_seed={now['probe_seed']} from a checkpoint "
            f"written with probe_seed={stored['probe_seed']}: the stored probe set (drawn "
            f"with {stored['probe_seed']}) is kept, so estimates stay comparable; the new "
            "seed seeds the estimators' random draws from now on."
        )
    changed = [
        f"{name}: {stored[name]!r} -> {now[name]!r}"
        for name in ("policy", *APPLIED_CHANGES)
        if name in stored and stored[name] != now[name]
    ]
    if changed and verbose:
        rank_zero_info(
            "KramersCallback: resuming with changed arguments, which apply from now on ("
            + "; ".join(changed)
            + "); the history, probe, budget and stop rule carry over."
        )

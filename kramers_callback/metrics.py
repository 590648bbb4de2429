"""What the callback logs at each epoch end, and how it reaches ``trainer.callback_metrics``,
the progress bar and the loggers.

:func:`epoch_metrics` and :func:`history_entry` are pure (an observation and its decision
record in, plain floats out); :func:`publish` and :func:`record_epoch` are the Lightning glue.
"""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch

from kramers_callback._budget import OverheadBudget
from kramers_callback.observation import Observation
from kramers_callback.regime import RegimeDecision

__all__ = [
    "ESTIMATE_METRICS",
    "METRICS",
    "PROGRESS_BAR",
    "epoch_metrics",
    "history_entry",
    "publish",
    "record_epoch",
]

_ESTIMATE_NUMBERS = (
    "kramers/lambda_max",
    "kramers/lambda_min",
    "kramers/hessian_trace",
    "kramers/barrier",
    "kramers/escape_rate",
    "kramers/escape_time",
    "kramers/expected_escapes",
    "kramers/unmeasured_pathways",
    "kramers/estimate_seconds",
)
METRICS = (
    "kramers/temperature",
    "kramers/temperature_target",
    "kramers/critical_temperature",
    "kramers/lr",
    "kramers/batch_size",
    "kramers/noise_scale",
    *_ESTIMATE_NUMBERS,
    "kramers/equilibrium",
    "kramers/phase",
    "kramers/noise_floor",
    "kramers/cooling_gain",
    "kramers/temperature_min",
)
"""Logged at every estimate. Between estimates the decision's own metrics (temperature,
target, lr, batch size, noise scale) and the regime's (equilibrium statistic, phase, noise
floor, cooling gain, coldest temperature) are logged again."""
PROGRESS_BAR = ("kramers/temperature", "kramers/escape_rate")
ESTIMATE_METRICS = (*_ESTIMATE_NUMBERS, "kramers/converged", "kramers/trace_converged")
"""The numbers only an estimate gives: NaN at an epoch end whose estimate failed or whose
training loss was not finite (never the last good values, which would read as current)."""


def epoch_metrics(
    observation: Observation,
    regime: RegimeDecision,
    *,
    lr: float,
    batch_size: int,
    budget: OverheadBudget,
) -> dict[str, float]:
    """The metrics of one epoch end: the decision's own, the fresh estimate's numbers where
    one was measured (NaN for :data:`ESTIMATE_METRICS` where it failed, or the training loss
    was not finite), and ``budget``'s counters. ``lr`` and ``batch_size`` are the
    settings after the decision. ``kramers/phase`` is the
    :class:`~kramers_callback.regime.Phase` value: 0 descending, 1 thermalized, 2 trapped,
    3 stalled (on the monitor, with ``cooling_patience``).
    Cost: O(number of metrics)."""
    record = regime.record
    metrics = {
        "kramers/temperature": observation.temperature,
        "kramers/temperature_target": record.target_temperature,
        "kramers/critical_temperature": record.critical_temperature,
        "kramers/lr": lr,
        "kramers/batch_size": float(batch_size),
        "kramers/noise_scale": observation.noise_scale,
        "kramers/equilibrium": regime.equilibrium.statistic,
        "kramers/phase": float(regime.phase.value),
        "kramers/noise_floor": regime.equilibrium.floor,
        "kramers/cooling_gain": regime.equilibrium.gain,
        "kramers/temperature_min": regime.coldest_temperature,
    }
    fresh = observation.fresh
    if fresh is not None and fresh.measured:
        rate = fresh.escape_rate
        metrics.update(
            {
                "kramers/lambda_max": fresh.lambda_max,
                "kramers/lambda_min": fresh.lambda_min,
                "kramers/hessian_trace": fresh.hessian_trace,
                "kramers/barrier": fresh.barrier,
                "kramers/escape_rate": rate,
                "kramers/escape_time": fresh.escape_time,
                "kramers/expected_escapes": rate * observation.clock.remaining,
                # The rate sums measured pathways only; these have none (not a zero rate).
                "kramers/unmeasured_pathways": float(fresh.unmeasured_pathways),
                "kramers/estimate_seconds": fresh.seconds,
                # Only the solvers that decisions use; the trace is flagged on its own.
                "kramers/converged": float(not fresh.failed_solvers),
                "kramers/trace_converged": float(fresh.converged.get("trace", True)),
                "kramers/estimate_work": float(budget.estimate_work),
            }
        )
    elif fresh is not None or not observation.loss_finite:
        metrics.update(dict.fromkeys(ESTIMATE_METRICS, math.nan))
    metrics["kramers/overhead"] = budget.overhead
    metrics["kramers/estimates_deferred"] = float(budget.num_deferred)
    return {k: float(v) for k, v in metrics.items()}


def history_entry(
    observation: Observation,
    regime: RegimeDecision,
    *,
    step: int,
    lr: float,
    batch_size: int,
    stop: bool,
    metrics: dict[str, float],
) -> dict[str, Any]:
    """One entry of ``KramersCallback.history``: plain Python values (checkpointable).
    ``lr`` and ``batch_size`` are the settings after the decision, ``lr_before`` and
    ``batch_before`` the optimizer's before it; ``limited_by`` is present where a policy
    decided, ``monitor_plateau`` where ``cooling_patience`` is set."""
    record = regime.record
    clock = observation.clock
    knobs, fresh = observation.knobs, observation.fresh
    entry: dict[str, Any] = {
        "epoch": observation.epoch,
        "step": step,
        "estimate": "deferred" if fresh is None else fresh.status,
        "temperature": observation.temperature,
        "noise_source": observation.noise_source,
        "lr_before": knobs.lr / knobs.damping,
        "batch_before": knobs.batch_size,
        "remaining_steps": clock.remaining,
        "horizon": clock.horizon,
    }
    if record.decision is not None:
        entry["limited_by"] = list(record.decision.limited_by)
    entry.update(
        critical_temperature=record.critical_temperature,
        target=record.target_temperature,
        reason=record.reason,
        phase=regime.phase.name.lower(),
        equilibrium=regime.equilibrium.reason,
        lr=lr,
        batch_size=batch_size,
        stop=bool(stop),
        metrics=metrics,
    )
    if regime.monitor is not None:
        entry["monitor_plateau"] = regime.monitor.reason
    return entry


def publish(trainer: pl.Trainer, metrics: dict[str, float]) -> None:
    """Put ``metrics`` in ``trainer.callback_metrics`` (also with ``logger=False``), the
    progress bar (:data:`PROGRESS_BAR`) and every logger, at the current step.

    ``LightningModule.log`` would do the same through its result collection, at about a
    millisecond per value and epoch, which is several percent of a small model's epoch; the
    values are already identical on every rank (decided from rank 0's estimate), so nothing
    needs reducing. Cost: O(number of metrics).
    """
    trainer.callback_metrics.update(
        {name: torch.tensor(value, dtype=torch.float32) for name, value in metrics.items()}
    )
    trainer.progress_bar_metrics.update({k: metrics[k] for k in PROGRESS_BAR if k in metrics})
    for logger in trainer.loggers:  # loggers write on rank 0 only
        logger.log_metrics({**metrics, "epoch": trainer.current_epoch}, step=trainer.global_step)
        logger.save()


def record_epoch(
    trainer: pl.Trainer,
    observation: Observation,
    regime: RegimeDecision,
    *,
    lr: float,
    batch_size: int,
    stop: bool,
    budget: OverheadBudget,
) -> dict[str, Any]:
    """Publish the epoch end's :func:`epoch_metrics` and return its :func:`history_entry`
    (``lr`` and ``batch_size``: the settings after the decision)."""
    metrics = epoch_metrics(observation, regime, lr=lr, batch_size=batch_size, budget=budget)
    publish(trainer, metrics)
    return history_entry(
        observation,
        regime,
        step=trainer.global_step,
        lr=lr,
        batch_size=batch_size,
        stop=stop,
        metrics=metrics,
    )

"""What ``KramersCallback`` makes of one finished estimate: its summary, counted work and the
warnings and log lines about it (Lightning's ``rank_zero_*``; no decisions)."""

from __future__ import annotations

import math

from pytorch_lightning.utilities.rank_zero import rank_zero_warn

from kramers_callback._budget import EstimateSize, OverheadBudget, estimate_work
from kramers_callback.estimate import KramersEstimate
from kramers_callback.observation import EstimateSummary

__all__ = ["estimate_message", "summarise_estimate", "warn_rough_trace"]


def summarise_estimate(
    est: KramersEstimate, *, num_batches: int, size: EstimateSize, epoch: int
) -> EstimateSummary:
    """The estimate's :class:`~kramers_callback.observation.EstimateSummary` with its counted
    work (:func:`~kramers_callback._budget.estimate_work`); one warning where its numbers are
    not used (not finite: the decision holds; or a decision's eigensolver did not converge: the
    epoch decides from the last good estimate)."""
    work = estimate_work(
        num_hvp=est.num_hvp,
        num_forward=est.num_forward,
        num_samples=est.num_samples,
        num_batches=num_batches,
    )
    summary = EstimateSummary.from_estimate(est, work=work)
    if summary.status == "non_finite":
        rank_zero_warn(
            f"KramersCallback: the estimate at epoch {epoch} is not finite "
            f"(T={est.temperature}, λ_max={est.lambda_max}, rate={est.escape_rate}); not "
            "acted on, keeping the last good settings."
        )
    elif summary.status == "not_converged":
        rank_zero_warn(
            f"KramersCallback: the estimate at epoch {epoch} did not converge "
            f"({', '.join(summary.failed_solvers)} eigensolver after {est.num_hvp} "
            f"Hessian-vector products, max_products={size.max_products}); its curvature is not "
            "used: the epoch decides from the last good estimate, and the next estimate starts "
            "from its vectors."
        )
    return summary


def warn_rough_trace(epoch: int, size: EstimateSize) -> None:
    rank_zero_warn(
        f"KramersCallback: the Hutchinson trace at epoch {epoch} did not converge within "
        f"{size.max_trace_samples} samples; kramers/hessian_trace is rough (no decision "
        "uses it; kramers/trace_converged flags each estimate). Warned once."
    )


def estimate_message(
    est: KramersEstimate, *, work: float, epoch: int, budget: OverheadBudget
) -> str:
    """The verbose line of one estimate: its products, passes, work and the counted overhead
    so far (this estimate included)."""
    training = budget.training_work
    overhead = (budget.estimate_work + work) / training if training > 0 else math.nan
    return (
        f"KramersCallback: estimate at epoch {epoch}: {est.num_hvp} Hessian-vector "
        f"products, {est.num_forward} probe forward passes on {est.num_samples} samples "
        f"= {work:.3g} sample-passes ({est.seconds:.2f} s); "
        f"counted overhead so far {overhead:.1%}"
    )

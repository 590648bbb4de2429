"""Overhead budget: when to estimate, and how large an estimate to make, in measured time.

Pure logic: no clock is read here; the callback measures the seconds (training time between
the estimates' boundaries, where it synchronises the device, and each estimate's own time)
and hands them in. Counted work in **sample-passes** (one forward pass of one sample) is kept
as the predictor of what an estimate of a given size will cost before it has been timed, and
as a machine-independent figure to log.

Accounting model (standard FLOP bookkeeping: a backward pass costs about two forward passes,
Kaplan et al. 2020, "Scaling laws", ``C ≈ 6N`` per token for training vs ``2N`` for a forward):

- a training step on ``B`` samples: ``3 B`` (forward + backward);
- an estimate on ``n`` probe samples in ``b`` batches: ``HVP_PASSES · n`` per Hessian-vector
  product (a double backward through the retained gradient graph, "about two forward-backward
  passes", :class:`~kramers_callback.curvature.hvp.HessianOperator`), ``n / b`` per forward
  pass over one probe batch, plus ``GRADIENT_PASSES · n`` once for the backward passes of the
  gradient graph and of the per-sample noise gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from kramers_callback._validation import check_non_negative, check_positive, check_positive_int

TRAIN_PASSES = 3.0
"""Sample-passes per training sample: one forward and one backward (≈ two forwards)."""
HVP_PASSES = 6.0
"""Sample-passes per probe sample and Hessian-vector product (≈ two forward-backward passes)."""
GRADIENT_PASSES = 4.0
"""Sample-passes per probe sample for the two backward passes every estimate makes."""
MIN_PROBE = 32
MIN_PRODUCTS = 20
MIN_SCAN_EVALS = 10
MIN_TRACE_SAMPLES = 10
SPACING = 3
"""Estimates come at least every ``SPACING`` epochs: an estimate may cost up to this many
epochs' share of the budget, and no more."""
FIRST_BY_EPOCH = 2
"""The first estimate comes by the end of this epoch (1-based), paid from the budget of the
whole horizon if the credit so far is short."""


@dataclass(frozen=True)
class EstimateSize:
    """The knobs of :func:`kramers_callback.estimate` that set its cost."""

    probe_size: int
    probe_batch_size: int
    top_k: int
    max_products: int
    compute_trace: bool
    max_trace_samples: int
    max_scan_evals: int

    @property
    def num_batches(self) -> int:
        return math.ceil(self.probe_size / self.probe_batch_size)

    def bound(self) -> float:
        r"""Most sample-passes an estimate of this size can use.

        .. math::

            W \le n\Big(\text{HVP}\,(2 p + k + 1 + s_{\text{tr}}) + \text{GRAD}\Big)
                 + \frac{n}{b}\, b\,\big(2 + (2k + 2)(e + 1)\big)

        with ``p`` products per eigensolve (top and bottom), ``k`` top eigenpairs (plus one
        Rayleigh quotient per direction), ``s_tr`` Hutchinson samples, ``e`` evaluations per
        line scan over ``2k + 2`` directions (one more for the noise along each). Cost: O(1).
        """
        n = self.probe_size
        trace = self.max_trace_samples if self.compute_trace else 0
        products = 2 * self.max_products + self.top_k + 1 + trace
        directions = 2 * self.top_k + 2
        forwards_per_batch = 2 + directions * (self.max_scan_evals + 1)
        return n * (HVP_PASSES * products + GRADIENT_PASSES) + n * forwards_per_batch

    def shrunk(self) -> EstimateSize:
        """One step down the ladder: half the probe, one fewer eigenpair (about half of them
        from five on, so that the ladder has ``O(log top_k)`` rungs whatever ``top_k`` is), half
        the products and scan evaluations, no trace (it is logged, never used by a decision);
        floors at ``MIN_*``."""
        probe = max(min(self.probe_size, MIN_PROBE), self.probe_size // 2)
        return replace(
            self,
            probe_size=probe,
            probe_batch_size=min(self.probe_batch_size, probe),
            top_k=max(1, min(self.top_k - 1, self.top_k // 2 + 1)),
            max_products=max(min(self.max_products, MIN_PRODUCTS), self.max_products // 2),
            compute_trace=False,
            max_trace_samples=max(
                min(self.max_trace_samples, MIN_TRACE_SAMPLES), self.max_trace_samples // 2
            ),
            max_scan_evals=max(min(self.max_scan_evals, MIN_SCAN_EVALS), self.max_scan_evals // 2),
        )

    def ladder(self) -> list[EstimateSize]:
        """This size, then every distinct :meth:`shrunk` step down to the floor."""
        sizes = [self]
        while (smaller := sizes[-1].shrunk()) != sizes[-1]:
            sizes.append(smaller)
        return sizes


def check_budget(name: str, value: Any) -> float:
    """``value > 0``, finite or ``inf`` (no limit)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == math.inf:
        return math.inf
    try:
        return check_positive(name, value)
    except ValueError:
        raise ValueError(f"{name} must be a number > 0 (inf: no limit), got {value!r}") from None


def training_work(samples: int) -> float:
    """Sample-passes of training on ``samples`` samples: ``3·samples``."""
    return TRAIN_PASSES * samples


def estimate_work(*, num_hvp: int, num_forward: int, num_samples: int, num_batches: int) -> float:
    r"""Counted sample-passes of one estimate.

    .. math::

        W = n\,(\text{HVP}\cdot h + \text{GRAD}) + f\,\frac{n}{b}

    with ``h`` Hessian-vector products, ``f`` forward passes over a probe batch, ``n`` probe
    samples in ``b`` batches (as :class:`~kramers_callback.estimate.KramersEstimate` reports
    them). Cost: O(1).
    """
    n = num_samples
    return n * (HVP_PASSES * num_hvp + GRADIENT_PASSES) + num_forward * n / max(num_batches, 1)


@dataclass(frozen=True)
class Plan:
    """What to do at one candidate point."""

    run: bool
    size: EstimateSize
    level: int
    predicted_seconds: float
    credit: float
    reason: str


class OverheadBudget:
    r"""Spaces and sizes estimates so that their measured time stays within a fraction of training.

    .. math::

        \text{credit} = \beta \sum t_{\text{train}} - \sum t_{\text{estimate}},
        \qquad \text{run} \iff \text{credit} \ge \hat t(\text{size})

    with ``β`` the ``overhead_budget``. The size is the largest on the
    :meth:`EstimateSize.ladder` whose predicted time fits :data:`SPACING` epochs' share
    ``β·SPACING·t_epoch``, else the smallest, so estimates come at least every ``SPACING``
    epochs where the smallest fits. The prediction is the counted work of the size (its
    :meth:`~EstimateSize.bound` times the actual/bound ratio of the previous estimate: warm
    starts make estimates cheaper than their bound) times the measured seconds per counted
    sample-pass of the estimates so far (before the first: of training). The first estimate
    comes by the end of epoch :data:`FIRST_BY_EPOCH`: if the credit is short then, it borrows
    from the budget of the whole horizon, ``β·t_epoch·(epochs done + epochs left)``, and later
    estimates wait until the credit is repaid; where not even that pays for it by the
    prediction, the smallest size runs once to measure the real cost (on a tiny data set this
    one estimate can exceed ``β``: ``kramers/overhead`` shows it). ``β = inf`` estimates at
    full size every time.

    Because it runs on measured time, two runs on differently loaded machines may space their
    estimates differently; under DDP the callback plans on rank 0's times (broadcast).

    Args:
        overhead_budget: ``β > 0`` (``inf`` allowed).
        full_size: the user's estimate size, the top of the ladder.

    Cost: O(ladder length) per plan.
    """

    def __init__(self, overhead_budget: float, full_size: EstimateSize) -> None:
        self.overhead_budget = check_budget("overhead_budget", overhead_budget)
        self.sizes = full_size.ladder()
        self.efficiency = 1.0
        """Actual/bound work of the previous estimate."""
        self.training_work = 0.0
        self.estimate_work = 0.0
        self.training_seconds = 0.0
        self.estimate_seconds = 0.0
        self.num_estimates = 0
        self.num_deferred = 0

    @property
    def unlimited(self) -> bool:
        return math.isinf(self.overhead_budget)

    def add_training(self, samples: int) -> None:
        """Count ``samples`` trained on (call once per batch)."""
        self.training_work += training_work(samples)

    def add_training_seconds(self, seconds: float) -> None:
        """Add measured training time (seconds outside estimates and validation)."""
        self.training_seconds += check_non_negative("seconds", seconds)

    @property
    def credit(self) -> float:
        """``β·Σt_train − Σt_estimate`` in seconds (``inf`` without a limit)."""
        if self.unlimited:
            return math.inf
        return self.overhead_budget * self.training_seconds - self.estimate_seconds

    def predicted(self, size: EstimateSize) -> float:
        """Predicted counted work of an estimate of ``size``."""
        return size.bound() * self.efficiency

    def seconds_per_work(self) -> float:
        """Measured seconds per counted sample-pass: of the estimates so far, else of
        training (``nan`` before either was measured)."""
        if self.estimate_work > 0 and self.estimate_seconds > 0:
            return self.estimate_seconds / self.estimate_work
        if self.training_work > 0 and self.training_seconds > 0:
            return self.training_seconds / self.training_work
        return math.nan

    def predicted_seconds(self, size: EstimateSize) -> float:
        return self.predicted(size) * self.seconds_per_work()

    def plan(self, *, epochs_done: int, epochs_left: float = math.inf) -> Plan:
        """Decide at an epoch end, after ``epochs_done ≥ 1`` epochs of training, with
        ``epochs_left`` more in the budget (``inf`` when unknown)."""
        check_positive_int("epochs_done", epochs_done)
        if self.unlimited:
            size = self.sizes[0]
            return Plan(True, size, 0, self.predicted_seconds(size), math.inf, "unlimited budget")
        rate = self.seconds_per_work()
        if not (self.training_seconds > 0 and math.isfinite(rate)):
            size = self.sizes[-1]
            reason = "no training time measured yet"
            return Plan(False, size, len(self.sizes) - 1, math.nan, self.credit, reason)
        epoch_seconds = self.training_seconds / epochs_done
        share = self.overhead_budget * epoch_seconds * SPACING
        level = next(
            (i for i, s in enumerate(self.sizes) if self.predicted_seconds(s) <= share),
            len(self.sizes) - 1,
        )
        size = self.sizes[level]
        predicted = self.predicted_seconds(size)
        credit = self.credit
        if credit >= predicted:
            return Plan(True, size, level, predicted, credit, "within budget")
        if self.num_estimates == 0 and epochs_done >= FIRST_BY_EPOCH:
            horizon = self.overhead_budget * epoch_seconds * (epochs_done + epochs_left)
            if horizon - self.estimate_seconds >= predicted:
                reason = "first estimate, paid from the budget of the whole horizon"
                return Plan(True, size, level, predicted, credit, reason)
            # Not even the horizon pays for it by the prediction, which counts a training
            # step's overheads into every sample-pass: make the smallest one, to measure it.
            last = len(self.sizes) - 1
            smallest = self.sizes[last]
            reason = "first estimate at the smallest size, to measure what an estimate costs"
            return Plan(True, smallest, last, self.predicted_seconds(smallest), credit, reason)
        epochs = (predicted - credit) / (self.overhead_budget * epoch_seconds)
        reason = (
            f"its predicted time, {predicted:.3g} s (size level {level}: probe "
            f"{size.probe_size}, top_k {size.top_k}), exceeds the overhead credit "
            f"{credit:.3g} s (overhead_budget={self.overhead_budget:g} of the training time "
            f"so far, minus earlier estimates); about {math.ceil(epochs)} more epoch(s) of "
            "training will pay for it"
        )
        return Plan(False, size, level, predicted, credit, reason)

    def record(self, plan: Plan, actual_work: float, seconds: float) -> None:
        """Account an estimate made under ``plan`` that used ``actual_work`` sample-passes and
        ``seconds`` of measured time."""
        actual_work = check_non_negative("actual_work", actual_work)
        self.num_estimates += 1
        self.estimate_work += actual_work
        self.estimate_seconds += check_non_negative("seconds", seconds)
        bound = plan.size.bound()
        if bound > 0:
            self.efficiency = min(1.0, max(actual_work / bound, 1e-3))

    def defer(self) -> None:
        self.num_deferred += 1

    @property
    def overhead(self) -> float:
        """Measured estimate time as a fraction of measured training time so far."""
        if self.training_seconds > 0:
            return self.estimate_seconds / self.training_seconds
        return math.nan

    @property
    def counted_overhead(self) -> float:
        """Counted estimate work as a fraction of counted training work so far."""
        return self.estimate_work / self.training_work if self.training_work > 0 else math.nan

    def state_dict(self) -> dict[str, Any]:
        return {
            "efficiency": self.efficiency,
            "training_work": self.training_work,
            "estimate_work": self.estimate_work,
            "training_seconds": self.training_seconds,
            "estimate_seconds": self.estimate_seconds,
            "num_estimates": self.num_estimates,
            "num_deferred": self.num_deferred,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.efficiency = float(state.get("efficiency", 1.0))
        self.training_work = float(state.get("training_work", 0.0))
        self.estimate_work = float(state.get("estimate_work", 0.0))
        self.training_seconds = float(state.get("training_seconds", 0.0))
        self.estimate_seconds = float(state.get("estimate_seconds", 0.0))
        self.num_estimates = int(state.get("num_estimates", 0))
        self.num_deferred = int(state.get("num_deferred", 0))

"""The termination rule (docs/theory.md section 4.5) with its guards."""

from __future__ import annotations

import io

import pytest
import torch

from kramers_callback.stopping import StopReason, TerminationRule


def check(
    rule: TerminationRule,
    *,
    rate: float,
    remaining: float = 100.0,
    epoch=5,
    value=None,
    settled=StopReason.COOLING_NOT_WORTH,
):
    return rule.check(
        rate=rate,
        remaining_steps=remaining,
        epochs_completed=epoch,
        settled=settled,
        monitor_value=value,
    )


def test_zero_compute_cost_never_stops():
    rule = TerminationRule(compute_cost=0.0, patience=1)
    assert not any(check(rule, rate=0.0) for _ in range(5))
    assert rule.reason is StopReason.NOT_STOPPED


def test_threshold_is_rate_times_remaining_times_cost_below_one():
    # c = 2, R = 100: the expected number of escapes k·R must reach 1/c = 0.5 to go on.
    assert check(TerminationRule(compute_cost=2.0), rate=0.0049)
    assert not check(TerminationRule(compute_cost=2.0), rate=0.0051)
    assert not check(TerminationRule(compute_cost=2.0), rate=float("inf"))
    assert check(TerminationRule(compute_cost=2.0), rate=1.0, remaining=0.0)


def test_patience_counts_consecutive_checks():
    rule = TerminationRule(compute_cost=1.0, patience=3)
    assert not check(rule, rate=0.0)
    assert not check(rule, rate=0.0)
    assert not check(rule, rate=1.0)  # an escape is likely again: the count restarts
    assert rule.wait_count == 0
    assert not check(rule, rate=0.0)
    assert not check(rule, rate=0.0)
    assert check(rule, rate=0.0)
    assert rule.reason is StopReason.COOLING_NOT_WORTH and rule.stopped_epoch == 5
    assert "3 consecutive checks" in rule.message


def test_min_epochs_guard():
    rule = TerminationRule(compute_cost=1.0, patience=1, min_epochs=3)
    assert not check(rule, rate=0.0, epoch=1)
    assert not check(rule, rate=0.0, epoch=2)
    assert check(rule, rate=0.0, epoch=3)


def test_monitor_must_have_stopped_improving():
    rule = TerminationRule(compute_cost=1.0, patience=2, use_monitor=True, min_delta=0.01)
    assert not check(rule, rate=0.0, value=1.0)  # first value: an improvement
    assert not check(rule, rate=0.0, value=0.95)  # improved by more than min_delta
    assert not check(rule, rate=0.0, value=0.945)  # stalled (0.005 ≤ min_delta): count 1
    assert not check(rule, rate=0.0, value=None)  # validation did not run: never stop on it
    assert not check(rule, rate=0.0, value=0.949)  # count 1
    assert check(rule, rate=0.0, value=0.96)  # count 2
    assert rule.best == 0.95 and "stopped improving" in rule.message


def test_monitor_max_mode_and_non_finite_value():
    rule = TerminationRule(compute_cost=1.0, patience=1, use_monitor=True, mode="max")
    assert not check(rule, rate=0.0, value=0.5)
    assert not check(rule, rate=0.0, value=0.6)
    assert check(rule, rate=0.0, value=float("nan"))


def test_state_round_trip_loads_with_weights_only():
    rule = TerminationRule(compute_cost=1.0, patience=2, use_monitor=True)
    check(rule, rate=0.0, value=1.0)
    check(rule, rate=0.0, value=1.0)
    check(rule, rate=0.0, value=1.0)
    buffer = io.BytesIO()
    torch.save(rule.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    restored = TerminationRule(compute_cost=1.0, patience=2, use_monitor=True)
    restored.load_state_dict(state)
    assert restored.state_dict() == rule.state_dict()
    assert restored.reason is StopReason.COOLING_NOT_WORTH
    empty = TerminationRule(compute_cost=1.0)
    empty.load_state_dict({})
    assert empty.reason is StopReason.NOT_STOPPED and empty.wait_count == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(compute_cost=-1.0), "compute_cost must be a finite number ≥ 0, got -1.0"),
        (dict(compute_cost=1.0, patience=0), "patience must be an integer ≥ 1, got 0"),
        (dict(compute_cost=1.0, min_epochs=-1), "min_epochs must be an integer ≥ 0, got -1"),
        (dict(compute_cost=1.0, min_delta=-0.1), "min_delta must be a finite number ≥ 0, got -0.1"),
        (dict(compute_cost=1.0, mode="best"), r"mode must be one of \['max', 'min'\], got 'best'"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TerminationRule(**kwargs)


def test_a_run_with_something_left_to_gain_never_stops():
    # Still descending, or a cooling step still worth it: no escape condition stops it.
    rule = TerminationRule(compute_cost=100.0, patience=1)
    assert not any(check(rule, rate=0.0, settled=None) for _ in range(5))
    assert rule.wait_count == 0 and rule.reason is StopReason.NOT_STOPPED


def test_each_settled_reason_is_recorded_with_its_own_line():
    for reason, words in (
        (StopReason.COLDEST_SETTING, "coldest setting"),
        (StopReason.COOLING_NOT_WORTH, "1/compute_cost of the training loss"),
    ):
        rule = TerminationRule(compute_cost=1.0, patience=1)
        assert check(rule, rate=0.0, settled=reason)
        assert rule.reason is reason
        assert words in rule.message and "\n" not in rule.message


def test_settled_must_be_a_stop_reason():
    with pytest.raises(ValueError, match="settled must be None or one of"):
        check(TerminationRule(compute_cost=1.0), rate=0.0, settled=StopReason.NOT_STOPPED)


def test_a_legacy_reason_loads():
    rule = TerminationRule(compute_cost=1.0)
    rule.load_state_dict({"reason": "escapes_exhausted", "wait_count": 2})
    assert rule.reason is StopReason.COOLING_NOT_WORTH and rule.wait_count == 2

"""Argument checks shared by every public entry point.

Each raises ``ValueError`` with one message shape, ``"<name> must be <rule>, got <value!r>"``,
so a user always sees the argument, the rule and the value received.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any


def _fail(name: str, rule: str, value: Any) -> None:
    raise ValueError(f"{name} must be {rule}, got {value!r}")


def _as_float(name: str, value: Any, rule: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        _fail(name, rule, value)
    if math.isnan(out):
        _fail(name, rule, value)
    return out


def all_finite(*values: Any) -> bool:
    """Whether every value converts to a finite float (a predicate, never raises)."""
    try:
        return all(math.isfinite(float(v)) for v in values)
    except (TypeError, ValueError):
        return False


def check_finite(name: str, value: Any) -> float:
    """A finite real number of any sign."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        out = math.nan
    if not math.isfinite(out):
        _fail(name, "a finite number", value)
    return out


def check_positive(name: str, value: Any) -> float:
    """``value > 0`` and finite."""
    out = _as_float(name, value, "a finite number > 0")
    if not (out > 0 and math.isfinite(out)):
        _fail(name, "a finite number > 0", value)
    return out


def check_non_negative(name: str, value: Any, *, allow_inf: bool = False) -> float:
    """``value ≥ 0`` (finite unless ``allow_inf``)."""
    rule = "a number ≥ 0" if allow_inf else "a finite number ≥ 0"
    out = _as_float(name, value, rule)
    if out < 0 or (not allow_inf and not math.isfinite(out)):
        _fail(name, rule, value)
    return out


def check_in_range(
    name: str,
    value: Any,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``low ≤ value ≤ high``, with either end optionally open."""
    rule = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    out = _as_float(name, value, rule)
    if (out < low or (low_open and out == low)) or (out > high or (high_open and out == high)):
        _fail(name, rule, value)
    return out


def check_positive_int(name: str, value: Any, *, minimum: int = 1) -> int:
    """An ``int`` (not ``bool``) with ``value ≥ minimum``."""
    rule = f"an integer ≥ {minimum}"
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(name, rule, value)
    return value


def check_bool(name: str, value: Any) -> bool:
    """``True`` or ``False`` (not merely truthy)."""
    if not isinstance(value, bool):
        _fail(name, "True or False", value)
    return value


def check_choice(name: str, value: Any, choices: Collection[Any]) -> Any:
    """``value`` is one of ``choices``."""
    if value not in choices:
        _fail(name, f"one of {sorted(choices)!r}", value)
    return value

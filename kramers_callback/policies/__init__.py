"""Policies: which knobs the controller turns, and how (:class:`PolicyRule`).

One file per policy: :mod:`~kramers_callback.policies.observe`,
:mod:`~kramers_callback.policies.lr`, :mod:`~kramers_callback.policies.batch`,
:mod:`~kramers_callback.policies.hybrid`; the shared temperature model and clamped moves are
:mod:`~kramers_callback.policies.temperature_model`.
"""

from __future__ import annotations

from kramers_callback.policies.base import Policy, PolicyRule, TargetFn
from kramers_callback.policies.batch import BatchPolicy
from kramers_callback.policies.hybrid import HybridPolicy
from kramers_callback.policies.lr import LrPolicy
from kramers_callback.policies.observe import ObservePolicy
from kramers_callback.policies.temperature_model import TemperatureModel

__all__ = [
    "RULES",
    "BatchPolicy",
    "HybridPolicy",
    "LrPolicy",
    "ObservePolicy",
    "Policy",
    "PolicyRule",
    "TargetFn",
    "TemperatureModel",
    "policy_rule",
]

RULES: dict[Policy, PolicyRule] = {
    Policy.OBSERVE: ObservePolicy(),
    Policy.LR: LrPolicy(),
    Policy.BATCH: BatchPolicy(),
    Policy.HYBRID: HybridPolicy(),
}
"""The rule of each :class:`Policy`."""


def policy_rule(policy: Policy | str | PolicyRule) -> PolicyRule:
    """The :class:`PolicyRule` of a :class:`Policy` or its string value (a rule is returned
    as is). Raises ``ValueError`` for an unknown name."""
    if isinstance(policy, (Policy, str)):
        return RULES[Policy(policy)]
    return policy

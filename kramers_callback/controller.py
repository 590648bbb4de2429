r"""The policy decision: from measured and target temperature to a new learning rate and batch size.

Pure maths (docs/theory.md section 4.3): no Lightning, no model, no autograd. The callback
measures (:class:`~kramers_callback.observation.Observation`), a signal gives the target
(:mod:`kramers_callback.signals`), this module decides with a policy
(:mod:`kramers_callback.policies`), the callback applies (:mod:`kramers_callback.actuators`).

:func:`decide` holds the steps every policy shares: never act on a non-finite input, keep the
stability clamp where no target exists and the policy owns ``η``, hold on target; otherwise
the policy's :meth:`~kramers_callback.policies.PolicyRule.move` turns the knobs it owns along
the temperature model :class:`~kramers_callback.policies.TemperatureModel`.
"""

from __future__ import annotations

import math

from kramers_callback._validation import all_finite
from kramers_callback.limits import ControlLimits
from kramers_callback.observation import Decision
from kramers_callback.policies import Policy, PolicyRule, TargetFn, TemperatureModel, policy_rule

__all__ = ["decide"]


def decide(
    policy: Policy | str | PolicyRule,
    *,
    target_temperature: float | TargetFn,
    lr: float,
    batch_size: int,
    noise_trace: float,
    dim: int,
    lambda_max: float,
    limits: ControlLimits,
    momentum: float = 0.0,
    dataset_size: int | None = None,
) -> Decision:
    r"""Choose ``(η', B')`` that moves the temperature toward its target within the clamps.

    The temperature follows ``T ∝ η_eff g(B)``
    (:class:`~kramers_callback.policies.TemperatureModel`); the target may itself depend on the
    knobs (:func:`~kramers_callback.signals.annealing_target`: a larger ``B`` leaves fewer
    steps, a larger ``η`` more attempts per step), so each move solves, along one knob,

    .. math::

        T(\eta', B) = T^*(\eta', B) \quad\text{or}\quad T(\eta, B') = T^*(\eta, B').

    For a constant target this is ``η' = η T*/T`` and
    ``B' = KN/(N − 1 + K)``, ``K = η_eff tr Σ₁/(2dT*)``
    (:func:`~kramers_callback.kramers.optimal_batch_size`, docs/theory.md section 4.4). Then the
    clamps of docs/theory.md section 4.3: each knob moves by at most ``max_change`` per
    decision; ``η`` stays in ``[lr_min, lr_max]`` and strictly below the stability limit
    ``2(1 + β)/λ_max`` (:func:`~kramers_callback.limits.stability_limit`; stability wins over
    ``lr_min``); ``B`` stays in ``[batch_min, batch_max]`` on a multiple of ``batch_multiple``
    (the multiple nearest the solution in ``|ln T − ln T*|``).

    Policies (:mod:`kramers_callback.policies`): ``observe`` returns the inputs; ``lr`` moves
    ``η``; ``batch`` moves ``B``; ``hybrid`` cools by ``B`` first and lowers ``η`` only once
    ``B`` has reached ``batch_max`` (the part of the change that the per-decision limit holds
    back is left to the next decision, not handed to ``η``), and heats by ``η`` first, then
    shrinks ``B`` once ``η`` has reached ``lr_max`` or the stability limit. Shared by every
    policy: a non-finite or non-positive input holds every setting (never act on a non-finite
    estimate); an undefined target at the current settings holds every setting but keeps the
    stability clamp where the policy owns ``η`` (reason ``"no_target"``); on target, only
    that clamp applies.

    Args:
        policy: a :class:`~kramers_callback.policies.Policy`, its string value, or a
            :class:`~kramers_callback.policies.PolicyRule`.
        target_temperature: ``T* > 0``, or ``T*(η, B)`` as a function
            (:data:`~kramers_callback.policies.TargetFn`).
        lr: the current learning rate ``η`` (of the reference parameter group).
        batch_size: the current samples per optimizer step ``B``.
        noise_trace: ``tr Σ₁`` (per-sample gradient covariance trace).
        dim: ``d``, number of trainable parameters.
        lambda_max: the top Hessian eigenvalue (for the stability limit).
        limits: the clamps.
        momentum: ``β`` of heavy-ball SGD (``η_eff = η/(1 − β)``).
        dataset_size: ``N`` for the finite-population factor, ``None`` for with replacement.

    Returns:
        A :class:`~kramers_callback.observation.Decision`.

    Cost: O(1) evaluations of the target per bisection step, about 80 for ``η`` and
    ``log₂(window/unit)`` for ``B``.
    """
    rule = policy_rule(policy)
    target = (
        target_temperature
        if callable(target_temperature)
        else (lambda _lr, _b, value=target_temperature: value)
    )
    current_target = float(target(lr, batch_size)) if all_finite(lr) else math.nan
    measured = (lr, noise_trace, lambda_max, momentum)
    if not all_finite(*measured) or not (lr > 0 and noise_trace > 0):
        return Decision(
            lr=lr,
            batch_size=batch_size,
            temperature=math.nan,
            target_temperature=current_target,
            predicted_temperature=math.nan,
            changed=False,
            reason="non_finite",
        )
    model = TemperatureModel(
        target=target,
        noise_trace=noise_trace,
        dim=dim,
        dataset_size=dataset_size,
        momentum=momentum,
        lambda_max=lambda_max,
        limits=limits,
    )
    if not (math.isfinite(current_target) and current_target > 0):
        # No target (no barrier within reach, or τ·A ≤ 1) is no reason to keep an unstable
        # step size: the stability clamp still holds wherever the policy owns η.
        new_lr = model.cap_lr(lr) if rule.owns_lr else lr
        return Decision(
            lr=new_lr,
            batch_size=batch_size,
            temperature=math.nan,
            target_temperature=current_target,
            predicted_temperature=math.nan,
            changed=new_lr != lr,
            reason="no_target",
            limited_by=tuple(model.limited_by),
        )
    temperature = model.temperature(lr, batch_size)
    new_lr, new_batch = lr, batch_size
    if not (rule.owns_lr or rule.owns_batch):
        reason = "observe"
    elif current_target == temperature:
        reason = "on_target"
        if rule.owns_lr:
            new_lr = model.cap_lr(lr)
    else:
        cooling = current_target < temperature
        reason = "cool" if cooling else "heat"
        new_lr, new_batch = rule.move(model, lr, batch_size, cooling=cooling)
    return Decision(
        lr=new_lr,
        batch_size=new_batch,
        temperature=temperature,
        target_temperature=current_target,
        predicted_temperature=model.temperature(new_lr, new_batch),
        changed=(new_lr != lr or new_batch != batch_size),
        reason=reason,
        limited_by=tuple(model.limited_by),
    )

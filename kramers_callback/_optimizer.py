r"""What the callback reads from, and writes to, the optimizer (torch plumbing).

Supported: :class:`torch.optim.SGD` (with or without momentum, dampening, Nesterov) exactly,
and the Adam family (:class:`~torch.optim.Adam`, :class:`~torch.optim.AdamW`,
:class:`~torch.optim.NAdam`, :class:`~torch.optim.RAdam` and their subclasses) through the
approximation of docs/theory.md section 5: the diagonal preconditioner

.. math::

    P = \frac{1}{\sqrt{\hat v} + \epsilon}, \qquad \hat v = \frac{v}{1 - \beta_2^t},

with ``v`` Adam's ``exp_avg_sq``. In coordinates ``x = P^{-1/2}θ`` Adam's step is SGD with
dampened heavy-ball momentum: its first moment ``m ← β₁m + (1 − β₁)g`` is SGD's buffer with
dampening ``β₁``. So the temperature's step is ``η(1 − β₁)/(1 − β₁) = η``, the stability limit
heavy ball's, and the temperature, curvature and barriers are measured there
(``estimate(preconditioner=P)``), with ``P^{1/2} g`` the noise fed to the running estimator.
Weight decay, the bias corrections and the change of ``P`` along the run are ignored.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = [
    "ADAPTIVE",
    "SGD",
    "classify",
    "flat_gradient",
    "lr_of",
    "momentum_of",
    "preconditioner",
    "scale_lr",
    "trainable_parameters",
]

OptimizerKind = str
SGD, ADAPTIVE = "sgd", "adaptive"
_ADAPTIVE = (torch.optim.Adam, torch.optim.AdamW, torch.optim.NAdam, torch.optim.RAdam)


def classify(optimizer: torch.optim.Optimizer) -> OptimizerKind | None:
    """``"sgd"``, ``"adaptive"`` (Adam family) or ``None`` (unsupported)."""
    if isinstance(optimizer, torch.optim.SGD):
        return SGD
    if isinstance(optimizer, _ADAPTIVE):
        return ADAPTIVE
    return None


def lr_of(optimizer: torch.optim.Optimizer) -> float:
    """The reference learning rate: that of the first parameter group."""
    lr = optimizer.param_groups[0]["lr"]
    return float(lr.item() if isinstance(lr, Tensor) else lr)


def momentum_of(optimizer: torch.optim.Optimizer) -> tuple[float, float]:
    """``(β, 1 − dampening)`` of the optimizer's heavy-ball momentum: SGD's, or ``(β₁, 1 − β₁)``
    for the Adam family.

    SGD's buffer ``b ← βb + (1 − τ)g`` with step ``η b`` moves like plain SGD with step
    ``η (1 − τ)/(1 − β)``, and is stable on a quadratic while ``η(1 − τ)λ < 2(1 + β)``.
    Adam's first moment ``m ← β₁m + (1 − β₁)g`` is that buffer with ``τ = β₁``: its effective
    step is ``η`` and its stability limit ``ηλ < 2(1 + β₁)/(1 − β₁)`` in the preconditioned
    coordinates (docs/theory.md sections 0 and 5).
    """
    if not isinstance(optimizer, torch.optim.SGD):
        beta1 = float(optimizer.param_groups[0].get("betas", (0.0, 0.0))[0])
        return beta1, 1.0 - beta1
    group = optimizer.param_groups[0]
    momentum = float(group.get("momentum", 0.0) or 0.0)
    dampening = float(group.get("dampening", 0.0) or 0.0) if momentum > 0 else 0.0
    return momentum, 1.0 - dampening


def scale_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Multiply every parameter group's learning rate by ``factor`` (proportions kept)."""
    for group in optimizer.param_groups:
        lr = group["lr"]
        if isinstance(lr, Tensor):
            lr.mul_(factor)
        else:
            group["lr"] = lr * factor


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters every estimate uses, in ``named_parameters`` order."""
    return [p for _, p in model.named_parameters() if p.requires_grad]


def preconditioner(optimizer: torch.optim.Optimizer, params: list[nn.Parameter]) -> Tensor | None:
    """``P = 1/(√v̂ + ε)`` flat over ``params``; ``None`` before the optimizer's first step.

    Parameters without state yet (never stepped) get the mean of the others' ``v̂``. Cost:
    ``O(d)`` arithmetic and memory.
    """
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    pieces: list[Tensor | None] = []
    for p in params:
        state = optimizer.state.get(p, {})
        # AMSGrad normalises by the running maximum.
        v = state.get("max_exp_avg_sq", state.get("exp_avg_sq"))
        if v is None:
            pieces.append(None)
            continue
        group = group_of.get(id(p), optimizer.param_groups[0])
        beta2 = float(group.get("betas", (0.9, 0.999))[1])
        step = state.get("step", 1)
        step = float(step.item() if isinstance(step, Tensor) else step)
        correction = 1.0 - beta2 ** max(step, 1.0)
        pieces.append((v.detach().float() / correction).reshape(-1))
    known = [v for v in pieces if v is not None]
    if not known:
        return None
    fill = torch.cat(known).mean()
    eps = float(optimizer.param_groups[0].get("eps", 1e-8))
    flat = torch.cat(
        [
            v if v is not None else fill.expand(p.numel()).to(known[0].device)
            for v, p in zip(pieces, params, strict=True)
        ]
    )
    return 1.0 / (flat.clamp_min(0.0).sqrt() + eps)


def flat_gradient(params: list[nn.Parameter], scale: Tensor | None = None) -> Tensor:
    """The parameters' ``.grad`` concatenated (zeros where ``None``), times ``scale`` if given."""
    flat = torch.cat(
        [
            (p.grad.detach() if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
            for p in params
        ]
    )
    return flat if scale is None else flat * scale.to(flat.device)

"""Leave a model exactly as it was found.

Estimation runs the model in eval mode, may write ``.grad`` (pyhessian does) and draws random
numbers. :func:`preserved_model_state` snapshots everything a user could observe and restores
it bit for bit on exit, including after an exception.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn


def _rng_snapshot() -> dict:
    state = {
        "python": random.getstate(),
        # The legacy global state is what user code draws from, so it is what must survive.
        "numpy": np.random.get_state(),  # noqa: NPY002
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _rng_restore(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def preserved_model_state(model: nn.Module) -> Iterator[None]:
    """Restore parameters, buffers, ``.grad``, ``requires_grad``, training flags and RNG states.

    Cost: one copy of the parameters, buffers and gradients (memory ``O(d)``).
    """
    training = {name: m.training for name, m in model.named_modules()}
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    grads = {
        name: (None if p.grad is None else p.grad.detach().clone())
        for name, p in model.named_parameters()
    }
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    rng = _rng_snapshot()
    try:
        yield
    finally:
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(params[name])
                p.requires_grad_(requires_grad[name])
                p.grad = None if grads[name] is None else grads[name]
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
        for name, m in model.named_modules():
            m.training = training[name]
        _rng_restore(rng)

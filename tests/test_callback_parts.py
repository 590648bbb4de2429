"""The callback's plumbing: batch layouts and what it reads from and writes to the optimizer."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kramers_callback import _optimizer as optim_io
from kramers_callback._arguments import CallbackArguments
from kramers_callback._batch_size import BatchLayout, BatchMechanism
from kramers_callback._decision_step import DecisionStep
from kramers_callback.limits import stability_limit
from kramers_callback.observation import Decision, DecisionRecord, LossBlock
from kramers_callback.policies import policy_rule
from kramers_callback.regime import CoolingValue, Phase, RegimeDecision
from kramers_callback.signals.equilibrium import equilibrium_test


def test_loader_layout_moves_the_loader_batch():
    layout = BatchLayout(
        BatchMechanism.LOADER, loader_batch=32, accumulation=2, world_size=4, multiple=8
    )
    assert layout.samples_per_step == 256 and layout.unit == 64
    grown = layout.with_samples(384)
    assert (grown.loader_batch, grown.accumulation, grown.samples_per_step) == (48, 2, 384)
    with pytest.raises(ValueError, match="samples_per_step must be a multiple of 64, got 100"):
        layout.with_samples(100)


def test_accumulation_layout_moves_the_accumulation_factor():
    layout = BatchLayout(BatchMechanism.ACCUMULATION, loader_batch=16, accumulation=1, world_size=2)
    assert layout.unit == 32
    grown = layout.with_samples(96)
    assert (grown.loader_batch, grown.accumulation, grown.samples_per_step) == (16, 3, 96)


def test_optimizer_kinds_and_momentum():
    params = [nn.Parameter(torch.zeros(3))]
    assert optim_io.classify(torch.optim.SGD(params, lr=0.1)) == "sgd"
    assert optim_io.classify(torch.optim.AdamW(params)) == "adaptive"
    assert optim_io.classify(torch.optim.RMSprop(params)) is None
    assert optim_io.momentum_of(torch.optim.SGD(params, lr=0.1)) == (0.0, 1.0)
    sgd = torch.optim.SGD(params, lr=0.1, momentum=0.9, dampening=0.25)
    assert optim_io.momentum_of(sgd) == (0.9, 0.75)
    # Adam's first moment is SGD's buffer with dampening β₁.
    assert optim_io.momentum_of(torch.optim.Adam(params)) == pytest.approx((0.9, 0.1))
    assert optim_io.momentum_of(torch.optim.NAdam(params, betas=(0.5, 0.9))) == (0.5, 0.5)


@pytest.mark.parametrize("beta1", [0.0, 0.5, 0.9])
def test_the_adam_stability_limit_is_where_torch_adam_stops_converging(beta1):
    # Adam on ½λx² with ε far above sqrt(v̂): P = 1/ε is frozen, and Adam's step is SGD with
    # dampened heavy-ball momentum on ½(λ/ε)x². The callback's limit on Adam's own η,
    # stability_limit(λ/ε, β)/damping, must separate converging runs from growing ones. 200
    # steps at η = 0 first age the moments, so that the bias corrections are spent.
    lam, eps, x0 = 4e3, 1e3, 1e-9
    adam = torch.optim.Adam([nn.Parameter(torch.zeros(1))], betas=(beta1, 0.999))
    momentum, damping = optim_io.momentum_of(adam)
    limit = stability_limit(lambda_max=lam / eps, momentum=momentum) / damping

    def sizes(lr: float) -> tuple[float, float]:
        x = nn.Parameter(torch.tensor([x0], dtype=torch.float64))
        opt = torch.optim.Adam([x], lr=0.0, betas=(beta1, 0.999), eps=eps)
        largest = 0.0
        for step in range(1200):
            if step == 200:
                opt.param_groups[0]["lr"] = lr
            opt.zero_grad()
            (0.5 * lam * x.square()).sum().backward()
            opt.step()
            largest = max(largest, abs(x.item()))
        return largest, abs(x.item())

    assert sizes(0.95 * limit)[1] < 1e-3 * x0  # converges
    # Grows by a thousandfold (until sqrt(v̂) nears ε and Adam's own adaptation takes over).
    assert sizes(1.05 * limit)[0] > 1e3 * x0


def test_scale_lr_keeps_the_groups_in_proportion():
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.03}], lr=0.1)
    optim_io.scale_lr(opt, 0.5)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05, 0.015])
    assert optim_io.lr_of(opt) == pytest.approx(0.05)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_preconditioner_from_the_optimizer_state(amsgrad):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    params = optim_io.trainable_parameters(model)
    opt = torch.optim.AdamW(params, lr=1e-2, betas=(0.9, 0.99), eps=1e-6, amsgrad=amsgrad)
    assert optim_io.preconditioner(opt, params) is None  # no state before the first step
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 3)).square().sum().backward()
        opt.step()
    expected = []
    for p in params:
        state = opt.state[p]
        v = state["max_exp_avg_sq"] if amsgrad else state["exp_avg_sq"]
        expected.append((1 / ((v / (1 - 0.99**3)).sqrt() + 1e-6)).reshape(-1))
    assert torch.allclose(optim_io.preconditioner(opt, params), torch.cat(expected), rtol=1e-6)


def test_flat_gradient_fills_missing_gradients_with_zeros():
    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(3))
    a.grad = torch.tensor([1.0, 2.0])
    flat = optim_io.flat_gradient([a, b], scale=torch.full((5,), 2.0))
    assert flat.tolist() == [2.0, 4.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("phase", list(Phase))
def test_only_a_move_from_a_settled_walker_ends_the_first_dwell(phase):
    # A stability clamp while descending (AdamW on MNIST-1D, at the old limit of plain SGD:
    # η cut by a fifth at epoch 9)
    # changes the temperature, so the dwell starts again, but the walker is still in its
    # descent from the initialisation: the first dwell's guard must stay. A stalled
    # monitor's cooling ends it (docs/theory.md section 7.7).
    step = DecisionStep(CallbackArguments(policy="lr"), policy_rule("lr"))
    step.dwell.extend([LossBlock(1.0, 1.0, 1)])
    step.dwell.monitored.append(0.5)
    moved = Decision(0.8e-3, 32, 1.0, math.nan, 0.8, True, "no_target", ("stability",))
    reading = equilibrium_test([], floor=math.nan)
    value = CoolingValue(math.nan, math.nan, False, False)
    step.note_applied(RegimeDecision(DecisionRecord("clamp", decision=moved), phase, reading,
                                     value, math.nan, None))  # fmt: skip
    assert step.dwell.blocks == [] and step.dwell.monitored == []
    assert step.first_dwell == (phase is Phase.DESCENDING)

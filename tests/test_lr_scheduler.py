"""``KramersAnnealingLR``: the seed's η(t) as a plain PyTorch scheduler.

The schedule is that of docs/theory.md section 4.2.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from kramers_callback.kramers import annealed_lr
from kramers_callback.lr_scheduler import KramersAnnealingLR

HORIZON, FREQUENCY = 20, 0.5  # τ·A = 10


def two_group_optimizer(lrs=(0.1, 0.03)):
    generator = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype))
    groups = [
        {"params": model[0].parameters(), "lr": lrs[0]},
        {"params": model[2].parameters(), "lr": lrs[1]},
    ]
    return model, torch.optim.SGD(groups, lr=lrs[0], momentum=0.9)


def train_step(model, optimizer, generator):
    x = torch.randn(8, 3, generator=generator, dtype=torch.float64)
    loss = (model(x).squeeze(1) - x.sum(1)).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def expected(step, base_lr):
    return annealed_lr(step=step, horizon=HORIZON, base_lr=base_lr, attempt_frequency=FREQUENCY)


def test_learning_rates_follow_annealed_lr_for_every_group_and_hold_past_the_horizon():
    model, optimizer = two_group_optimizer()
    scheduler = KramersAnnealingLR(optimizer, horizon=HORIZON, attempt_frequency=FREQUENCY)
    generator = torch.Generator().manual_seed(1)
    for n in range(HORIZON + 10):
        # After n scheduler steps the next optimizer step is step n + 1 (1-based).
        lrs = [group["lr"] for group in optimizer.param_groups]
        assert lrs == pytest.approx([expected(n + 1, 0.1), expected(n + 1, 0.03)], rel=1e-15)
        assert scheduler.get_last_lr() == lrs
        train_step(model, optimizer, generator)
        scheduler.step()
    # Endpoints from the formula by hand: ln(τ/1) = ln 20 at t = 1, 0 from t = τ on.
    assert expected(1, 0.1) == pytest.approx(0.1 * (1 + math.log(20)) / math.log(10))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 / math.log(10))
    assert [g["initial_lr"] for g in optimizer.param_groups] == [0.1, 0.03]


def test_state_dict_round_trip_resumes_identically():
    model, optimizer = two_group_optimizer()
    scheduler = KramersAnnealingLR(optimizer, horizon=HORIZON, attempt_frequency=FREQUENCY)
    generator = torch.Generator().manual_seed(2)
    for _ in range(7):
        train_step(model, optimizer, generator)
        scheduler.step()
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    # Deep copies: state dicts hold references to tensors that later steps update in place.
    saved_optimizer = copy.deepcopy(optimizer.state_dict())
    saved_scheduler = copy.deepcopy(scheduler.state_dict())
    saved_generator = generator.get_state()

    reference = []
    for _ in range(5):
        train_step(model, optimizer, generator)
        scheduler.step()
        reference.append([g["lr"] for g in optimizer.param_groups])

    # A fresh process: new model, optimizer and scheduler, then load the three states
    # (scheduler built before the optimizer state is loaded, as PyTorch asks).
    model2, optimizer2 = two_group_optimizer(lrs=(0.5, 0.5))
    model2.load_state_dict(saved_model)
    scheduler2 = KramersAnnealingLR(optimizer2, horizon=HORIZON, attempt_frequency=FREQUENCY)
    optimizer2.load_state_dict(saved_optimizer)
    scheduler2.load_state_dict(saved_scheduler)
    generator.set_state(saved_generator)
    resumed = []
    for _ in range(5):
        train_step(model2, optimizer2, generator)
        scheduler2.step()
        resumed.append([g["lr"] for g in optimizer2.param_groups])
    assert resumed == reference
    assert scheduler2.last_epoch == scheduler.last_epoch == 12
    for key, value in model.state_dict().items():
        torch.testing.assert_close(model2.state_dict()[key], value, rtol=0, atol=0)


def test_closed_form_used_by_step_with_an_epoch():
    _, optimizer = two_group_optimizer()
    scheduler = KramersAnnealingLR(optimizer, horizon=HORIZON, attempt_frequency=FREQUENCY)
    with pytest.warns(UserWarning):  # PyTorch deprecates step(epoch) but still supports it
        scheduler.step(9)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx(
        [expected(10, 0.1), expected(10, 0.03)], rel=1e-15
    )


def test_plain_pytorch_training_loop_without_lightning():
    model, optimizer = two_group_optimizer()
    scheduler = KramersAnnealingLR(optimizer, horizon=200, attempt_frequency=FREQUENCY)
    generator = torch.Generator().manual_seed(3)
    losses = [train_step(model, optimizer, generator) for _ in range(1)]
    for _ in range(199):
        scheduler.step()
        losses.append(train_step(model, optimizer, generator))
    assert math.isfinite(losses[-1])
    assert sum(losses[-20:]) < 0.5 * sum(losses[:20])
    assert scheduler.last_epoch == 199
    assert optimizer.param_groups[1]["lr"] == pytest.approx(
        annealed_lr(step=200, horizon=200, base_lr=0.03, attempt_frequency=FREQUENCY)
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"horizon": 0}, r"horizon must be an integer ≥ 1, got 0"),
        ({"horizon": 20.0}, r"horizon must be an integer ≥ 1, got 20\.0"),
        ({"horizon": True}, r"horizon must be an integer ≥ 1, got True"),
        ({"attempt_frequency": 0.0}, r"attempt_frequency must be a finite number > 0, got 0\.0"),
        (
            {"attempt_frequency": 0.05},
            r"horizon \* attempt_frequency must be > 1 .*got horizon=20\.0, "
            r"attempt_frequency=0\.05",
        ),
    ],
)
def test_rejects_bad_arguments(kwargs, match):
    _, optimizer = two_group_optimizer()
    args = {"horizon": HORIZON, "attempt_frequency": FREQUENCY}
    with pytest.raises(ValueError, match=match):
        KramersAnnealingLR(optimizer, **{**args, **kwargs})
    # A rejected scheduler leaves the optimizer's learning rates alone.
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.03]

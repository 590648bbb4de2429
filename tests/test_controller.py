"""The policy decision of ``kramers_callback.controller`` against the closed-form temperature."""

from __future__ import annotations

import math
import random

import pytest

from kramers_callback.controller import decide
from kramers_callback.limits import ControlLimits, stability_limit
from kramers_callback.policies import Policy
from kramers_callback.signals import annealing_target

NOISE, DIM, N = 40.0, 1000, 10_000


def temperature(lr: float, batch: int, *, momentum: float = 0.0, n: int | None = N) -> float:
    """``T = η/(1−β) · trΣ₁ (N−B)/(B(N−1)) / (2d)``, written out.

    From docs/theory.md sections 0, 2.1 and 2.3.
    """
    factor = 1.0 / batch if n is None else (n - batch) / (batch * (n - 1))
    return lr / (1.0 - momentum) * NOISE * factor / (2 * DIM)


def batch_for(target: float, lr: float, *, n: int | None = N) -> float:
    """Solve ``temperature(lr, B) = target`` for real ``B`` by bisection (independent of the
    closed form the controller uses)."""
    low, high = 1e-9, float(n if n is not None else 1e12)
    for _ in range(200):
        mid = math.sqrt(low * high)
        factor = 1.0 / mid if n is None else (n - mid) / (mid * (n - 1))
        t = lr * NOISE * factor / (2 * DIM)
        low, high = (mid, high) if t > target else (low, mid)
    return math.sqrt(low * high)


def limits(**overrides) -> ControlLimits:
    base = dict(lr_min=1e-4, lr_max=1.0, batch_min=8, batch_max=4096, batch_multiple=8)
    base.update(overrides)
    return ControlLimits(**base)


def run(policy, *, lr=0.1, batch=64, target, lam=1.0, momentum=0.0, lim=None, n=N):
    return decide(
        policy,
        target_temperature=target,
        lr=lr,
        batch_size=batch,
        noise_trace=NOISE,
        dim=DIM,
        lambda_max=lam,
        limits=lim or limits(),
        momentum=momentum,
        dataset_size=n,
    )


def test_observe_changes_nothing():
    t = temperature(0.1, 64)
    d = run("observe", target=t / 3)
    assert (d.lr, d.batch_size, d.changed, d.reason) == (0.1, 64, False, "observe")
    assert d.temperature == pytest.approx(t, rel=1e-12)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_lr_policy_hits_target_when_unclamped(momentum):
    t = temperature(0.1, 64, momentum=momentum)
    d = run(Policy.LR, target=t / 1.5, momentum=momentum, lam=0.01)
    assert d.lr == pytest.approx(0.1 / 1.5, rel=1e-12)
    assert d.batch_size == 64
    assert d.predicted_temperature == pytest.approx(t / 1.5, rel=1e-12)
    assert d.reason == "cool" and d.changed and d.limited_by == ()


def test_lr_policy_change_limit_and_bounds():
    t = temperature(0.1, 64)
    d = run("lr", target=t / 10, lam=0.01)
    assert d.lr == pytest.approx(0.05) and d.limited_by == ("max_change",)
    d = run("lr", target=t / 10, lam=0.01, lim=limits(lr_min=0.08))
    assert d.lr == 0.08 and "lr_min" in d.limited_by
    d = run("lr", target=t * 10, lam=0.01, lim=limits(lr_max=0.15))
    assert d.lr == 0.15 and "lr_max" in d.limited_by and d.reason == "heat"


@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_stability_limit_beats_every_other_clamp(momentum):
    lam = 20.0  # limit 2(1+β)/λ = 0.1 (1 + β)
    bound = 2 * (1 + momentum) / lam
    assert stability_limit(lambda_max=lam, momentum=momentum) == pytest.approx(bound)
    assert stability_limit(lambda_max=-1.0) == math.inf
    t = temperature(0.09, 64, momentum=momentum)
    d = run("lr", lr=0.09, target=t * 4, lam=lam, momentum=momentum)
    assert d.lr < bound and d.lr == pytest.approx(bound, rel=1e-12)
    assert "stability" in d.limited_by
    # Even above lr_min: stability wins.
    d = run("lr", lr=0.09, target=t * 4, lam=lam * 10, lim=limits(lr_min=0.05), momentum=momentum)
    assert d.lr < bound / 10
    # A held learning rate already past the limit is brought under it (lr and hybrid policies).
    d = run("hybrid", lr=0.5, target=temperature(0.5, 64) / 1.01, lam=lam)
    assert d.lr < 2 / lam and "stability" in d.limited_by
    # The batch policy does not own the learning rate.
    assert run("batch", lr=0.5, target=temperature(0.5, 64) / 1.01, lam=lam).lr == 0.5


@pytest.mark.parametrize("n", [N, None])
def test_batch_policy_rounds_to_the_nearest_multiple(n):
    t = temperature(0.1, 64, n=n)
    d = run("batch", target=t / 1.6, n=n, lim=limits(batch_multiple=8))
    wanted = batch_for(t / 1.6, 0.1, n=n)
    assert 64 < wanted < 128
    # The multiple of 8 nearest the solution on the temperature's log scale.
    expected = min(
        range(64, 136, 8), key=lambda b: abs(math.log(temperature(0.1, b, n=n) / (t / 1.6)))
    )
    assert d.batch_size == expected and abs(expected - wanted) <= 8
    assert d.lr == 0.1 and d.limited_by == ()
    assert d.predicted_temperature == pytest.approx(temperature(0.1, d.batch_size, n=n), rel=1e-12)


def test_batch_policy_limits():
    t = temperature(0.1, 64)
    d = run("batch", target=t / 10)
    assert d.batch_size == 128 and d.limited_by == ("max_change",)
    d = run("batch", target=t / 10, lim=limits(batch_max=100, batch_multiple=8))
    assert d.batch_size == 96 and d.limited_by == ("batch_max",)
    d = run("batch", target=t * 10, lim=limits(batch_min=48, batch_multiple=8))
    assert d.batch_size == 48 and d.limited_by == ("batch_min",)
    # No multiple of the unit within the allowed window: hold.
    d = run("batch", batch=64, target=t / 1.2, lim=limits(batch_multiple=64, max_change=1.5))
    assert d.batch_size == 64


def test_hybrid_cools_with_the_batch_first_then_the_lr():
    t = temperature(0.1, 64)
    # B can still grow: η untouched even though the change limit holds B back.
    d = run("hybrid", target=t / 8, lam=0.01)
    assert (d.batch_size, d.lr) == (128, 0.1)
    # B reaches batch_max: the rest of the cooling goes to η.
    d = run("hybrid", target=t / 3, lam=0.01, lim=limits(batch_max=128))
    assert d.batch_size == 128
    assert d.lr == pytest.approx(0.1 * (t / 3) / temperature(0.1, 128), rel=1e-12)
    assert d.predicted_temperature == pytest.approx(t / 3, rel=1e-12)
    assert run("hybrid", target=t / 8, lam=0.01, lim=limits(batch_max=128)).lr == 0.05
    # Already at batch_max: only η moves.
    d = run(
        "hybrid", batch=128, target=temperature(0.1, 128) / 1.5, lam=0.01, lim=limits(batch_max=128)
    )
    assert d.batch_size == 128 and d.lr == pytest.approx(0.1 / 1.5)


def test_hybrid_heats_with_the_lr_first_then_the_batch():
    t = temperature(0.1, 256)
    d = run("hybrid", batch=256, target=t * 1.5, lam=0.01)
    assert d.batch_size == 256 and d.lr == pytest.approx(0.15)
    d = run("hybrid", batch=256, target=t * 1.5, lam=0.01, lim=limits(lr_max=0.1))
    assert d.lr == 0.1
    expected = min(range(128, 264, 8), key=lambda b: abs(math.log(temperature(0.1, b) / (t * 1.5))))
    assert d.batch_size == expected < 256
    assert abs(expected - batch_for(t * 1.5, 0.1)) <= 8


@pytest.mark.parametrize("target", [math.nan, math.inf, 0.0])
def test_no_target_holds_but_keeps_the_stability_clamp(target):
    # Stable η: nothing moves, whatever the policy.
    for policy in ("lr", "batch", "hybrid"):
        d = run(policy, target=target, lr=0.1, lam=1.0)
        assert not d.changed and d.reason == "no_target"
        assert (d.lr, d.batch_size) == (0.1, 64)
    # η above 2(1+β)/λ_max: the policies that own η bring it just under the limit.
    for policy in ("lr", "hybrid"):
        d = run(policy, target=target, lr=0.1, lam=40.0, momentum=0.5)
        assert d.changed and d.reason == "no_target" and d.limited_by == ("stability",)
        assert d.lr < stability_limit(lambda_max=40.0, momentum=0.5) == pytest.approx(0.075)
        assert d.lr == pytest.approx(0.075, rel=1e-12)
        assert d.batch_size == 64
    d = run("batch", target=target, lr=0.1, lam=40.0)
    assert not d.changed and d.lr == 0.1


@pytest.mark.parametrize(
    "bad",
    [
        dict(target=1e-3, lam=math.nan),
        dict(target=1e-3, lr=math.inf),
    ],
)
def test_non_finite_input_holds(bad):
    d = run("hybrid", **bad)
    assert not d.changed and d.reason == "non_finite"
    assert d.batch_size == 64


def test_decisions_always_respect_the_clamps_and_move_toward_the_target():
    rng = random.Random(0)
    for _ in range(300):
        policy = rng.choice(["lr", "batch", "hybrid"])
        unit = rng.choice([1, 4, 32])
        lim = limits(
            lr_min=10 ** rng.uniform(-4, -2),
            lr_max=10 ** rng.uniform(-1, 0),
            batch_min=unit,
            batch_max=unit * rng.randint(1, 200),
            batch_multiple=unit,
            max_change=rng.uniform(1.1, 4),
        )
        lr = 10 ** rng.uniform(-2, -1)
        batch = unit * rng.randint(1, lim.batch_max // unit)
        momentum = rng.choice([0.0, 0.9])
        lam = 10 ** rng.uniform(-2, 1)
        t = temperature(lr, batch, momentum=momentum)
        target = t * 10 ** rng.uniform(-1.5, 1.5)
        d = run(policy, lr=lr, batch=batch, target=target, lam=lam, momentum=momentum, lim=lim)
        assert d.batch_size % unit == 0 and lim.batch_min <= d.batch_size <= lim.batch_max
        if policy != "batch":
            assert d.lr < stability_limit(lambda_max=lam, momentum=momentum)
            assert d.lr <= lim.lr_max * (1 + 1e-12) or d.lr == lr
        stable = lr < stability_limit(lambda_max=lam, momentum=momentum)
        if stable or policy == "batch":
            before = abs(math.log(t / target))
            after = abs(math.log(d.predicted_temperature / target))
            assert after <= before + 1e-9


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(lr_min=0.0), "lr_min must be a finite number > 0, got 0.0"),
        (dict(lr_min=0.5, lr_max=0.1), "lr_max must be ≥ lr_min = 0.5, got 0.1"),
        (dict(batch_min=0), "batch_min must be an integer ≥ 1, got 0"),
        (dict(batch_min=64, batch_max=32), "batch_max must be ≥ batch_min = 64, got 32"),
        (dict(batch_multiple=2.5), "batch_multiple must be an integer ≥ 1, got 2.5"),
        (dict(max_change=1.0), r"max_change must be in \(1.0, inf\), got 1.0"),
    ],
)
def test_bad_limits(kwargs, match):
    with pytest.raises(ValueError, match=match):
        limits(**kwargs)


def test_bad_policy():
    with pytest.raises(ValueError, match="'sgd' is not a valid Policy"):
        run("sgd", target=1e-3)


def test_annealing_target_one_pathway_closed_form():
    lr, lam0, lamb, barrier, t_v, t_iso = 0.05, 12.0, -6.0, 2.25, 0.3, 0.01
    tau, step = 5000.0, 400.0
    a = lr * math.sqrt(lam0 * abs(lamb)) / (2 * math.pi)
    out = annealing_target(
        barriers=[barrier],
        curvatures=[lam0],
        barrier_curvatures=[lamb],
        directional_temperatures=[t_v],
        temperature=t_iso,
        lr=lr,
        step=step,
        horizon=tau,
    )
    assert out.attempt_frequency == pytest.approx(a, rel=1e-12)
    # One escape in τ along the pathway at T_v' = ΔL/ln(τA); the isotropic T scales alike.
    assert out.critical_temperature == pytest.approx(
        barrier / math.log(tau * a) * t_iso / t_v, rel=1e-9
    )
    assert out.temperature == pytest.approx(
        out.critical_temperature * (1 + math.log(tau / step)) / math.log(tau * a), rel=1e-9
    )


def test_annealing_target_several_pathways_expects_one_escape():
    barriers, lam0, lamb = [1.0, 2.0, 0.5], [10.0, 4.0, 1.0], [-3.0, -1.0, -0.5]
    t_v = [0.1, 0.3, 0.02]
    lr, tau, t_iso = 0.1, 10_000.0, 0.05
    out = annealing_target(
        barriers=barriers,
        curvatures=lam0,
        barrier_curvatures=lamb,
        directional_temperatures=t_v,
        temperature=t_iso,
        lr=lr,
        step=1.0,
        horizon=tau,
    )
    m = out.critical_temperature / t_iso
    expected = tau * sum(
        lr * math.sqrt(l0 * abs(lb)) / (2 * math.pi) * math.exp(-b / (m * t))
        for b, l0, lb, t in zip(barriers, lam0, lamb, t_v, strict=True)
    )
    assert expected == pytest.approx(1.0, rel=1e-9)


def test_annealing_target_refuses_when_no_escape_is_possible():
    common = dict(temperature=0.01, lr=1e-3, step=1.0)
    with pytest.raises(ValueError, match="barriers must hold at least one pathway"):
        annealing_target(
            barriers=[],
            curvatures=[],
            barrier_curvatures=[],
            directional_temperatures=[],
            horizon=10.0,
            **common,
        )
    with pytest.raises(ValueError, match=r"horizon \* sum\(attempt_frequencies\) must be > 1"):
        annealing_target(
            barriers=[1.0],
            curvatures=[1.0],
            barrier_curvatures=[-1.0],
            directional_temperatures=[0.1],
            horizon=10.0,
            **common,
        )


def test_a_target_that_depends_on_the_knobs_is_solved_along_each():
    # T*(η, B) = c·√B/√η: rises with B (fewer steps), falls with η (more attempts).
    c = temperature(0.1, 64) / 3

    def target(lr, batch):
        return c * math.sqrt(batch / 64) / math.sqrt(lr / 0.1)

    wide = limits(max_change=100.0, batch_max=N - 1)
    d = decide(
        "lr",
        target_temperature=target,
        lr=0.1,
        batch_size=64,
        noise_trace=NOISE,
        dim=DIM,
        lambda_max=0.01,
        limits=wide,
        dataset_size=N,
    )
    # T(η, 64) = η·T(0.1, 64)/0.1 = c·√(0.1/η)  ⇒  η^{3/2} = c·0.1^{3/2}/T(0.1, 64).
    expected = 0.1 * (c / temperature(0.1, 64)) ** (2 / 3)
    assert d.lr == pytest.approx(expected, rel=1e-9)
    assert d.target_temperature == pytest.approx(c)
    d = decide(
        "batch",
        target_temperature=target,
        lr=0.1,
        batch_size=64,
        noise_trace=NOISE,
        dim=DIM,
        lambda_max=0.01,
        limits=wide,
        dataset_size=N,
    )
    gaps = {b: abs(math.log(temperature(0.1, b) / target(0.1, b))) for b in range(8, N, 8)}
    assert d.batch_size == min(gaps, key=gaps.get)
    assert gaps[d.batch_size] < abs(math.log(3))

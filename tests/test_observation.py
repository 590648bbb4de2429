"""The typed records between the callback's parts: checkpoint round trips and the clock."""

from __future__ import annotations

import math

import torch

from kramers_callback.observation import EstimateSummary, Horizon
from kramers_callback.policies import RULES, Policy


def summary() -> EstimateSummary:
    return EstimateSummary(
        status="ok",
        work=1234.0,
        seconds=0.5,
        probe_size=64,
        temperature=0.8,
        noise_trace=40.0,
        noise_scale=math.inf,
        lambda_max=11.0,
        lambda_min=2.0,
        escape_rate=0.01,
        escape_time=100.0,
        barrier=2.3,
        lr_eff=0.05,
        batch_size=16,
        dim=1,
        finite=True,
        converged={"top": True, "min": True, "trace": False},
        num_hvp=30,
        num_forward=12,
        num_samples=64,
        pathway_barriers=(2.3,),
        pathway_curvatures=(11.0,),
        pathway_barrier_curvatures=(-4.0,),
        pathway_temperatures=(0.8,),
    )


def test_summary_round_trips_through_a_weights_only_checkpoint(tmp_path):
    original = summary()
    path = tmp_path / "summary.pt"
    torch.save({"last_good": original.to_state()}, path)
    loaded = torch.load(path, weights_only=True)["last_good"]
    assert repr(EstimateSummary.from_state(loaded)) == repr(original)  # repr: nan == nan


def test_an_old_checkpoint_dict_loads():
    # The string-keyed dict that checkpoints held before: no "work", no "measured", lists.
    state = summary().to_state()
    del state["work"], state["measured"]
    state["pathway_barriers"] = [2.3]
    loaded = EstimateSummary.from_state({**state, "unknown_key": 1})
    assert loaded.pathway_barriers == (2.3,) and loaded.measured and loaded.work == 0.0
    assert loaded.failed_solvers == [] and loaded.ok


def test_clock_counts_steps_of_the_batch_from_samples():
    horizon = Horizon(samples_seen=1600, samples_left=800, steps_left=30.0)
    clock = horizon.clock(16)
    assert (clock.step, clock.remaining, clock.horizon) == (100.0, 30.0, 130.0)
    clock = horizon.clock(64)  # 800 samples are 12.5 steps of 64: tighter than max_steps
    assert (clock.step, clock.remaining, clock.horizon) == (25.0, 12.5, 37.5)
    assert Horizon(samples_seen=0).clock(8).step == 1.0


def test_policy_ownership():
    owns = {p.value: (RULES[p].owns_lr, RULES[p].owns_batch) for p in Policy}
    assert owns == {
        "observe": (False, False),
        "lr": (True, False),
        "batch": (False, True),
        "hybrid": (True, True),
    }
    assert all(RULES[p].policy is p for p in Policy)

"""Line scan for barriers (docs/theory.md section 3.1) against analytic profiles.

References are closed forms: the double well ``L(x, y) = x⁴ − 3x² + y²`` (minimum ``(√1.5, 0)``,
saddle ``(0, 0)``, ``ΔL = 9/4``, ``λ_b = −6``), a cubic and ``sin²`` with their maxima by hand,
and a Gaussian bump whose maximum is the root of the analytic ``φ'`` (scipy ``brentq``).
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy.optimize import brentq

from kramers_callback._probe import ProbeLoss
from kramers_callback.barriers import (
    MAX_REFINE_EVALS,
    LineScanResult,
    PathwayStatus,
    initial_step_for,
    scan_for_barrier,
    untilted,
)

SQRT15 = math.sqrt(1.5)
X_MIN = (SQRT15, 0.0)


def double_well(x: torch.Tensor) -> torch.Tensor:
    return x[0] ** 4 - 3 * x[0] ** 2 + x[1] ** 2


def profile_along(start, direction, dtype=torch.float64):
    """``φ(s) = L(x₀ + s v)`` through a flat parameter vector, as the estimators build it."""
    x0 = torch.tensor(start, dtype=dtype)
    v = torch.tensor(direction, dtype=dtype)

    def phi(s: float) -> float:
        return float(double_well(x0 + s * v))

    return phi


class Counted:
    """Wraps ``φ`` and counts the calls."""

    def __init__(self, phi):
        self.phi = phi
        self.calls = 0

    def __call__(self, s):
        self.calls += 1
        return self.phi(s)


def assert_barrier(result: LineScanResult, *, distance, barrier, curvature, rel_curvature):
    assert result.status is PathwayStatus.BARRIER, result.message
    assert result.distance == pytest.approx(distance, rel=1e-3)
    # The barrier error is quadratic in the location error, so it is far below rel_tol.
    assert result.barrier == pytest.approx(barrier, rel=1e-6)
    assert result.barrier_curvature == pytest.approx(curvature, rel=rel_curvature)
    assert result.curvature_error is not None
    assert result.curvature_error < abs(result.barrier_curvature)


# -- barriers found ----------------------------------------------------------------------------


THERMAL_STEP = initial_step_for(temperature=0.25, curvature=12.0)


@pytest.mark.parametrize("initial_step", [0.01, THERMAL_STEP, 0.3])
@pytest.mark.parametrize("growth", [1.2, 1.5, 2.0])
def test_double_well_barrier_from_the_minimum(initial_step, growth):
    phi = profile_along(X_MIN, (-1.0, 0.0))
    result = scan_for_barrier(phi, threshold=20 * 0.25, initial_step=initial_step, growth=growth)
    # Along −x from √1.5 the top is the saddle x = 0: s* = √1.5, ΔL = 0 − (−9/4), φ'' = 12x² − 6.
    assert_barrier(result, distance=SQRT15, barrier=9 / 4, curvature=-6.0, rel_curvature=1e-4)
    assert result.start_loss == pytest.approx(-9 / 4, rel=1e-12)


def test_double_well_barrier_in_float32():
    # Loss rounding of ~1e-7 must not spoil the curvature beyond the brief's 0.5 %.
    phi = profile_along(X_MIN, (-1.0, 0.0), dtype=torch.float32)
    step = initial_step_for(temperature=0.25, curvature=12.0)
    result = scan_for_barrier(phi, threshold=5.0, initial_step=step)
    assert result.status is PathwayStatus.BARRIER, result.message
    assert result.barrier == pytest.approx(9 / 4, rel=1e-5)
    assert result.barrier_curvature == pytest.approx(-6.0, rel=5e-3)
    assert result.distance == pytest.approx(SQRT15, rel=1e-3)


def test_cubic_barrier():
    # φ = s²/2 − s³/3: φ' = s(1 − s) → top at s = 1, φ(1) = 1/6, φ''(1) = 1 − 2 = −1.
    result = scan_for_barrier(lambda s: s * s / 2 - s**3 / 3, threshold=1.0, initial_step=0.05)
    assert_barrier(result, distance=1.0, barrier=1 / 6, curvature=-1.0, rel_curvature=1e-4)


def test_sine_squared_barrier_needs_extrapolated_curvature():
    # φ = sin² s: top at π/2, ΔL = 1, φ'' = 2 cos 2s = −2. Not a polynomial, so the plain
    # second difference at the first step has a truncation error the extrapolation removes.
    result = scan_for_barrier(lambda s: math.sin(s) ** 2, threshold=5.0, initial_step=0.05)
    assert_barrier(result, distance=math.pi / 2, barrier=1.0, curvature=-2.0, rel_curvature=1e-5)


def test_gaussian_bump_barrier_against_root_of_the_derivative():
    # φ = s²/2 − 3 exp(−(s−2)²/w): top where φ' = s + 6(s−2)/w · exp(…) = 0.
    w = 0.5

    def phi(s):
        return 0.5 * s * s - 3 * math.exp(-((s - 2) ** 2) / w)

    def dphi(s):
        return s + 6 * (s - 2) / w * math.exp(-((s - 2) ** 2) / w)

    def d2phi(s):
        e = math.exp(-((s - 2) ** 2) / w)
        return 1 + 6 / w * e - 12 * (s - 2) ** 2 / w**2 * e

    top = brentq(dphi, 0.3, 1.5)  # dphi(0.3) > 0 > dphi(1.5)
    assert d2phi(top) < 0
    result = scan_for_barrier(phi, threshold=50.0, initial_step=0.1)
    assert_barrier(
        result, distance=top, barrier=phi(top) - phi(0.0), curvature=d2phi(top), rel_curvature=1e-4
    )


@pytest.mark.parametrize("rel_tol", [1e-2, 1e-4, 1e-6])
def test_location_meets_the_relative_tolerance(rel_tol):
    result = scan_for_barrier(
        lambda s: s * s / 2 - s**3 / 3, threshold=1.0, initial_step=0.05, rel_tol=rel_tol
    )
    assert result.status is PathwayStatus.BARRIER
    assert abs(result.distance - 1.0) <= 2 * rel_tol


# -- no barrier ----------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", [(1.0, 0.0), (0.0, 1.0), (0.0, -1.0)])
def test_climbing_directions_have_no_barrier_within_reach(direction):
    phi = profile_along(X_MIN, direction)
    threshold = 1.0
    result = scan_for_barrier(phi, threshold=threshold, initial_step=0.1)
    assert result.status is PathwayStatus.NO_BARRIER_WITHIN_REACH, result.message
    assert result.barrier is None and result.barrier_curvature is None and result.distance is None
    rises = [value - result.start_loss for _, value in result.profile]
    # It stopped at the first point above the threshold: every earlier point is below it.
    assert rises[-1] > threshold
    assert all(r <= threshold for r in rises[:-1])


def test_barrier_higher_than_the_threshold_is_out_of_reach():
    phi = profile_along(X_MIN, (-1.0, 0.0))
    result = scan_for_barrier(phi, threshold=2.0, initial_step=0.1)  # ΔL = 9/4 > 2
    assert result.status is PathwayStatus.NO_BARRIER_WITHIN_REACH
    assert result.barrier is None


def test_positive_infinity_is_a_wall():
    result = scan_for_barrier(
        lambda s: s * s if s < 1 else math.inf, threshold=5.0, initial_step=0.1
    )
    assert result.status is PathwayStatus.NO_BARRIER_WITHIN_REACH


# -- downhill and budget -------------------------------------------------------------------------


def test_saddle_along_the_unstable_direction_is_downhill():
    # From (0, 0) along x, φ = s⁴ − 3s² falls to −9/4: lower than −threshold without a climb.
    phi = profile_along((0.0, 0.0), (1.0, 0.0))
    result = scan_for_barrier(phi, threshold=1.0, initial_step=0.1)
    assert result.status is PathwayStatus.DOWNHILL, result.message
    assert result.profile[-1][1] < -1.0
    assert result.barrier is None


def test_budget_ending_below_the_start_is_downhill():
    phi = profile_along((0.0, 0.0), (1.0, 0.0))
    result = scan_for_barrier(phi, threshold=10.0, initial_step=0.1, max_evals=6)
    assert result.status is PathwayStatus.DOWNHILL, result.message
    assert result.num_evals == 6
    assert -10.0 < result.profile[-1][1] < 0.0


def test_saddle_with_a_high_threshold_rolls_into_the_well_and_meets_the_wall():
    # The descent (9/4) is within κT_v: the walk passes the well bottom and climbs the outer wall.
    phi = profile_along((0.0, 0.0), (1.0, 0.0))
    result = scan_for_barrier(phi, threshold=10.0, initial_step=0.1)
    assert result.status is PathwayStatus.NO_BARRIER_WITHIN_REACH
    assert min(v for _, v in result.profile) < 0


def test_maxima_below_the_start_are_crossed_without_climbing():
    # φ = −s + 0.2(1 − cos 6s): φ'(0) = −1; local maxima where sin 6s = 5/6, all below φ(0) = 0.
    def phi(s):
        return -s + 0.2 * (1 - math.cos(6 * s))

    result = scan_for_barrier(phi, threshold=3.0, initial_step=0.02, growth=1.1)
    values = [v for _, v in result.profile]
    assert any(values[i - 1] < values[i] > values[i + 1] for i in range(1, len(values) - 1))
    assert result.status is PathwayStatus.DOWNHILL
    assert result.barrier is None


def test_tiny_budget_is_scan_limit():
    phi = profile_along(X_MIN, (-1.0, 0.0))
    result = scan_for_barrier(phi, threshold=5.0, initial_step=0.01, max_evals=3)
    assert result.status is PathwayStatus.SCAN_LIMIT
    assert result.num_evals == 3


def test_slow_rise_exhausts_the_budget():
    result = scan_for_barrier(
        lambda s: math.log1p(s), threshold=100.0, initial_step=0.1, max_evals=20
    )
    assert result.status is PathwayStatus.SCAN_LIMIT
    assert result.num_evals == 20


def test_flat_top_maximum_is_not_a_barrier():
    # φ = 1 − (s − 1)⁶ has φ''(1) = 0: no ω_b, so no Kramers barrier.
    result = scan_for_barrier(lambda s: 1 - (s - 1) ** 6, threshold=5.0, initial_step=0.05)
    assert result.status is not PathwayStatus.BARRIER
    assert result.barrier is None
    assert "without resolvable negative curvature" in result.message


# -- non-finite losses -----------------------------------------------------------------------------


def test_nan_along_the_scan_is_flagged():
    result = scan_for_barrier(
        lambda s: s * s if s < 0.3 else math.nan, threshold=5.0, initial_step=0.1
    )
    assert result.status is PathwayStatus.NON_FINITE
    assert math.isnan(result.profile[-1][1])
    assert "nan" in result.message


def test_nan_at_the_start_is_flagged_after_one_evaluation():
    result = scan_for_barrier(lambda s: math.nan, threshold=5.0, initial_step=0.1)
    assert result.status is PathwayStatus.NON_FINITE
    assert result.num_evals == 1


def test_negative_infinity_is_flagged():
    result = scan_for_barrier(
        lambda s: s * s if s < 0.3 else -math.inf, threshold=5.0, initial_step=0.1
    )
    assert result.status is PathwayStatus.NON_FINITE


def test_nan_met_while_refining_is_flagged():
    # NaN only in a narrow window around the top, which the coarse walk steps over.
    def phi(s):
        return math.nan if abs(s - math.pi / 2) < 1e-3 else math.sin(s) ** 2

    result = scan_for_barrier(phi, threshold=5.0, initial_step=0.05)
    assert result.status is PathwayStatus.NON_FINITE


# -- bookkeeping ---------------------------------------------------------------------------------


def test_profile_lists_every_evaluation_once_sorted():
    phi = Counted(profile_along(X_MIN, (-1.0, 0.0)))
    result = scan_for_barrier(phi, threshold=5.0, initial_step=0.1)
    assert result.status is PathwayStatus.BARRIER
    assert result.num_evals == phi.calls == len(result.profile)
    positions = [s for s, _ in result.profile]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    assert 0.0 in positions
    reference = profile_along(X_MIN, (-1.0, 0.0))
    assert all(value == reference(s) for s, value in result.profile)
    assert result.num_evals <= 60 + MAX_REFINE_EVALS


def test_walk_without_maximum_stays_within_the_budget():
    phi = Counted(lambda s: math.log1p(s))
    result = scan_for_barrier(phi, threshold=100.0, initial_step=0.1, max_evals=12)
    assert phi.calls == result.num_evals == 12


# -- initial step ----------------------------------------------------------------------------------


def test_initial_step_is_the_thermal_length():
    assert initial_step_for(temperature=0.25, curvature=12.0) == pytest.approx(math.sqrt(0.25 / 12))
    # A quadratic well rises by T/2 over one thermal length.
    step = initial_step_for(temperature=0.3, curvature=5.0)
    assert 5.0 * step**2 / 2 == pytest.approx(0.3 / 2)
    assert initial_step_for(temperature=0.25, curvature=-6.0) == pytest.approx(math.sqrt(0.25 / 6))


def test_initial_step_fallbacks():
    assert initial_step_for(temperature=0.0, curvature=12.0) == 1e-3
    assert initial_step_for(temperature=0.25, curvature=0.0, default=0.2) == 0.2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": -1.0}, r"temperature must be a finite number ≥ 0, got -1\.0"),
        ({"curvature": math.nan}, r"curvature must be a finite number, got nan"),
        ({"curvature": math.inf}, r"curvature must be a finite number, got inf"),
        ({"default": 0.0}, r"default must be a finite number > 0, got 0\.0"),
    ],
)
def test_initial_step_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        initial_step_for(**{"temperature": 1.0, "curvature": 1.0, **kwargs})


# -- argument errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"threshold": 0.0}, r"threshold must be a finite number > 0, got 0\.0"),
        ({"threshold": -1.0}, r"threshold must be a finite number > 0, got -1\.0"),
        ({"threshold": math.nan}, r"threshold must be a finite number > 0, got nan"),
        ({"initial_step": 0.0}, r"initial_step must be a finite number > 0, got 0\.0"),
        ({"growth": 1.0}, r"growth must be in \(1\.0, inf\), got 1\.0"),
        ({"max_evals": 2}, r"max_evals must be an integer ≥ 3, got 2"),
        ({"max_evals": 3.5}, r"max_evals must be an integer ≥ 3, got 3\.5"),
        ({"max_evals": True}, r"max_evals must be an integer ≥ 3, got True"),
        ({"rel_tol": 0.0}, r"rel_tol must be in \(0\.0, 1\.0\), got 0\.0"),
        ({"rel_tol": 1.0}, r"rel_tol must be in \(0\.0, 1\.0\), got 1\.0"),
    ],
)
def test_scan_argument_errors(kwargs, match):
    arguments = {"threshold": 1.0, "initial_step": 0.1, **kwargs}
    with pytest.raises(ValueError, match=match):
        scan_for_barrier(lambda s: s * s, **arguments)


def test_phi_must_be_callable():
    with pytest.raises(ValueError, match=r"phi must be callable, got 3\.0"):
        scan_for_barrier(3.0, threshold=1.0, initial_step=0.1)


# -- through the probe-set loss ------------------------------------------------------------------


class _DoubleWellModule(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.theta = torch.nn.Parameter(torch.tensor(X_MIN, dtype=torch.float64))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        # ℓ_i = L(θ) + a_iᵀθ with centred a_i: the probe mean is L(θ) exactly.
        return double_well(self.theta) + a @ self.theta


def test_scan_through_probe_loss_counts_one_forward_pass_per_evaluation():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(64, 2, generator=g, dtype=torch.float64)
    a = a - a.mean(0)
    probe = ProbeLoss(_DoubleWellModule(), lambda model, batch: model(batch), [a[:32], a[32:]])
    phi = probe.loss_along(torch.tensor([-1.0, 0.0], dtype=torch.float64))
    result = scan_for_barrier(phi, threshold=5.0, initial_step=THERMAL_STEP)
    assert_barrier(result, distance=SQRT15, barrier=9 / 4, curvature=-6.0, rel_curvature=1e-4)
    assert probe.num_forward == 2 * result.num_evals  # two probe batches per evaluation


def test_untilted_removes_a_linear_tilt_exactly():
    # φ(s) = ((s − 1)² − 1)² / 4 has a minimum at s = 0; tilted by 0.1·s. With the tilt removed the
    # barrier is the untilted 1/4 at s = 1, with λ_b = φ"(1) = −1.
    def tilted(s: float) -> float:
        u = s - 1.0
        return (u * u - 1.0) ** 2 / 4 + 0.1 * s

    raw = scan_for_barrier(tilted, threshold=5.0, initial_step=0.05)
    centred = scan_for_barrier(untilted(tilted, 0.1), threshold=5.0, initial_step=0.05)
    assert raw.barrier == pytest.approx(0.25 + 0.1, rel=0.05)  # the tilt adds 0.1·s*
    assert centred.barrier == pytest.approx(0.25, rel=1e-6)
    assert centred.barrier_curvature == pytest.approx(-1.0, rel=1e-3)
    assert untilted(tilted, 0.0) is tilted

"""Closed forms of :mod:`kramers_callback.kramers` against identities, exact enumerations and
Langevin simulations of the double well ``x⁴ − 3x²`` (docs/theory.md section 1.3)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.integrate
import torch

from kramers_callback import kramers

SQRT15 = math.sqrt(1.5)
# Double well L = x⁴ − 3x²: L' = 4x³ − 6x, L'' = 12x² − 6, so λ₀ = L''(±√1.5) = 12,
# λ_b = L''(0) = −6 and ΔL = L(0) − L(√1.5) = 0 − (9/4 − 9/2) = 9/4.
LAMBDA_0, LAMBDA_B, BARRIER = 12.0, -6.0, 9.0 / 4.0


# -- Langevin simulation -------------------------------------------------------------------------
def simulated_rate(grad, start, *, lr, temperature, walkers, steps, seed):
    """Escapes per walker-step of ``θ ← θ − η∇L + √(2ηT)ξ`` from ``start`` into ``x < −½√1.5``.

    Each walker counts until its first passage (its exposure includes the escaping step): the
    maximum-likelihood rate of an exponential waiting time is escapes / total exposure.
    Returns the rate and the number of escapes.
    """
    generator = torch.Generator().manual_seed(seed)
    theta = torch.tensor(start, dtype=torch.float64).repeat(walkers, 1)
    alive = torch.ones(walkers, dtype=torch.bool)
    noise = math.sqrt(2 * lr * temperature)
    exposure = escapes = 0
    for _ in range(steps):
        kick = torch.randn(theta.shape, generator=generator, dtype=torch.float64)
        theta = theta - lr * grad(theta) + noise * kick
        exposure += int(alive.sum())
        escaped = alive & (theta[:, 0] < -0.5 * SQRT15)
        escapes += int(escaped.sum())
        alive &= ~escaped
    return escapes / exposure, escapes


def double_well_grad(theta):
    x = theta[:, :1]
    return 4 * x**3 - 6 * x


@pytest.mark.parametrize("barrier_over_t", [5.0, 6.0])
def test_simulated_escape_rate_matches_kramers_with_lr_as_factor(barrier_over_t):
    lr, temperature = 0.01, BARRIER / barrier_over_t
    measured, escapes = simulated_rate(
        double_well_grad,
        [SQRT15],
        lr=lr,
        temperature=temperature,
        walkers=20_000,
        steps=2_500,
        seed=int(barrier_over_t),
    )
    assert escapes > 1_000  # relative statistical error ≲ 3%
    predicted = kramers.escape_rate(
        lr=lr,
        omega_0=math.sqrt(LAMBDA_0),
        omega_b=math.sqrt(-LAMBDA_B),
        barrier=BARRIER,
        temperature=temperature,
    )
    assert measured / predicted == pytest.approx(1.0, abs=0.15)
    # The seed's ω₀ω_b/(2πη)·exp(−ΔL/T) divides by η: 1/η² = 10⁴ times too fast.
    seed_form = math.sqrt(LAMBDA_0 * -LAMBDA_B) / (2 * math.pi * lr) * math.exp(-barrier_over_t)
    assert measured / seed_form < 1e-3


def test_simulated_2d_escape_rate_matches_langer_not_1d_formula():
    # L = x⁴ − 3x² + (1 + ⅔x⁴) y²: the transverse curvature 2(1 + ⅔x⁴) is 5 in the wells and 2
    # at the saddle, so the 1-D formula misses the factor √(5/2) ≈ 1.58 that Langer has. (x⁴,
    # not x², so that the y-fluctuations barely change the curvature along x at the saddle.)
    def grad(theta):
        x, y = theta[:, 0], theta[:, 1]
        return torch.stack([4 * x**3 - 6 * x + 8 / 3 * x**3 * y**2, 2 * (1 + 2 / 3 * x**4) * y], 1)

    lr, temperature = 0.01, BARRIER / 6.0
    measured, escapes = simulated_rate(
        grad, [SQRT15, 0.0], lr=lr, temperature=temperature, walkers=12_000, steps=2_500, seed=3
    )
    assert escapes > 800
    langer = kramers.langer_rate(
        lr=lr,
        well_eigenvalues=[LAMBDA_0, 5.0],
        saddle_eigenvalues=[LAMBDA_B, 2.0],
        barrier=BARRIER,
        temperature=temperature,
    )
    one_d = kramers.escape_rate(
        lr=lr,
        omega_0=math.sqrt(LAMBDA_0),
        omega_b=math.sqrt(-LAMBDA_B),
        barrier=BARRIER,
        temperature=temperature,
    )
    # Leading order in T/ΔL: at ΔL/T = 6 the 2-D rate measures about 0.9 of Langer's.
    assert measured / langer == pytest.approx(1.0, abs=0.2)
    assert measured / one_d > 1.25


# -- escape rate and attempt frequency -----------------------------------------------------------
def test_escape_rate_is_attempt_frequency_times_arrhenius_factor():
    kwargs = {"lr": 0.03, "omega_0": 2.0, "omega_b": 0.5}
    rate = kramers.escape_rate(**kwargs, barrier=1.2, temperature=0.3)
    assert rate == pytest.approx(kramers.attempt_frequency(**kwargs) * math.exp(-4.0), rel=1e-15)
    # A = η ω₀ ω_b / 2π: doubling η doubles the rate (η is a factor, docs/theory.md section 1.2).
    doubled = kramers.escape_rate(**{**kwargs, "lr": 0.06}, barrier=1.2, temperature=0.3)
    assert doubled == pytest.approx(2 * rate, rel=1e-15)
    assert kramers.attempt_frequency(lr=2 * math.pi, omega_0=3.0, omega_b=5.0) == pytest.approx(15)


def test_escape_rate_at_zero_temperature_is_the_limit():
    kwargs = {"lr": 0.1, "omega_0": 1.0, "omega_b": 1.0}
    assert kramers.escape_rate(**kwargs, barrier=1.0, temperature=0.0) == 0.0
    assert kramers.escape_rate(**kwargs, barrier=0.0, temperature=0.0) == pytest.approx(
        kramers.attempt_frequency(**kwargs)
    )
    tensor = kramers.escape_rate(
        **kwargs,
        barrier=torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64),
        temperature=torch.tensor([0.0, 0.0, 0.5], dtype=torch.float64),
    )
    expected = [0.0, 0.1 / (2 * math.pi), 0.1 / (2 * math.pi) * math.exp(-2.0)]
    torch.testing.assert_close(tensor, torch.tensor(expected, dtype=torch.float64))


def test_backends_return_their_own_kind_and_agree():
    args = {"lr": 0.01, "omega_0": 3.0, "omega_b": 2.0, "barrier": 1.0, "temperature": 0.25}
    plain = kramers.escape_rate(**args)
    assert type(plain) is float
    as_tensor = kramers.escape_rate(**{**args, "barrier": torch.tensor([1.0, 2.0])})
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.dtype == torch.float32
    as_array = kramers.escape_rate(**{**args, "barrier": np.array([1.0, 2.0])})
    assert isinstance(as_array, np.ndarray)
    assert as_array[0] == pytest.approx(plain, rel=1e-15)
    assert float(as_tensor[0]) == pytest.approx(plain, rel=1e-6)
    assert as_array[1] == pytest.approx(plain * math.exp(-4.0), rel=1e-15)


def test_escape_rate_is_differentiable_in_torch():
    barrier = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    temperature = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    rate = kramers.escape_rate(
        lr=0.1, omega_0=1.0, omega_b=2.0, barrier=barrier, temperature=temperature
    )
    rate.backward()
    # ∂k/∂ΔL = −k/T and ∂k/∂T = kΔL/T².
    value = float(rate.detach())
    assert float(barrier.grad) == pytest.approx(-value / 0.5, rel=1e-12)
    assert float(temperature.grad) == pytest.approx(value * 1.0 / 0.25, rel=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": 0.0}, r"lr must be a finite number > 0, got 0\.0"),
        ({"omega_0": -1.0}, r"omega_0 must be a finite number > 0, got -1\.0"),
        ({"omega_b": float("inf")}, r"omega_b must be a finite number > 0, got inf"),
        ({"barrier": -0.1}, r"barrier must be a finite number ≥ 0, got -0\.1"),
        ({"temperature": float("nan")}, r"temperature must be a finite number ≥ 0, got nan"),
        ({"temperature": "hot"}, r"temperature must be a finite number ≥ 0, got 'hot'"),
    ],
)
def test_escape_rate_rejects_bad_numbers(kwargs, match):
    args = {"lr": 0.1, "omega_0": 1.0, "omega_b": 1.0, "barrier": 1.0, "temperature": 0.1}
    with pytest.raises(ValueError, match=match):
        kramers.escape_rate(**{**args, **kwargs})


# -- Langer --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("lam0", "lamb"), [(12.0, -6.0), (0.3, -7.5), (1e4, -1e-3)])
def test_langer_in_one_dimension_is_escape_rate(lam0, lamb):
    args = {"lr": 0.02, "barrier": 0.7, "temperature": 0.2}
    langer = kramers.langer_rate(well_eigenvalues=[lam0], saddle_eigenvalues=[lamb], **args)
    kramers_1d = kramers.escape_rate(omega_0=math.sqrt(lam0), omega_b=math.sqrt(-lamb), **args)
    assert langer == pytest.approx(kramers_1d, rel=1e-13)


def test_langer_with_unchanged_transverse_curvatures_is_escape_rate():
    # 1000 transverse curvatures of 10³: the determinants (10³⁰⁰⁰) overflow, their ratio is 1.
    transverse = [1e3] * 1000
    args = {"lr": 0.02, "barrier": 0.7, "temperature": 0.2}
    langer = kramers.langer_rate(
        well_eigenvalues=[*transverse, 12.0], saddle_eigenvalues=[-6.0, *transverse], **args
    )
    assert langer == pytest.approx(
        kramers.escape_rate(omega_0=math.sqrt(12.0), omega_b=math.sqrt(6.0), **args), rel=1e-12
    )


def test_langer_tensor_matches_float_and_dense_determinants():
    rng = np.random.default_rng(0)
    well = rng.uniform(0.5, 3.0, size=5)
    saddle = np.concatenate([[-2.0], rng.uniform(0.5, 3.0, size=4)])
    args = {"lr": 0.05, "barrier": 1.0, "temperature": 0.5}
    plain = kramers.langer_rate(well_eigenvalues=well.tolist(), saddle_eigenvalues=saddle, **args)
    tensor = kramers.langer_rate(
        well_eigenvalues=torch.tensor(well), saddle_eigenvalues=torch.tensor(saddle), **args
    )
    # Reference from the determinants of dense matrices with these spectra.
    q = np.linalg.qr(rng.normal(size=(5, 5)))[0]
    det_well = np.linalg.det(q @ np.diag(well) @ q.T)
    det_saddle = np.linalg.det(q @ np.diag(saddle) @ q.T)
    reference = 0.05 * 2.0 / (2 * math.pi) * math.sqrt(det_well / abs(det_saddle)) * math.exp(-2)
    assert plain == pytest.approx(reference, rel=1e-10)
    assert float(tensor) == pytest.approx(reference, rel=1e-10)


@pytest.mark.parametrize(
    ("well", "saddle", "match"),
    [
        ([1.0, 2.0], [-1.0, -2.0], r"saddle_eigenvalues must have exactly one entry < 0"),
        ([1.0, 2.0], [1.0, 2.0], r"saddle_eigenvalues must have exactly one entry < 0"),
        ([1.0, 2.0], [-1.0, 0.0], r"saddle_eigenvalues must .* the rest > 0, got \[-1\.0, 0\.0\]"),
        ([1.0, 0.0], [-1.0, 2.0], r"well_eigenvalues must be all > 0, got \[1\.0, 0\.0\]"),
        ([1.0], [-1.0, 2.0], r"must be non-empty and of equal length, got lengths 1 and 2"),
        ([], [], r"must be non-empty and of equal length, got lengths 0 and 0"),
    ],
)
def test_langer_rejects_bad_spectra(well, saddle, match):
    with pytest.raises(ValueError, match=match):
        kramers.langer_rate(
            lr=0.1, well_eigenvalues=well, saddle_eigenvalues=saddle, barrier=1, temperature=1
        )


# -- several barriers ----------------------------------------------------------------------------
def test_parallel_and_sequential_rates():
    rates = [0.1, 0.4, 0.5]
    assert kramers.parallel_rate(rates) == pytest.approx(1.0)
    assert kramers.parallel_rate([]) == 0.0
    # Sequential: mean waiting times add, 10 + 2.5 + 2 = 14.5 steps.
    assert kramers.sequential_rate(rates) == pytest.approx(1 / 14.5)
    assert kramers.mean_escape_time(kramers.sequential_rate(rates)) == pytest.approx(
        math.fsum(kramers.mean_escape_time(k) for k in rates)
    )
    assert kramers.sequential_rate([0.3, 0.0]) == 0.0
    assert kramers.sequential_rate([0.25, math.inf]) == pytest.approx(0.25)
    assert kramers.sequential_rate([0.25]) == 0.25
    as_tensor = torch.tensor(rates, dtype=torch.float64)
    assert float(kramers.parallel_rate(as_tensor)) == pytest.approx(1.0)
    assert float(kramers.sequential_rate(as_tensor)) == pytest.approx(1 / 14.5)
    assert float(kramers.sequential_rate(torch.tensor([0.3, 0.0]))) == 0.0
    assert float(kramers.sequential_rate(np.array([0.3, 0.0]))) == 0.0


def test_rate_collections_reject_bad_input():
    with pytest.raises(ValueError, match=r"rates must be a non-empty collection, got \[\]"):
        kramers.sequential_rate([])
    with pytest.raises(ValueError, match=r"rates must be a non-empty collection"):
        kramers.sequential_rate(torch.tensor([]))
    with pytest.raises(ValueError, match=r"rates\[1\] must be a number ≥ 0, got -0\.5"):
        kramers.parallel_rate([0.1, -0.5])


# -- escape-time law -----------------------------------------------------------------------------
def test_escape_time_law():
    k = 0.003
    assert kramers.survival_probability(rate=k, steps=200) + kramers.escape_probability(
        rate=k, steps=200
    ) == pytest.approx(1.0, rel=1e-15)
    # Memoryless: surviving t₁ + t₂ is surviving t₁ then t₂.
    assert kramers.survival_probability(rate=k, steps=500) == pytest.approx(
        kramers.survival_probability(rate=k, steps=200)
        * kramers.survival_probability(rate=k, steps=300),
        rel=1e-14,
    )
    # The mean waiting time is the integral of the survival function.
    integral, _ = scipy.integrate.quad(
        lambda t: kramers.survival_probability(rate=k, steps=t), 0, math.inf
    )
    assert kramers.mean_escape_time(k) == pytest.approx(integral, rel=1e-8)
    assert kramers.mean_escape_time(0.0) == math.inf
    assert float(kramers.mean_escape_time(torch.tensor(0.0))) == math.inf
    # 1 − e^{−x} = x − x²/2 + …: a tiny probability keeps its digits.
    assert kramers.escape_probability(rate=1e-20, steps=3) == pytest.approx(3e-20, rel=1e-12)
    with pytest.raises(ValueError, match=r"steps must be a finite number ≥ 0, got -1"):
        kramers.survival_probability(rate=k, steps=-1)


# -- critical temperature ------------------------------------------------------------------------
def test_critical_temperature_gives_one_escape_over_the_horizon():
    args = {"lr": 0.01, "omega_0": math.sqrt(12.0), "omega_b": math.sqrt(6.0)}
    frequency = kramers.attempt_frequency(**args)
    horizon = 50_000
    t_c = kramers.critical_temperature(
        barrier=BARRIER, horizon=horizon, attempt_frequency=frequency
    )
    rate = kramers.escape_rate(**args, barrier=BARRIER, temperature=t_c)
    assert rate * horizon == pytest.approx(1.0, rel=1e-12)


def test_critical_temperature_needs_more_than_one_attempt():
    match = (
        r"horizon \* attempt_frequency must be > 1 \(τ·A > 1.*\), got horizon=100\.0, "
        r"attempt_frequency=0\.005 \(τ·A = 0\.5\)"
    )
    with pytest.raises(ValueError, match=match):
        kramers.critical_temperature(barrier=1.0, horizon=100, attempt_frequency=0.005)
    values = kramers.critical_temperature(
        barrier=1.0, horizon=torch.tensor([100.0, 1000.0]), attempt_frequency=0.005
    )
    assert math.isnan(values[0]) and float(values[1]) == pytest.approx(1 / math.log(5.0))


def _expected_escapes(m, barriers, temperatures, frequencies, horizon):
    return horizon * math.fsum(
        a * math.exp(-b / (m * t))
        for b, t, a in zip(barriers, temperatures, frequencies, strict=True)
    )


def test_critical_temperature_scale_one_pathway_is_closed_form():
    m = kramers.critical_temperature_scale(
        barriers=[BARRIER], temperatures=[0.3], attempt_frequencies=[0.01], horizon=20_000
    )
    t_c = kramers.critical_temperature(barrier=BARRIER, horizon=20_000, attempt_frequency=0.01)
    assert m * 0.3 == pytest.approx(t_c, rel=1e-14)


@pytest.mark.parametrize(
    ("barriers", "temperatures", "frequencies"),
    [
        ([2.25, 1.0, 3.0], [0.45, 0.2, 0.3], [0.01, 0.001, 0.1]),
        ([1.0, 1.0 + 1e-9], [1.0, 1.0], [0.3, 0.2]),  # nearly equal: the bracket collapses
        ([0.5, 4.0], [0.001, 0.0002], [0.02, 0.5]),  # ΔL/T up to 2·10⁴: needs log-sum-exp
        ([0.0, 2.0, 1.0], [0.1, 0.1, 0.3], [1e-4, 0.02, 0.003]),  # a zero barrier, τA₀ = 0.1
    ],
)
def test_critical_temperature_scale_solves_its_equation(barriers, temperatures, frequencies):
    horizon = 1000.0
    m = kramers.critical_temperature_scale(
        barriers=barriers,
        temperatures=temperatures,
        attempt_frequencies=frequencies,
        horizon=horizon,
    )
    assert m > 0
    # Check in log space: τ Σ A_i exp(−c_i/m) = 1, with the largest term factored out.
    logs = [
        math.log(horizon * a) - b / (m * t)
        for b, t, a in zip(barriers, temperatures, frequencies, strict=True)
    ]
    top = max(logs)
    assert top + math.log(math.fsum(math.exp(v - top) for v in logs)) == pytest.approx(0, abs=1e-12)
    # All temperatures scaled by s: the multiplier scales by 1/s.
    m_scaled = kramers.critical_temperature_scale(
        barriers=barriers,
        temperatures=[3.0 * t for t in temperatures],
        attempt_frequencies=frequencies,
        horizon=horizon,
    )
    assert m_scaled == pytest.approx(m / 3.0, rel=1e-10)


def test_critical_temperature_scale_is_zero_when_free_escapes_suffice():
    m = kramers.critical_temperature_scale(
        barriers=[0.0, 1.0], temperatures=[1.0, 1.0], attempt_frequencies=[0.02, 0.5], horizon=100
    )
    assert m == 0.0
    assert _expected_escapes(1e-9, [0.0, 1.0], [1.0, 1.0], [0.02, 0.5], 100) >= 1.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"attempt_frequencies": [0.001, 0.004]},
            r"horizon \* sum\(attempt_frequencies\) must be > 1 .*τ·ΣA = 0\.5",
        ),
        ({"temperatures": [1.0]}, r"must be non-empty and of equal length, got lengths 2, 1 and 2"),
        ({"temperatures": [1.0, 0.0]}, r"temperatures\[1\] must be a finite number > 0, got 0\.0"),
        ({"barriers": [-1.0, 1.0]}, r"barriers\[0\] must be a finite number ≥ 0, got -1\.0"),
        ({"horizon": 0}, r"horizon must be a finite number > 0, got 0"),
    ],
)
def test_critical_temperature_scale_rejects_bad_input(kwargs, match):
    args = {
        "barriers": [1.0, 2.0],
        "temperatures": [0.5, 0.5],
        "attempt_frequencies": [0.1, 0.1],
        "horizon": 100,
    }
    with pytest.raises(ValueError, match=match):
        kramers.critical_temperature_scale(**{**args, **kwargs})


# -- annealing -----------------------------------------------------------------------------------
def test_annealed_temperature_and_lr():
    horizon, frequency, t_c = 10_000, 0.05, 0.4
    log_attempts = math.log(horizon * frequency)

    def temperature(step):
        return kramers.annealed_temperature(
            step=step, horizon=horizon, critical_temperature=t_c, attempt_frequency=frequency
        )

    # t = τ: ln(τ/t) = 0; t = τ/e: ln(τ/t) = 1; t = 1: ln(τ/t) = ln τ.
    assert temperature(horizon) == pytest.approx(t_c / log_attempts, rel=1e-14)
    assert temperature(horizon / math.e) == pytest.approx(2 * t_c / log_attempts, rel=1e-14)
    assert temperature(1) == pytest.approx(t_c * (1 + math.log(horizon)) / log_attempts)
    # Linear in ln t with slope −T_c / ln(τA), then held past the horizon.
    slope = (temperature(100) - temperature(10)) / math.log(10)
    assert slope == pytest.approx(-t_c / log_attempts, rel=1e-12)
    assert temperature(3 * horizon) == temperature(horizon) > 0
    lr = kramers.annealed_lr(step=77, horizon=horizon, base_lr=0.2, attempt_frequency=frequency)
    assert lr / 0.2 == pytest.approx(temperature(77) / t_c, rel=1e-14)
    steps = torch.arange(1, 3 * horizon, 997)
    tensor = kramers.annealed_lr(
        step=steps, horizon=horizon, base_lr=0.2, attempt_frequency=frequency
    )
    assert bool((tensor[1:] <= tensor[:-1]).all())
    assert float(tensor[0]) == pytest.approx(
        kramers.annealed_lr(step=1, horizon=horizon, base_lr=0.2, attempt_frequency=frequency),
        rel=1e-6,
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"step": 0}, r"step must be a finite number ≥ 1, got 0"),
        ({"step": 0.5}, r"step must be a finite number ≥ 1, got 0\.5"),
        ({"attempt_frequency": 0.001}, r"horizon \* attempt_frequency must be > 1"),
        ({"base_lr": 0.0}, r"base_lr must be a finite number > 0, got 0\.0"),
    ],
)
def test_annealed_lr_rejects_bad_input(kwargs, match):
    args = {"step": 1, "horizon": 100, "base_lr": 0.1, "attempt_frequency": 0.5}
    with pytest.raises(ValueError, match=match):
        kramers.annealed_lr(**{**args, **kwargs})


def test_temperature_for_rate_inverts_escape_rate():
    args = {"lr": 0.05, "omega_0": 3.0, "omega_b": 1.5}
    frequency = kramers.attempt_frequency(**args)
    temperature = kramers.temperature_for_rate(rate=1e-6, attempt_frequency=frequency, barrier=0.8)
    assert kramers.escape_rate(**args, barrier=0.8, temperature=temperature) == pytest.approx(
        1e-6, rel=1e-12
    )
    with pytest.raises(ValueError, match=r"rate must be in \(0, attempt_frequency\)"):
        kramers.temperature_for_rate(rate=frequency, attempt_frequency=frequency, barrier=0.8)
    with pytest.raises(ValueError, match=r"rate must be a finite number > 0, got 0"):
        kramers.temperature_for_rate(rate=0, attempt_frequency=frequency, barrier=0.8)


# -- batch size and stopping ---------------------------------------------------------------------
def _exact_batch_noise(samples: np.ndarray, batch: int, *, replacement: bool) -> float:
    """``E‖g_B − g‖²`` by enumerating every batch (ordered tuples with replacement)."""
    mean = samples.mean(axis=0)
    if replacement:
        batches = itertools.product(range(len(samples)), repeat=batch)
    else:
        batches = itertools.combinations(range(len(samples)), batch)
    errors = [np.sum((samples[list(idx)].mean(axis=0) - mean) ** 2) for idx in batches]
    return float(np.mean(errors))


@pytest.mark.parametrize("replacement", [True, False])
@pytest.mark.parametrize("batch", [2, 3, 5])
def test_optimal_batch_size_recovers_the_batch_of_a_temperature(replacement, batch):
    # docs/theory.md section 2.1: T = η E‖g_B − g‖² / (2d). Enumerate every batch of 7 gradients in
    # 3-D to get the exact T of a batch size; the inversion must give that batch size back.
    rng = np.random.default_rng(batch)
    samples = rng.normal(size=(7, 3)) * [1.0, 3.0, 0.2]
    lr, dim = 0.1, 3
    noise_trace = float(np.mean(np.sum((samples - samples.mean(0)) ** 2, axis=1)))
    temperature = lr * _exact_batch_noise(samples, batch, replacement=replacement) / (2 * dim)
    size = kramers.optimal_batch_size(
        lr=lr,
        noise_trace=noise_trace,
        dim=dim,
        target_temperature=temperature,
        dataset_size=None if replacement else len(samples),
    )
    assert size == pytest.approx(batch, rel=1e-12)


def test_optimal_batch_size_limits_and_directional_form():
    args = {"lr": 0.1, "noise_trace": 50.0, "dim": 10, "target_temperature": 0.01}
    with_replacement = kramers.optimal_batch_size(**args)
    assert with_replacement == pytest.approx(25.0)
    assert kramers.optimal_batch_size(**args, dataset_size=10**12) == pytest.approx(25.0)
    assert kramers.optimal_batch_size(**args, dataset_size=30) < 30
    # Directional: T_v = η vᵀΣ₁v / (2B) is the isotropic form with d = 1.
    directional = kramers.optimal_batch_size(
        lr=0.1, noise_trace=4.0, dim=1, target_temperature=0.05
    )
    assert 0.1 * 4.0 / (2 * directional) == pytest.approx(0.05)
    with pytest.raises(ValueError, match=r"dim must be an integer ≥ 1, got 2\.5"):
        kramers.optimal_batch_size(**{**args, "dim": 2.5})
    with pytest.raises(ValueError, match=r"dataset_size must be an integer ≥ 2, got 1"):
        kramers.optimal_batch_size(**args, dataset_size=1)
    with pytest.raises(ValueError, match=r"target_temperature must be a finite number > 0"):
        kramers.optimal_batch_size(**{**args, "target_temperature": 0.0})


def test_should_stop():
    # k·R·c < 1 ⇔ fewer than 1/c escapes expected in the remaining R steps.
    assert kramers.should_stop(rate=1e-6, remaining_steps=1000, compute_cost=10) is True
    assert kramers.should_stop(rate=1e-3, remaining_steps=1000, compute_cost=10) is False
    assert kramers.should_stop(rate=1e-4, remaining_steps=1000, compute_cost=10) is False  # = 1
    assert kramers.should_stop(rate=0.0, remaining_steps=1000, compute_cost=0.0) is False
    assert kramers.should_stop(rate=0.0, remaining_steps=0, compute_cost=1.0) is True
    assert kramers.should_stop(rate=1.0, remaining_steps=-5, compute_cost=1.0) is True
    assert kramers.should_stop(rate=math.inf, remaining_steps=5, compute_cost=1.0) is False
    with pytest.raises(ValueError, match=r"remaining_steps must be a finite number, got inf"):
        kramers.should_stop(rate=1.0, remaining_steps=math.inf, compute_cost=1.0)
    with pytest.raises(ValueError, match=r"compute_cost must be a finite number ≥ 0, got -1"):
        kramers.should_stop(rate=1.0, remaining_steps=5, compute_cost=-1)


# -- committor -----------------------------------------------------------------------------------
def test_committor_of_a_flat_profile_is_linear():
    q = np.sort(np.random.default_rng(0).uniform(-1, 2, size=40))
    p = kramers.committor(q, np.full_like(q, 3.0), temperature=0.1)
    np.testing.assert_allclose(p, (q - q[0]) / (q[-1] - q[0]), rtol=1e-12, atol=1e-15)


def _linear_profile_committor(q, slope, temperature):
    # p'' − (L'/T) p' = 0 with L' = s: p = (e^{s(q−a)/T} − 1) / (e^{s(b−a)/T} − 1).
    return np.expm1(slope * (q - q[0]) / temperature) / np.expm1(
        slope * (q[-1] - q[0]) / temperature
    )


def test_committor_of_a_linear_profile_matches_closed_form():
    slope, temperature = 2.0, 0.5
    # On a uniform grid the trapezoid panels of e^{sq/T} form a geometric series, so the
    # normalised cumulative sum is exactly (e^{s(q−a)/T} − 1)/(e^{s(b−a)/T} − 1).
    q = np.linspace(0.0, 1.0, 11)
    p = kramers.committor(q, slope * q, temperature=temperature)
    np.testing.assert_allclose(p, _linear_profile_committor(q, slope, temperature), atol=1e-14)
    # On a non-uniform grid it is the trapezoid rule's O(h²): halving h divides the error by 4.
    for sign, estimator in ((1.0, kramers.committor), (-1.0, kramers.boltzmann_cumulative)):
        errors = []
        for n in (21, 41, 81):
            q = np.sin(np.linspace(0.0, 1.0, n) * np.pi / 2)
            p = estimator(q, slope * q, temperature=temperature)
            exact = _linear_profile_committor(q, sign * slope, temperature)
            errors.append(np.max(np.abs(p - exact)))
        assert errors[-1] < 1e-4
        assert errors[0] / errors[1] == pytest.approx(4.0, rel=0.1)
        assert errors[1] / errors[2] == pytest.approx(4.0, rel=0.1)


def test_committor_versus_boltzmann_on_a_double_well_profile():
    # Tilted double well: start basin on the left, barrier top near 0.
    q = np.linspace(-1.6, 1.6, 641)
    loss = q**4 - 3 * q**2 + 0.3 * q
    temperature = 0.2
    top = np.argmax(np.where(np.abs(q) < 0.5, loss, -np.inf))
    p = kramers.committor(q, loss, temperature=temperature)
    population = kramers.boltzmann_cumulative(q, loss, temperature=temperature)
    assert bool(np.all(np.diff(p) >= 0))
    # The committor stays ≈ 0 in the start basin and rises to 1/2 at the barrier top.
    left_minimum = np.argmin(np.where(q < 0, loss, np.inf))
    assert p[left_minimum] < 1e-4
    assert p[top] == pytest.approx(0.5, abs=0.05)
    # The population below q is already well above 0 in the start basin and flat at the top.
    assert population[left_minimum] > 0.01
    assert population[top + 10] - population[top - 10] < 1e-3


def test_committor_is_stable_for_high_barriers_and_matches_torch():
    q = np.linspace(-1.0, 1.0, 201)
    loss = 500.0 * (1 - q**2)  # ΔL / T = 5·10⁴: e^{L/T} overflows without log-sum-exp
    p = kramers.committor(q, loss, temperature=0.01)
    assert bool(np.all(np.isfinite(p))) and p[100] == pytest.approx(0.5, abs=1e-9)
    assert p[0] == 0.0 and p[-1] == 1.0
    tensor = kramers.committor(torch.tensor(q), torch.tensor(loss), temperature=0.01)
    assert isinstance(tensor, torch.Tensor)
    np.testing.assert_allclose(tensor.numpy(), p, rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize(
    ("positions", "losses", "temperature", "match"),
    [
        ([0.0, 1.0, 1.0], [0.0, 0.0, 0.0], 1.0, r"positions must be strictly increasing"),
        ([0.0], [0.0], 1.0, r"positions must be a 1-D sequence of at least 2 numbers"),
        ([0.0, 1.0], [0.0], 1.0, r"losses must have the shape of positions \(2,\), got \(1,\)"),
        ([0.0, 1.0], [0.0, math.nan], 1.0, r"losses must be all finite"),
        ([0.0, 1.0], [0.0, 0.0], 0.0, r"temperature must be a finite number > 0, got 0\.0"),
    ],
)
def test_committor_rejects_bad_profiles(positions, losses, temperature, match):
    with pytest.raises(ValueError, match=match):
        kramers.committor(positions, losses, temperature=temperature)


# -- path action ---------------------------------------------------------------------------------
def test_path_action_of_a_hand_computed_path():
    trajectory = [[0.0, 0.0], [1.0, 0.0], [1.0, 2.0]]
    gradients = [[2.0, 0.0], [0.0, -2.0]]
    # η = 1/2, T = 2, Δt = 1: residuals (1,0) + ½(2,0) = (2,0) and (0,2) + ½(0,−2) = (0,1);
    # S = (4 + 1)·1 / (4·½·2) = 5/4.
    assert kramers.path_action(trajectory, gradients, lr=0.5, temperature=2.0) == 1.25
    # Δt = ½: residuals (2,0) + (1,0) = (3,0) and (0,4) + (0,−1) = (0,3); S = 18·½ / 4 = 9/4.
    assert kramers.path_action(trajectory, gradients, lr=0.5, temperature=2.0, dt=0.5) == 2.25
    # A gradient at the last point is accepted and ignored.
    with_last = [*gradients, [100.0, 100.0]]
    assert kramers.path_action(trajectory, with_last, lr=0.5, temperature=2.0) == 1.25


def test_path_action_of_gradient_descent_is_zero_and_of_sgd_is_half_per_coordinate():
    lr, temperature = 0.01, 0.3
    generator = torch.Generator().manual_seed(0)
    theta = torch.tensor([[1.0, 0.5]], dtype=torch.float64)

    def gradient(t):
        return torch.stack([4 * t[:, 0] ** 3 - 6 * t[:, 0], 2 * t[:, 1]], dim=1)

    path, grads = [theta], []
    for _ in range(50):
        grads.append(gradient(path[-1]))
        path.append(path[-1] - lr * grads[-1])
    gd = kramers.path_action(torch.cat(path), torch.cat(grads), lr=lr, temperature=temperature)
    assert isinstance(gd, torch.Tensor) and float(gd) < 1e-25

    # SGD as discretised Langevin: each step adds ‖ξ‖²/2, so S ~ χ²(n d)/2 with mean n d/2 and
    # standard deviation √(n d / 2): S/(n d) = 1/2 ± 0.005 for n d = 2·10⁴.
    steps = 10_000
    path, grads = [theta], []
    for _ in range(steps):
        grads.append(gradient(path[-1]))
        kick = torch.randn(theta.shape, generator=generator, dtype=torch.float64)
        path.append(path[-1] - lr * grads[-1] + math.sqrt(2 * lr * temperature) * kick)
    action = kramers.path_action(torch.cat(path), torch.cat(grads), lr=lr, temperature=temperature)
    assert float(action) / (2 * steps) == pytest.approx(0.5, abs=0.02)


def test_path_action_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"gradients must have shape \[3, 2\] or \[2, 2\]"):
        kramers.path_action(np.zeros((3, 2)), np.zeros((1, 2)), lr=0.1, temperature=1.0)
    with pytest.raises(ValueError, match=r"trajectory must have shape \[n \+ 1, d\] with n ≥ 1"):
        kramers.path_action(np.zeros((1, 2)), np.zeros((1, 2)), lr=0.1, temperature=1.0)
    with pytest.raises(ValueError, match=r"dt must be a finite number > 0, got 0"):
        kramers.path_action(np.zeros((2, 2)), np.zeros((1, 2)), lr=0.1, temperature=1.0, dt=0)

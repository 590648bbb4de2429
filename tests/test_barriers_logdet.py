"""Stochastic Lanczos quadrature of log|det H| and the seed's determinant barrier
(docs/theory.md section 3.2).

References: matrices ``Q diag(λ) Qᵀ`` with a chosen spectrum (``log|det| = Σ log|λ_i|`` exactly),
per-probe ``zᵀ log|A| z`` from ``eigh``, and the exact Hessians of ``x⁴ − 3x² + y²`` from
``torch.func.hessian``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from reference_problems import chosen_spectrum

from kramers_callback.barriers import (
    PathwayStatus,
    lanczos_quadrature,
    logdet_barrier,
    scan_for_barrier,
    stochastic_lanczos_logdet,
)

SQRT15 = math.sqrt(1.5)


def exact_logdet(eigenvalues) -> float:
    return float(sum(math.log(abs(e)) for e in eigenvalues))


SPD = torch.logspace(math.log10(0.5), math.log10(20.0), 30, dtype=torch.float64).tolist()
INDEFINITE = (-torch.linspace(0.5, 8.0, 10)).tolist() + torch.linspace(0.5, 12.0, 20).tolist()


def slq(matrix: torch.Tensor, *, seed: int, **kwargs):
    return stochastic_lanczos_logdet(
        lambda v: matrix @ v,
        matrix.shape[0],
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    )


@pytest.mark.parametrize("spectrum", [SPD, INDEFINITE], ids=["spd", "indefinite"])
def test_logdet_within_a_few_percent(spectrum):
    exact = exact_logdet(spectrum)
    matrix, _ = chosen_spectrum(spectrum)
    result = slq(matrix, seed=1, num_probes=40, lanczos_steps=20)
    assert result.value == pytest.approx(exact, rel=0.05)
    assert abs(result.value - exact) < 4 * result.stderr
    assert result.num_products == 40 * 20
    assert result.converged


@pytest.mark.parametrize("spectrum", [SPD, INDEFINITE], ids=["spd", "indefinite"])
def test_error_shrinks_with_more_probes(spectrum):
    # lanczos_steps = dim: the quadrature is exact, so only the Monte Carlo error is left,
    # whose root-mean-square over seeds falls like 1/√num_probes (expected ratio 4 here).
    matrix, _ = chosen_spectrum(spectrum)
    exact = exact_logdet(spectrum)

    def rms_error(num_probes):
        errors = [
            slq(matrix, seed=seed, num_probes=num_probes, lanczos_steps=30).value - exact
            for seed in range(10)
        ]
        return math.sqrt(sum(e * e for e in errors) / len(errors))

    few, many = rms_error(4), rms_error(64)
    assert many < few / 2


def test_quadrature_error_shrinks_with_more_lanczos_steps():
    # Same seed → same single probe z; its exact zᵀ log A z comes from lanczos_steps = dim.
    spectrum = torch.logspace(-1, 2, 80, dtype=torch.float64).tolist()
    matrix, _ = chosen_spectrum(spectrum, seed=3)
    exact_probe = slq(matrix, seed=7, num_probes=1, lanczos_steps=80)
    assert exact_probe.quadrature_change == 0.0
    errors = [
        abs(slq(matrix, seed=7, num_probes=1, lanczos_steps=m).value - exact_probe.value)
        for m in (4, 8, 16, 32)
    ]
    assert errors[0] > errors[1] > errors[2] > errors[3]
    assert errors[3] < 1e-3 * abs(exact_probe.value)


def test_full_lanczos_reproduces_the_probe_quadratic_form():
    # With m = d the Gauss rule is exact: d·e₁ᵀ log|T| e₁ = zᵀ log|A| z, with log|A| from eigh.
    # The probe is read back from the first product: Lanczos starts at q₁ = z/‖z‖ = z/√d.
    matrix, _ = chosen_spectrum(INDEFINITE, seed=2)
    seen = []

    def matvec(v):
        seen.append(v.clone())
        return matrix @ v

    result = stochastic_lanczos_logdet(
        matvec, 30, num_probes=1, lanczos_steps=30, generator=torch.Generator().manual_seed(5)
    )
    z = seen[0] * math.sqrt(30)
    torch.testing.assert_close(z.abs(), torch.ones(30, dtype=torch.float64))
    values, vectors = torch.linalg.eigh(matrix)
    log_abs = vectors @ torch.diag(values.abs().log()) @ vectors.T
    assert result.value == pytest.approx(float(z @ log_abs @ z), rel=1e-10)


def test_diagonal_matrix_is_exact_with_rademacher_probes():
    # zᵀ f(D) z = Σ f(d_i) for z ∈ {±1}^d: zero variance.
    spectrum = [3.0, -0.5, 7.0, 2.0, -4.0]
    result = slq(torch.diag(torch.tensor(spectrum, dtype=torch.float64)), seed=0, num_probes=3)
    assert result.value == pytest.approx(exact_logdet(spectrum), rel=1e-12)
    assert result.stderr == pytest.approx(0.0, abs=1e-12)


def test_products_are_counted_and_capped_at_dim():
    calls = 0
    matrix, _ = chosen_spectrum(SPD[:12])

    def matvec(v):
        nonlocal calls
        calls += 1
        return matrix @ v

    result = stochastic_lanczos_logdet(
        matvec, 12, num_probes=3, lanczos_steps=50, generator=torch.Generator().manual_seed(0)
    )
    assert result.num_products == calls <= 3 * 12


def test_single_probe_has_no_standard_error():
    matrix, _ = chosen_spectrum(SPD)
    result = slq(matrix, seed=0, num_probes=1)
    assert math.isnan(result.stderr)
    assert math.isfinite(result.value)


def test_global_rng_untouched():
    before = torch.get_rng_state()
    stochastic_lanczos_logdet(lambda v: 2 * v, 4, num_probes=2)
    assert torch.equal(before, torch.get_rng_state())


def test_seeded_runs_repeat():
    matrix, _ = chosen_spectrum(SPD)
    assert slq(matrix, seed=4, num_probes=5).value == slq(matrix, seed=4, num_probes=5).value


def test_float32_vectors():
    matrix, _ = chosen_spectrum(SPD)
    result = slq(matrix.float(), seed=1, num_probes=40, lanczos_steps=20, dtype=torch.float32)
    assert result.value == pytest.approx(exact_logdet(SPD), rel=0.05)


def test_lanczos_quadrature_is_the_gauss_rule_of_the_tridiagonal():
    alphas = np.array([2.0, 3.0, -1.0])
    betas = np.array([0.5, 1.5])
    t = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
    values, vectors = np.linalg.eigh(t)
    expected = float(vectors[0] @ np.diag(np.log(np.abs(values))) @ vectors[0])
    assert lanczos_quadrature(alphas, betas) == pytest.approx(expected, rel=1e-12)
    assert lanczos_quadrature(np.array([4.0]), np.array([])) == pytest.approx(math.log(4.0))
    with pytest.raises(ValueError, match="alphas, betas must be"):
        lanczos_quadrature(alphas, betas[:1])


# -- the determinant barrier on the double well ------------------------------------------------


def double_well(x: torch.Tensor) -> torch.Tensor:
    return x[0] ** 4 - 3 * x[0] ** 2 + x[1] ** 2


def test_double_well_logdet_barrier_is_negative_and_wrong():
    minimum = torch.tensor([SQRT15, 0.0], dtype=torch.float64)
    saddle = torch.zeros(2, dtype=torch.float64)
    h_well = torch.func.hessian(double_well)(minimum)
    h_saddle = torch.func.hessian(double_well)(saddle)
    torch.testing.assert_close(h_well, torch.diag(torch.tensor([12.0, 2.0], dtype=torch.float64)))
    torch.testing.assert_close(h_saddle, torch.diag(torch.tensor([-6.0, 2.0], dtype=torch.float64)))

    def logdet(h):
        return slq(h, seed=0, num_probes=4).value

    well, saddle_value = logdet(h_well), logdet(h_saddle)
    assert well == pytest.approx(torch.linalg.slogdet(h_well).logabsdet.item(), rel=1e-12)
    assert saddle_value == pytest.approx(math.log(12.0), rel=1e-12)

    temperature = 0.3
    heuristic = logdet_barrier(
        temperature=temperature, logdet_well=well, logdet_saddle=saddle_value
    )
    # −T (ln 24 − ln 12) / 2 = −T ln 2 / 2.
    assert heuristic == pytest.approx(-temperature * math.log(2.0) / 2, rel=1e-12)
    assert heuristic < 0
    # The line scan finds the true barrier, 9/4, on the same landscape.
    scan = scan_for_barrier(
        lambda s: float(double_well(minimum + s * torch.tensor([-1.0, 0.0], dtype=torch.float64))),
        threshold=20 * temperature,
        initial_step=0.1,
    )
    assert scan.status is PathwayStatus.BARRIER
    assert scan.barrier == pytest.approx(9 / 4, rel=1e-6)


def test_logdet_barrier_formula():
    assert logdet_barrier(temperature=2.0, logdet_well=1.0, logdet_saddle=4.0) == 3.0
    assert logdet_barrier(temperature=0.0, logdet_well=1.0, logdet_saddle=4.0) == 0.0


# -- argument errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": -1.0}, r"temperature must be a finite number ≥ 0, got -1\.0"),
        ({"logdet_well": math.nan}, r"logdet_well must be a finite number, got nan"),
        ({"logdet_saddle": -math.inf}, r"logdet_saddle must be a finite number, got -inf"),
    ],
)
def test_logdet_barrier_argument_errors(kwargs, match):
    arguments = {"temperature": 1.0, "logdet_well": 1.0, "logdet_saddle": 0.0, **kwargs}
    with pytest.raises(ValueError, match=match):
        logdet_barrier(**arguments)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dim": 0}, r"dim must be an integer ≥ 1, got 0"),
        ({"num_probes": 0}, r"num_probes must be an integer ≥ 1, got 0"),
        ({"lanczos_steps": 2.5}, r"lanczos_steps must be an integer ≥ 1, got 2\.5"),
        ({"dtype": torch.int64}, r"dtype must be a floating torch\.dtype, got torch\.int64"),
        ({"matvec": "H"}, r"matvec must be callable, got 'H'"),
        ({"matvec": lambda v: v[:2]}, r"matvec must return 4 values \(one per dimension\), got 2"),
    ],
)
def test_slq_argument_errors(kwargs, match):
    arguments = {"matvec": lambda v: 2 * v, "dim": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        stochastic_lanczos_logdet(**arguments)

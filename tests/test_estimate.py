"""``estimate()`` against cases with known answers: the double well with exact per-sample noise
and a tiny MLP with its dense float64 Hessian."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from torch import nn

import kramers_callback as kc
from kramers_callback import kramers
from kramers_callback.estimate import NonFiniteLossError, PathwayStatus

SQRT15 = math.sqrt(1.5)


# -- the double well x⁴ − 3x² + y², with exact per-sample noise -----------------------------
class DoubleWell(nn.Module):
    """``ℓ_i(θ) = x⁴ − 3x² + y² + a_iᵀθ``; the batch is the matrix of the ``a_i``."""

    def __init__(self, start=(SQRT15, 0.0)) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor(start, dtype=torch.float64))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        x, y = self.theta
        return x**4 - 3 * x**2 + y**2 + a @ self.theta


def double_well_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    return model(batch)


def centred_noise(n: int, cov: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """``n`` samples whose sample mean is 0 and sample covariance (1/(n−1)) is exactly ``cov``."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, cov.shape[0], generator=g, dtype=torch.float64)
    z = z - z.mean(0)
    whiten = torch.linalg.cholesky(z.T @ z / (n - 1))
    z = torch.linalg.solve_triangular(whiten, z.T, upper=False).T
    return z @ torch.linalg.cholesky(cov).T


LR, BATCH, N = 0.01, 4, 512
COV = torch.tensor([[360.0, 0.0], [0.0, 40.0]], dtype=torch.float64)


@pytest.fixture(scope="module")
def well_estimate() -> kc.KramersEstimate:
    a = centred_noise(N, COV)
    model = DoubleWell()
    # top_k = d = 2: both eigenvectors of the 2-D problem.
    return kc.estimate(model, double_well_loss, a.split(128), lr=LR, batch_size=BATCH, top_k=2)


def simulate_sgd_escape_rate(
    a: torch.Tensor, *, lr: float, batch: int, walkers: int, steps: int, seed: int
) -> tuple[float, int]:
    """Vectorised SGD on the double well; escapes per walker-step to the left well (MLE)."""
    g = torch.Generator().manual_seed(seed)
    theta = torch.tensor([SQRT15, 0.0], dtype=torch.float64).repeat(walkers, 1)
    alive = torch.ones(walkers, dtype=torch.bool)
    survived = torch.zeros(walkers, dtype=torch.float64)
    for _ in range(steps):
        idx = torch.randint(a.shape[0], (walkers, batch), generator=g)
        noise = a[idx].mean(1)
        x, y = theta[:, 0], theta[:, 1]
        grad = torch.stack([4 * x**3 - 6 * x, 2 * y], dim=1) + noise
        theta = torch.where(alive[:, None], theta - lr * grad, theta)
        survived += alive
        # Absorb ~2 thermal lengths past the saddle, so recrossings are not counted as escapes.
        alive &= theta[:, 0] > -0.5 * SQRT15
    escapes = int((~alive).sum())
    return escapes / float(survived.sum()), escapes


def test_double_well_recovers_temperature_curvature_and_barrier(well_estimate):
    est = well_estimate
    expected_t = LR * float(COV.trace()) / (2 * 2 * BATCH)
    assert est.temperature == pytest.approx(expected_t, rel=1e-8)
    assert est.lambda_max == pytest.approx(12.0, rel=1e-3)
    assert est.lambda_min == pytest.approx(2.0, rel=1e-3)
    assert est.hessian_trace == pytest.approx(14.0, rel=0.03)
    escape = [p for p in est.pathways if p.status is PathwayStatus.BARRIER]
    assert len(escape) == 1, [(p.name, p.status) for p in est.pathways]
    path = escape[0]
    assert path.curvature == pytest.approx(12.0, rel=0.02)
    assert path.barrier_curvature == pytest.approx(-6.0, rel=0.02)
    assert path.barrier == pytest.approx(9 / 4, rel=0.02)
    assert path.distance == pytest.approx(SQRT15, rel=0.02)
    assert path.temperature == pytest.approx(LR * float(COV[0, 0]) / (2 * BATCH), rel=1e-8)
    # Every other direction climbs forever.
    others = {p.status for p in est.pathways if p is not path}
    assert others == {PathwayStatus.NO_BARRIER_WITHIN_REACH}
    assert est.barrier == path.barrier
    assert est.escape_rate == pytest.approx(path.rate)
    assert est.escape_time == pytest.approx(1 / path.rate)
    assert est.all_converged and est.finite


def test_double_well_rate_matches_simulated_sgd(well_estimate):
    a = centred_noise(N, COV)
    t_x = LR * float(COV[0, 0]) / (2 * BATCH)
    assert 4.5 < (9 / 4) / t_x < 6.5  # the regime where the formula holds to ~10%
    measured, escapes = simulate_sgd_escape_rate(
        a, lr=LR, batch=BATCH, walkers=4000, steps=3000, seed=1
    )
    assert escapes > 300  # enough escapes for a ~6% statistical error
    assert measured == pytest.approx(well_estimate.escape_rate, rel=0.25)
    # The seed's ω₀ω_b/(2πη) form is off by η² and must be rejected by the same simulation.
    seed_form = well_estimate.escape_rate / LR**2
    assert not measured == pytest.approx(seed_form, rel=0.25)


def test_double_well_alternative_estimators_agree(well_estimate):
    a = centred_noise(N, COV)
    est = kc.estimate(
        DoubleWell(),
        double_well_loss,
        a.split(128),
        lr=LR,
        batch_size=BATCH,
        top_k=2,
        noise="micro_batch",
        micro_batch_size=16,
        backend="pyhessian",
    )
    # Micro-batches of one random partition: unbiased, with sampling error of a few percent.
    assert est.temperature == pytest.approx(well_estimate.temperature, rel=0.35)
    assert est.lambda_max == pytest.approx(12.0, rel=1e-2)
    path = next(p for p in est.pathways if p.status is PathwayStatus.BARRIER)
    # Directional noise comes from exact per-sample JVPs in both modes.
    assert path.temperature == pytest.approx(
        next(p for p in well_estimate.pathways if p.name == path.name).temperature, rel=1e-8
    )
    assert path.barrier == pytest.approx(9 / 4, rel=0.02)


def test_finite_population_and_momentum_enter_the_temperature():
    a = centred_noise(N, COV)
    base = kc.estimate(DoubleWell(), double_well_loss, [a], lr=LR, batch_size=BATCH, top_k=1)
    est = kc.estimate(
        DoubleWell(),
        double_well_loss,
        [a],
        lr=LR,
        batch_size=BATCH,
        momentum=0.5,
        dataset_size=N,
        top_k=1,
    )
    factor = (N - BATCH) / (N - 1)
    assert est.lr == pytest.approx(2 * LR)
    assert est.temperature == pytest.approx(base.temperature * 2 * factor, rel=1e-10)


# -- a tiny float64 MLP against the dense Hessian ----------------------------------------------
def tiny_mlp_problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    torch_state = torch.get_rng_state()
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    torch.set_rng_state(torch_state)
    x = torch.randn(48, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (48,), generator=g)

    def loss_fn(m, batch):
        inputs, targets = batch
        return nn.functional.cross_entropy(m(inputs), targets, reduction="none")

    return model, loss_fn, [(x[:24], y[:24]), (x[24:], y[24:])]


def dense_hessian_eigenvalues(model, loss_fn, batches) -> torch.Tensor:
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    n = sum(b[0].shape[0] for b in batches)

    def loss_of(flat):
        params = {
            name: chunk.view(shape)
            for name, shape, chunk in zip(
                names, shapes, flat.split([s.numel() for s in shapes]), strict=True
            )
        }
        total = 0.0
        for batch in batches:
            out = torch.func.functional_call(model, params, (batch[0],))
            total = total + nn.functional.cross_entropy(out, batch[1], reduction="sum")
        return total / n

    return torch.linalg.eigvalsh(torch.func.hessian(loss_of)(flat0))


def test_tiny_mlp_extreme_eigenvalues_match_dense_hessian():
    model, loss_fn, batches = tiny_mlp_problem()
    exact = dense_hessian_eigenvalues(model, loss_fn, batches)
    assert exact[0] < -1e-3  # a case where the saddle curvature is real
    est = kc.estimate(model, loss_fn, batches, lr=0.1, batch_size=8, tol=1e-6)
    assert est.lambda_max == pytest.approx(float(exact[-1]), rel=1e-2)
    assert est.lambda_min == pytest.approx(float(exact[0]), rel=1e-2)
    assert est.eigenvalues == pytest.approx(exact[-3:].flip(0).tolist(), rel=1e-2)
    assert est.hessian_trace == pytest.approx(float(exact.sum()), rel=0.15, abs=0.05)
    assert any(p.name.startswith("min") for p in est.pathways)


def test_warm_start_needs_fewer_products():
    model, loss_fn, batches = tiny_mlp_problem()
    cold = kc.estimate(model, loss_fn, batches, lr=0.1, batch_size=8, compute_trace=False)
    warm = kc.estimate(
        model, loss_fn, batches, lr=0.1, batch_size=8, compute_trace=False, warm_start=cold
    )
    assert warm.num_hvp < cold.num_hvp
    assert warm.lambda_max == pytest.approx(cold.lambda_max, rel=1e-3)


# -- no side effects ---------------------------------------------------------------------------
def test_estimate_leaves_model_and_rng_exactly_as_found():
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 3)
    )
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    model.train()
    nn.functional.cross_entropy(model(x), y).backward()  # BN stats move, grads exist
    model[4].bias.grad = None  # a mix of set and unset grads
    model[1].eval()  # mixed training flags must survive too

    before_params = {k: v.clone() for k, v in model.state_dict(keep_vars=False).items()}
    before_grads = {
        n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()
    }
    before_flags = {n: m.training for n, m in model.named_modules()}
    rng = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())  # noqa: NPY002

    def loss_fn(m, batch):
        return nn.functional.cross_entropy(m(batch[0]), batch[1], reduction="none")

    for backend in ("native", "pyhessian"):
        kc.estimate(
            model,
            loss_fn,
            [(x, y)],
            lr=0.1,
            batch_size=8,
            top_k=2,
            backend=backend,
            max_products=60,
        )

    for key, value in model.state_dict().items():
        assert torch.equal(value, before_params[key]), key
    for name, p in model.named_parameters():
        if before_grads[name] is None:
            assert p.grad is None, name
        else:
            assert p.grad is not None and torch.equal(p.grad, before_grads[name]), name
            assert p.grad.grad_fn is None
    assert {n: m.training for n, m in model.named_modules()} == before_flags
    assert torch.equal(torch.get_rng_state(), rng[0])
    assert random.getstate() == rng[1]
    assert np.array_equal(np.random.get_state()[1], rng[2])  # noqa: NPY002


def test_estimate_is_deterministic_given_seed():
    model, loss_fn, batches = tiny_mlp_problem()
    one = kc.estimate(model, loss_fn, batches, lr=0.1, batch_size=8, seed=5)
    two = kc.estimate(model, loss_fn, batches, lr=0.1, batch_size=8, seed=5)
    assert one.lambda_max == two.lambda_max
    assert one.hessian_trace == two.hessian_trace
    assert one.escape_rate == two.escape_rate


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": 0.0}, r"lr must be a finite number > 0, got 0\.0"),
        ({"lr": -1.0}, r"lr must be a finite number > 0, got -1\.0"),
        ({"batch_size": 0}, r"batch_size must be an integer ≥ 1, got 0"),
        ({"batch_size": -4}, r"batch_size must be an integer ≥ 1, got -4"),
        ({"momentum": 1.0}, r"momentum must be in \[0\.0, 1\.0\), got 1\.0"),
        ({"noise": "exact"}, r"noise must be one of .*, got 'exact'"),
        ({"backend": "nope"}, r"backend must be .*, got 'nope'"),
    ],
)
def test_bad_arguments_name_argument_rule_and_value(kwargs, match):
    a = centred_noise(16, COV)
    args = {"lr": LR, "batch_size": BATCH, "top_k": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        kc.estimate(DoubleWell(), double_well_loss, [a], **args)


def test_empty_batches_are_refused():
    with pytest.raises(ValueError, match=r"batches must hold at least one batch.*got an empty"):
        kc.estimate(DoubleWell(), double_well_loss, [], lr=LR, batch_size=BATCH)


def test_loss_of_wrong_shape_is_refused():
    a = centred_noise(16, COV)
    with pytest.raises(
        ValueError, match=r"loss_fn must return per-sample losses of shape \[16\].*got \(\)"
    ):
        kc.estimate(DoubleWell(), lambda m, b: m(b).mean(), [a], lr=LR, batch_size=BATCH)


def test_non_finite_loss_is_a_clear_error():
    a = centred_noise(16, COV)
    a[3, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"finite losses .* got 1 non-finite value"):
        kc.estimate(DoubleWell(), double_well_loss, [a], lr=LR, batch_size=BATCH)


def test_rate_is_kramers_formula_of_its_parts(well_estimate):
    path = next(p for p in well_estimate.pathways if p.rate is not None)
    expected = kramers.escape_rate(
        lr=LR,
        omega_0=math.sqrt(path.curvature),
        omega_b=math.sqrt(-path.barrier_curvature),
        barrier=path.barrier,
        temperature=path.temperature,
    )
    assert path.rate == pytest.approx(expected, rel=1e-12)


# -- one validator for every estimate keyword (the callback's estimate_options) ----------------
@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"kappa": -1}, r"kappa must be a finite number > 0, got -1$"),
        ({"tol": math.nan}, r"tol must be a finite number > 0, got nan$"),
        ({"trace_tol": 0.0}, r"trace_tol must be a finite number > 0, got 0\.0$"),
        ({"backend": "foo"}, r"backend must be one of \['native', 'pyhessian'\], got 'foo'$"),
        ({"micro_batch_size": 0}, r"micro_batch_size must be an integer ≥ 1, got 0$"),
        ({"noise": "bogus"}, r"noise must be one of .*, got 'bogus'$"),
        ({"max_products": 1}, r"max_products must be an integer ≥ 2, got 1$"),
        ({"max_scan_evals": 2}, r"max_scan_evals must be an integer ≥ 3, got 2$"),
        ({"centre_probe": "yes"}, r"centre_probe must be True or False, got 'yes'$"),
        ({"compute_trace": 1}, r"compute_trace must be True or False, got 1$"),
        (
            {"dtype": torch.int64},
            r"dtype must be a floating torch\.dtype or None, got torch\.int64",
        ),
        ({"warm_start": 3}, r"warm_start must be a KramersEstimate .*or None, got 3$"),
        ({"batch_size": 8, "dataset_size": 4}, r"dataset_size must be an integer ≥ 8, got 4"),
        ({"kapa": 1.0}, r"estimate options must have keys among .*, got \['kapa'\]$"),
    ],
)
def test_validator_names_argument_rule_and_value(options, match):
    with pytest.raises(ValueError, match=match):
        kc.validate_estimate_options(options)


def test_estimate_applies_the_same_validator():
    a = centred_noise(16, COV)
    for options, match in [({"kappa": -1}, r"kappa must be"), ({"tol": math.nan}, r"tol must")]:
        with pytest.raises(ValueError, match=match):
            kc.estimate(DoubleWell(), double_well_loss, [a], lr=LR, batch_size=BATCH, **options)
    good = {"noise": "micro_batch", "kappa": 5, "tol": 1e-4, "centre_probe": False}
    assert kc.validate_estimate_options(good) == good


def test_top_k_above_the_parameter_count_names_top_k():
    model = nn.Linear(10, 6).double()  # d = 66
    x = torch.randn(8, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def loss_fn(m, batch):
        return m(batch).square().sum(1)

    with pytest.raises(ValueError, match=r"^top_k must be an integer ≤ d = 66 .*, got 100$"):
        kc.estimate(model, loss_fn, [x], lr=0.1, batch_size=4, top_k=100, max_products=30)
    assert kc.check_top_k(66, 66) == 66
    with pytest.raises(ValueError, match=r"top_k must be an integer ≤ d = 2 .*, got 3$"):
        kc.check_top_k(3, 2)


# -- bad probe data: a clear error instead of a raw torch error --------------------------------
def test_an_empty_batch_is_refused_by_name():
    a = centred_noise(16, COV)
    with pytest.raises(ValueError, match=r"batches must each hold at least one sample.*\[1\]"):
        kc.estimate(DoubleWell(), double_well_loss, [a, a[:0]], lr=LR, batch_size=BATCH, top_k=2)
    with pytest.raises(ValueError, match=r"batches must each hold at least one sample.*\[0\]"):
        kc.estimate(DoubleWell(), double_well_loss, [a[:0]], lr=LR, batch_size=BATCH, top_k=2)


def test_batches_of_another_dtype_than_the_model_name_both_dtypes():
    a = centred_noise(16, COV).float()  # the model is float64
    with pytest.raises(TypeError, match=r"estimation dtype torch\.float64.*got torch\.float32"):
        kc.estimate(DoubleWell(), double_well_loss, [a], lr=LR, batch_size=BATCH, top_k=2)


@pytest.mark.parametrize(
    ("loss_fn", "error", "match"),
    [
        (lambda m, b: (m(b) > 0).long(), TypeError, r"floating-point.*got dtype torch\.int64"),
        (lambda m, b: m(b).detach(), ValueError, r"graph to the trainable.*requires_grad=False"),
    ],
)
def test_a_loss_without_a_graph_is_refused(loss_fn, error, match):
    a = centred_noise(16, COV)
    with pytest.raises(error, match=match):
        kc.estimate(DoubleWell(), loss_fn, [a], lr=LR, batch_size=BATCH, top_k=2)


# -- the probe's own mean gradient must not tilt the barrier it measures -----------------------
PROBE, DRAWS = 256, 30


def probe_rate_ratios(simulated: float, *, centre_probe: bool) -> list[float]:
    """Predicted / simulated rate at the minimum, over ``DRAWS`` random ``PROBE``-sample probes."""
    a = centred_noise(N, COV)
    ratios = []
    for draw in range(DRAWS):
        index = torch.randperm(N, generator=torch.Generator().manual_seed(100 + draw))[:PROBE]
        est = kc.estimate(
            DoubleWell(),
            double_well_loss,
            [a[index]],
            lr=LR,
            batch_size=BATCH,
            top_k=2,
            compute_trace=False,
            centre_probe=centre_probe,
        )
        ratios.append(est.escape_rate / simulated)
    return ratios


def test_centred_probe_gives_the_double_well_rate_within_x2_in_80_percent_of_probes():
    simulated, escapes = simulate_sgd_escape_rate(
        centred_noise(N, COV), lr=LR, batch=BATCH, walkers=4000, steps=3000, seed=1
    )
    assert escapes > 300

    def within_x2(ratios):
        return sum(0.5 <= r <= 2.0 for r in ratios) / len(ratios)

    centred = within_x2(probe_rate_ratios(simulated, centre_probe=True))
    raw = within_x2(probe_rate_ratios(simulated, centre_probe=False))
    assert centred >= 0.8
    # The raw scan inherits the probe's tilt ā·s* on ΔL: most probes miss by more than ×2.
    assert raw < 0.5


def test_centring_leaves_a_noise_free_probe_unchanged():
    # A probe that is the whole (exactly centred) data set has the true gradient, 0 at the
    # minimum: centring must change nothing there.
    a = centred_noise(N, COV)
    common = {"lr": LR, "batch_size": BATCH, "top_k": 2, "compute_trace": False}
    raw = kc.estimate(DoubleWell(), double_well_loss, [a], centre_probe=False, **common)
    centred = kc.estimate(DoubleWell(), double_well_loss, [a], **common)
    assert centred.escape_rate == pytest.approx(raw.escape_rate, rel=1e-6)
    assert centred.barrier == pytest.approx(9 / 4, rel=0.02)

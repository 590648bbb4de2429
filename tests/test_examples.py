"""Tests for kramers_callback.examples: data modules, nets, the classifier and the double well."""

from __future__ import annotations

import itertools
import math
import random
import socket
import warnings

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import RandomSampler

from kramers_callback.examples import (
    MNIST1DCNN,
    ClassifierModule,
    DigitsCNN,
    DigitsDataModule,
    DoubleWellDataModule,
    DoubleWellModule,
    MNIST1DDataModule,
)
from kramers_callback.examples._sampler import EpochSeededSampler
from kramers_callback.examples.double_well import (
    BARRIER_HEIGHT,
    MINIMUM_X,
    SADDLE_CURVATURE_X,
    WELL_CURVATURE_X,
    batch_covariance,
    centred_samples,
    double_well_loss,
    next_well,
    predicted_escape_rate,
)
from kramers_callback.examples.mnist1d_data import _reference_arrays


def _quiet_trainer(**kwargs) -> pl.Trainer:
    defaults = dict(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


def _first_epoch_labels(dm) -> torch.Tensor:
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(0)
    return torch.cat([batch[-1] for batch in loader])


# -- sampler -----------------------------------------------------------------------------------
def test_sampler_order_depends_only_on_seed_and_epoch():
    data = list(range(50))
    a, b = EpochSeededSampler(data, seed=3), EpochSeededSampler(data, seed=3)
    assert isinstance(a, RandomSampler)  # Lightning treats it as shuffled
    first = list(a)
    assert sorted(first) == data
    assert list(a) == first  # iterating again without set_epoch repeats the epoch
    b.set_epoch(1)
    second = list(b)
    assert sorted(second) == data and second != first
    a.set_epoch(1)
    assert list(a) == second
    assert list(EpochSeededSampler(data, seed=4)) != first


def test_sampler_leaves_global_rng_alone():
    state = torch.get_rng_state()
    list(EpochSeededSampler(range(100), seed=0))
    assert torch.equal(state, torch.get_rng_state())


def test_sampler_rejects_negative_seed():
    with pytest.raises(ValueError, match=r"seed must be an integer ≥ 0, got -1"):
        EpochSeededSampler(range(3), seed=-1)


# -- digits ------------------------------------------------------------------------------------
def test_digits_shapes_split_and_standardisation():
    dm = DigitsDataModule(batch_size=32, val_fraction=0.25, seed=0)
    dm.setup("fit")
    x, y = dm.train_set.tensors
    _, yv = dm.val_set.tensors
    assert len(y) + len(yv) == 1797 and len(yv) == round(0.25 * 1797)
    assert x.shape[1:] == (1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std()) - 1) < 1e-5
    assert set(y.tolist()) == set(range(10))
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (32, 1, 8, 8) and yb.shape == (32,)


def test_digits_deterministic_and_seeded():
    a, b, c = (DigitsDataModule(seed=s) for s in (0, 0, 1))
    assert torch.equal(_first_epoch_labels(a), _first_epoch_labels(b))
    for dm in (a, c):
        dm.setup()
    assert not torch.equal(a.val_set.tensors[1], c.val_set.tensors[1])


def test_digits_batch_size_is_read_at_each_call():
    dm = DigitsDataModule(batch_size=16)
    assert dm.train_dataloader().batch_size == 16
    dm.batch_size = 64
    assert next(iter(dm.train_dataloader()))[0].shape[0] == 64
    assert dm.val_dataloader().batch_size == dm.eval_batch_size  # validation does not follow


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, r"batch_size must be an integer ≥ 1, got 0"),
        ({"val_fraction": 1.0}, r"val_fraction must be in \(0.0, 1.0\), got 1.0"),
        ({"seed": 1.5}, r"seed must be an integer ≥ 0, got 1.5"),
    ],
)
def test_digits_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DigitsDataModule(**kwargs)


# -- MNIST-1D ----------------------------------------------------------------------------------
def test_mnist1d_is_generated_offline(monkeypatch):
    import mnist1d.data
    import requests

    def refuse(*args, **kwargs):
        raise AssertionError("MNIST-1D must be generated, never downloaded")

    monkeypatch.setattr(mnist1d.data, "get_dataset", refuse)
    monkeypatch.setattr(requests, "get", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    _reference_arrays.cache_clear()
    py_state, np_state = random.getstate(), np.random.get_state()  # noqa: NPY002
    dm = MNIST1DDataModule(batch_size=50)
    dm.setup("fit")
    # make_dataset reseeds the global generators; the data module must put them back.
    assert random.getstate() == py_state
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), np_state, strict=True))  # noqa: NPY002
    x, y = dm.train_set.tensors
    xt, yt = dm.val_set.tensors
    assert x.shape == (4000, 40) and xt.shape == (1000, 40)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert set(y.tolist()) == set(range(10)) == set(yt.tolist())
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (50, 40) and yb.shape == (50,)
    assert len(dm.val_dataloader().dataset) == 1000


def test_mnist1d_cached_and_deterministic():
    a, b = MNIST1DDataModule(seed=0), MNIST1DDataModule(seed=0)
    a.setup()
    b.setup()
    assert torch.equal(a.train_set.tensors[0], b.train_set.tensors[0])
    assert torch.equal(_first_epoch_labels(a), _first_epoch_labels(b))
    c = MNIST1DDataModule(seed=1)
    assert not torch.equal(_first_epoch_labels(a), _first_epoch_labels(c))


# -- nets and the classifier -------------------------------------------------------------------
def test_net_shapes_and_arguments():
    assert DigitsCNN()(torch.randn(5, 1, 8, 8)).shape == (5, 10)
    assert DigitsCNN(num_classes=3)(torch.randn(5, 64)).shape == (5, 3)
    assert MNIST1DCNN()(torch.randn(5, 40)).shape == (5, 10)
    assert MNIST1DCNN(length=60)(torch.randn(2, 1, 60)).shape == (2, 10)
    with pytest.raises(ValueError, match=r"channels must be an integer ≥ 1, got 0"):
        DigitsCNN(channels=0)
    with pytest.raises(ValueError, match=r"num_classes must be an integer ≥ 2, got 1"):
        MNIST1DCNN(num_classes=1)


def test_per_sample_loss_matches_one_sample_at_a_time():
    torch.manual_seed(0)
    module = ClassifierModule(DigitsCNN()).double()
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 9])
    per_sample = module.per_sample_loss((x, y))
    reference = torch.stack([F.cross_entropy(module(x[i : i + 1]), y[i : i + 1]) for i in range(6)])
    assert per_sample.shape == (6,)
    torch.testing.assert_close(per_sample, reference, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("optimizer", "momentum", "expected"),
    [("sgd", 0.9, torch.optim.SGD), ("adamw", 0.0, torch.optim.AdamW)],
)
def test_classifier_optimizers(optimizer, momentum, expected):
    module = ClassifierModule(DigitsCNN(), lr=0.05, momentum=momentum, optimizer=optimizer)
    opt = module.configure_optimizers()
    assert isinstance(opt, expected) and opt.param_groups[0]["lr"] == 0.05
    if optimizer == "sgd":
        assert opt.param_groups[0]["momentum"] == 0.9


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": 0.0}, r"lr must be a finite number > 0, got 0.0"),
        ({"momentum": 1.0}, r"momentum must be in \[0.0, 1.0\), got 1.0"),
        ({"weight_decay": -1e-4}, r"weight_decay must be a finite number ≥ 0, got -0.0001"),
        ({"optimizer": "adam"}, r"optimizer must be one of \['adamw', 'sgd'\], got 'adam'"),
        ({"optimizer": "adamw", "momentum": 0.9}, r"momentum must be 0 with optimizer='adamw'"),
        ({"net": "cnn"}, r"net must be a torch.nn.Module, got 'cnn'"),
    ],
)
def test_classifier_rejects_bad_arguments(kwargs, match):
    kwargs = {"net": DigitsCNN(), **kwargs}
    with pytest.raises(ValueError, match=match):
        ClassifierModule(**kwargs)


@pytest.mark.parametrize(
    ("net", "dm", "lr", "momentum", "epochs", "above"),
    [
        (DigitsCNN, lambda: DigitsDataModule(batch_size=32), 0.1, 0.0, 3, 0.5),
        (MNIST1DCNN, lambda: MNIST1DDataModule(batch_size=100), 0.1, 0.9, 2, 0.3),
    ],
    ids=["digits", "mnist1d"],
)
def test_nets_train_above_chance(net, dm, lr, momentum, epochs, above):
    torch.manual_seed(0)
    module = ClassifierModule(net(), lr=lr, momentum=momentum)
    trainer = _quiet_trainer(max_epochs=epochs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, dm())
    # Chance is 0.1 on both ten-class problems.
    assert float(trainer.callback_metrics["val_acc"]) > above
    assert {"train_loss", "val_loss", "val_acc"} <= set(trainer.callback_metrics)


# -- double well: the potential ----------------------------------------------------------------
def test_double_well_constants_from_autograd():
    def loss(theta):
        return double_well_loss(theta)

    minimum = torch.tensor([MINIMUM_X, 0.0], dtype=torch.float64)
    saddle = torch.zeros(2, dtype=torch.float64)
    zero = torch.zeros(2, dtype=torch.float64)
    for point in (minimum, -minimum, saddle):
        torch.testing.assert_close(torch.func.grad(loss)(point), zero)
    well = torch.diag(torch.tensor([WELL_CURVATURE_X, 2.0], dtype=torch.float64))
    top = torch.diag(torch.tensor([SADDLE_CURVATURE_X, 2.0], dtype=torch.float64))
    torch.testing.assert_close(torch.func.hessian(loss)(minimum), well)
    torch.testing.assert_close(torch.func.hessian(loss)(saddle), top)
    assert math.isclose(float(loss(saddle) - loss(minimum)), BARRIER_HEIGHT, rel_tol=1e-14)


# -- double well: exact noise ------------------------------------------------------------------
def test_centred_samples_have_exactly_the_chosen_moments():
    covariance = torch.tensor([[4.0, 1.5], [1.5, 2.0]], dtype=torch.float64)
    a = centred_samples(37, covariance, seed=5)
    assert a.shape == (37, 2) and a.dtype == torch.float64
    torch.testing.assert_close(a.sum(0), torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(a.T @ a / 37, covariance, rtol=1e-12, atol=1e-12)
    assert torch.equal(a, centred_samples(37, covariance, seed=5))
    assert not torch.equal(a, centred_samples(37, covariance, seed=6))


@pytest.mark.parametrize(
    ("covariance", "num_samples", "match"),
    [
        ([[1.0, 2.0], [0.0, 1.0]], 10, r"covariance must be symmetric positive definite"),
        ([[1.0, 2.0], [2.0, 1.0]], 10, r"covariance must be symmetric positive definite"),
        ([1.0, 2.0], 10, r"covariance must be a square matrix, got shape \(2,\)"),
        ([[1.0, 0.0], [0.0, 1.0]], 2, r"num_samples must be an integer ≥ 3, got 2"),
    ],
)
def test_centred_samples_rejects_bad_input(covariance, num_samples, match):
    with pytest.raises(ValueError, match=match):
        centred_samples(num_samples, covariance)


@pytest.mark.parametrize("theta", [(MINIMUM_X, 0.0), (0.3, -0.7), (-1.1, 0.4)])
def test_per_sample_gradient_covariance_is_the_chosen_one(theta):
    """Per-sample gradients by an autograd loop: their covariance is Σ₁ at every θ."""
    covariance = [[3.0, -0.8], [-0.8, 1.0]]
    a = centred_samples(40, covariance, seed=1)
    module = DoubleWellModule(init=theta).double()
    x, y = module.theta.tolist()  # θ as stored (float32-rounded), the point the loss sees
    grads = []
    for i in range(len(a)):
        module.zero_grad()
        module.per_sample_loss(a[i : i + 1]).sum().backward()
        grads.append(module.theta.grad.clone())
    g = torch.stack(grads)
    mean = g.mean(0)
    # The mean gradient is the untilted ∇L, and Cov_i(g_i) (1/N normalisation) is Σ₁.
    torch.testing.assert_close(mean, torch.tensor([4 * x**3 - 6 * x, 2 * y], dtype=torch.float64))
    exact = torch.tensor(covariance, dtype=torch.float64)
    torch.testing.assert_close((g - mean).T @ (g - mean) / len(a), exact, rtol=1e-12, atol=1e-12)


def test_batch_covariance_by_enumerating_every_batch():
    """Σ_B = Σ₁ (N−B)/(B(N−1)): checked against all C(N, B) batches without replacement."""
    covariance = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    num, size = 7, 3
    a = centred_samples(num, covariance, seed=2)
    means = torch.stack([a[list(c)].mean(0) for c in itertools.combinations(range(num), size)])
    exact = means.T @ means / len(means)  # the batch means average to 0 exactly
    formula = batch_covariance(covariance, size, num)
    torch.testing.assert_close(formula, exact, rtol=1e-12, atol=1e-12)


def test_double_well_datamodule():
    dm = DoubleWellDataModule(num_samples=500, batch_size=8, covariance=[[9.0, 1.0], [1.0, 4.0]])
    a = dm.samples.double()
    assert a.shape == (500, 2)
    torch.testing.assert_close(
        a.T @ a / 500, torch.tensor([[9.0, 1.0], [1.0, 4.0]]).double(), rtol=1e-5, atol=1e-5
    )
    assert next(iter(dm.train_dataloader()))[0].shape == (8, 2)
    dm.batch_size = 32
    assert next(iter(dm.train_dataloader()))[0].shape == (32, 2)
    with pytest.raises(ValueError, match=r"covariance must be a 2×2 matrix"):
        DoubleWellDataModule(covariance=[[1.0]])
    with pytest.raises(ValueError, match=r"batch_size must be an integer ≥ 1, got 0"):
        DoubleWellDataModule(batch_size=0)


# -- double well: wells and escapes ------------------------------------------------------------
def test_next_well_counts_committed_transitions_only():
    core = 0.5
    xs = [1.2, 0.1, -0.3, 0.2, -0.6, -1.2, -0.4, 0.4, 0.5, 1.2, -0.49]
    expected = [1, 1, 1, 1, -1, -1, -1, -1, 1, 1, 1]
    well = torch.tensor(1.0)
    seen = []
    for x in xs:
        well = next_well(well, torch.tensor(x), core)
        seen.append(int(well))
    assert seen == expected


def test_double_well_module_arguments():
    module = DoubleWellModule()
    assert module.theta.tolist() == pytest.approx([MINIMUM_X, 0.0])
    assert int(module.well) == 1 and int(module.escapes) == 0
    assert int(DoubleWellModule(init=(-1.0, 0.0)).well) == -1
    with pytest.raises(ValueError, match=r"lr must be a finite number > 0, got -0.1"):
        DoubleWellModule(lr=-0.1)
    with pytest.raises(ValueError, match=r"core must be in \(0.0, 1.22"):
        DoubleWellModule(core=2.0)
    with pytest.raises(ValueError, match=r"init must be two finite numbers"):
        DoubleWellModule(init=(1.0, float("nan")))


def test_double_well_training_matches_a_hand_written_sgd_loop():
    """Lightning run vs. a loop written from the formulas: same θ, same escape count."""
    num, size, lr, core = 400, 4, 0.05, 0.5 * MINIMUM_X
    covariance = [[360.0, 0.0], [0.0, 40.0]]
    dm = DoubleWellDataModule(num_samples=num, batch_size=size, covariance=covariance)
    module = DoubleWellModule(lr=lr, core=core)
    trainer = _quiet_trainer(max_epochs=2, precision="64-true", log_every_n_steps=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, dm)

    a = dm.samples.double()
    x, y = MINIMUM_X, 0.0
    well, escapes = 1, 0
    for epoch in range(2):
        sampler = EpochSeededSampler(a, seed=dm.seed)
        sampler.set_epoch(epoch)
        order = list(sampler)
        for start in range(0, num, size):
            tilt = a[order[start : start + size]].mean(0)
            x, y = x - lr * (4 * x**3 - 6 * x + float(tilt[0])), y - lr * (2 * y + float(tilt[1]))
            if well * x <= -core:
                well, escapes = -well, escapes + 1
    assert module.theta.tolist() == pytest.approx([x, y], abs=1e-9)
    assert int(module.escapes) == escapes >= 2
    assert int(module.well) == well
    assert float(trainer.callback_metrics["escapes"]) == escapes


def test_default_double_well_escapes_at_the_kramers_rate():
    """The default data module's noise gives escapes at the predicted rate (≈0.9–1×;
    docs/theory.md section 1.3).

    Vectorised walkers draw batches of the data module's samples (with replacement: for
    N = 16 000 and B = 16 the difference in Σ_B is 0.1%) and take the SGD step of the recipe.
    """
    dm = DoubleWellDataModule()
    lr, walkers, steps = 0.02, 400, 2000
    sigma_b = batch_covariance(torch.tensor(dm.covariance).double(), dm.batch_size, dm.num_samples)
    predicted = predicted_escape_rate(lr, float(sigma_b[0, 0]))
    a = dm.samples.double()
    generator = torch.Generator().manual_seed(0)
    theta = torch.tensor([MINIMUM_X, 0.0], dtype=torch.float64).repeat(walkers, 1)
    well = torch.ones(walkers, dtype=torch.float64)
    escapes = 0
    for _ in range(steps):
        index = torch.randint(len(a), (walkers * dm.batch_size,), generator=generator)
        tilt = a.index_select(0, index).view(walkers, dm.batch_size, 2).mean(1)
        x, y = theta[:, 0], theta[:, 1]
        theta = theta - lr * (torch.stack([4 * x**3 - 6 * x, 2 * y], 1) + tilt)
        new = next_well(well, theta[:, 0], 0.5 * MINIMUM_X)
        escapes += int((new != well).sum())
        well = new
    measured = escapes / (walkers * steps)
    # About 370 escapes (standard error ≈ 5%) at the ≈0.93× of the formula that the
    # simulations of docs/theory.md section 1.3 found: the band [0.75, 1.1]× is over 3 standard
    # errors either side.
    assert 0.75 * predicted < measured < 1.1 * predicted
    # And the docstring's sizing: about one escape every other 1 000-step epoch.
    assert 0.35 < measured * dm.num_samples / dm.batch_size < 0.65

"""Tests for kramers-train (KramersCLI), the recipes and the demo."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from pytorch_lightning.loggers import CSVLogger

from kramers_callback import examples
from kramers_callback.callback import METRICS, KramersCallback
from kramers_callback.cli import KramersCLI, train_main
from kramers_callback.demo import find_recipe
from kramers_callback.demo import main as demo_main

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
RECIPE_CLASSES = {
    "digits": (examples.ClassifierModule, examples.DigitsDataModule, examples.DigitsCNN),
    "mnist1d": (examples.ClassifierModule, examples.MNIST1DDataModule, examples.MNIST1DCNN),
    "double_well": (examples.DoubleWellModule, examples.DoubleWellDataModule, None),
}
# Where each key of the YAML's `kramers:` section lands on the callback.
CALLBACK_FIELDS = {
    "top_k": lambda cb: cb.full_size.top_k,
    "max_products": lambda cb: cb.full_size.max_products,
    "compute_trace": lambda cb: cb.full_size.compute_trace,
    "max_trace_samples": lambda cb: cb.full_size.max_trace_samples,
    "max_scan_evals": lambda cb: cb.full_size.max_scan_evals,
    "policy": lambda cb: cb.policy.value,
}
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    # LightningCLI warns when both args= and a command line (pytest's) are present.
    monkeypatch.setattr(sys, "argv", ["kramers-train"])


def _kramers_callbacks(trainer) -> list[KramersCallback]:
    return [c for c in trainer.callbacks if isinstance(c, KramersCallback)]


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("name", sorted(RECIPE_CLASSES))
def test_recipe_builds_with_the_callback_configured_from_its_yaml(name, tmp_path):
    recipe = RECIPES / f"{name}.yaml"
    config = yaml.safe_load(recipe.read_text())
    cli = KramersCLI(
        args=["--config", str(recipe), f"--trainer.logger.init_args.save_dir={tmp_path}"],
        run=False,
    )
    module_cls, data_cls, net_cls = RECIPE_CLASSES[name]
    assert type(cli.model) is module_cls and type(cli.datamodule) is data_cls
    if net_cls is not None:
        assert type(cli.model.net) is net_cls
    (callback,) = _kramers_callbacks(cli.trainer)
    for key, value in config["kramers"].items():
        got = CALLBACK_FIELDS.get(key, lambda cb, k=key: getattr(cb, k))(callback)
        assert got == value, key
    assert cli.trainer.max_epochs == config["trainer"]["max_epochs"]
    assert isinstance(cli.trainer.logger, CSVLogger)
    assert Path(cli.trainer.logger.save_dir) == tmp_path
    assert cli.trainer.logger.name == name


def test_callback_is_attached_without_a_kramers_section(tmp_path):
    recipe = tmp_path / "bare.yaml"
    recipe.write_text(
        "model:\n  class_path: kramers_callback.examples.DoubleWellModule\n"
        "data:\n  class_path: kramers_callback.examples.DoubleWellDataModule\n"
        "trainer:\n  max_epochs: 1\n  logger: false\n"
    )
    cli = KramersCLI(args=["--config", str(recipe), "--kramers.policy=observe"], run=False)
    (callback,) = _kramers_callbacks(cli.trainer)
    assert callback.policy.value == "observe"
    with pytest.raises(ValueError, match=r"policy must be one of .*, got 'sometimes'"):
        KramersCLI(args=["--config", str(recipe), "--kramers.policy=sometimes"], run=False)


def test_train_main_runs_the_digits_recipe_and_logs_every_metric(tmp_path):
    train_main(
        [
            "fit",
            "--config",
            str(RECIPES / "digits.yaml"),
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--trainer.max_epochs=2",
            "--trainer.limit_train_batches=4",
            "--trainer.limit_val_batches=1",
            "--trainer.log_every_n_steps=2",
            "--kramers.probe_size=32",
            "--kramers.top_k=1",
            "--kramers.overhead_budget=.inf",  # an estimate at every epoch end
            *QUIET,
        ]
    )
    (log_dir,) = (tmp_path / "digits").iterdir()
    rows = _read_csv(log_dir / "metrics.csv")
    columns = set(rows[0])
    assert set(METRICS) <= columns
    assert {"train_loss", "val_loss", "val_acc"} <= columns
    estimates = [r for r in rows if r["kramers/lambda_max"]]
    assert len(estimates) == 2  # one estimate per epoch
    assert all(math.isfinite(float(r["kramers/lambda_max"])) for r in estimates)
    saved = yaml.safe_load((log_dir / "config.yaml").read_text())
    assert saved["kramers"]["probe_size"] == 32  # what kramers-report reads


def test_double_well_recipe_counts_escapes(tmp_path):
    train_main(
        [
            "fit",
            "--config",
            str(RECIPES / "double_well.yaml"),
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--trainer.max_epochs=1",
            "--data.init_args.num_samples=1600",
            "--kramers.probe_size=1600",
            "--kramers.probe_batch_size=1600",
            *QUIET,
        ]
    )
    (log_dir,) = (tmp_path / "double_well").iterdir()
    rows = _read_csv(log_dir / "metrics.csv")
    assert {"escapes", "well", "x", "kramers/escape_rate", "kramers/barrier"} <= set(rows[0])
    (estimate,) = [r for r in rows if r["kramers/escape_rate"]]
    # Both Hessian eigenvalues of x⁴ − 3x² + y² are at most 12·x² − 6 and 2 near a well.
    assert float(estimate["kramers/lambda_min"]) == pytest.approx(2.0, rel=1e-4)


def test_mnist1d_recipe_runs_one_short_epoch(tmp_path):
    train_main(
        [
            "fit",
            "--config",
            str(RECIPES / "mnist1d.yaml"),
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=3",
            "--trainer.limit_val_batches=1",
            "--kramers.probe_size=32",
            "--kramers.top_k=1",
            "--kramers.overhead_budget=.inf",
            *QUIET,
        ]
    )
    (log_dir,) = (tmp_path / "mnist1d").iterdir()
    rows = _read_csv(log_dir / "metrics.csv")
    assert any(r["kramers/lambda_max"] for r in rows) and any(r["val_acc"] for r in rows)


def test_kramers_train_console_script_prints_the_config():
    script = Path(sys.executable).parent / "kramers-train"
    if not script.exists():
        pytest.skip("the package is not installed with its console scripts")
    result = subprocess.run(
        [str(script), "fit", "--config", str(RECIPES / "double_well.yaml"), "--print_config"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    printed = yaml.safe_load(result.stdout)
    assert printed["kramers"]["policy"] == "observe"
    assert printed["model"]["class_path"] == "kramers_callback.examples.DoubleWellModule"


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_demo_end_to_end_in_small(tmp_path, capsys, two_threads):
    # The demo runs on one thread and must give the caller's two back.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = demo_main(
            [
                "--output-dir",
                str(tmp_path),
                "--trainer.max_epochs=2",
                "--trainer.limit_train_batches=3",
                "--trainer.limit_val_batches=1",
                "--kramers.probe_size=32",
                "--kramers.top_k=1",
            ]
        )
    assert code == 0
    assert torch.get_num_threads() == 2
    out = capsys.readouterr().out
    png = tmp_path / "kramers_report.png"
    assert png.is_file() and f"Report: {png}" in out
    for line in ("epochs run        2", "stop reason       max_epochs = 2 reached", "val_acc"):
        assert line in out
    for name in METRICS:
        assert name in out


def test_find_recipe():
    assert find_recipe() == RECIPES / "digits.yaml"
    with pytest.raises(FileNotFoundError, match="recipe must exist"):
        find_recipe(Path("recipes") / "absent.yaml")

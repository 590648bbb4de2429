"""Tests for kramers_callback.report and the kramers-report entry point, on synthetic logs."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pytorch_lightning.loggers import CSVLogger

from kramers_callback.cli import report_main
from kramers_callback.report import (
    PANELS,
    build_figure,
    final_metrics,
    find_metrics_csv,
    infer_stop_reason,
    read_metrics,
    render_report,
)

STEPS_PER_EPOCH = 40
EPOCHS = 8


def _kramers_row(epoch: int) -> dict[str, float]:
    """Values shaped like the callback's: rates fall by orders of magnitude, B grows, η falls."""
    remaining = (EPOCHS - epoch - 1) * STEPS_PER_EPOCH
    rate = 0.0 if epoch == 0 else 1e-2 * math.exp(-3 * epoch)
    return {
        "kramers/temperature": 1e-3 * 0.7**epoch,
        "kramers/temperature_target": math.nan if epoch == 0 else 8e-4 * 0.8**epoch,
        "kramers/critical_temperature": math.nan if epoch == 0 else 6e-4,
        "kramers/lr": 0.1 * (0.5 ** max(0, epoch - 4)),
        "kramers/batch_size": float(32 * 2 ** min(epoch, 3)),
        "kramers/lambda_max": 5.0 + 3 * epoch,
        "kramers/lambda_min": -0.5 / (epoch + 1),
        "kramers/hessian_trace": 50.0,
        "kramers/noise_scale": 100.0,
        "kramers/barrier": 0.01,
        "kramers/escape_rate": rate,
        "kramers/escape_time": math.inf if rate == 0 else 1 / rate,
        "kramers/expected_escapes": rate * remaining,
        "kramers/estimate_seconds": 0.5 + 0.1 * epoch,
    }


def _write_run(
    root: Path, *, name: str = "digits", epochs: int = EPOCHS, config: str | None = None
) -> Path:
    """Log a run through Lightning's CSVLogger, exactly as a training run writes it."""
    logger = CSVLogger(str(root), name=name)
    step = 0
    for epoch in range(epochs):
        for _ in range(STEPS_PER_EPOCH // 10):
            step += 10
            logger.log_metrics({"epoch": epoch, "train_loss": 2.0 / (1 + step / 50)}, step=step - 1)
        logger.log_metrics(
            {"epoch": epoch, "val_acc": 1 - 0.8 * 0.6**epoch, "val_loss": 0.6**epoch}, step=step - 1
        )
        logger.log_metrics({"epoch": epoch, **_kramers_row(epoch)}, step=step - 1)
    logger.save()
    log_dir = Path(logger.log_dir)
    if config is not None:
        (log_dir / "config.yaml").write_text(config)
    return log_dir


CONFIG = "trainer:\n  max_epochs: 30\nkramers:\n  compute_cost: 2.0\n"


def test_render_report_writes_a_valid_png(tmp_path):
    log_dir = _write_run(tmp_path, config=CONFIG)
    png = render_report(tmp_path)
    assert png == log_dir / "kramers_report.png" and png.is_file()
    assert png.stat().st_size > 30_000
    with Image.open(png) as image:
        assert image.format == "PNG"
        assert image.size == (1300, 1400)
        image.verify()
    with Image.open(png) as image:
        pixels = np.asarray(image.convert("RGB"))
    # Not a blank canvas: lines in several colours cover a fair share of the picture.
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200
    assert (pixels.min(axis=2) < 200).mean() > 0.02


def test_figure_draws_the_logged_values_and_marks_the_stop(tmp_path):
    _write_run(tmp_path, config=CONFIG)
    run = read_metrics(find_metrics_csv(tmp_path))
    figure = build_figure(run, stop_reason="test reason", title="t")
    axes = [ax for ax in figure.axes if ax.get_title()]
    assert len(axes) == len(PANELS) == 8
    titles = [ax.get_title() for ax in axes]
    assert titles[:6] == [
        "Temperature vs target",
        "Learning rate η",
        "Batch size B",
        "Hessian extremes λ_max, λ_min",
        "Escape rate k",
        "Expected escapes in the remaining steps",
    ]
    last_step = (EPOCHS * STEPS_PER_EPOCH) - 1
    for ax in axes:
        stops = [line for line in ax.get_lines() if list(line.get_xdata()) == [last_step] * 2]
        assert len(stops) == 1, ax.get_title()
        assert ax.get_xlabel() == "optimizer step" or ax in axes[:6]
    temperature = axes[0]
    assert temperature.get_yscale() == "log"
    measured = next(line for line in temperature.get_lines() if line.get_label() == "measured T")
    expected = [1e-3 * 0.7**e for e in range(EPOCHS)]
    np.testing.assert_allclose(measured.get_ydata(), expected, rtol=1e-6)
    # The target is undefined (NaN) at epoch 0: left out, not drawn as a value.
    target = next(line for line in temperature.get_lines() if line.get_label() == "target T*(t)")
    assert len(target.get_xdata()) == EPOCHS - 1
    rate = axes[4]
    assert {line.get_label() for line in rate.get_lines()} >= {"k", "k = 0"}
    expected_escapes = axes[5]
    threshold = [line for line in expected_escapes.get_lines() if "1/c" in line.get_label()]
    assert len(threshold) == 1 and threshold[0].get_ydata()[0] == pytest.approx(0.5)
    assert "test reason" in figure.get_suptitle()


def test_report_survives_missing_and_all_zero_metrics(tmp_path):
    logger = CSVLogger(str(tmp_path), name="sparse")
    for epoch in range(3):
        logger.log_metrics(
            {"epoch": epoch, "kramers/escape_rate": 0.0, "kramers/temperature": math.nan},
            step=10 * epoch,
        )
    logger.save()
    png = render_report(tmp_path, tmp_path / "out" / "r.png")
    assert png.is_file()
    with Image.open(png) as image:
        assert image.size == (1300, 1400)


def test_find_metrics_csv_takes_the_latest_run(tmp_path):
    first = _write_run(tmp_path, epochs=2) / "metrics.csv"
    second = _write_run(tmp_path, epochs=3) / "metrics.csv"
    assert second.parent.name == "version_1"
    os.utime(first, (1_000, 1_000))
    os.utime(second, (1_000, 1_000))
    assert find_metrics_csv(tmp_path) == second  # same time: the larger version
    os.utime(first, (2_000, 2_000))
    assert find_metrics_csv(tmp_path) == first  # the most recently written
    assert find_metrics_csv(second) == second  # the CSV itself


def test_find_metrics_csv_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="log_dir must be an existing directory"):
        find_metrics_csv(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match=r"log_dir must contain a CSVLogger metrics\.csv"):
        find_metrics_csv(tmp_path)


def test_read_metrics_parses_sparse_rows(tmp_path):
    log_dir = _write_run(tmp_path, config=CONFIG)
    run = read_metrics(log_dir / "metrics.csv")
    assert run.last_epoch == EPOCHS - 1 and run.last_step == EPOCHS * STEPS_PER_EPOCH - 1
    steps, values = run.get("kramers/batch_size")
    np.testing.assert_array_equal(steps, [STEPS_PER_EPOCH * (e + 1) - 1 for e in range(EPOCHS)])
    np.testing.assert_array_equal(values, [32 * 2 ** min(e, 3) for e in range(EPOCHS)])
    assert len(run.get("train_loss")[0]) == EPOCHS * STEPS_PER_EPOCH // 10
    assert math.isinf(run.get("kramers/escape_time")[1][0])
    assert run.config == {"trainer": {"max_epochs": 30}, "kramers": {"compute_cost": 2.0}}
    assert run.epoch_ends[0] == STEPS_PER_EPOCH - 1
    with pytest.raises(ValueError, match=r"metrics\.csv must have a header with a 'step' column"):
        empty = tmp_path / "empty.csv"
        empty.write_text("")
        read_metrics(empty)


def test_infer_stop_reason(tmp_path):
    early = read_metrics(_write_run(tmp_path / "a", config=CONFIG) / "metrics.csv")
    # 8 of 30 epochs, and the last estimate expects 0 escapes < 1/c = 0.5.
    assert infer_stop_reason(early).startswith("Kramers rule: 0 expected escapes < 1/c = 0.5")
    full = read_metrics(
        _write_run(tmp_path / "b", config="trainer:\n  max_epochs: 8\n") / "metrics.csv"
    )
    assert infer_stop_reason(full) == "max_epochs = 8 reached"
    assert infer_stop_reason(read_metrics(_write_run(tmp_path / "c") / "metrics.csv")) is None


def test_final_metrics(tmp_path):
    _write_run(tmp_path)
    final = final_metrics(tmp_path)
    assert final["kramers/batch_size"] == 256.0
    assert final["val_acc"] == pytest.approx(1 - 0.8 * 0.6 ** (EPOCHS - 1))
    assert final["epoch"] == EPOCHS - 1 and final["step"] == EPOCHS * STEPS_PER_EPOCH - 1


def test_kramers_report_command(tmp_path, capsys):
    _write_run(tmp_path, config=CONFIG)
    out = tmp_path / "elsewhere.png"
    assert report_main([str(tmp_path), "--output", str(out), "--title", "x"]) == 0
    printed = capsys.readouterr().out.strip()
    assert Path(printed) == out and out.is_file()
    assert report_main([str(tmp_path / "absent")]) == 1
    assert "kramers-report: error: log_dir must be an existing directory" in capsys.readouterr().err

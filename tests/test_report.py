"""Tests for kramers_callback.report and the kramers-report entry point, on synthetic logs."""

from __future__ import annotations

import io
import math
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from lightning_helpers import FAST, BlobsData, TinyClassifier, trainer
from matplotlib.collections import LineCollection
from PIL import Image
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kramers_callback.callback import KramersCallback
from kramers_callback.cli import report_main
from kramers_callback.report import (
    PANELS,
    build_figure,
    cooling_steps,
    final_metrics,
    find_log,
    find_metrics_csv,
    infer_stop_reason,
    metrics_from_history,
    phase_spans,
    read_metrics,
    read_tensorboard,
    render_report,
    tabulate,
)
from kramers_callback.report_loggers import log_report_figure

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
    root: Path,
    *,
    name: str = "digits",
    epochs: int = EPOCHS,
    config: str | None = None,
    logger_class: type = CSVLogger,
) -> Path:
    """Log a run through a Lightning logger (CSV by default), exactly as a training run does."""
    logger = logger_class(str(root), name=name)
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


# -- TensorBoard logs and logger images -------------------------------------------------------
def _assert_same_table(actual, expected, names) -> None:
    for name in names:
        (steps, values), (ref_steps, ref_values) = actual.get(name), expected.get(name)
        np.testing.assert_array_equal(steps, ref_steps, err_msg=name)
        # TensorBoard stores float32 scalars.
        np.testing.assert_allclose(values, ref_values, rtol=1e-6, err_msg=name)


def test_tensorboard_log_reads_as_the_csv_of_the_same_run(tmp_path):
    csv_run = read_metrics(_write_run(tmp_path / "csv", config=CONFIG) / "metrics.csv")
    tb_dir = _write_run(tmp_path / "tb", config=CONFIG, logger_class=TensorBoardLogger)
    tb_run = read_tensorboard(tb_dir)
    _assert_same_table(tb_run, csv_run, csv_run.series)
    assert (tb_run.last_step, tb_run.last_epoch) == (csv_run.last_step, csv_run.last_epoch)
    assert tb_run.epoch_ends == csv_run.epoch_ends
    assert tb_run.config == csv_run.config and tb_run.directory == tb_dir
    assert find_log(tmp_path / "tb").parent == tb_dir
    png = tmp_path / "tb.png"
    assert report_main([str(tmp_path / "tb"), "--output", str(png)]) == 0
    with Image.open(png) as image:
        assert image.size == (1300, 1400)


def test_read_tensorboard_needs_scalars_and_find_log_names_both_kinds(tmp_path):
    writer = TensorBoardLogger(str(tmp_path), name="empty").experiment
    writer.add_text("note", "no scalars", 0)
    writer.flush()
    with pytest.raises(ValueError, match="TensorBoard log must hold scalars, got none"):
        read_tensorboard(Path(writer.log_dir))
    with pytest.raises(FileNotFoundError, match=r"a CSVLogger metrics\.csv or a TensorBoard event"):
        find_log(_empty_dir(tmp_path))


def _empty_dir(root: Path) -> Path:
    (root / "none_here").mkdir()
    return root / "none_here"


def _table_with_phases():
    rows = [
        (9.0, 0, {"kramers/phase": 0.0, "kramers/lr": 0.1, "kramers/batch_size": 32.0}),
        (19.0, 1, {"kramers/phase": 0.0, "kramers/lr": 0.1, "kramers/batch_size": 32.0}),
        (29.0, 2, {"kramers/phase": 1.0, "kramers/lr": 0.1, "kramers/batch_size": 64.0}),
        (39.0, 3, {"kramers/phase": 2.0, "kramers/lr": 0.05, "kramers/batch_size": 64.0}),
        (49.0, 4, {"kramers/phase": 1.0, "kramers/lr": 0.05, "kramers/batch_size": 64.0}),
    ]
    return tabulate(rows)


def test_phase_spans_and_cooling_steps():
    run = _table_with_phases()
    # Each estimate's phase covers the epoch it measured; equal neighbours merge.
    assert phase_spans(run) == [(0.0, 19.0, 0), (19.0, 29.0, 1), (29.0, 39.0, 2), (39.0, 49.0, 1)]
    assert cooling_steps(run) == [29.0, 39.0]
    assert phase_spans(tabulate([(5.0, 0, {"kramers/lr": 0.1})])) == []
    assert cooling_steps(tabulate([(5.0, 0, {"kramers/lr": 0.1})])) == []


def test_figure_shades_phases_and_marks_cooling_in_every_panel():
    run = _table_with_phases()
    figure = build_figure(run, title="phases")
    axes = [ax for ax in figure.axes if ax.get_title()]
    for ax in axes:
        spans = [patch for patch in ax.patches if patch.get_zorder() == 0]
        assert len(spans) == 4, ax.get_title()
        [cooling] = [c for c in ax.collections if isinstance(c, LineCollection)]
        assert sorted(segment[0][0] for segment in cooling.get_segments()) == [29.0, 39.0]
    labels = axes[0].get_legend_handles_labels()[1]
    assert {"descending", "thermalized", "trapped", "cooling step"} <= set(labels)
    assert labels.count("thermalized") == 1


class _ImageLogger(Logger):
    """A logger with W&B's ``log_image(key, images, step)``."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[tuple[str, list, int]] = []

    name = "fake"
    version = 0

    def log_metrics(self, metrics, step=None) -> None:  # type: ignore[no-untyped-def]
        pass

    def log_hyperparams(self, params, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        pass

    def log_image(self, key, images, step=None) -> None:  # type: ignore[no-untyped-def]
        self.images.append((key, images, step))


class _PlainLogger(_ImageLogger):
    log_image = None  # type: ignore[assignment]


class MLFlowLogger(_PlainLogger):
    """Named as Lightning's: dispatched to ``MlflowClient.log_image``."""

    run_id = "run-1"

    def __init__(self) -> None:
        super().__init__()
        self.experiment = types.SimpleNamespace(log_image=self._client_log_image)

    def _client_log_image(self, run_id, image, *, key, step) -> None:  # type: ignore[no-untyped-def]
        self.images.append((key, [image, run_id], step))


class NeptuneLogger(_PlainLogger):
    """Named as Lightning's: ``run[tag].append(File.as_image(figure), step=step)``."""

    def __init__(self) -> None:
        super().__init__()
        logger = self

        class Series:
            def __init__(self, key: str) -> None:
                self.key = key

            def append(self, value, *, step) -> None:  # type: ignore[no-untyped-def]
                logger.images.append((self.key, [value], step))

        self.experiment = type("Run", (), {"__getitem__": lambda _, key: Series(key)})()


def _fake_trainer(*loggers, rank_zero=True):
    return types.SimpleNamespace(is_global_zero=rank_zero, loggers=list(loggers), global_step=7)


def test_log_report_figure_reaches_image_loggers_and_skips_the_others(tmp_path, monkeypatch):
    neptune_types = types.ModuleType("neptune.types")
    neptune_types.File = types.SimpleNamespace(as_image=lambda figure: ("File", figure))
    monkeypatch.setitem(sys.modules, "neptune", types.ModuleType("neptune"))
    monkeypatch.setitem(sys.modules, "neptune.types", neptune_types)
    run = _table_with_phases()
    wandb_like, plain = _ImageLogger(), _PlainLogger()
    mlflow, neptune = MLFlowLogger(), NeptuneLogger()
    csv_logger = CSVLogger(str(tmp_path / "csv"))
    trainer_ = _fake_trainer(csv_logger, wandb_like, plain, mlflow, neptune)
    taken = log_report_figure(trainer_, run, tag="kramers/r")
    assert taken == [wandb_like, mlflow, neptune]
    assert plain.images == []
    [(key, [image], step)] = wandb_like.images
    assert (key, step) == ("kramers/r", 7)
    assert image.shape == (1400, 1300, 3) and image.dtype == np.uint8
    assert (image.min(axis=2) < 200).mean() > 0.02  # drawn, not blank
    [(key, [mlflow_image, run_id], step)] = mlflow.images
    assert (key, run_id, step) == ("kramers/r", "run-1", 7) and mlflow_image is image
    [(key, [(kind, figure)], step)] = neptune.images
    assert (key, kind, step) == ("kramers/r", "File", 7)
    assert figure.get_suptitle().startswith("Kramers callback report")
    assert log_report_figure(_fake_trainer(wandb_like, rank_zero=False), run) == []
    assert log_report_figure(_fake_trainer(plain, csv_logger), run) == []
    with pytest.raises(ValueError, match="figure_or_data must be a matplotlib Figure"):
        log_report_figure(_fake_trainer(wandb_like), 3.0)


@pytest.mark.slow
def test_report_image_appears_in_tensorboard_after_a_run(tmp_path):
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    cb = KramersCallback("observe", **FAST)
    fit = trainer(max_epochs=2, logger=logger, callbacks=[cb], log_every_n_steps=4)
    fit.fit(TinyClassifier(), BlobsData())
    assert len(cb.history) == 2
    # The callback handed the figure to the logger itself, at fit end.
    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    assert "kramers/report" in events.Tags()["images"]
    [image] = events.Images("kramers/report")
    assert image.step == fit.global_step
    with Image.open(io.BytesIO(image.encoded_image_string)) as png:
        assert png.size == (1300, 1400)
    # What TensorBoard holds is what the callback published.
    from_history = metrics_from_history(cb.history)
    names = [n for n in cb.history[-1]["metrics"] if n.startswith("kramers/")]
    _assert_same_table(read_tensorboard(logger.log_dir), from_history, names)
    assert report_main([str(tmp_path)]) == 0
    assert (Path(logger.log_dir) / "kramers_report.png").is_file()


def test_report_at_each_estimate_reaches_tensorboard(tmp_path):
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    cb = KramersCallback("observe", report_at_estimates=True, **FAST)
    fit = trainer(max_epochs=2, logger=logger, callbacks=[cb], log_every_n_steps=4)
    fit.fit(TinyClassifier(), BlobsData())
    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    # One image per good estimate (two epochs) and one at fit end, at the same last step.
    steps = [image.step for image in events.Images("kramers/report")]
    assert len(steps) == 3 and steps[0] < steps[1] == steps[2] == fit.global_step

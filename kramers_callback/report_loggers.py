"""The Kramers report as an image in the run's own loggers.

:func:`log_report_figure` draws the report (:func:`kramers_callback.report.build_figure`) from
the callback's in-memory ``history`` and hands it to every attached logger that takes images:

- ``TensorBoardLogger``: ``experiment.add_figure`` (an image summary under ``tag``);
- ``MLFlowLogger``: ``MlflowClient.log_image(run_id, image, key=tag, step=step)``;
- ``NeptuneLogger``: ``run[tag].append(File.as_image(figure), step=step)``;
- ``CometLogger``: ``experiment.log_image(image, name=tag, step=step)``;
- any other logger with a ``log_image(key, images, step)`` method, as ``WandbLogger`` has.

Loggers are recognised by the names of their classes (and base classes), so no logging
package is imported unless the logger that needs it is attached. Loggers without images
(``CSVLogger``) are skipped with one rank-zero note per logger class; their logs are what
``kramers-report`` reads.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities import rank_zero_info

from kramers_callback.report import RunMetrics, build_figure, figure_image, metrics_from_history

DEFAULT_TAG = "kramers/report"


class _Picture:
    """The figure, and its raster drawn at most once for the loggers that take arrays."""

    def __init__(self, figure: Any) -> None:
        self.figure = figure

    @functools.cached_property
    def array(self) -> np.ndarray:
        return figure_image(self.figure)


def _to_tensorboard(logger: Any, picture: _Picture, tag: str, step: int) -> None:
    # close=False: the figure has no pyplot manager to close.
    logger.experiment.add_figure(tag, picture.figure, global_step=step, close=False)


def _to_mlflow(logger: Any, picture: _Picture, tag: str, step: int) -> None:
    logger.experiment.log_image(logger.run_id, picture.array, key=tag, step=step)


def _to_neptune(logger: Any, picture: _Picture, tag: str, step: int) -> None:
    from neptune.types import File  # attached NeptuneLogger: neptune is installed

    logger.experiment[tag].append(File.as_image(picture.figure), step=step)


def _to_comet(logger: Any, picture: _Picture, tag: str, step: int) -> None:
    logger.experiment.log_image(picture.array, name=tag, step=step)


def _to_log_image(logger: Any, picture: _Picture, tag: str, step: int) -> None:
    logger.log_image(key=tag, images=[picture.array], step=step)


_WRITERS: Mapping[str, Callable[[Any, _Picture, str, int], None]] = {
    "TensorBoardLogger": _to_tensorboard,
    "MLFlowLogger": _to_mlflow,
    "NeptuneLogger": _to_neptune,
    "CometLogger": _to_comet,
}
"""Logger class name → how it takes an image; looked up along the class's MRO."""


def image_writer(logger: Logger) -> Callable[[Any, _Picture, str, int], None] | None:
    """How ``logger`` takes an image, or ``None`` when it takes none."""
    for cls in type(logger).__mro__:
        if cls.__name__ in _WRITERS:
            return _WRITERS[cls.__name__]
    if callable(getattr(logger, "log_image", None)):
        return _to_log_image
    return None


@functools.cache
def _note_once(message: str) -> None:
    rank_zero_info(message)


def log_report_figure(
    trainer: pl.Trainer,
    figure_or_data: Any,
    *,
    tag: str = DEFAULT_TAG,
    step: int | None = None,
    stop_reason: str | None = None,
    config: dict[str, Any] | None = None,
) -> list[Logger]:
    """Hand the report to every logger of ``trainer`` that takes images; return those loggers.

    Args:
        trainer: its ``loggers`` receive the image; only global rank 0 draws and logs.
        figure_or_data: a matplotlib ``Figure``, a :class:`~kramers_callback.report.RunMetrics`,
            or the callback's ``history`` (records with ``epoch``, ``step`` and ``metrics``).
        tag: the image's name in each logger.
        step: the step it is logged at; defaults to ``trainer.global_step``.
        stop_reason: text for the stop marker when the figure is drawn here.
        config: the run's settings in ``config.yaml``'s layout (``trainer.max_epochs``,
            ``kramers.compute_cost``), for the stop threshold line, when drawn here.

    Cost: nothing when no attached logger takes images; otherwise drawing the figure (about a
    second) and, for loggers that take arrays, rasterising it once (1300×1400 pixels).
    """
    if not trainer.is_global_zero:
        return []
    writers = []
    for logger in trainer.loggers:
        writer = image_writer(logger)
        if writer is None:
            _note_once(
                f"KramersCallback: {type(logger).__name__} takes no images; the report is not "
                "logged there (kramers-report LOG_DIR draws it from a CSV or TensorBoard log)."
            )
        else:
            writers.append((logger, writer))
    if not writers:
        return []
    try:
        figure = _as_figure(figure_or_data, stop_reason=stop_reason, config=config)
    except ImportError:  # matplotlib comes with the examples extra; training goes on without
        _note_once("KramersCallback: the report image needs matplotlib (pip install matplotlib).")
        return []
    picture = _Picture(figure)
    at = trainer.global_step if step is None else int(step)
    for logger, writer in writers:
        writer(logger, picture, tag, at)
    return [logger for logger, _ in writers]


def _as_figure(data: Any, *, stop_reason: str | None, config: dict[str, Any] | None) -> Any:
    if isinstance(data, RunMetrics):
        return build_figure(data, stop_reason=stop_reason)
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        return build_figure(metrics_from_history(data, config=config), stop_reason=stop_reason)
    if hasattr(data, "savefig") and hasattr(data, "canvas"):
        return data
    raise ValueError(
        "figure_or_data must be a matplotlib Figure, a RunMetrics or the callback's history "
        f"(a list of per-epoch records), got {type(data).__name__}"
    )

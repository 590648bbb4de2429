"""One PNG that shows what the Kramers callback measured and decided during a run.

One table, :class:`RunMetrics` (each metric's steps and values), feeds one drawing,
:func:`build_figure`. The table comes from a :class:`~pytorch_lightning.loggers.CSVLogger`
``metrics.csv`` (:func:`read_metrics`), a TensorBoard event directory (:func:`read_tensorboard`,
through the tensorboard package's ``EventAccumulator``) or the callback's in-memory ``history``
(:func:`metrics_from_history`); :func:`render_report` writes the newest log under a directory
to a PNG. The figure draws, against the optimizer step:

1. the temperature ``T`` against its target ``T*(t)`` and the critical temperature ``T_c``;
2. the learning rate ``η``;
3. the batch size ``B``;
4. the extreme Hessian eigenvalues ``λ_max`` and ``λ_min``;
5. the escape rate ``k`` (escapes per step);
6. the expected escapes ``k·R`` in the remaining ``R`` steps, with the stop threshold ``1/c``
   when the run's ``config.yaml`` gives the compute cost ``c``;
7. the validation accuracy and loss (or, without validation, the double well's counted
   escapes or the training loss);
8. the seconds each estimate took.

The last logged step is marked in every panel as the stop point, labelled with the stop
reason when it is known. When logged, the controller's phase (``kramers/phase``: descending,
thermalized, trapped, stalled) shades the background of every panel, and each cooling step (a
change of ``kramers/lr`` or ``kramers/batch_size``) is a dotted vertical line. Matplotlib is driven
through its Agg canvas directly, so rendering never changes the user's pyplot backend.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

PREFIX = "kramers/"
REPORT_NAME = "kramers_report.png"
CSV_NAME = "metrics.csv"
EVENTS_GLOB = "events.out.tfevents.*"
PHASES: dict[int, tuple[str, str]] = {
    0: ("descending", "#dbe9f6"),
    1: ("thermalized", "#dcefdc"),
    2: ("trapped", "#f6dada"),
    3: ("stalled", "#f3ead0"),
}
"""``kramers/phase`` code → (name, background colour); the regimes of docs/theory.md."""
COOLING_METRICS = (PREFIX + "lr", PREFIX + "batch_size")
"""A change in either is a cooling (or heating) step."""


@dataclass
class RunMetrics:
    """One run's log: for each metric, the steps and values it was logged at."""

    series: dict[str, tuple[np.ndarray, np.ndarray]]
    last_step: int
    last_epoch: int
    config: dict[str, Any] = field(default_factory=dict)
    """The run's ``config.yaml`` beside the log (LightningCLI writes it), or ``{}``."""
    epoch_ends: dict[int, int] = field(default_factory=dict)
    """Epoch → the largest step logged in it."""
    directory: Path | None = None
    """Where the log was read from; ``None`` for an in-memory history."""

    def get(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        empty = np.zeros(0)
        return self.series.get(name, (empty, empty))

    def last(self, name: str) -> float | None:
        _, values = self.get(name)
        return float(values[-1]) if len(values) else None


# -- finding and reading the log ---------------------------------------------------------------
def _version_number(path: Path) -> int:
    match = re.fullmatch(r"version_(\d+)", path.parent.name)
    return int(match.group(1)) if match else -1


_KINDS = {CSV_NAME: "a CSVLogger metrics.csv", EVENTS_GLOB: "a TensorBoard event file"}


def find_log(log_dir: str | Path, patterns: Sequence[str] = (CSV_NAME, EVENTS_GLOB)) -> Path:
    """The latest log file under ``log_dir`` (searched recursively) whose name matches one of
    ``patterns``: by default a CSVLogger ``metrics.csv`` or a TensorBoard event file.

    Latest means most recently modified, ties broken by the larger ``version_N``. ``log_dir``
    may also be the log file itself.
    """
    path = Path(log_dir)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(
            f"log_dir must be an existing directory or log file, got {str(path)!r}"
        )
    candidates = sorted({found for pattern in patterns for found in path.rglob(pattern)})
    if not candidates:
        kinds = " or ".join(_KINDS[pattern] for pattern in patterns)
        raise FileNotFoundError(f"log_dir must contain {kinds}, got {str(path)!r}")
    return max(candidates, key=lambda p: (p.stat().st_mtime, _version_number(p)))


def find_metrics_csv(log_dir: str | Path) -> Path:
    """The ``metrics.csv`` of the latest run under ``log_dir`` (see :func:`find_log`)."""
    return find_log(log_dir, (CSV_NAME,))


def _parse(text: str) -> float | None:
    if text is None or text.strip() == "":
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _read_config(directory: Path) -> dict[str, Any]:
    config_path = directory / "config.yaml"
    if not config_path.is_file():
        return {}
    try:
        import yaml

        loaded = yaml.safe_load(config_path.read_text())
    except Exception:  # a report without the threshold is better than no report
        return {}
    return loaded if isinstance(loaded, dict) else {}


Row = tuple[float, float | None, Mapping[str, float | None]]
"""One logging call: its step, its epoch (``None`` when not logged) and its values."""


def tabulate(
    rows: Iterable[Row], *, config: dict[str, Any] | None = None, directory: Path | None = None
) -> RunMetrics:
    """Collect logging calls into a :class:`RunMetrics`; every reader goes through here.

    Values that are ``None`` are "not logged at this row". Cost: O(number of values).
    """
    collected: dict[str, tuple[list[float], list[float]]] = {}
    last_step, last_epoch = 0, 0
    epoch_ends: dict[int, int] = {}
    for step, epoch, values in rows:
        last_step = max(last_step, int(step))
        if epoch is not None:
            last_epoch = max(last_epoch, int(epoch))
            epoch_ends[int(epoch)] = max(epoch_ends.get(int(epoch), 0), int(step))
        for name, value in values.items():
            if value is not None:
                steps, logged = collected.setdefault(name, ([], []))
                steps.append(step)
                logged.append(float(value))
    series = {
        name: (np.asarray(steps, dtype=float), np.asarray(logged, dtype=float))
        for name, (steps, logged) in collected.items()
    }
    return RunMetrics(series, last_step, last_epoch, config or {}, epoch_ends, directory)


def read_metrics(path: str | Path) -> RunMetrics:
    """Parse a CSVLogger ``metrics.csv``: empty cells are "not logged at this row"."""
    path = Path(path)
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "step" not in rows[0]:
        raise ValueError(
            f"metrics.csv must have a header with a 'step' column and rows, got {str(path)!r}"
        )

    def parsed() -> Iterable[Row]:
        for row in rows:
            step = _parse(row.get("step", ""))
            if step is None:
                continue
            values = {
                name: _parse(text)
                for name, text in row.items()
                if name not in ("step", "epoch") and name is not None
            }
            yield step, _parse(row.get("epoch", "")), values

    return tabulate(parsed(), config=_read_config(path.parent), directory=path.parent)


def read_tensorboard(path: str | Path) -> RunMetrics:
    """Read the scalars of a TensorBoard event directory (or one event file in it).

    Uses ``tensorboard``'s :class:`EventAccumulator` with every scalar kept (its default keeps
    a reservoir sample of 10 000 per tag). Lightning's loggers write ``epoch`` as a scalar
    beside the metrics of each call; it gives each step its epoch. Cost: reading the event
    files once, O(number of events).
    """
    try:
        from tensorboard.backend.event_processing import event_accumulator
    except ImportError as error:  # pragma: no cover - the examples extra installs tensorboard
        raise ValueError(
            "reading a TensorBoard log needs the tensorboard package (pip install tensorboard)"
        ) from error
    path = Path(path)
    directory = path.parent if path.is_file() else path
    accumulator = event_accumulator.EventAccumulator(
        str(directory), size_guidance={event_accumulator.SCALARS: 0}
    )
    accumulator.Reload()
    tags = accumulator.Tags().get(event_accumulator.SCALARS, [])
    if not tags:
        raise ValueError(f"TensorBoard log must hold scalars, got none in {str(directory)!r}")
    by_step: dict[int, dict[str, float]] = {}
    for tag in tags:
        for event in accumulator.Scalars(tag):
            by_step.setdefault(int(event.step), {})[tag] = float(event.value)
    rows = [
        (float(step), values.pop("epoch", None), values) for step, values in sorted(by_step.items())
    ]
    return tabulate(rows, config=_read_config(directory), directory=directory)


def read_log(log_dir: str | Path) -> RunMetrics:
    """The latest log under ``log_dir`` (:func:`find_log`), CSV or TensorBoard."""
    path = find_log(log_dir)
    return read_metrics(path) if path.suffix == ".csv" else read_tensorboard(path)


def metrics_from_history(
    history: Iterable[Mapping[str, Any]], *, config: dict[str, Any] | None = None
) -> RunMetrics:
    """The table of the callback's in-memory ``history`` (one record per epoch end, with its
    ``epoch``, ``step`` and the ``metrics`` it published); ``config`` as ``config.yaml``'s."""
    rows = [
        (float(record["step"]), record["epoch"], record["metrics"])
        for record in history
        if "metrics" in record
    ]
    return tabulate(rows, config=config)


def _config_value(config: dict[str, Any], *keys: str) -> Any:
    node: Any = config
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def infer_stop_reason(run: RunMetrics) -> str | None:
    """A short stop reason from the log and the run's config, or ``None`` when unknown.

    Uses the logged ``kramers/stop_reason`` metric when the callback wrote one; otherwise, a run
    that ended before ``trainer.max_epochs`` with fewer expected escapes than ``1/c`` at its
    last estimate stopped on the Kramers rule, and one that reached ``max_epochs`` ran out of
    budget.
    """
    max_epochs = _config_value(run.config, "trainer", "max_epochs")
    compute_cost = _config_value(run.config, "kramers", "compute_cost")
    expected = run.last(PREFIX + "expected_escapes")
    epochs_run = run.last_epoch + 1
    if isinstance(max_epochs, int) and max_epochs > 0 and epochs_run >= max_epochs:
        return f"max_epochs = {max_epochs} reached"
    if (
        isinstance(max_epochs, int)
        and isinstance(compute_cost, (int, float))
        and compute_cost > 0
        and expected is not None
        and expected < 1 / compute_cost
    ):
        return f"Kramers rule: {expected:.2g} expected escapes < 1/c = {1 / compute_cost:.2g}"
    return None


# -- drawing -----------------------------------------------------------------------------------
def _line(ax: Any, run: RunMetrics, name: str, label: str, log: bool = False, **style: Any) -> bool:
    """Plot one metric; on a log axis, zeros become ▼ marks along the bottom edge.

    Returns whether anything was drawn. Non-finite values (a quantity undefined at that
    estimate, e.g. a target without a barrier) are left out.
    """
    steps, values = run.get(name)
    finite = np.isfinite(values)
    keep = finite & (values > 0) if log else finite
    zeros = finite & (values == 0) if log else np.zeros_like(finite)
    style.setdefault("marker", "o" if keep.sum() <= 60 else None)
    style.setdefault("markersize", 3)
    if keep.any():
        ax.plot(steps[keep], values[keep], label=label, **style)
    if zeros.any():
        from matplotlib.transforms import blended_transform_factory

        bottom = blended_transform_factory(ax.transData, ax.transAxes)
        ax.plot(
            steps[zeros],
            np.full(int(zeros.sum()), 0.03),
            transform=bottom,
            marker="v",
            linestyle="none",
            color=style.get("color"),
            label=f"{label} = 0",
        )
    return bool(keep.any() or zeros.any())


def _all_zero(run: RunMetrics, name: str) -> bool:
    _, values = run.get(name)
    finite = values[np.isfinite(values)]
    return bool(len(finite)) and bool(np.all(finite == 0))


def _note(ax: Any, text: str) -> None:
    ax.text(
        0.5,
        0.5,
        text,
        transform=ax.transAxes,
        ha="center",
        va="center",
        color="0.35",
        fontsize=9,
        wrap=True,
    )


def _undefined(run: RunMetrics, name: str) -> bool:
    """Logged, but never with a finite value."""
    steps, values = run.get(name)
    return bool(len(steps)) and not np.isfinite(values).any()


def _panel_temperature(ax: Any, run: RunMetrics) -> bool:
    drawn = _line(ax, run, PREFIX + "temperature", "measured T", log=True, color="C0")
    drawn |= _line(
        ax, run, PREFIX + "temperature_target", "target T*(t)", log=True, color="C1", linestyle="--"
    )
    drawn |= _line(
        ax,
        run,
        PREFIX + "critical_temperature",
        "critical T_c",
        log=True,
        color="C7",
        linestyle=":",
    )
    drawn |= _line(
        ax,
        run,
        PREFIX + "temperature_min",
        "coldest allowed T_min",
        log=True,
        color="C2",
        linestyle="-.",
        marker=None,
    )
    if drawn and _undefined(run, PREFIX + "temperature_target"):
        ax.text(
            0.98,
            0.96,
            "target undefined at every estimate:\nno barrier within reach",
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=8,
            color="0.35",
        )
    ax.set_yscale("log")
    ax.set_title("Temperature vs target")
    ax.set_ylabel("temperature (loss units)")
    return drawn


def _panel_lr(ax: Any, run: RunMetrics) -> bool:
    drawn = _line(ax, run, PREFIX + "lr", "η", log=True, color="C2", drawstyle="steps-post")
    ax.set_yscale("log")
    ax.set_title("Learning rate η")
    ax.set_ylabel("η")
    return drawn


def _panel_batch(ax: Any, run: RunMetrics) -> bool:
    from matplotlib.ticker import MaxNLocator

    drawn = _line(ax, run, PREFIX + "batch_size", "B", color="C3", drawstyle="steps-post")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Batch size B")
    ax.set_ylabel("samples per step")
    return drawn


def _panel_curvature(ax: Any, run: RunMetrics) -> bool:
    drawn = _line(ax, run, PREFIX + "lambda_max", "λ_max", color="C4")
    drawn |= _line(ax, run, PREFIX + "lambda_min", "λ_min", color="C9")
    _, top = run.get(PREFIX + "lambda_max")
    _, bottom = run.get(PREFIX + "lambda_min")
    values = np.concatenate([top, bottom])
    values = np.abs(values[np.isfinite(values) & (values != 0)])
    # λ_max is often orders of magnitude above |λ_min|: a symlog axis keeps both readable.
    if len(values) and values.max() / values.min() > 100:
        ax.set_yscale("symlog", linthresh=float(values.min()))
    ax.axhline(0.0, color="0.6", linewidth=0.8)
    ax.set_title("Hessian extremes λ_max, λ_min")
    ax.set_ylabel("eigenvalue")
    return drawn


def _zero_rate_axis(ax: Any, run: RunMetrics, name: str) -> None:
    if _all_zero(run, name):
        ax.set_yticks([])
        ax.set_yticks([], minor=True)
        _note(
            ax,
            "0 at every estimate: no measured pathway (no barrier within\nreach of κ·T_v, "
            "or no scan while descending): not a zero rate",
        )


def _panel_rate(ax: Any, run: RunMetrics) -> bool:
    drawn = _line(ax, run, PREFIX + "escape_rate", "k", log=True, color="C5")
    ax.set_yscale("log")
    _zero_rate_axis(ax, run, PREFIX + "escape_rate")
    ax.set_title("Escape rate k")
    ax.set_ylabel("escapes per step")
    return drawn


def _panel_expected(ax: Any, run: RunMetrics) -> bool:
    drawn = _line(ax, run, PREFIX + "expected_escapes", "k·R", log=True, color="C6")
    compute_cost = _config_value(run.config, "kramers", "compute_cost")
    all_zero = _all_zero(run, PREFIX + "expected_escapes")
    if drawn and not all_zero and isinstance(compute_cost, (int, float)) and compute_cost > 0:
        threshold = 1 / compute_cost
        ax.axhline(threshold, color="C3", linestyle=":", label=f"stop below 1/c = {threshold:.3g}")
    ax.set_yscale("log")
    _zero_rate_axis(ax, run, PREFIX + "expected_escapes")
    ax.set_title("Expected escapes in the remaining steps")
    ax.set_ylabel("k · R")
    return drawn


def _panel_quality(ax: Any, run: RunMetrics) -> bool:
    if len(run.get("val_acc")[0]):
        drawn = _line(ax, run, "val_acc", "val_acc", color="C0")
        ax.set_ylabel("validation accuracy")
        twin = ax.twinx()
        if _line(twin, run, "val_loss", "val_loss", color="C1", linestyle="--"):
            twin.set_ylabel("validation loss")
            handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
            ax.legend(handles, [h.get_label() for h in handles], loc="center right", fontsize=8)
        ax.set_title("Validation")
        return drawn
    if len(run.get("escapes")[0]):  # the double well counts its escapes
        drawn = _line(
            ax, run, "escapes", "escapes counted", color="C5", drawstyle="steps-post", marker=None
        )
        ax.set_title("Escapes counted (double well)")
        ax.set_ylabel("transitions between wells")
        return drawn
    drawn = _line(ax, run, "train_loss", "train_loss", color="C0")
    # The same loss units: the share of the training loss that cooling can remove.
    drawn |= _line(
        ax,
        run,
        PREFIX + "noise_floor",
        "noise floor (removable by cooling)",
        color="C8",
        linestyle="--",
    )
    ax.set_title("Training loss")
    ax.set_ylabel("loss")
    return drawn


def _panel_cost(ax: Any, run: RunMetrics) -> bool:
    drawn = _line(ax, run, PREFIX + "estimate_seconds", "seconds", color="C8")
    ax.set_title("Cost of each estimate")
    ax.set_ylabel("seconds")
    return drawn


PANELS: Sequence[Callable[[Any, RunMetrics], bool]] = (
    _panel_temperature,
    _panel_lr,
    _panel_batch,
    _panel_curvature,
    _panel_rate,
    _panel_expected,
    _panel_quality,
    _panel_cost,
)


def _add_epoch_axis(axes: Sequence[Any], run: RunMetrics) -> None:
    """An "epoch" scale along the top of ``axes``, interpolated from the epochs' last steps."""
    from matplotlib.ticker import MaxNLocator

    ends = sorted(run.epoch_ends.items())
    steps = np.array([0.0] + [float(step) for _, step in ends])
    epochs = np.array([0.0] + [float(epoch + 1) for epoch, _ in ends])
    if len(steps) < 3 or np.any(np.diff(steps) <= 0):
        return

    def to_epoch(step: np.ndarray) -> np.ndarray:
        return np.interp(step, steps, epochs)

    def to_step(epoch: np.ndarray) -> np.ndarray:
        return np.interp(epoch, epochs, steps)

    for ax in axes:
        top = ax.secondary_xaxis("top", functions=(to_epoch, to_step))
        top.xaxis.set_major_locator(MaxNLocator(integer=True))
        top.set_xlabel("epochs completed", fontsize=9)


def phase_spans(run: RunMetrics) -> list[tuple[float, float, int]]:
    """``(start, end, phase)`` step intervals: each estimate's phase covers the steps since the
    previous estimate (the epoch it measured), the first from step 0. Empty without
    ``kramers/phase``; consecutive equal phases are merged."""
    steps, values = run.get(PREFIX + "phase")
    spans: list[tuple[float, float, int]] = []
    start = 0.0
    for step, value in zip(steps, values, strict=True):
        if not np.isfinite(value):
            start = float(step)
            continue
        phase = int(value)
        if spans and spans[-1][2] == phase and spans[-1][1] == start:
            spans[-1] = (spans[-1][0], float(step), phase)
        else:
            spans.append((start, float(step), phase))
        start = float(step)
    return spans


def cooling_steps(run: RunMetrics) -> list[float]:
    """The steps at which ``kramers/lr`` or ``kramers/batch_size`` differs from its previous
    logged value (:data:`COOLING_METRICS`), sorted."""
    changed: set[float] = set()
    for name in COOLING_METRICS:
        steps, values = run.get(name)
        finite = np.isfinite(values)
        steps, values = steps[finite], values[finite]
        changed.update(float(s) for s in steps[1:][values[1:] != values[:-1]])
    return sorted(changed)


def _mark_phases_and_cooling(ax: Any, run: RunMetrics, legend: bool) -> None:
    """Shade each phase span and draw each cooling step; labels only where ``legend``."""
    labelled: set[int] = set()
    for start, end, phase in phase_spans(run):
        name, colour = PHASES.get(phase, (f"phase {phase}", "0.9"))
        label = name if legend and phase not in labelled else None
        labelled.add(phase)
        ax.axvspan(start, end, color=colour, zorder=0, linewidth=0, label=label)
    cooling = cooling_steps(run)
    if cooling:
        # vlines, not axvline: a LineCollection, kept apart from the metric lines.
        ax.vlines(
            cooling,
            0,
            1,
            transform=ax.get_xaxis_transform(),
            colors="0.45",
            linestyles=":",
            linewidth=1.0,
            label="cooling step" if legend else None,
        )


def build_figure(
    run: RunMetrics, *, stop_reason: str | None = None, title: str | None = None
) -> Any:
    """The report as a :class:`matplotlib.figure.Figure` (Agg canvas; pyplot is not touched).

    Eight panels in a 4×2 grid sharing the optimizer-step axis (:data:`PANELS`), an epoch
    scale along the top row, the stop point (the last logged step) as a dashed line, and,
    when logged, the phase as background shading (:func:`phase_spans`) and the cooling steps
    as dotted lines (:func:`cooling_steps`) in every panel.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(13, 14), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(4, 2, sharex=True)
    stop_label = f"stopped at step {run.last_step} after {run.last_epoch + 1} epochs"
    for index, (ax, panel) in enumerate(zip(axes.flat, PANELS, strict=True)):
        if not panel(ax, run):
            _note(ax, "not logged")
        _mark_phases_and_cooling(ax, run, legend=index == 0)
        ax.axvline(
            run.last_step,
            color="C3",
            linestyle="--",
            linewidth=1.2,
            label="stop" if index == 0 else None,
        )
        ax.grid(True, which="major", alpha=0.3)
        if not ax.get_legend() and ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("optimizer step")
        ax.xaxis.set_tick_params(labelbottom=True)
    _add_epoch_axis(axes[0], run)
    if title is not None:
        heading = title
    else:
        heading = str(run.directory) if run.directory is not None else "this run"
    subtitle = stop_label + (f" — {stop_reason}" if stop_reason else "")
    figure.suptitle(f"Kramers callback report: {heading}\n{subtitle}", fontsize=13)
    return figure


def figure_image(figure: Any) -> np.ndarray:
    """The figure rasterised on its Agg canvas: an ``(height, width, 3)`` ``uint8`` array."""
    figure.canvas.draw()
    return np.array(figure.canvas.buffer_rgba())[..., :3]


def render_report(
    log_dir: str | Path,
    output: str | Path | None = None,
    *,
    stop_reason: str | None = None,
    title: str | None = None,
) -> Path:
    """Render the run's report to a PNG (1300×1400 pixels) and return its path.

    Args:
        log_dir: a directory holding a CSVLogger ``metrics.csv`` or TensorBoard event files
            (searched recursively; the latest is used, :func:`find_log`), or the log file.
        output: the PNG to write; defaults to ``kramers_report.png`` beside the log.
        stop_reason: text for the stop marker; inferred from the log when omitted
            (:func:`infer_stop_reason`).
        title: figure title; defaults to the log's directory.

    Cost: reading the log and drawing eight small panels, about a second.
    """
    run = read_log(log_dir)
    assert run.directory is not None  # read from a file
    target = Path(output) if output is not None else run.directory / REPORT_NAME
    reason = stop_reason if stop_reason is not None else infer_stop_reason(run)
    figure = build_figure(run, stop_reason=reason, title=title)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target)
    return target


def final_metrics(log_dir: str | Path) -> dict[str, float]:
    """The last logged value of every metric in the latest ``metrics.csv`` under ``log_dir``."""
    run = read_metrics(find_metrics_csv(log_dir))
    out = {name: float(v[-1]) for name, (_, v) in sorted(run.series.items()) if len(v)}
    out["epoch"] = float(run.last_epoch)
    out["step"] = float(run.last_step)
    return {k: v for k, v in out.items() if not (isinstance(v, float) and math.isnan(v))}

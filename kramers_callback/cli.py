"""Command-line entry points: ``kramers-train`` (LightningCLI + callback), ``kramers-report``.

``kramers-train`` is a :class:`~pytorch_lightning.cli.LightningCLI` that always attaches
:class:`~kramers_callback.callback.KramersCallback`, configured under a top-level ``kramers:``
key::

    kramers-train fit --config recipes/digits.yaml
    kramers-train fit --config recipes/digits.yaml --kramers.policy=observe --trainer.max_epochs=5

``kramers-report LOG_DIR`` renders the run's picture (see :mod:`kramers_callback.report`) from
the newest CSVLogger ``metrics.csv`` or TensorBoard event file under ``LOG_DIR`` and prints the
PNG's path.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from pytorch_lightning.cli import LightningArgumentParser, LightningCLI


class KramersCLI(LightningCLI):
    """A LightningCLI whose Trainer always carries a ``KramersCallback`` built from ``kramers:``.

    Models and data modules are given by ``class_path`` (any LightningModule/DataModule, e.g.
    those of :mod:`kramers_callback.examples`). Every other LightningCLI argument is accepted.
    The run's configuration is saved as ``config.yaml`` in the logger's directory (overwriting
    one left by an earlier run there), which ``kramers-report`` reads for the stop threshold.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        from kramers_callback.callback import KramersCallback

        # A Callback class given here is instantiated from the "kramers" key and appended to
        # trainer.callbacks by LightningCLI, so it is attached whatever the config says.
        parser.add_lightning_class_args(KramersCallback, "kramers")


def train_main(args: Sequence[str] | None = None) -> None:
    """``kramers-train``: parse ``args`` (default ``sys.argv[1:]``), build and run.

    Returns ``None`` because the console script passes the return value to ``sys.exit``; for
    in-process use, construct :class:`KramersCLI` and read its ``trainer``, ``model`` and
    ``datamodule``.
    """
    KramersCLI(args=None if args is None else list(args))


def report_main(argv: Sequence[str] | None = None) -> int:
    """``kramers-report LOG_DIR [--output PNG] [--title TEXT]``: render and print the PNG path."""
    from kramers_callback.report import render_report

    parser = argparse.ArgumentParser(
        prog="kramers-report",
        description=(
            "Render the Kramers callback's metrics (a CSVLogger metrics.csv or a TensorBoard "
            "event directory) to one PNG."
        ),
    )
    parser.add_argument(
        "log_dir",
        help="directory searched for the latest metrics.csv or TensorBoard event file "
        "(or that file itself)",
    )
    parser.add_argument("-o", "--output", default=None, help="PNG path (default: beside the log)")
    parser.add_argument("--title", default=None, help="figure title (default: the run's directory)")
    parser.add_argument("--stop-reason", default=None, help="text for the stop marker")
    options = parser.parse_args(argv)
    try:
        path = render_report(
            options.log_dir, options.output, stop_reason=options.stop_reason, title=options.title
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"kramers-report: error: {error}", file=sys.stderr)
        return 1
    print(path)
    return 0

"""``make demo``: the digits recipe end to end, then its report picture and final metrics.

Runs ``kramers-train fit --config recipes/digits.yaml`` in this process (so torch is imported
once), with the CSV logs under ``demo_output/``; renders ``demo_output/kramers_report.png``
with :func:`kramers_callback.report.render_report`; prints the final validation accuracy, every
``kramers/*`` value, the epochs and steps run, the stop reason and the PNG's path.

Usage::

    python -m kramers_callback.demo [--output-dir DIR] [--recipe YAML] [--threads N] [OVERRIDES]

``OVERRIDES`` are passed to ``kramers-train`` (for example ``--trainer.max_epochs=5``).
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RECIPE = Path("recipes") / "digits.yaml"
REPORT_NAME = "kramers_report.png"


def find_recipe(name: Path = RECIPE) -> Path:
    """The recipe beside the package (a source checkout) or under the working directory."""
    candidates = [Path(__file__).resolve().parent.parent / name, Path.cwd() / name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"recipe must exist in the repository's recipes/ folder, got none at "
        f"{', '.join(str(c) for c in candidates)}"
    )


def stop_reason(trainer: Any, callback: Any) -> tuple[str, str]:
    """``(short, full)``: the callback's recorded reason, else why Lightning's loop ended."""
    from kramers_callback.stopping import StopReason

    if callback.stop_reason is not StopReason.NOT_STOPPED:
        short = f"Kramers rule: {callback.stop_reason.value.replace('_', ' ')}"
        return short, callback.termination.message or short
    if trainer.max_epochs is not None and trainer.current_epoch >= trainer.max_epochs:
        short = f"max_epochs = {trainer.max_epochs} reached"
    elif trainer.max_steps is not None and 0 <= trainer.max_steps <= trainer.global_step:
        short = f"max_steps = {trainer.max_steps} reached"
    else:
        return "stopped early", "stopped by another callback or interrupted"
    return short, f"{short} (the Kramers rule did not stop it)"


def _format(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.4g}"
    return f"{value:.3e}"


def main(argv: Sequence[str] | None = None) -> int:
    """Train the digits recipe with the callback, render the report, print the results."""
    parser = argparse.ArgumentParser(
        prog="python -m kramers_callback.demo",
        allow_abbrev=False,  # the other options go to kramers-train untouched
        description="Run the digits recipe with KramersCallback, then render its report.",
    )
    parser.add_argument("--output-dir", default="demo_output", help="logs and the PNG go here")
    parser.add_argument("--recipe", default=None, help="LightningCLI YAML (default: digits)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: these tiny models gain nothing from more, and "
        "on a busy machine extra threads spin-wait)",
    )
    options, overrides = parser.parse_known_args(argv)

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, options.threads))
    try:
        return _run(options, overrides)
    finally:
        torch.set_num_threads(threads)  # main() may be called in a larger process


def _run(options: argparse.Namespace, overrides: list[str]) -> int:
    from kramers_callback.callback import KramersCallback
    from kramers_callback.cli import KramersCLI
    from kramers_callback.report import render_report

    output_dir = Path(options.output_dir)
    recipe = Path(options.recipe) if options.recipe else find_recipe()
    args = [
        "fit",
        "--config",
        str(recipe),
        f"--trainer.logger.init_args.save_dir={output_dir}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        *overrides,
    ]
    print(f"Kramers demo: kramers-train {' '.join(args)}", flush=True)
    started = time.perf_counter()
    with warnings.catch_warnings():
        # Lightning's own deprecation notice, not something a user of the demo can act on.
        warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
        cli = KramersCLI(args=args)
    seconds = time.perf_counter() - started

    trainer = cli.trainer
    callback = next(c for c in trainer.callbacks if isinstance(c, KramersCallback))
    short_reason, reason = stop_reason(trainer, callback)
    log_dir = Path(trainer.logger.log_dir) if trainer.logger is not None else output_dir
    png = render_report(
        log_dir,
        output_dir / REPORT_NAME,
        stop_reason=short_reason,
        title=f"{recipe.stem} recipe",
    )

    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    print()
    print(f"Kramers demo finished in {seconds:.1f} s")
    print(f"  epochs run        {trainer.current_epoch}")
    print(f"  optimizer steps   {trainer.global_step}")
    print(f"  stop reason       {reason}")
    for name in ("val_acc", "val_loss"):
        if name in metrics:
            print(f"  {name:<17} {_format(metrics[name])}")
    for name in sorted(n for n in metrics if n.startswith("kramers/")):
        print(f"  {name:<30} {_format(metrics[name])}")
    print(f"  metrics.csv       {log_dir / 'metrics.csv'}")
    print(f"Report: {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

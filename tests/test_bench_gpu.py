"""``benchmarks/bench_gpu.py`` runs on CPU at tiny sizes and prints every figure it promises."""

from __future__ import annotations

import importlib
import logging
import math
import statistics
import warnings
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def bench_gpu(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("bench_gpu")


def test_resnet18_is_the_cifar_variant(bench_gpu) -> None:
    net = bench_gpu.ResNet18(width=64)
    # 11 173 962 parameters: the CIFAR ResNet-18 of He et al. (2016) with a 10-way head.
    assert sum(p.numel() for p in net.parameters()) == 11_173_962
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    small = bench_gpu.ResNet18(width=4)
    assert small(torch.randn(3, 3, 8, 8)).shape == (3, 10)


def test_synthetic_data_is_fixed_by_its_seed(bench_gpu) -> None:
    a, b = bench_gpu.SyntheticCIFAR(32, 8), bench_gpu.SyntheticCIFAR(32, 8)
    a.setup(), b.setup()
    assert torch.equal(a.train_set.tensors[0], b.train_set.tensors[0])
    assert a.train_set.tensors[0].shape == (32, 3, 8, 8)
    assert len(a.train_set.tensors[1].unique()) > 1


@pytest.fixture
def restored_logging():
    """The benchmark silences Lightning's loggers and warnings for its own process; put both
    back, so later tests see the logging they expect."""
    names = ("pytorch_lightning", "lightning.pytorch", "lightning.fabric")
    levels = {name: logging.getLogger(name).level for name in names}
    with warnings.catch_warnings():
        yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.slow
def test_main_prints_every_field_on_cpu(
    bench_gpu, capsys: pytest.CaptureFixture[str], restored_logging
) -> None:
    result = bench_gpu.main(
        "--device cpu --precision 32-true --width 4 --samples 16 --image-size 8 --epochs 2 "
        "--estimate-epochs 2 --repeats 1".split()
    )
    out = capsys.readouterr().out
    for field in ("wall ratio observe", "hybrid", "products", "ms per estimate", "per-step"):
        assert field in out
    row = result["32-true"]
    assert len(row["products"]) == 2 and all(p > 0 for p in row["products"])
    assert len(row["estimate_ms"]) == 2 and all(ms > 0 for ms in row["estimate_ms"])
    assert math.isfinite(row["ratio_observe"]) and row["ratio_observe"] > 0
    assert math.isfinite(row["stats_step_ratio"]) and row["stats_step_ratio"] > 0
    # The default budget still makes the first estimate by the end of epoch 2.
    assert row["estimates_observe"] >= 1


def test_longest_gap_counts_the_start_and_the_end(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    harness = importlib.import_module("_harness")

    def log(epochs: list[int]):
        return harness.EstimateLog(len(epochs), 0, None, epochs, [], [], [], 0.0, 0.0)

    # 0-based epochs 1, 4, 7 of 9: first at epoch 2, then every 3, one epoch left at the end.
    assert log([1, 4, 7]).max_gap(9) == 3
    # Nothing after 1-based epoch 5 of 9: epochs 6 to 9 make a gap of 5.
    assert log([0, 4]).max_gap(9) == 5
    assert log([]).max_gap(9) is None


def test_paired_ratio_pairs_repeats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    harness = importlib.import_module("_harness")
    results = {
        "plain": [harness.FitResult(s, harness.EpochTimer()) for s in (1.0, 2.0, 4.0)],
        "cb": [harness.FitResult(s, harness.EpochTimer()) for s in (1.1, 2.4, 4.2)],
    }
    arms = harness.Arms(results)
    assert arms.ratio("cb") == pytest.approx(statistics.median([1.1, 1.2, 1.05]))
    assert arms.median_seconds("plain") == 2.0

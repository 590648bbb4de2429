"""KramersCallback under data parallelism: 2 CPU processes (gloo) hold identical decisions."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import pytorch_lightning as pl
from lightning_helpers import (
    FAST,
    WELL,
    BlobsData,
    DoubleWellDataModule,
    DoubleWellModule,
    DumpHistory,
    PlateauedClassifier,
    TinyClassifier,
    trainer,
)

from kramers_callback.callback import KramersCallback


def _fit_on_two_ranks(
    tmp_path: Any, cb: KramersCallback, module: pl.LightningModule, data: Any, **options: Any
) -> list[dict[str, Any]]:
    """Fit 4 epochs under ``ddp_spawn`` on 2 CPU ranks (more Trainer ``options``); return each
    rank's dump."""
    t = trainer(
        callbacks=[cb, DumpHistory(str(tmp_path))],
        max_epochs=4,
        strategy="ddp_spawn",
        devices=2,
        **options,
    )
    t.fit(module, datamodule=data)
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.ddp
@pytest.mark.slow
def test_two_gloo_ranks_hold_identical_estimates_and_decisions(tmp_path):
    # 8 samples per rank and step: B = 16 as in the single-process tests.
    pl.seed_everything(0)
    ranks = _fit_on_two_ranks(
        tmp_path,
        KramersCallback("hybrid", **WELL),
        DoubleWellModule(lr=0.05),
        DoubleWellDataModule(num_samples=800, batch_size=8),
    )
    history = ranks[0]["history"]
    assert len(history) == 4 and all(h["estimate"] == "ok" for h in history)
    assert history[0]["batch_before"] == 16  # loader batch 8 × 2 ranks
    assert any(h["batch_size"] != 16 for h in history), "the ranks must have decided something"
    for key in ("history", "estimate", "lr", "params"):
        first, second = (json.dumps(rank[key], sort_keys=True) for rank in ranks)
        assert first == second, key


@pytest.mark.ddp
@pytest.mark.slow
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_loss_on_one_rank_stops_every_rank_through_the_strategys_reduce(tmp_path, bad):
    # Rank 1 alone reads a NaN (or infinite) training loss at step 8 (epoch 1; 6 steps an
    # epoch); its gradient, and so every rank's parameters, stay finite. Rank 0 learns of it
    # only through the block sums that strategy.reduce averaged at the epoch end.
    pl.seed_everything(0)
    ranks = _fit_on_two_ranks(
        tmp_path,
        KramersCallback("lr", **FAST),
        TinyClassifier(nan_at_step=8, nan_rank=1, bad_value=bad),
        BlobsData(batch_size=16),
    )
    for rank in ranks:
        assert rank["stop_reason"] == "non_finite_loss"
        assert len(rank["history"]) == 2  # stopped at the end of the epoch with the NaN
        assert all(math.isfinite(p) for p in rank["params"])
    first, second = (json.dumps(rank["history"], sort_keys=True) for rank in ranks)
    assert first == second


@pytest.mark.ddp
@pytest.mark.slow
@pytest.mark.parametrize("cooling_patience", [2, None])
def test_ranks_cool_and_guard_the_stop_alike_on_rank_zeros_monitored_value(
    tmp_path, cooling_patience
):
    pl.seed_everything(0)
    cb = KramersCallback(
        "lr", monitor="val_metric", cooling_patience=cooling_patience, overhead_budget=math.inf,
        probe_size=64, max_products=40, verbose=False,
    )  # fmt: skip
    ranks = _fit_on_two_ranks(
        tmp_path,
        cb,
        PlateauedClassifier(improving_rank=1),
        BlobsData(batch_size=8),
        limit_val_batches=1.0,
    )
    history = ranks[0]["history"]
    if cooling_patience is not None:
        # Rank 0's values 1, 0.5, 0.5, 0.5 stall at epoch 3; rank 1's alone never would.
        assert [h["phase"] for h in history] == ["descending"] * 3 + ["stalled"]
        assert history[3]["lr"] == history[3]["lr_before"] / 2
    # The stop rule's guard keeps rank 0's best too (rank 1's own would be 1/4), so a resume
    # from rank 0's checkpoint continues every rank's state.
    assert ranks[0]["termination"]["best"] == 0.5
    for key in ("history", "termination"):
        first, second = (json.dumps(rank[key], sort_keys=True) for rank in ranks)
        assert first == second, key

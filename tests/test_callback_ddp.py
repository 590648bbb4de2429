"""KramersCallback under data parallelism: 2 CPU processes (gloo) hold identical decisions."""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
from lightning_helpers import WELL, DoubleWellDataModule, DoubleWellModule, DumpHistory, trainer

from kramers_callback.callback import KramersCallback


@pytest.mark.ddp
@pytest.mark.slow
def test_two_gloo_ranks_hold_identical_estimates_and_decisions(tmp_path):
    pl.seed_everything(0)
    cb = KramersCallback("hybrid", **WELL)
    t = trainer(
        callbacks=[cb, DumpHistory(str(tmp_path))],
        max_epochs=4,
        strategy="ddp_spawn",
        devices=2,
    )
    # 8 samples per rank and step: B = 16 as in the single-process tests.
    t.fit(DoubleWellModule(lr=0.05), datamodule=DoubleWellDataModule(num_samples=800, batch_size=8))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    history = ranks[0]["history"]
    assert len(history) == 4 and all(h["estimate"] == "ok" for h in history)
    assert history[0]["batch_before"] == 16  # loader batch 8 × 2 ranks
    assert any(h["batch_size"] != 16 for h in history), "the ranks must have decided something"
    for key in ("history", "estimate", "lr", "params"):
        first, second = (json.dumps(rank[key], sort_keys=True) for rank in ranks)
        assert first == second, key

"""2 gloo ranks: table-, row- and column-wise sharded lookups equal the unsharded module's (bit for bit)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.distributed.spawn import run_worker_ranks

WORLD = 2


@pytest.mark.multiprocess
def test_two_rank_sharded_lookups_match_unsharded(tmp_path: Path) -> None:
    run_worker_ranks("tests.distributed.sharded_lookup_worker", tmp_path, WORLD, timeout=240)
    for rank in range(WORLD):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert report.pop("fp16_table_wise_refused") is True
        assert set(report) == {"table_wise", "row_wise", "column_wise", "row_wise_fp16_out"}
        for case, r in report.items():
            stype = case.split("_fp16")[0]
            assert r["max_diff"] == {"pooled": 0.0, "tokens": 0.0, "whole": 0.0, "scl": 0.0}, (rank, case, r)
            assert all(t == stype for t, _ in r["plan"].values()), (case, r["plan"])
        # Row-wise really spreads the big tables over both ranks, and each rank loads its half.
        assert report["row_wise"]["plan"]["item"][1] == [0, 1]
        assert report["row_wise"]["plan"]["scl"][1] == [0, 1]
        assert report["row_wise"]["scl_rows_written"] == 150

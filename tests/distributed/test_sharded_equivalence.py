"""2 gloo ranks: table-, row- and column-wise sharded lookups equal the unsharded module's (bit for bit)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from muse_rec.distributed.env import free_port

REPO = Path(__file__).resolve().parents[2]
WORLD = 2


@pytest.mark.multiprocess
def test_two_rank_sharded_lookups_match_unsharded(tmp_path: Path) -> None:
    port = str(free_port())
    procs = []
    for rank in range(WORLD):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
                   LOCAL_WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                   OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tests.distributed.sharded_lookup_worker", str(tmp_path)],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = []
    for p in procs:
        try:
            outputs.append(p.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("2-rank worker timed out")
    for rank, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"rank {rank} failed:\n{out[-4000:]}"
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

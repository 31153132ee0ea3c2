"""`benchmarks/bench_scale.py --train-check`: real training at 1 and 2 gloo ranks, memory vs the plan.

At a tiny size (the scale preset's shape, 4,000 items) the mode must train, evaluate exactly
(a GAUC in the result), read each rank's kernel-held table bytes and sampled peak RSS, and put
them beside `muse-rec plan`'s per-rank numbers; the tables held must be the plan's, and each
of two ranks must hold about half the one-rank tables.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, subprocess_env, venv_bin


def _bench():
    spec = importlib.util.spec_from_file_location("bench_scale", REPO / "benchmarks" / "bench_scale.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


@pytest.mark.timeout(600)
def test_train_check_compares_each_rank_with_the_plan(tmp_path: Path) -> None:
    bench = _bench()
    raw, prep = tmp_path / "raw", tmp_path / "prepared"
    for cmd in (["synth", str(raw), "--preset", "scale", "--quiet", "--no-diagnostics",
                 *bench.synth_args(1, quick=True)],
                ["prepare", str(raw), str(prep), "--no-progress"]):
        out = subprocess.run([venv_bin("muse-rec"), *cmd], capture_output=True, text=True, env=subprocess_env())
        assert out.returncode == 0, out.stderr[-3000:]
    args = ["--train-check", str(prep), "--world-sizes", "1,2", "--steps", "3", "--out", str(tmp_path / "o"),
            "--set", "data.seq_len=200", "--set", "train.batch_size=64", "--set", "train.eval_batch_size=256",
            "--set", "data.num_workers=1"]
    assert bench.main(args) == 0
    res = json.loads((tmp_path / "o" / "train_check.json").read_text())
    assert [r["world_size"] for r in res] == [1, 2]
    for r in res:
        assert r["steps"] == 3 and 0.0 < r["gauc"] < 1.0  # exact evaluation ran
        assert [row["rank"] for row in r["ranks"]] == list(range(r["world_size"]))
        for row in r["ranks"]:
            assert row["planned_table_bytes"] > 0 and row["planned_ddr_bytes"] >= row["planned_table_bytes"]
            assert abs(row["table_ratio"] - 1.0) < 0.15, row
            # Sampled from /proc while it ran: the rank's own process and its loader worker.
            assert 0 < row["peak_rss_anon_bytes"] <= row["peak_rss_bytes"]
            assert row["peak_pss_anon_bytes"] > 0 and row["loader_workers"] >= 1
            assert row["predicted_bytes"] >= row["planned_ddr_bytes"] and row["predicted_ratio"] > 0
            assert row["within_tolerance"] == (abs(row["predicted_ratio"] - 1) <= 0.15)
            share = row["table_share_of_one_rank"]  # of the one-rank table bytes
            assert 0.35 < share < 0.65 if r["world_size"] == 2 else share == 1.0
    assert "| 2 | 1 |" in bench.train_markdown(res)

"""`benchmarks/bench_scale.py --train-check`: real training at 1 and 2 gloo ranks, memory vs the plan.

At a tiny size (the scale preset's shape, 4,000 items) the mode must train, evaluate exactly
(a GAUC in the result), read each rank's kernel-held table bytes and sampled peak RSS, and put
them beside `muse-rec plan`'s per-rank numbers; the tables held must be the plan's, and each
of two ranks must hold about half the one-rank tables.
"""
from __future__ import annotations

import importlib.util
import json
import sys
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


# A stand-in for a rank: on "fork" it forks a child that writes to 64 MiB of its own pages (as a
# loader worker fills its batches) and says so, then both wait until stdin closes.
_RANK = r"""
import os, sys
sys.stdout.write("up\n"); sys.stdout.flush()
if sys.stdin.readline() == "fork\n" and os.fork() == 0:
    pages = bytearray(64 << 20)
    pages[::4096] = b"\x01" * (len(pages) // 4096)
    sys.stdout.write("worker\n"); sys.stdout.flush()
    sys.stdin.read()
    os._exit(0)
sys.stdin.read()
"""


def test_rank_sampler_walks_a_new_workers_pages_as_soon_as_it_appears() -> None:
    """A loader worker that lives less than a second (a short run's) is in the peak PSS with the
    rank's loader: the sampler walks smaps_rollup when a rank gains a worker, not only on its 1 s clock.
    Two samples ~0.1 s apart, before and after the fork: the second must hold the worker's 64 MiB."""
    bench = _bench()
    rank = subprocess.Popen([sys.executable, "-c", _RANK], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert rank.stdout.readline() == "up\n"
        sampler = bench.RankSampler(rank.pid, 1, start=False)
        sampler.sample()
        alone = dict(sampler.peak[0])
        assert alone["workers"] == 0 and alone["Pss_Anon"] > 0
        rank.stdin.write("fork\n")
        rank.stdin.flush()
        assert rank.stdout.readline() == "worker\n"
        sampler.sample()
        peak = sampler.peak[0]
        assert peak["workers"] == 1
        # The worker's 16,384 written pages are its own (PSS counts them whole); the rank's own PSS
        # only moves by what fork shares out, which the worker's PSS takes back. 4 MiB of slack for the
        # interpreters' allocators.
        assert peak["Pss_Anon"] - alone["Pss_Anon"] >= (64 - 4) * 1024, (alone, peak)
        assert len(sampler.series[0]) == 1  # the 1 s series did not take a second point 0.1 s later
    finally:
        rank.stdin.close()
        rank.wait(timeout=30)
        rank.stdout.close()

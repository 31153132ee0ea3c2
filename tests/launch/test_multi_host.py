"""Beyond one host: two torchrun agents as two hosts, and a rank killed mid-epoch survived.

Both use the tiny synthetic release of tests/training/conftest.py and a few steps of the demo spec.
"""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import List

import pandas as pd
import pytest

from muse_rec.distributed.env import free_port
from muse_rec.metrics import read_predictions
from tests.conftest import REPO, subprocess_env, venv_bin
from tests.training.conftest import metrics, overrides, run_ranks, train_args

pytestmark = pytest.mark.multiprocess

SPEC = "specs/demo/muse.yaml"
COMMON = ["train.max_steps=10", "train.checkpoint_every=4", "train.seed=5"]


def predictions(run: Path) -> pd.DataFrame:
    return read_predictions(run / "predictions.parquet").sort_values(["user_key", "item_key"]).reset_index(drop=True)


def assert_same_run(a: Path, b: Path) -> None:
    ma, mb = metrics(a), metrics(b)
    assert ma["steps"] == mb["steps"] == 10 and ma["world_size"] == mb["world_size"] == 2
    for k in ("gauc", "auc", "logloss"):
        assert ma[k] == mb[k], (k, ma[k], mb[k])
    assert ma["by_seq_length"] == mb["by_seq_length"]
    # CPU, fixed seed, same data order: the scores are bit-identical, not merely close.
    pd.testing.assert_frame_equal(predictions(a), predictions(b), check_exact=True)


def test_two_hosts_match_one_host(prepared, tmp_path):
    one = tmp_path / "one"
    run_ranks(train_args(SPEC, prepared, one, COMMON), nproc=2)

    # Two torchrun agents, one rank each, meeting at a c10d store on 127.0.0.1: what a 2-node
    # profile starts on each node (TorchX's dist.ddp with j=2x1).
    two = tmp_path / "two"
    port = free_port()
    agent = [venv_bin("torchrun"), "--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
             "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "two-hosts", "-m", "muse_rec.cli",
             *train_args(SPEC, prepared, two, COMMON)]
    hosts = [subprocess.Popen(agent, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    logs: List[str] = []
    for h in hosts:
        out, _ = h.communicate(timeout=600)
        logs.append(out)
    assert [h.returncode for h in hosts] == [0, 0], [log[-3000:] for log in logs]
    ckpts = sorted(p.name for p in (two / "muse" / "checkpoints").iterdir())
    assert ckpts[-1] == "step-00000010", ckpts
    assert_same_run(one / "muse", two / "muse")


def test_rank_killed_mid_epoch_restarts_and_resumes(prepared, tmp_path):
    full = tmp_path / "full"
    run_ranks(train_args(SPEC, prepared, full, COMMON), nproc=2)

    # The profile's max_restarts reaches torchrun through the component; rank 1 SIGKILLs itself
    # after step 6 (checkpoint at step 4), in the first attempt only.
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(
        "profiles:\n"
        "  restartable:\n"
        "    scheduler: local_cwd\n"
        "    nodes: 1\n"
        "    procs_per_node: 2\n"
        f"    spec: {SPEC}\n"
        "    max_restarts: 1\n"
        "    env: {OMP_NUM_THREADS: '1', MUSE_REC_KILL_RANK_AFTER_STEP: '1:6'}\n"
    )
    killed = tmp_path / "killed"
    sets = []
    for ov in overrides(prepared, killed, COMMON):
        sets += ["--set", ov]
    out = subprocess.run([venv_bin("muse-rec"), "launch", "--profile", "restartable", "--profiles-file", str(profiles),
                          *sets], capture_output=True, text=True, cwd=REPO, env=subprocess_env(), timeout=900)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-5000:]
    assert "rank 1 kills itself with SIGKILL after step 6" in log, log[-5000:]
    assert "restart 1 of the job" in log and "resumed from" in log and "step-00000004" in log, log[-5000:]
    assert "SUCCEEDED" in log
    assert_same_run(full / "muse", killed / "muse")

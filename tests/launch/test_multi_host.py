"""Beyond one host: two torchrun agents as two hosts, and a rank killed mid-epoch survived.

Both use the tiny synthetic release of tests/training/conftest.py and a few steps of the demo spec.
"""
from __future__ import annotations

import shutil
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


def two_host_job(prepared: Path, out_dir: Path, extra: List[str], resume: bool = False) -> None:
    """Two torchrun agents, one rank each, meeting at a c10d store on 127.0.0.1: what a 2-node
    profile starts on each node (TorchX's dist.ddp with j=2x1), as two separate processes."""
    agent = [venv_bin("torchrun"), "--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
             "--rdzv_endpoint", f"127.0.0.1:{free_port()}", "--rdzv_id", "two-hosts", "-m", "muse_rec.cli",
             *train_args(SPEC, prepared, out_dir, extra), *(["--resume"] if resume else [])]
    hosts = [subprocess.Popen(agent, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    logs = [h.communicate(timeout=600)[0] for h in hosts]
    assert [h.returncode for h in hosts] == [0, 0], [log[-3000:] for log in logs]


def test_two_hosts_match_one_host(prepared, tmp_path):
    # Same seed, different topology, different initial weights: the planner keeps a
    # table_row_wise table within one host, so 1 host x 2 ranks and 2 hosts x 1 rank place the
    # small tables differently, and TorchRec initialises every shard with its own rank's RNG.
    # So both continue from one checkpoint, which the two hosts write from scratch.
    two = tmp_path / "two"
    two_host_job(prepared, two, ["train.max_steps=4", "train.checkpoint_every=4", "train.seed=5",
                                 "train.eval_at_end=false"])
    assert sorted(p.name for p in (two / "muse" / "checkpoints").iterdir()) == ["step-00000004"]
    one = tmp_path / "one"
    shutil.copytree(two, one)
    run_ranks(train_args(SPEC, prepared, one, COMMON) + ["--resume"], nproc=2)  # one host, 2 ranks
    two_host_job(prepared, two, COMMON, resume=True)  # train 5..10, checkpoint, evaluate
    ckpts = sorted(p.name for p in (two / "muse" / "checkpoints").iterdir())
    assert ckpts[-1] == "step-00000010", ckpts
    assert_same_run(one / "muse", two / "muse")


def test_rank_killed_mid_epoch_restarts_and_resumes(prepared, tmp_path):
    full = tmp_path / "full"
    # Bit for bit needs the same thread count in both runs (CPU kernels split their reductions by
    # thread): the profile below pins its ranks to 1 thread, whatever the suite's OMP_NUM_THREADS.
    run_ranks(train_args(SPEC, prepared, full, COMMON), nproc=2, env_extra={"OMP_NUM_THREADS": "1"})

    # The profile's max_restarts reaches torchrun through the component; rank 1 SIGKILLs itself
    # after step 6 (checkpoint at step 4), in the first attempt only. Two restarts, not one: once
    # (of 5 runs, load average 18 on 2 cores) the restarted attempt's gloo connectFullMesh was
    # refused inside init_process_group; a further restart is what a cluster job gets too.
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(
        "profiles:\n"
        "  restartable:\n"
        "    scheduler: local_cwd\n"
        "    nodes: 1\n"
        "    procs_per_node: 2\n"
        f"    spec: {SPEC}\n"
        "    max_restarts: 2\n"
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


def test_a_launch_whose_rank_was_killed_says_how_to_continue_and_resumes(prepared, tmp_path):
    """A local launch whose rank was SIGKILLed (no restarts) ended with "finished: FAILED" and nothing on how to
    go on, while an interrupted one says --resume continues the run."""
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(
        "profiles:\n"
        "  two:\n"
        "    scheduler: local_cwd\n"
        "    nodes: 1\n"
        "    procs_per_node: 2\n"
        f"    spec: {SPEC}\n"
        "    env: {OMP_NUM_THREADS: '1'}\n"
    )
    sets = []
    for ov in overrides(prepared, tmp_path, COMMON):
        sets += ["--set", ov]
    launch = [venv_bin("muse-rec"), "launch", "--profile", "two", "--profiles-file", str(profiles), *sets]
    # The kill reaches the ranks from the launcher's environment (local_cwd passes it on), so the resume
    # below, the same command without it, is not killed again at the same step.
    out = subprocess.run(launch, capture_output=True, text=True, cwd=REPO, timeout=600,
                         env=subprocess_env(MUSE_REC_KILL_RANK_AFTER_STEP="1:6"))
    log = out.stdout + out.stderr
    assert out.returncode == 1 and "rank 1 kills itself with SIGKILL after step 6" in log, log[-5000:]
    last = log.strip().splitlines()[-1]
    assert "finished: FAILED; the lines above say why" in last and "the same command with --resume" in last, last
    resumed = subprocess.run(launch + ["--resume"], capture_output=True, text=True, cwd=REPO, env=subprocess_env(),
                             timeout=600)
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0 and "resumed from" in log and "step-00000004" in log, log[-5000:]

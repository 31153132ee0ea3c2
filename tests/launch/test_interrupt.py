"""An interrupted local launch (Ctrl-C, a SIGTERM sent to `muse-rec launch`) stops its ranks and says
in one line how to continue; TorchX's local scheduler raised its SignalException as a traceback, exit 1.
A rank whose torchrun is killed ends with it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest

from tests.conftest import REPO, subprocess_env, venv_bin
from tests.reproduce.test_runner import _processes_naming, kill_and_expect_processes_naming_gone
from tests.training.conftest import free_port, overrides


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the ranks in /proc")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_local_launch_stops_its_ranks_and_says_how_to_resume(prepared, tmp_path: Path, sig):
    sets: List[str] = []
    # Trains far longer than the test waits; a checkpoint at every step shows that training runs.
    for ov in overrides(prepared, tmp_path, ["train.epochs=1000", "train.checkpoint_every=1"]):
        sets += ["--set", ov]
    log = tmp_path / "launch.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "muse_rec.cli", "launch", "--profile", "cpu-single", "--spec",
                                 "specs/demo/din.yaml", *sets, "--rdzv-port", str(free_port())],
                                cwd=REPO, env=subprocess_env(), stdout=f, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not list((tmp_path / "din" / "checkpoints").glob("step-*[0-9]")):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        proc.send_signal(sig)
        assert proc.wait(timeout=120) == 128 + sig, log.read_text()[-3000:]
        text = log.read_text()
        assert "Traceback" not in text, text[-3000:]
        last = text.strip().splitlines()[-1]
        assert last.startswith(f"muse-rec launch: interrupted ({sig.name})") and "--resume" in last, last
        deadline = time.monotonic() + 60  # the rank (and its torchrun) stop with the launcher
        while _processes_naming(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _processes_naming(tmp_path)
    finally:
        proc.kill()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's prctl")
def test_a_rank_ends_when_its_torchrun_is_killed(prepared, tmp_path: Path):
    """SIGKILL of torchrun (the OOM killer, kill -9) left its ranks training in the background, holding
    the run directory, after `muse-rec launch` had reported the job FAILED."""
    cmd = [venv_bin("torchrun"), "--nnodes", "1", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
           "--rdzv_endpoint", f"127.0.0.1:{free_port()}", "-m", "muse_rec.cli", "train", "--spec", "specs/demo/din.yaml",
           "--device", "cpu"]
    for ov in overrides(prepared, tmp_path, ["train.epochs=1000", "train.checkpoint_every=1"]):
        cmd += ["--set", ov]
    agent = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not list((tmp_path / "din" / "checkpoints").glob("step-*[0-9]")):
            assert agent.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        kill_and_expect_processes_naming_gone(agent, tmp_path)
    finally:
        agent.kill()
        for pid in _processes_naming(tmp_path):  # the rank this test started, where it outlived its torchrun
            os.kill(pid, signal.SIGKILL)


def test_a_terminated_train_says_how_to_continue_and_resumes(prepared, tmp_path: Path):
    """SIGTERM (a cluster's preemption, `kill PID`) ended `muse-rec train` silently (killed by the signal):
    the log said nothing of what happened or what to do."""
    sets: List[str] = []
    for ov in overrides(prepared, tmp_path, ["train.epochs=1000", "train.checkpoint_every=1"]):
        sets += ["--set", ov]
    log = tmp_path / "train.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "muse_rec.cli", "train", "--spec", "specs/demo/din.yaml", *sets,
                                 "--device", "cpu"], cwd=REPO, env=subprocess_env(), stdout=f, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not list((tmp_path / "din" / "checkpoints").glob("step-*[0-9]")):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        proc.terminate()
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM, log.read_text()[-3000:]
        last = log.read_text().strip().splitlines()[-1]
        assert last.startswith("muse-rec train: interrupted") and "--resume" in last, last
    finally:
        proc.kill()
    step = max(int(p.name.split("-")[1]) for p in (tmp_path / "din" / "checkpoints").glob("step-*[0-9]"))
    out = subprocess.run([sys.executable, "-m", "muse_rec.cli", "train", "--spec", "specs/demo/din.yaml", *sets,
                          "--set", f"train.max_steps={step + 1}", "--device", "cpu", "--resume"],
                         cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and f"resumed from {tmp_path / 'din' / 'checkpoints'}" in out.stderr, out.stderr[-3000:]

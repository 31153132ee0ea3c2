"""Local launches without the venv on PATH (`.venv/bin/muse-rec launch`, `.venv/bin/torchx run`).

The ranks' torchrun is the interpreter's that submits the job, not whatever `torchrun` the PATH
holds; a program local_cwd cannot find is one line and exit 2, before anything starts.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from tests.conftest import REPO, subprocess_env, venv_bin
from tests.training.conftest import overrides

FAKE = "a torchrun of another environment"


def path_without_the_venv(tmp_path: Path) -> str:
    """This PATH less the venv's bin, with a `torchrun` of another environment first (it fails)."""
    fake = tmp_path / "other-env-bin"
    fake.mkdir()
    (fake / "torchrun").write_text(f"#!/bin/sh\necho '{FAKE}' >&2\nexit 3\n")
    (fake / "torchrun").chmod(0o755)
    venv = Path(sys.executable).parent.resolve()
    keep = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and Path(p).resolve() != venv]
    return os.pathsep.join([str(fake), *keep])


def run(cmd: List[str], path: str) -> subprocess.CompletedProcess:
    env = subprocess_env()
    env["PATH"] = path
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)


def test_muse_rec_launch_runs_without_the_venv_on_path(prepared, tmp_path):
    sets: List[str] = []
    for ov in overrides(prepared, tmp_path, ["train.max_steps=2"]):
        sets += ["--set", ov]
    out = run([venv_bin("muse-rec"), "launch", "--profile", "cpu-single", "--spec", "specs/demo/din.yaml", *sets],
              path_without_the_venv(tmp_path))
    log = out.stdout + out.stderr
    assert out.returncode == 0 and "SUCCEEDED" in log, log[-4000:]  # was: "torchrun: command not found", rc 1
    assert FAKE not in log
    assert (tmp_path / "din" / "metrics.json").exists()


@pytest.mark.torchx
def test_torchx_run_runs_without_the_venv_on_path(prepared, tmp_path):
    sets = ",".join(overrides(prepared, tmp_path, ["train.max_steps=2"]))
    out = run([venv_bin("torchx"), "run", "-s", "local_cwd", "components/train.py:train", "--profile", "cpu-single",
               "--spec", "specs/demo/din.yaml", "--set", sets], path_without_the_venv(tmp_path))
    log = out.stdout + out.stderr
    assert out.returncode == 0 and "SUCCEEDED" in log, log[-4000:]  # was: "state: FAILED (5)", no reason, rc 1
    assert FAKE not in log
    assert (tmp_path / "din" / "metrics.json").exists()


def test_a_missing_entrypoint_is_one_line_and_exit_2(prepared, tmp_path):
    """No `bash` on PATH: local_cwd cannot start dist.ddp's role; said before anything is submitted."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    sets = overrides(prepared, tmp_path, ["train.max_steps=2"])
    launch = run([venv_bin("muse-rec"), "launch", "--profile", "cpu-single", "--spec", "specs/demo/din.yaml",
                  *[a for ov in sets for a in ("--set", ov)]], str(empty))
    assert launch.returncode == 2, (launch.stdout, launch.stderr)
    assert launch.stderr.strip().splitlines() == [
        "muse-rec launch: cannot start the trainer role: its entrypoint 'bash' is not found on PATH; "
        "install it or put its directory on PATH"], launch.stderr
    torchx = run([venv_bin("torchx"), "run", "-s", "local_cwd", "components/train.py:train", "--profile", "cpu-single",
                  "--spec", "specs/demo/din.yaml", "--set", ",".join(sets)], str(empty))
    assert torchx.returncode == 2 and "Traceback" not in torchx.stderr, torchx.stderr[-3000:]
    assert "muse_rec: cannot start the trainer role: its entrypoint 'bash' is not found on PATH" in torchx.stderr
    assert not (tmp_path / "din").exists()


def test_torchrun_is_this_interpreters_on_local_cwd_only(tmp_path, monkeypatch):
    from muse_rec.launch import build_app, local_start_problem
    from muse_rec.launch_profiles import get_profile

    profile = get_profile("multi-node")
    local = build_app(profile, scheduler="local_cwd").roles[0]
    assert local.entrypoint == "bash" and local.args[1].startswith(f"{sys.executable} -m torch.distributed.run ")
    # Slurm, Kubernetes: the node's or image's torchrun; this machine's interpreter path means nothing there.
    for scheduler in (None, "slurm", "kubernetes"):
        assert build_app(profile, scheduler=scheduler).roles[0].args[1].startswith("torchrun --rdzv_backend c10d ")
    # A role command whose program is not on PATH names it and what to do.
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    remote = build_app(profile, scheduler="slurm")
    remote.roles[0].entrypoint = "/bin/sh"
    problem = local_start_problem(remote)
    assert problem.startswith("cannot start the trainer role: 'torchrun', which its command starts, is not found on "
                              "PATH; put the bin directory of the Python environment"), problem
    assert local_start_problem(build_app(profile, scheduler="local_cwd")) is not None  # 'bash' itself is missing

"""scripts/setup.sh's CUDA profile: what it asks pip for beside a CUDA machine's own torch.

The script runs for real against a fake venv whose `python` answers the torch version and
records every `pip install` instead of running it, so no network and no CUDA are needed.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from muse_rec import _versions

REPO = Path(__file__).resolve().parents[2]

FAKE_PYTHON = """#!/usr/bin/env bash
# `python -m pip ...` is logged, `import torch` answers a CUDA torch, the rest is real Python.
if [[ "$1" == "-m" && "$2" == "pip" ]]; then echo "${@:3}" >> "$PIP_LOG"; exit 0; fi
if [[ "$1" == "-c" && "$2" == *"import torch"* ]]; then echo "$FAKE_TORCH"; exit 0; fi
if [[ "$1" == "-m" && "$2" == "muse_rec.cli" ]]; then echo "(muse-rec $3)"; exit 0; fi  # nothing was installed
exec "$REAL_PYTHON" "$@"
"""


def _run_cuda_setup(tmp_path: Path, torch_version: str) -> tuple[subprocess.CompletedProcess, list[str], str]:
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "scripts", repo / "scripts")
    shutil.copytree(REPO / "muse_rec", repo / "muse_rec", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "setup.cfg", repo / "setup.cfg")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    py = venv / "bin" / "python"
    py.write_text(FAKE_PYTHON)
    py.chmod(0o755)
    log = tmp_path / "pip.log"
    env = {**os.environ, "MUSE_REC_PROFILE": "cuda", "MUSE_REC_VENV": str(venv), "PIP_LOG": str(log),
           "FAKE_TORCH": torch_version, "REAL_PYTHON": sys.executable, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(repo / "scripts" / "setup.sh")], env=env, capture_output=True, text=True,
                          timeout=120)
    calls = log.read_text().splitlines() if log.exists() else []
    constraint = venv / ".torch-constraint.txt"
    return proc, calls, constraint.read_text() if constraint.exists() else ""


def test_cuda_requirements_follow_torch():
    assert _versions.cuda_requirements("2.11.0+cu130") == ["fbgemm-gpu==1.6.0", "torchrec==1.6.*", "tensordict==0.15.3"]
    assert _versions.cuda_requirements("2.13.1") == ["fbgemm-gpu==1.8.0", "torchrec==1.8.*", "tensordict==0.15.3"]
    # tensordict 0.15 requires torch >= 2.11: an older torch must not be asked for it.
    assert _versions.cuda_requirements("2.10.0")[2] == "tensordict==0.14.3"
    with pytest.raises(ValueError, match="no known FBGEMM release for torch 1.13"):
        _versions.cuda_requirements("1.13.0")


@pytest.mark.parametrize("torch_version,fbgemm,torchrec", [("2.11.0+cu130", "1.6.0", "1.6.*"),
                                                           ("2.12.0", "1.7.0", "1.7.*")])
def test_cuda_profile_installs_the_set_that_matches_the_machines_torch(tmp_path, torch_version, fbgemm, torchrec):
    proc, calls, constraint = _run_cuda_setup(tmp_path, torch_version)
    assert proc.returncode == 0, proc.stderr
    flat = " ".join(calls)
    assert f"fbgemm-gpu=={fbgemm}" in flat
    # TorchRec of the same minor as FBGEMM (the version guard refuses any other), never the CPU pin.
    assert f"--no-deps torchrec=={torchrec}" in flat
    assert f"torchrec=={_versions.TORCHREC_VERSION}" not in flat
    # No call may replace the machine's torch: every one carries the constraint on it.
    assert constraint.strip() == f"torch=={torch_version}"
    assert calls and all("-c" in c.split() and ".torch-constraint.txt" in c for c in calls), calls
    assert not any(c.split()[-1].startswith("torch==") for c in calls)


def test_an_unknown_profile_is_refused_before_the_venv_is_made(tmp_path):
    # Before: MUSE_REC_PROFILE=gpu (a typo of cuda) first created the venv, then said "unknown".
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "scripts", repo / "scripts")
    shutil.copytree(REPO / "muse_rec", repo / "muse_rec", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "setup.cfg", repo / "setup.cfg")
    venv = tmp_path / "venv"
    env = {**os.environ, "MUSE_REC_PROFILE": "gpu", "MUSE_REC_VENV": str(venv), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(repo / "scripts" / "setup.sh")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stderr.strip().splitlines() == ["[setup] unknown MUSE_REC_PROFILE=gpu (cpu|cuda)"], proc.stderr
    assert not venv.exists() and proc.stdout == ""

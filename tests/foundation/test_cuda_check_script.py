"""scripts/cuda_check.sh's inputs: CHECK_DIR, which the script empties first, so it must be the script's
own; DEVICES and METHODS, checked before any work.

The script runs for real with PYTHON a stub that only records its calls: no CUDA, no tests, no data.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import List, Tuple

import pytest

REPO = Path(__file__).resolve().parents[2]

RECORDER = """#!/usr/bin/env bash
echo "python $*" >> "$CALLS"
"""


def _run_check(tmp_path: Path, check_dir: Path, devices: str = "cpu",
               methods: str = "muse") -> Tuple[subprocess.CompletedProcess, List[str]]:
    """cuda_check.sh with CHECK_DIR=`check_dir`, DEVICES, METHODS and a recording PYTHON: (the process,
    its calls). The stub repository's specs/demo holds muse.yaml and sim_soft.yaml."""
    repo = tmp_path / "repo"
    if not repo.exists():
        (repo / "scripts").mkdir(parents=True)
        shutil.copy(REPO / "scripts" / "cuda_check.sh", repo / "scripts" / "cuda_check.sh")
        (repo / "specs" / "demo").mkdir(parents=True)
        for method in ("muse", "sim_soft"):
            (repo / "specs" / "demo" / f"{method}.yaml").write_text("")
        (tmp_path / "python").write_text(RECORDER)
        (tmp_path / "python").chmod(0o755)
    calls = tmp_path / "calls.log"
    calls.unlink(missing_ok=True)
    env = {**os.environ, "PYTHON": str(tmp_path / "python"), "CHECK_DIR": str(check_dir), "CALLS": str(calls),
           "DEVICES": devices, "METHODS": methods}
    proc = subprocess.run(["bash", str(repo / "scripts" / "cuda_check.sh")], env=env, capture_output=True, text=True,
                          timeout=60)
    return proc, calls.read_text().splitlines() if calls.exists() else []


@pytest.mark.parametrize("name", ["keep.txt", ".bashrc"])
def test_a_check_dir_holding_other_files_is_refused_not_emptied(tmp_path, name):
    # Before: `rm -rf "$CHECK_DIR"` ran first whatever it held: CHECK_DIR=. deleted the repository,
    # CHECK_DIR=$HOME the home directory.
    mine = tmp_path / "work"
    (mine / "runs").mkdir(parents=True)  # a name the check writes does not make the directory the check's
    (mine / name).write_text("a user's file")
    proc, calls = _run_check(tmp_path, mine)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert (mine / name).read_text() == "a user's file" and (mine / "runs").is_dir()
    assert calls == [], calls
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"CHECK_DIR={mine}" in lines[0], proc.stderr


def test_a_new_empty_or_earlier_check_dir_is_used(tmp_path):
    fresh = tmp_path / "check"
    proc, calls = _run_check(tmp_path, fresh)
    assert proc.returncode == 0 and calls, proc.stderr
    (fresh / "raw").mkdir()  # what an earlier check left: emptied by the next one
    proc, calls = _run_check(tmp_path, fresh)
    assert proc.returncode == 0 and calls, proc.stderr
    assert not (fresh / "raw").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    proc, calls = _run_check(tmp_path, empty)
    assert proc.returncode == 0 and calls, proc.stderr
    # One an earlier version of the script wrote (no marker: only the check's own entries) is emptied too.
    (empty / ".muse_rec_cuda_check").unlink(missing_ok=True)
    (empty / "runs").mkdir()
    proc, calls = _run_check(tmp_path, empty)
    assert proc.returncode == 0 and calls and not (empty / "runs").exists(), proc.stderr


@pytest.mark.parametrize("devices,methods,words", [
    ("gpu", "muse", "DEVICES='gpu': 'gpu' is not cuda or cpu"),
    ("cpu cuda0", "muse", "'cuda0' is not cuda or cpu"),
    (" ", "muse", "DEVICES=' ': names no device"),
    ("cpu", "muse sim-soft", "METHODS='muse sim-soft': no spec specs/demo/sim-soft.yaml"),
    ("cpu", " ", "METHODS=' ': names no method"),
])
def test_bad_devices_or_methods_are_one_line_before_any_work(tmp_path, devices, methods, words):
    # Before: the check ran the stack and the CUDA-only tests (minutes on a GPU machine), emptied CHECK_DIR,
    # made the data and only then failed at the typo's training (or, for DEVICES=' ', at the evaluation).
    check = tmp_path / "check"
    check.mkdir()
    (check / "runs").mkdir()  # an earlier check's results: kept
    proc, calls = _run_check(tmp_path, check, devices, methods)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert calls == [] and (check / "runs").is_dir(), calls
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], proc.stderr


def test_all_methods_are_every_demo_spec(tmp_path):
    proc, calls = _run_check(tmp_path, tmp_path / "check", "cpu", "all")
    assert proc.returncode == 0, proc.stderr
    trained = [c for c in calls if " train " in c]
    assert [c.split("--spec ")[1].split()[0] for c in trained] == ["specs/demo/muse.yaml", "specs/demo/sim_soft.yaml"]

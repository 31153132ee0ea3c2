"""A local `muse-rec launch` whose ranks refuse their input exits 2, as `muse-rec train` does, not 1."""
from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np

from tests.conftest import REPO, subprocess_env

SPEC = "specs/demo/din.yaml"  # any spec: the ranks refuse the data at its first batch
NOT_A_LABEL = 7  # a click label is 0 or 1


def test_a_launch_whose_ranks_refuse_their_input_exits_2(tmp_path, prepared):
    """Data the preflight does not read through (a label outside {0, 1}, found as the batches are read): each
    rank said so in one line and exited 2, torchrun reported the job as failed, and the launch exited 1 saying
    that --resume continues the run. (Data that is not there at all the preflight refuses before submitting.)"""
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text("profiles:\n  two:\n    scheduler: local_cwd\n    nodes: 1\n    procs_per_node: 2\n"
                        f"    spec: {SPEC}\n    env: {{OMP_NUM_THREADS: '1'}}\n")
    damaged = tmp_path / "damaged"
    shutil.copytree(prepared, damaged)
    labels = np.load(damaged / "train" / "labels.npy", mmap_mode="r+")
    labels[:] = NOT_A_LABEL
    labels.flush()
    del labels
    launch = [sys.executable, "-m", "muse_rec.cli", "launch", "--profile", "two", "--profiles-file", str(profiles),
              "--set", f"data.prepared={damaged}", "--set", f"output_dir={tmp_path / 'run'}"]
    out = subprocess.run(launch, capture_output=True, text=True, cwd=REPO, env=subprocess_env(), timeout=300)
    log = out.stdout + out.stderr
    assert out.returncode == 2, log[-5000:]
    assert f"muse-rec train: {damaged}/train/labels.npy: label {NOT_A_LABEL} is outside [0, 2)" in log, log[-5000:]
    last = log.strip().splitlines()[-1]
    assert last.endswith("finished: FAILED; rank(s) 0, 1 refused the input (exit 2): the lines above name it; fix it "
                         "and run the same command"), last

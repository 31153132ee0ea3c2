"""A local `muse-rec launch` whose ranks refuse their input exits 2, as `muse-rec train` does, not 1."""
from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO, subprocess_env

SPEC = "specs/demo/din.yaml"  # any spec: the ranks refuse the data before the model is built


def test_a_launch_whose_ranks_refuse_their_input_exits_2(tmp_path):
    """Data the preflight does not open (a mistyped data.prepared): each rank said so in one line and exited 2,
    torchrun reported the job as failed, and the launch exited 1 saying that --resume continues the run."""
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text("profiles:\n  two:\n    scheduler: local_cwd\n    nodes: 1\n    procs_per_node: 2\n"
                        f"    spec: {SPEC}\n    env: {{OMP_NUM_THREADS: '1'}}\n")
    missing = tmp_path / "typo"
    launch = [sys.executable, "-m", "muse_rec.cli", "launch", "--profile", "two", "--profiles-file", str(profiles),
              "--set", f"data.prepared={missing}", "--set", f"output_dir={tmp_path / 'run'}"]
    out = subprocess.run(launch, capture_output=True, text=True, cwd=REPO, env=subprocess_env(), timeout=300)
    log = out.stdout + out.stderr
    assert out.returncode == 2, log[-5000:]
    assert f"muse-rec train: data.prepared = '{missing}': no prepared data there" in log, log[-5000:]
    last = log.strip().splitlines()[-1]
    assert last.endswith("finished: FAILED; rank(s) 0, 1 refused the input (exit 2): the lines above name it; fix it "
                         "and run the same command"), last

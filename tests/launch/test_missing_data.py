"""A local launch of a spec whose prepared data is not there: refused once, before any rank starts."""
from __future__ import annotations

import subprocess

from tests.conftest import REPO, subprocess_env, venv_bin


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, cwd=REPO, env=subprocess_env(), timeout=300)


def test_missing_prepared_data_is_one_line_before_submitting(tmp_path):
    """`muse-rec launch` and `torchx run` on local_cwd submitted the job; every rank printed the same
    "no prepared data there" line and torchrun its ChildFailedError traceback (about 40 lines, exit 2
    resp. 1). Now one line naming data.prepared, exit 2, and no rank starts (no run directory is made).
    A dry run submits nothing, so it prints the job whether or not the data is there yet."""
    into = [f"output_dir={tmp_path}/runs/{{name}}", f"data.prepared={tmp_path}/absent"]
    sets = [w for ov in into for w in ("--set", ov)]
    launch = _run(venv_bin("muse-rec"), "launch", "--profile", "cpu-single", "--spec", "specs/demo/din.yaml", *sets)
    torchx = _run(venv_bin("torchx"), "--log_level", "WARNING", "run", "-s", "local_cwd", "components/train.py:train",
                  "--profile", "cpu-single", "--spec", "specs/demo/din.yaml", "--set", ",".join(into))
    for out in (launch, torchx):
        assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
        assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr[-3000:]
        assert f"data.prepared = '{tmp_path}/absent': no prepared data there" in out.stderr, out.stderr
        # What to do, for the real release too: it suggested synthetic data only, and no flag to point elsewhere.
        assert "`muse-rec prepare RAW PREPARED` (the Taobao-MM tables as downloaded" in out.stderr, out.stderr
        assert out.stderr.rstrip().endswith("--set data.prepared=PREPARED."), out.stderr
    assert not (tmp_path / "runs").exists()
    dry = _run(venv_bin("muse-rec"), "launch", "--profile", "cpu-single", "--spec", "specs/demo/din.yaml", *sets,
               "--dryrun")
    assert dry.returncode == 0, dry.stderr[-3000:]
    dry = _run(venv_bin("torchx"), "--log_level", "WARNING", "run", "--dryrun", "-s", "local_cwd",
               "components/train.py:train", "--profile", "cpu-single", "--spec", "specs/demo/din.yaml",
               "--set", ",".join(into))
    assert dry.returncode == 0, dry.stderr[-3000:]

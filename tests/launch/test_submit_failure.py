"""`muse-rec launch` to a remote scheduler whose client cannot submit from this machine."""
from __future__ import annotations

import subprocess

from tests.conftest import REPO, subprocess_env, venv_bin


def test_a_slurm_launch_without_sbatch_is_one_line(tmp_path):
    """Where `sbatch` is not on PATH (a laptop, a node that is not a Slurm login node), the submission was
    TorchX's FileNotFoundError traceback (exit 1). Now one line naming the scheduler, the error and
    where to submit from; the same exit 1 (nothing about the input is wrong)."""
    no_programs = tmp_path / "empty-bin"  # a PATH holding no sbatch, whatever this machine has
    no_programs.mkdir()
    out = subprocess.run([venv_bin("muse-rec"), "launch", "--profile", "multi-node"], capture_output=True, text=True,
                         cwd=REPO, env=subprocess_env(PATH=str(no_programs)), timeout=120)
    assert out.returncode == 1, (out.returncode, out.stderr[-3000:])
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr[-3000:]
    assert "muse-rec launch: could not submit to the slurm scheduler (FileNotFoundError:" in out.stderr, out.stderr
    assert "'sbatch'" in out.stderr and "Slurm login node" in out.stderr, out.stderr


def test_a_slurm_job_dir_is_refused_by_muse_rec_launch(tmp_path):
    """docs/launch.md listed `job_dir` among the Slurm options. TorchX starts the job there (sbatch --chdir) and
    fills it only from `torchx run`'s workspace, which `muse-rec launch` does not build: a dry run printed the job,
    a launch was a FileNotFoundError traceback where job_dir did not exist, and where it did every node would
    start in a directory without the spec or .venv. Now one line naming the key, exit 2, before submitting."""
    job_dir = tmp_path / "job"
    for dry in (["--dryrun"], []):
        out = subprocess.run([venv_bin("muse-rec"), "launch", "--profile", "multi-node", "--scheduler-arg",
                              f"job_dir={job_dir}", *dry], capture_output=True, text=True, cwd=REPO,
                             env=subprocess_env(PATH=str(tmp_path)), timeout=120)
        assert out.returncode == 2, (dry, out.returncode, out.stderr[-3000:])
        assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr[-3000:]
        assert "muse-rec launch: --scheduler-arg job_dir: muse-rec launch starts the job in the " \
               "directory it is submitted from" in out.stderr, out.stderr
    assert not job_dir.exists()

"""`muse-rec launch` to a TorchX scheduler whose module cannot be loaded in this environment."""
from __future__ import annotations

import importlib.util
import subprocess

import pytest

from muse_rec.launch import client_install_command, scheduler_cfg
from muse_rec.launch_profiles import LaunchProfile, ProfileError
from tests.conftest import REPO, subprocess_env, venv_bin


class _BrokenRunner:
    """A TorchX runner whose scheduler module raises ``error`` as it is imported."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def scheduler_run_opts(self, scheduler: str):
        raise self.error


def _profile(scheduler: str) -> LaunchProfile:
    return LaunchProfile(name="p", scheduler=scheduler, nodes=1, procs_per_node=2, cpu=2, gpu=0, memMB=8000,
                         spec="specs/demo/muse.yaml")


def test_a_scheduler_that_fails_to_import_names_the_profile_key():
    """TorchX 0.7's ray module fails at its import with a NameError where ray is not installed; only a
    ModuleNotFoundError was caught, so that was a traceback (exit 1)."""
    with pytest.raises(ProfileError, match=r"^profiles\.p\.scheduler: TorchX cannot load its ray scheduler here "
                                           r"\(NameError: name 'JobSubmissionClient' is not defined\)"):
        scheduler_cfg(_profile("ray"), "ray", _BrokenRunner(NameError("name 'JobSubmissionClient' is not defined")))
    # A missing module is still the caller's to name (it says which package to install).
    with pytest.raises(ModuleNotFoundError):
        scheduler_cfg(_profile("aws_batch"), "aws_batch", _BrokenRunner(ModuleNotFoundError("boto3", name="boto3")))


@pytest.mark.skipif(importlib.util.find_spec("ray") is not None, reason="ray is installed: its scheduler loads")
@pytest.mark.parametrize("dry", [["--dryrun"], []])
def test_a_launch_to_the_ray_scheduler_without_ray_is_one_line(tmp_path, dry):
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text("profiles:\n  r: {scheduler: ray, nodes: 2, procs_per_node: 1, cpu: 2, gpu: 0, memMB: 8000, "
                        "spec: specs/demo/muse.yaml}\n")
    out = subprocess.run([venv_bin("muse-rec"), "launch", "--profile", "r", "--profiles-file", str(profiles),
                          "--set", f"output_dir={tmp_path}/run", *dry], capture_output=True, text=True, cwd=REPO,
                         env=subprocess_env(), timeout=120)
    assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr[-3000:]
    assert out.stderr.startswith("muse-rec launch: profiles.r.scheduler: TorchX cannot load its ray scheduler here ("), \
        out.stderr
    assert not (tmp_path / "run").exists()


def test_a_missing_client_names_a_pip_command_that_installs_it():
    """gcp_batch imports google.cloud: the launch said 'pip install google.cloud', which installs nothing that
    provides it; TorchX's extra of the scheduler's name does (google-cloud-batch and what else it imports)."""
    assert client_install_command("gcp_batch", "google.cloud") == "pip install 'torchx[gcp_batch]'"
    assert client_install_command("aws_sagemaker", "boto3") == "pip install boto3"  # TorchX has no such extra


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is not there either
        return False


@pytest.mark.skipif(_installed("google.cloud"), reason="google.cloud is installed: the gcp_batch scheduler loads")
def test_a_dryrun_to_gcp_batch_without_its_client_names_the_extra(tmp_path):
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text("profiles:\n  g: {scheduler: gcp_batch, nodes: 2, procs_per_node: 1, cpu: 2, gpu: 0, "
                        "memMB: 8000, spec: specs/demo/muse.yaml, image: x/y:1}\n")
    out = subprocess.run([venv_bin("muse-rec"), "launch", "--profile", "g", "--profiles-file", str(profiles),
                          "--set", f"output_dir={tmp_path}/run", "--dryrun"], capture_output=True, text=True,
                         cwd=REPO, env=subprocess_env(), timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr, (out.returncode, out.stderr[-3000:])
    assert out.stderr.strip() == ("muse-rec launch: the gcp_batch scheduler needs the Python package 'google.cloud' "
                                  "(pip install 'torchx[gcp_batch]')"), out.stderr


@pytest.mark.skipif(_installed("boto3"), reason="boto3 is installed: the aws_batch scheduler can submit")
def test_a_launch_to_aws_batch_without_boto3_says_what_to_install(tmp_path):
    """aws_batch imports boto3 only to submit: its dry run printed the job, and the launch said 'could not submit
    ... (ModuleNotFoundError: No module named 'boto3'); submit from where that scheduler can be reached' (exit 1),
    where installing the client here is what is needed."""
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text("profiles:\n  a: {scheduler: aws_batch, nodes: 2, procs_per_node: 1, cpu: 2, gpu: 0, "
                        "memMB: 8000, spec: specs/demo/muse.yaml, image: x/y:1, scheduler_args: {queue: q}}\n")
    out = subprocess.run([venv_bin("muse-rec"), "launch", "--profile", "a", "--profiles-file", str(profiles),
                          "--set", f"output_dir={tmp_path}/run"], capture_output=True, text=True, cwd=REPO,
                         env=subprocess_env(), timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr, (out.returncode, out.stderr[-3000:])
    # (TorchX's own UserWarning about the instance type may come first.)
    assert out.stderr.strip().splitlines()[-1] == ("muse-rec launch: the aws_batch scheduler needs the Python "
                                                   "package 'boto3' (pip install 'torchx[aws_batch]')"), out.stderr

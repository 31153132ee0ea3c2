"""torchx.yaml launch profiles and the TorchX component built from them."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from torchx.specs import AppDef

from components.train import train as train_component
from muse_rec.launch_profiles import ProfileError, get_profile, load_profiles
from muse_rec.spec import load_spec

REPO = Path(__file__).resolve().parents[2]


def test_every_profile_is_valid_and_names_an_existing_spec():
    profiles = load_profiles()
    assert {"cpu-demo", "gpu-node", "multi-node"} <= set(profiles)
    for p in profiles.values():
        assert (REPO / p.spec).exists(), f"profile {p.name} names missing spec {p.spec}"
        load_spec(REPO / p.spec)
    assert profiles["cpu-demo"].j == "1x2" and profiles["cpu-demo"].gpu == 0
    assert profiles["gpu-node"].world_size == 8


def test_component_uses_the_profile():
    app = train_component(profile="cpu-demo", set="train.max_steps=3,model.tower_hidden=[8,4],train.batch_size=8",
                          rdzv_port=12345)
    assert isinstance(app, AppDef)
    role = app.roles[0]
    cmd = " ".join(role.args)
    assert "--nproc_per_node 2" in cmd and "--nnodes 1" in cmd
    assert "-m muse_rec.cli train --spec specs/demo/muse.yaml" in cmd
    assert "--set train.max_steps=3 --set 'model.tower_hidden=[8,4]' --set train.batch_size=8" in cmd
    assert role.env["OMP_NUM_THREADS"] == "1"
    gpu = train_component(profile="gpu-node", spec="specs/taobao_mm_p90/din.yaml").roles[0]
    assert gpu.resource.gpu == 8 and "--nproc_per_node 8" in " ".join(gpu.args)
    assert "specs/taobao_mm_p90/din.yaml" in " ".join(gpu.args)


def test_bad_profiles_name_the_key(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("profiles:\n  x: {scheduler: local_cwd, nodes: 1, procs_per_node: two, spec: s.yaml}\n")
    with pytest.raises(ProfileError, match=r"profiles.x.procs_per_node: expected a non-negative integer"):
        load_profiles(str(f))
    f.write_text("profiles:\n  x: {scheduler: local_cwd, nodes: 1, procs_per_node: 1, spec: s.yaml, gpus: 1}\n")
    with pytest.raises(ProfileError, match=r"profiles.x.gpus: unknown key"):
        load_profiles(str(f))
    f.write_text("profiles:\n  x: {nodes: 1, procs_per_node: 1, spec: s.yaml}\n")
    with pytest.raises(ProfileError, match=r"profiles.x.scheduler: required key is missing"):
        load_profiles(str(f))
    with pytest.raises(ProfileError, match="no profile 'nope'"):
        get_profile("nope")


def test_profiles_carry_scheduler_options_and_restarts():
    profiles = load_profiles()
    slurm, k8s = profiles["multi-node"], profiles["k8s-multi-node"]
    assert slurm.scheduler == "slurm" and slurm.scheduler_args["partition"] == "gpu"
    assert k8s.scheduler == "kubernetes" and k8s.scheduler_args["queue"] == "default"
    assert slurm.max_restarts >= 1 and k8s.max_restarts >= 1
    # torchrun reads --max-restarts from PET_MAX_RESTARTS (TorchX 0.7's dist.ddp has no such argument)
    role = train_component(profile="multi-node").roles[0]
    assert role.env["PET_MAX_RESTARTS"] == str(slurm.max_restarts)
    assert role.num_replicas == 4 and "--nnodes 4" in role.args[1] and "--nproc_per_node 8" in role.args[1]
    assert "PET_MAX_RESTARTS" not in train_component(profile="cpu-demo").roles[0].env
    assert train_component(profile="cpu-demo", max_restarts=3).roles[0].env["PET_MAX_RESTARTS"] == "3"


def test_component_warns_when_torchx_run_scheduler_is_not_the_profiles(monkeypatch, capsys):
    # Dry runs (`torchx run --dryrun`): a local_cwd submission would first look for the profile's prepared data.
    monkeypatch.setattr("sys.argv", ["/x/bin/torchx", "run", "--dryrun", "-s", "local_cwd",
                                     "components/train.py:train", "--profile", "multi-node"])
    train_component(profile="multi-node")
    err = capsys.readouterr().err
    assert "profile 'multi-node' is meant for the slurm scheduler, but this `torchx run` submits to local_cwd" in err
    monkeypatch.setattr("sys.argv", ["/x/bin/torchx", "run", "--dryrun", "--scheduler", "slurm",
                                     "components/train.py:train"])
    train_component(profile="multi-node")
    assert "WARNING" not in capsys.readouterr().err
    # No -s: torchx takes .torchxconfig's [cli:run] scheduler (local_cwd), so the warning shows.
    monkeypatch.chdir(REPO)
    monkeypatch.setattr("sys.argv", ["/x/bin/torchx", "run", "--dryrun", "components/train.py:train", "-s", "slurm"])
    train_component(profile="multi-node")
    assert "submits to local_cwd" in capsys.readouterr().err  # "-s" after the component is the component's


def test_scheduler_args_are_checked_against_the_scheduler(tmp_path):
    from torchx.runner import get_runner

    from muse_rec.launch import scheduler_cfg

    f = tmp_path / "p.yaml"
    f.write_text("profiles:\n"
                 "  s: {scheduler: slurm, nodes: 2, procs_per_node: 1, spec: s.yaml, scheduler_args: {account: x}}\n"
                 "  k: {scheduler: kubernetes, nodes: 2, procs_per_node: 1, spec: s.yaml}\n")
    runner = get_runner()
    with pytest.raises(ProfileError, match=r"profiles.s.scheduler_args.account: not an option of the slurm scheduler"):
        scheduler_cfg(get_profile("s", str(f)), "slurm", runner)
    with pytest.raises(ProfileError, match=r"profiles.k.scheduler_args.queue: required by the kubernetes scheduler"):
        scheduler_cfg(get_profile("k", str(f)), "kubernetes", runner)


def test_a_profiles_file_that_cannot_be_read_is_one_line_naming_it(tmp_path, capsys):
    """`launch --profiles-file DIR` was an IsADirectoryError traceback, and a binary file a bare
    "'utf-8' codec can't decode ..." line that named no file."""
    from muse_rec.cli import main

    binary = tmp_path / "p.yaml"
    binary.write_bytes(b"profiles: \xf0\x28\x8c\x28\n")
    for bad in (tmp_path, binary):
        with pytest.raises(ProfileError, match=rf"^{bad}: cannot read the launch profiles file \("):
            load_profiles(str(bad))
        assert main(["launch", "--profile", "cpu-demo", "--dryrun", "--profiles-file", str(bad)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"muse-rec launch: {bad}: cannot read the launch profiles file (") and err.count("\n") == 1


_PROFILE = "{scheduler: local_cwd, nodes: 1, procs_per_node: 1, spec: specs/demo/din.yaml"


@pytest.mark.parametrize("text, needle", [
    # A key given twice was silently its last value (here 2 nodes), as it is refused in a spec.
    (f"profiles:\n  x: {_PROFILE}, nodes: 2}}\n", "duplicate key 'nodes'"),
    (f"profiles:\n  x: {_PROFILE}}}\n  x: {_PROFILE}, nodes: 4}}\n", "duplicate key 'x'"),
    # PyYAML's recursive composer: a RecursionError traceback (exit 1).
    ("profiles: " + "[" * 3000 + "]" * 3000 + "\n", "nested too deeply to parse"),
    # Values YAML cannot convert: one line, but without the file's name.
    (f"profiles:\n  x: {_PROFILE}, memMB: {'9' * 5000}}}\n", "Exceeds the limit (4300 digits)"),
    (f"profiles:\n  x: {_PROFILE}, env: {{A: 2026-13-01}}}}\n", "month must be in 1..12"),
])
def test_a_profiles_file_yaml_cannot_take_as_written_is_one_line_naming_it(tmp_path, capsys, text, needle):
    from muse_rec.cli import main

    f = tmp_path / "p.yaml"
    f.write_text(text)
    with pytest.raises(ProfileError, match=rf"^{f}: not valid YAML: .*{re.escape(needle)}"):
        load_profiles(str(f))
    assert main(["launch", "--profile", "x", "--dryrun", "--profiles-file", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"muse-rec launch: {f}: not valid YAML") and err.count("\n") == 1, err


def test_a_max_restarts_below_minus_one_is_refused(monkeypatch, capsys):
    """`torchx run components/train.py:train --max_restarts -5` was taken as -1 (the profile's), silently."""
    with pytest.raises(ProfileError, match=r"^--max_restarts -5: must be >= 0, or -1 for the profile's max_restarts$"):
        train_component(profile="cpu-demo", max_restarts=-5)
    monkeypatch.setattr("sys.argv", ["/x/bin/torchx", "run", "--dryrun", "-s", "local_cwd",  # (no data: a dry run)
                                     "components/train.py:train", "--max_restarts", "-5"])
    with pytest.raises(SystemExit) as ended:
        train_component(profile="cpu-demo", max_restarts=-5)
    assert ended.value.code == 2
    assert capsys.readouterr().err == "muse_rec: --max_restarts -5: must be >= 0, or -1 for the profile's max_restarts\n"
    assert "PET_MAX_RESTARTS" not in train_component(profile="cpu-demo", max_restarts=-1).roles[0].env


def test_a_scheduler_option_whose_program_is_missing_is_one_line_naming_it(capsys):
    """`launch --profile gpu-node --scheduler-arg auto_set_cuda_visible_devices=True` (the option TorchX's GPU
    banner names) on a machine without `nvidia-smi`: TorchX's FileNotFoundError was a traceback, exit 1."""
    import shutil

    from muse_rec.cli import main

    if shutil.which("nvidia-smi"):
        pytest.skip("nvidia-smi is installed here")
    assert main(["launch", "--profile", "gpu-node", "--dryrun",
                 "--scheduler-arg", "auto_set_cuda_visible_devices=True"]) == 2
    err = capsys.readouterr().err
    assert err == ("muse-rec launch: --scheduler-arg auto_set_cuda_visible_devices: TorchX runs 'nvidia-smi' for it, "
                   "which is not on PATH here (no NVIDIA driver on this machine?); leave the option out\n"), err


def test_a_gpu_profile_on_a_torch_without_cuda_says_its_ranks_would_train_on_cpu(capsys, monkeypatch):
    """`launch --profile gpu-node` on a CPU-only torch (setup.sh's default) trained its 8 ranks on CPU and ended
    SUCCEEDED; only the first training line ("8 rank(s) on cpu") said so. Now one warning line at launch."""
    import torch

    from muse_rec.cli import main
    from muse_rec.launch import local_gpu_shortfall

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["launch", "--profile", "gpu-node", "--dryrun"]) == 0
    warning = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("muse-rec launch: warning:")]
    assert warning == [f"muse-rec launch: warning: profile gpu-node asks for 8 GPU(s) per node, but this torch sees "
                       f"none (torch {torch.__version__}; a CPU-only install? `muse-rec info` says, `MUSE_REC_PROFILE="
                       "cuda bash scripts/setup.sh` installs the CUDA build): its 8 rank(s) would train on CPU"], warning
    assert main(["launch", "--profile", "cpu-demo", "--dryrun"]) == 0  # a CPU profile asks for no GPU
    assert "asks for" not in capsys.readouterr().err
    # Where torch sees a GPU, and on a cluster scheduler (its nodes' torch is not this one), nothing is said.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert local_gpu_shortfall(get_profile("gpu-node")) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert local_gpu_shortfall(get_profile("multi-node")) is None

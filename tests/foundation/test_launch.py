"""torchx.yaml launch profiles and the TorchX component built from them."""
from __future__ import annotations

from pathlib import Path

import pytest
from torchx.specs import AppDef

from components.train import train as train_component
from muse_rec.launch import ProfileError, get_profile, load_profiles
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

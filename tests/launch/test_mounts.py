"""A profile's `mounts`: the volume every Kubernetes pod writes its checkpoints to and reads the data from."""
from __future__ import annotations

import subprocess

import yaml

from tests.conftest import REPO, subprocess_env, venv_bin

RUNS = "type=volume,src=muse-rec-runs,dst=/workspace/runs"
DATA = "type=volume,src=muse-rec-data,dst=/workspace/data,readonly"


def launch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([venv_bin("muse-rec"), "launch", *args], capture_output=True, text=True, cwd=REPO,
                          env=subprocess_env(), timeout=120)


def profiles_with(tmp_path, name: str, mounts: object):
    profiles = yaml.safe_load((REPO / "torchx.yaml").read_text())
    profiles["profiles"][name]["mounts"] = mounts
    path = tmp_path / "torchx.yaml"
    path.write_text(yaml.safe_dump(profiles))
    return path


def test_kubernetes_pods_mount_the_profiles_volumes(tmp_path):
    """docs/launch.md: point output_dir and data.prepared "at a volume every pod mounts"; but a profile could not
    name one (`mounts` was an unknown key) and the Volcano job's pods mounted only /dev/shm: each pod wrote its
    checkpoint shards to its own container's disk, lost with the pod. Now every pod mounts the profile's mounts."""
    path = profiles_with(tmp_path, "k8s-multi-node", [RUNS, DATA])
    out = launch("--profile", "k8s-multi-node", "--profiles-file", str(path), "--dryrun")
    assert out.returncode == 0, out.stderr[-3000:]
    job = yaml.safe_load(out.stdout.split("\n", 1)[1])
    tasks = job["spec"]["tasks"]
    assert len(tasks) == 4
    for task in tasks:
        pod = task["template"]["spec"]
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                  if "persistentVolumeClaim" in v}
        mounted = {(claims[m["name"]], m["mountPath"], m["readOnly"])
                   for m in pod["containers"][0]["volumeMounts"] if m["name"] in claims}
        assert mounted == {("muse-rec-runs", "/workspace/runs", False), ("muse-rec-data", "/workspace/data", True)}


def test_bad_mounts_and_mounts_a_scheduler_ignores_are_one_line(tmp_path):
    cases = [
        ("k8s-multi-node", ["type=volume,src=x"], "profiles.k8s-multi-node.mounts[0]: 'type=volume,src=x': missing"),
        ("k8s-multi-node", ["type=nfs,src=x,dst=/y"], "invalid mount type 'nfs'"),
        ("k8s-multi-node", RUNS, "profiles.k8s-multi-node.mounts: expected a list of mounts"),
        # TorchX's Slurm scheduler drops a role's mounts without a word: the job would write to the nodes' disks.
        ("multi-node", [RUNS], "profiles.multi-node.mounts: the slurm scheduler runs the job on the nodes' own"),
    ]
    for name, mounts, words in cases:
        out = launch("--profile", name, "--profiles-file", str(profiles_with(tmp_path, name, mounts)), "--dryrun")
        assert out.returncode == 2 and "Traceback" not in out.stderr, (mounts, out.stderr[-3000:])
        assert words in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr

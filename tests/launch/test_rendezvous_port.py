"""A local launch of several nodes whose rendezvous port another program holds."""
from __future__ import annotations

import signal
import socket
import subprocess

from tests.conftest import REPO, subprocess_env, venv_bin


def test_a_rendezvous_port_in_use_is_one_line_before_anything_starts(tmp_path, prepared):
    """2 nodes on local_cwd: the first node hosts the c10d store on the profile's port. With another program
    listening there, the agents connected to it: one failed after torch's 60 s connect timeout, the other
    waited on its connection, and the launch with it, for as long as it was left (over 5 minutes)."""
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text("profiles:\n  two-hosts: {scheduler: local_cwd, nodes: 2, procs_per_node: 1, cpu: 1, gpu: 0, "
                        "memMB: 4000, spec: specs/demo/muse.yaml}\n")
    run = tmp_path / "run"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)  # accepts nothing: what a busy or foreign service looks like to torchrun
        port = holder.getsockname()[1]
        launch = subprocess.Popen(
            [venv_bin("muse-rec"), "launch", "--profile", "two-hosts", "--profiles-file", str(profiles),
             "--rdzv-port", str(port), "--set", f"data.prepared={prepared}", "--set", f"output_dir={run}",
             "--set", "train.max_steps=1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=subprocess_env())
        try:
            _, err = launch.communicate(timeout=45)  # the refusal takes a few seconds; the hang minutes
        except subprocess.TimeoutExpired:
            launch.send_signal(signal.SIGTERM)  # the launch cancels its job: no rank is left behind
            _, err = launch.communicate(timeout=60)
    assert launch.returncode == 2, (launch.returncode, err[-3000:])
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err[-3000:]
    assert err.startswith(f"muse-rec launch: --rdzv-port {port}: this port is in use on this machine ("), err
    assert "give a free port with --rdzv-port" in err, err
    assert not run.exists()

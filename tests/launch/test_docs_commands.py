"""The `torchx run` command lines docs/launch.md shows, run as written (dry run: nothing is submitted)."""
from __future__ import annotations

import shlex
import subprocess

import yaml

from tests.conftest import REPO, subprocess_env, venv_bin

DOC = REPO / "docs" / "launch.md"
COMMAND_INDENT = "    "  # a Markdown code block


def doc_commands(prefix: str) -> list:
    """The docs' code-block lines that start with ``prefix``, split as a shell splits them."""
    return [shlex.split(line) for line in DOC.read_text(encoding="utf-8").splitlines()
            if line.startswith(COMMAND_INDENT + prefix)]


def test_the_documented_kubernetes_torchx_run_makes_the_volcano_job():
    """The docs said `torchx run` keeps working with `-s`, but to Kubernetes it first built a Docker image of the
    working directory (TorchX's default workspace): a Docker traceback, exit 1, where no daemon runs (--dryrun
    too). The docs now give the command with `--workspace ""`; as written it prints the profile's Volcano job."""
    commands = [c for c in doc_commands("torchx run") if "kubernetes" in c]
    assert commands, f"{DOC}: no `torchx run ... -s kubernetes` command"
    for argv in commands:
        assert argv[:2] == ["torchx", "run"], argv
        out = subprocess.run([venv_bin("torchx"), "--log_level", "WARNING", "run", "--dryrun", *argv[2:]],
                             capture_output=True, text=True, cwd=REPO, env=subprocess_env(), timeout=120)
        assert out.returncode == 0 and "Traceback" not in out.stderr, (argv, out.stderr[-3000:])
        job = yaml.safe_load(out.stdout[out.stdout.index("apiVersion: batch.volcano.sh"):])
        images = {t["template"]["spec"]["containers"][0]["image"] for t in job["spec"]["tasks"]}
        assert images == {"registry.example.com/muse-rec:0.1.0"}, images  # the profile's image, as it is

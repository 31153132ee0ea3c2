"""A launch from outside the repository root, whose profiles name their spec relative to it."""
from __future__ import annotations

import subprocess

from tests.conftest import REPO, subprocess_env, venv_bin


def test_the_profiles_spec_not_found_from_here_names_the_profile_key(tmp_path):
    """`muse-rec launch --profile cpu-demo` (and `torchx run`) from another directory said
    "specs/demo/muse.yaml: spec file not found": a file the user never named, relative to no directory it said.
    Now one line naming profiles.cpu-demo.spec, the directory it was looked for from, and what to do; exit 2."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    commands = ([venv_bin("muse-rec"), "launch", "--profile", "cpu-demo", "--dryrun"],
                [venv_bin("torchx"), "--log_level", "WARNING", "run", "--dryrun", "-s", "local_cwd",
                 f"{REPO}/components/train.py:train", "--profile", "cpu-demo"])
    for argv in commands:
        out = subprocess.run(argv, capture_output=True, text=True, cwd=elsewhere, env=subprocess_env(), timeout=120)
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, (argv, out.stderr[-3000:])
        assert (f"profiles.cpu-demo.spec: specs/demo/muse.yaml is not found from {elsewhere}: launch from the "
                "repository root") in out.stderr, out.stderr

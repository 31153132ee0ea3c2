"""`cli_forked` (tests/forked_cli.py), which the robustness and training helpers use for `muse-rec train`,
gives what a fresh `muse-rec` process gives: these tests are what lets the others trust it."""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, subprocess_env, venv_bin
from tests.forked_cli import ForkServer, cli_forked
from tests.robustness.conftest import SPEC, sets


def _console_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([venv_bin("muse-rec"), *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=subprocess_env())


@pytest.mark.parametrize("case", ["usage error", "refused input"])
def test_a_refusal_forked_is_the_console_scripts_to_the_byte(case, tmp_path):
    if case == "usage error":  # argparse's SystemExit(2), raised inside the child
        args = ["train", "--spec", SPEC, "--no-such-flag"]
    else:  # the command's own one-line refusal
        args = ["train", "--spec", SPEC, "--set", f"data.prepared={tmp_path / 'missing'}", "--device", "cpu"]
    forked, fresh = cli_forked(*args, timeout=300), _console_script(*args)
    assert (forked.returncode, forked.stdout, forked.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)
    assert forked.returncode == 2 and forked.stderr.startswith("muse-rec train: "), forked.stderr


_VARYING = [  # what differs between two runs of one training: when, how fast, where, the checkpoint's digest
    (re.compile(r"^\[\d\d:\d\d:\d\d "), "[TIME "),
    (re.compile(r"[\d,.]+ samples/s"), "N samples/s"),
    (re.compile(r"in \d+\.\d+ s"), "in N s"),
    (re.compile(r"; \d+\.\d+ s\]"), "; N s]"),
    (re.compile(r"sha256 [0-9a-f]{64}"), "sha256 DIGEST"),
    (re.compile(r"ETA \d+:\d\d:\d\d"), "ETA T"),
]


def _stable(text: str, root: Path) -> str:
    text = text.replace(str(root), "ROOT")
    for pattern, fixed in _VARYING:
        text = "\n".join(pattern.sub(fixed, line) for line in text.splitlines())
    return text


def test_a_training_forked_logs_and_scores_what_a_fresh_process_does(prepared_tiny, tmp_path):
    """The same 2-step run in a forked child and in a fresh process: the same exit code and output (times,
    speeds and paths aside) and the same metrics to the last bit, so the child started from a fresh
    process's state (its RNG, its modules) and wrote where a fresh process writes."""
    runs = {}
    for how, call in (("forked", lambda a: cli_forked(*a, timeout=300)), ("fresh", lambda a: _console_script(*a))):
        root = tmp_path / how
        two_steps = sets(prepared_tiny, root, ["train.max_steps=2", "train.eval_at_end=true"])
        out = call(["train", "--spec", SPEC, *two_steps, "--device", "cpu"])
        assert out.returncode == 0, out.stderr[-3000:]
        runs[how] = (out, json.loads((root / "din" / "metrics.json").read_text()), root)
    (forked, forked_metrics, forked_root), (fresh, fresh_metrics, fresh_root) = runs["forked"], runs["fresh"]
    assert _stable(forked.stdout, forked_root) == _stable(fresh.stdout, fresh_root)
    assert _stable(forked.stderr, forked_root) == _stable(fresh.stderr, fresh_root)
    assert "done: gauc=" in forked.stderr
    for key in ("gauc", "auc", "logloss", "steps"):
        assert forked_metrics[key] == fresh_metrics[key], key


def test_a_timeout_kills_the_command_and_the_server_goes_on(prepared_tiny, tmp_path):
    """As subprocess.run: past the timeout the command is killed (and reaped) and TimeoutExpired raised; the
    next command on the same server runs normally. Batch 1 for a whole epoch: thousands of steps, far more
    than a second on any machine."""
    server = ForkServer()
    try:
        epoch = sets(prepared_tiny, tmp_path / "slow", ["train.batch_size=1", "train.max_steps=0"])
        slow = ["train", "--spec", SPEC, *epoch, "--device", "cpu"]
        with pytest.raises(subprocess.TimeoutExpired):
            server.run(slow, timeout=1.0)
        with pytest.raises(ProcessLookupError):  # killed and reaped: no such process any more
            os.kill(server.last_pid, 0)
        assert not (tmp_path / "slow" / "din" / "metrics.json").exists()
        out = server.run(["train", "--spec", SPEC, "--no-such-flag"], timeout=300)
        assert out.returncode == 2 and "--no-such-flag" in out.stderr
    finally:
        server.close()


def test_what_the_imports_print_starts_the_commands_output():
    """A fresh process prints a library's import-time output before the command's own; the server printed it
    once, so each child's output starts with it. `this` prints the Zen of Python on stdout when imported. After
it, the command's own stdout, flushed at the interpreter's exit as in a fresh process."""
    server = ForkServer(extra=["this"], env={"PYTHONUNBUFFERED": ""})  # stdout block-buffered, as by default
    try:
        assert server.import_output["stdout"].startswith("The Zen of Python")
        out = server.run(["info"], timeout=300)  # `info` prints its table on stdout, buffered until the exit
        assert out.returncode == 0 and out.stdout.startswith(server.import_output["stdout"])
        assert out.stdout[len(server.import_output["stdout"]):] == _console_script("info").stdout
    finally:
        server.close()

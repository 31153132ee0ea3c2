"""`muse-rec ... | head`: a reader that goes away ends the command quietly (exit 141, as a tool killed
by SIGPIPE), not with a BrokenPipeError traceback; any other broken pipe is still an error."""
from __future__ import annotations

import argparse
import subprocess

import pytest

from tests.conftest import subprocess_env, venv_bin


def test_a_closed_stdout_ends_the_command_quietly() -> None:
    p = subprocess.Popen([venv_bin("muse-rec"), "info"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=subprocess_env())
    p.stdout.close()  # the reader is gone before the first line: every write to stdout fails
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def test_a_broken_pipe_that_is_not_the_output_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import muse_rec.cli.info as info
    from muse_rec.cli import main

    def run(args: argparse.Namespace) -> int:
        raise BrokenPipeError(32, "a worker's pipe")  # stdout (pytest's capture file) is fine

    monkeypatch.setattr(info, "run", run)
    with pytest.raises(BrokenPipeError, match="a worker's pipe"):
        main(["info"])

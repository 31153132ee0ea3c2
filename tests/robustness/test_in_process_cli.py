"""`cli_in_process` (tests/in_process.py), which most robustness tests now use for the commands that read a run
or an export, sees what a subprocess of the console script sees: these tests are what lets the others trust it."""
from __future__ import annotations

import logging
import os
import sys
import warnings

import pytest

from tests.in_process import cli_in_process
from tests.robustness.conftest import SPEC, _python


def _subprocess(*args: str):
    return _python(["-m", "muse_rec.cli", *args], 300, {})


@pytest.mark.parametrize("case, code, starts", [
    ("usage error", 2, "muse-rec rank: the following arguments are required"),
    ("refused export", 2, "muse-rec rank: "),
    ("compare", 0, "| method"),
])
def test_a_command_in_process_gives_what_its_subprocess_gives(case, code, starts, trained, tmp_path):
    if case == "usage error":  # argparse exits with SystemExit(2)
        args = ["rank", "--spec", SPEC, "--no-such-flag"]
    elif case == "refused export":  # an export whose digest is not the one pinned
        request = tmp_path / "request.json"
        request.write_text('{"user": 1, "candidates": [1]}')
        args = ["rank", "--spec", SPEC, *trained.sets(), "--exported", str(trained.exported), "--request", str(request),
                "--expect-sha256", "0" * 64]
    else:  # a command that succeeds and prints its table on stdout
        args = ["compare", str(trained.run_dir), "--no-floors"]
    here, there = cli_in_process(*args), _subprocess(*args)
    assert (here.returncode, here.stdout, here.stderr) == (there.returncode, there.stdout, there.stderr)
    assert here.returncode == code and (here.stderr + here.stdout).startswith(starts)


def _replace_compare(monkeypatch, run) -> None:
    import muse_rec.cli.compare

    monkeypatch.setattr(muse_rec.cli.compare, "run", run)


def test_an_exception_that_escapes_main_is_a_traceback_and_exit_1(monkeypatch):
    def run(args):
        raise ValueError("a bug, not a bad input")

    _replace_compare(monkeypatch, run)
    out = cli_in_process("compare", "somewhere")
    assert out.returncode == 1
    assert "Traceback (most recent call last)" in out.stderr and "ValueError: a bug, not a bad input" in out.stderr


def test_what_c_code_warnings_and_logging_write_reaches_the_result_in_order(monkeypatch):
    """A subprocess's stderr holds writes to the file descriptor (torch's C++ warnings, a forked loader worker),
    warnings (pytest would record them instead) and a library's logged warnings (pytest's handlers would take
    them): so must the in-process result, in the order they were written."""
    def run(args):
        print("a table line")
        sys.stderr.write("python line\n")
        os.write(2, b"c line\n")
        warnings.warn("a library's warning", UserWarning)
        logging.getLogger("some.library").warning("a logged warning")
        os.write(1, b"c table line\n")
        return 0

    _replace_compare(monkeypatch, run)
    out = cli_in_process("compare", "somewhere")
    assert out.returncode == 0
    assert out.stdout == "a table line\nc table line\n"
    lines = out.stderr.splitlines()
    assert lines[:2] == ["python line", "c line"], lines
    assert lines[2].endswith("UserWarning: a library's warning"), lines  # the command's one-line format
    assert lines[3:] == ["a logged warning"], lines


def test_a_fresh_interpreters_warning_filters_apply(monkeypatch):
    """A library's DeprecationWarning is not shown by a fresh interpreter; a UserWarning is shown on every call,
    not once per test process."""
    def run(args):
        warnings.warn("deprecated", DeprecationWarning)
        warnings.warn("shown", UserWarning)
        return 0

    _replace_compare(monkeypatch, run)
    for _ in range(2):
        err = cli_in_process("compare", "somewhere").stderr
        assert "deprecated" not in err and err.count("shown") == 1, err

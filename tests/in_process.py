"""`muse-rec <args>` run in the test's own process, seen as a subprocess would see it.

Why: most of this suite's CPU is fresh interpreters importing torch, TorchRec and DCP (~3.5 s each,
275 such processes per run, measured with a per-process CPU log). A command that only reads a run
or an export and writes its own output (`evaluate`, `export`, `rank`, ...) does the same work when
the console script's `main(argv)` is called here, after the worker imported those libraries once.

What a subprocess gives a test is kept:
- stdout and stderr are captured at the file descriptors, so what C++ (torch's ``TORCH_WARN``) or a
  forked loader worker writes there is in the result, in order with what Python writes;
- warnings are shown as a fresh interpreter shows them (its default filters, shown on stderr through
  the command's own format), not recorded by pytest;
- a library's logged warning reaches stderr through `logging`'s last-resort handler, as it does in a
  process without logging set up (pytest's capture handlers are taken off the root logger meanwhile);
- an exception that escapes `main` is printed as the interpreter prints it, exit code 1;
- the working directory is the repository, as the subprocess helpers run there.

What it cannot give: an environment of its own (callers pass environment variables to a subprocess),
a timeout (pytest's own ``--timeout`` ends a hung test), what a library prints when it is first imported
(this process imported it before) and the console script's few lines around `main`
(`muse_rec/cli/__main__.py`: the exit-code record for a local launch). The tests that run the console
script itself keep covering those: tests/launch, tests/training, the end-to-end CLI test of
tests/serving/test_export.py, and tests/robustness/test_in_process_cli.py, which compares a command's
whole output here with its subprocess's.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
import tempfile
import traceback
import warnings
from typing import BinaryIO, Iterator

from tests.conftest import REPO

# The commands that read a run, an export or prepared data and write only their own output. Training,
# launching and the commands that make data keep their own process in the helpers that use this (`train` one
# forked from a process that did the imports: tests/forked_cli.py).
READING_COMMANDS = frozenset({"evaluate", "export", "rank", "compare", "check", "plan", "baselines", "info"})


def cli_in_process(*args: str) -> subprocess.CompletedProcess:
    """`muse-rec <args>` through `muse_rec.cli.main` in this process: ``(returncode, stdout, stderr)``."""
    from muse_rec.cli import main

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        with _captured_fds(out, err), contextlib.chdir(REPO), _fresh_warnings(), _no_root_handlers():
            try:
                code = main(list(args))
            except SystemExit as e:  # argparse's usage errors and `--help`
                code = _exit_status(e)
            except Exception:  # what the interpreter prints for an uncaught exception, and its exit code
                traceback.print_exc()
                code = 1
        return subprocess.CompletedProcess(["muse-rec", *args], code, _text(out), _text(err))


@contextlib.contextmanager
def _captured_fds(*files: BinaryIO) -> Iterator[None]:
    """File descriptors 1 and 2, and ``sys.stdout`` / ``sys.stderr`` over them, into ``files`` (two)."""
    saved_streams = sys.stdout, sys.stderr
    saved_fds = os.dup(1), os.dup(2)
    streams = []
    try:
        for fd, f in zip((1, 2), files):
            os.dup2(f.fileno(), fd)
        # write_through: Python's writes reach the file at once, in order with the C library's.
        # The error handlers are a fresh interpreter's for a UTF-8 locale.
        for fd, errors in ((1, "strict"), (2, "backslashreplace")):
            streams.append(io.TextIOWrapper(open(os.dup(fd), "wb", buffering=0), encoding="utf-8", errors=errors,
                                            write_through=True, line_buffering=True))
        sys.stdout, sys.stderr = streams
        yield
    finally:
        sys.stdout, sys.stderr = saved_streams
        for stream in streams:
            stream.close()
        for fd, saved in zip((1, 2), saved_fds):
            os.dup2(saved, fd)
            os.close(saved)


@contextlib.contextmanager
def _fresh_warnings() -> Iterator[None]:
    """A fresh interpreter's warning filters (no ``-W``, no ``PYTHONWARNINGS``), shown on stderr."""
    with warnings.catch_warnings():
        warnings.resetwarnings()
        for category in (ResourceWarning, ImportWarning, PendingDeprecationWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category)  # each goes in front of the ones before
        warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
        warnings.showwarning = _show_on_stderr
        yield


def _show_on_stderr(message, category, filename, lineno, file=None, line=None) -> None:
    # warnings.formatwarning is looked up now: `main` sets its own one-line format while it runs.
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


@contextlib.contextmanager
def _no_root_handlers() -> Iterator[None]:
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers.clear()
    try:
        yield
    finally:
        root.handlers[:] = saved


def _exit_status(e: SystemExit) -> int:
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code
    sys.stderr.write(f"{e.code}\n")  # sys.exit("text") prints the text and exits 1
    return 1


def _text(f: BinaryIO) -> str:
    f.seek(0)
    return f.read().decode("utf-8", errors="replace")

"""Which commands the suite's CLI helpers run without a fresh interpreter's ~3.5 s of imports, written once
for `tests/robustness/conftest.cli` and `tests/training/conftest.run_ranks` (one rank)."""
from __future__ import annotations

import subprocess
from typing import Optional, Sequence

from tests.forked_cli import FORKED_COMMANDS, cli_forked
from tests.in_process import READING_COMMANDS, cli_in_process


def fast_cli(args: Sequence[str], timeout: float, default_timeout: float) -> Optional[subprocess.CompletedProcess]:
    """`muse-rec <args>` as a subprocess would give it, where that needs no fresh interpreter: a command that only
    reads runs in this process (tests/in_process.py), given the caller's default timeout (one of its own cannot
    be enforced here); `train` in a process forked from one that did the imports (tests/forked_cli.py). None for
    any other command: the caller starts a subprocess. A call with environment variables of its own must not
    come here: both ways run in this process's environment."""
    if args and args[0] in READING_COMMANDS and timeout == default_timeout:
        return cli_in_process(*args)
    if args and args[0] in FORKED_COMMANDS:
        return cli_forked(*args, timeout=timeout)
    return None

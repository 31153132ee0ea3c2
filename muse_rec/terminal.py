"""Progress bars only on a terminal: the one rule every command's progress follows.

In a log (a file, a pipe, a scheduler's capture) a bar's carriage returns pile up into one
unreadable line, so there each command prints one progress line per interval instead.
"""
from __future__ import annotations

import sys

# A log's progress line at most this often, for every command that prints them (prepare, synth, export).
PROGRESS_EVERY_S = 30.0


def shows_bars(progress: bool = True) -> bool:
    """True when progress is wanted and stderr is a terminal: draw bars; else print lines (or nothing)."""
    return progress and sys.stderr.isatty()

"""Progress bars only on a terminal: the one rule every command's progress follows.

In a log (a file, a pipe, a scheduler's capture) a bar's carriage returns pile up into one
unreadable line, so there each command prints one progress line per interval instead.
"""
from __future__ import annotations

import sys
import time

# A log's progress line at most this often, for every command that prints them (prepare, synth, export).
PROGRESS_EVERY_S = 30.0


class Throttle:
    """The clock of a log's progress lines: `due` is True at most once every ``every_s`` seconds, the first
    time an interval after it was made (a loop faster than that says nothing); `elapsed` is seconds since then.
    Every command's progress lines (prepare's tables, synth's stages, the floors' scoring) keep time with it."""

    def __init__(self, every_s: float = PROGRESS_EVERY_S) -> None:
        self.every_s = every_s
        self.start = self._last = time.perf_counter()

    def due(self) -> bool:
        """Whether a line is due now (then the next one is due an interval from now)."""
        now = time.perf_counter()
        if now - self._last < self.every_s:
            return False
        self._last = now
        return True

    @property
    def elapsed(self) -> float:
        """Seconds since the throttle was made."""
        return time.perf_counter() - self.start


def shows_bars(progress: bool = True) -> bool:
    """True when progress is wanted and stderr is a terminal: draw bars; else print lines (or nothing)."""
    return progress and sys.stderr.isatty()

"""`PhaseHeartbeat`: one line per interval naming what a long command is doing, silence for a short one.

A command made of a few long phases (`muse-rec export`: loading the tables, the int8 check, tracing, writing)
says nothing for minutes at the full vocabulary if it speaks only when done, and fills a short run's stderr,
which its callers read for the one-line error or the JSON alone, if it announces every phase. A heartbeat
does what `prepare`'s progress lines do: a line at most every `PROGRESS_EVERY_S`, so a command faster than
that prints nothing and a slow one says which phase it is in and for how long.
"""
from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Callable, Optional, Type

from muse_rec.terminal import PROGRESS_EVERY_S


class PhaseHeartbeat:
    """Says ``<phase> (<s> s)`` through `say` every `every_s` seconds while used as a context manager.

    `phase` names the phase now running (called as each starts); the line is written from a daemon thread, so
    a phase that runs in one long native call (a table load, `torch.export`) is still reported.
    """

    def __init__(self, say: Callable[[str], None], every_s: float = PROGRESS_EVERY_S) -> None:
        if every_s <= 0:
            raise ValueError(f"every_s must be > 0 seconds, got {every_s}")
        self._say, self._every_s = say, every_s
        self._what = "starting"
        self._start = time.perf_counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="phase-heartbeat", daemon=True)

    def phase(self, what: str) -> None:
        """``what`` is the phase that starts now."""
        with self._lock:
            self._what = what

    def _beat(self) -> None:
        while not self._stop.wait(self._every_s):
            with self._lock:
                self._say(f"{self._what} ({time.perf_counter() - self._start:.0f} s)")

    def __enter__(self) -> "PhaseHeartbeat":
        self._start = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, kind: Optional[Type[BaseException]], error: Optional[BaseException],
                 trace: Optional[TracebackType]) -> None:
        self._stop.set()
        self._thread.join()

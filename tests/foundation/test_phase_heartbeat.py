"""`PhaseHeartbeat`: a line per interval naming the running phase; nothing for a command shorter than one."""
from __future__ import annotations

import re
import time

import pytest

from muse_rec.phase_heartbeat import PhaseHeartbeat


def test_a_command_shorter_than_the_interval_says_nothing() -> None:
    lines = []
    with PhaseHeartbeat(lines.append, every_s=30.0) as beat:
        beat.phase("loading")
        beat.phase("writing")
    assert lines == []


def test_each_interval_names_the_phase_running_and_the_seconds_so_far() -> None:
    lines = []
    with PhaseHeartbeat(lines.append, every_s=0.05) as beat:
        beat.phase("loading")
        time.sleep(0.5)  # ~10 intervals: one line at least, however loaded the machine
        beat.phase("tracing")
        time.sleep(0.5)
    assert lines, "no line in 1 s at a 0.05 s interval"
    assert all(re.fullmatch(r"(loading|tracing) \(\d+ s\)", line) for line in lines), lines
    names = [line.split(" ")[0] for line in lines]
    assert "loading" in names and "tracing" in names and names == sorted(names), names  # loading lines first
    count = len(lines)
    time.sleep(0.2)
    assert len(lines) == count  # the heartbeat stopped with the context


def test_a_non_positive_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="every_s must be > 0"):
        PhaseHeartbeat(print, every_s=0)

"""`muse_rec.terminal.Throttle`: the clock every command's progress lines keep (prepare, synth, the floors)."""
from __future__ import annotations

import pytest

from muse_rec import terminal
from muse_rec.terminal import Throttle


def test_a_line_is_due_once_per_interval_and_not_at_the_start(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(terminal.time, "perf_counter", lambda: now[0])
    clock = Throttle(10.0)
    assert not clock.due()  # a loop faster than an interval says nothing
    now[0] = 109.9
    assert not clock.due()
    now[0] = 110.0
    assert clock.due() and not clock.due()  # then the next one an interval on
    now[0] = 119.0
    assert not clock.due()
    now[0] = 120.5
    assert clock.due()
    assert clock.elapsed == pytest.approx(20.5)
    every = Throttle(0.0)  # what the tests of each command set to see a line per step
    assert every.due() and every.due()

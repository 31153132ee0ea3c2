"""The streaming synth writer's progress in a log: a line per interval saying how far a stage has got,
not one line per generated chunk (~600 lines at the scale preset, none with a total)."""
from __future__ import annotations

import re
from pathlib import Path

from muse_rec.data import synth_stream
from muse_rec.data.synth import SynthConfig, write_synthetic_release

# 300 train users (and a few test-only ones) in chunks of 20: a tick per chunk.
TINY = dict(users=300, items=3000, clusters=60, categories=12, max_seq_len=200, row_group_rows=1000,
            user_row_group_rows=100)


def _lines(tmp_path: Path, capsys) -> list:
    write_synthetic_release(str(tmp_path / "raw"), SynthConfig.preset("scale").replace(**TINY), progress=True)
    return capsys.readouterr().err.splitlines()


def test_a_fast_run_says_each_stage_once_not_each_chunk(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(synth_stream, "USER_CHUNK", 20)
    lines = _lines(tmp_path, capsys)
    # Well under one interval: only the 'done' line of each of the four stages.
    assert [ln for ln in lines if "histories" in ln] == [], lines
    assert len(lines) == 4, lines


def test_every_progress_line_says_how_far_its_stage_has_got(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(synth_stream, "USER_CHUNK", 20)
    monkeypatch.setattr(synth_stream, "PROGRESS_EVERY_S", 0.0)  # a line at every tick
    lines = [ln for ln in _lines(tmp_path, capsys) if " done at " not in ln]
    pattern = re.compile(r"^\[synth\] (.+): ([\d,]+) of ([\d,]+) \((\d+)%\), \d+ s$")
    parsed = [pattern.match(ln) for ln in lines]
    assert lines and all(parsed), lines
    histories = [(int(m[2].replace(",", "")), int(m[3].replace(",", ""))) for m in parsed if m[1].startswith("histories")]
    total = histories[-1][1]  # the train users and the test-only ones
    assert total > 300 and histories == [(min(k * 20, total), total) for k in range(1, -(-total // 20) + 1)]
    stages = {m[1] for m in parsed}
    assert {"items", "impressions, split 1 of 2", "impressions, split 2 of 2"} <= stages, stages
    last = {m[1]: (m[2], m[3]) for m in parsed}  # each stage's last line: all of its total done
    assert all(done == total for done, total in last.values()), last


def test_quiet_says_nothing(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(synth_stream, "PROGRESS_EVERY_S", 0.0)
    write_synthetic_release(str(tmp_path / "raw"), SynthConfig.preset("scale").replace(**TINY), progress=False)
    assert capsys.readouterr().err == ""

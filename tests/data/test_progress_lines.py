"""`synth` and `prepare` report progress as bars on a terminal only; a log gets one line per step.

Under pytest's capture stderr is not a terminal, as in CI, TorchX or a redirected shell: the
output must then hold no carriage-return bars, and name every finished step once.
"""
from __future__ import annotations

import json
import sys

import pytest

from muse_rec.cli import main

PREPARE_STEPS = ["vocab", "items", "users_train", "samples_train", "users_test", "samples_test", "popularity"]


@pytest.fixture(scope="module")
def tiny_raw(tmp_path_factory):
    raw = tmp_path_factory.mktemp("progress") / "raw"
    assert main(["synth", str(raw), "--preset", "tiny", "--no-diagnostics", "--quiet"]) == 0
    return raw


def test_synth_in_a_log_prints_one_line_per_stage(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "raw"), "--preset", "tiny", "--no-diagnostics"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err, "a tqdm bar was written to a non-terminal stderr"
    stages = [ln for ln in err.splitlines() if ln.startswith("[synth] ")]
    assert [s.split(" done at ")[0] for s in stages] == [
        "[synth] catalogue", "[synth] histories", "[synth] impressions", "[synth] item tables",
        "[synth] train samples", "[synth] test samples", "[synth] user features", "[synth] item features + SCL"]


def test_prepare_in_a_log_prints_a_start_and_an_end_line_per_step(tiny_raw, tmp_path, capsys):
    out = tmp_path / "prepared"
    assert main(["prepare", str(tiny_raw), str(out)]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err, "a tqdm bar was written to a non-terminal stderr"
    lines = [ln for ln in err.splitlines() if ln.startswith("[prepare] ")]
    assert [ln.split(":")[0].removeprefix("[prepare] ") for ln in lines] == [s for s in PREPARE_STEPS for _ in (0, 1)]
    assert all(ln.endswith(": started") for ln in lines[0::2]) and all(" done in " in ln for ln in lines[1::2])


def test_prepare_in_a_log_says_how_far_a_step_read_each_interval(tiny_raw, tmp_path, capsys, monkeypatch):
    """A step that reads a table for minutes (users_train: 171M behaviours in 18 s, the release ~40x that)
    prints a line per interval (here: every batch of rows) instead of nothing until it ends."""
    from muse_rec.data import prepare_steps

    monkeypatch.setattr(prepare_steps, "PROGRESS_EVERY_S", 0.0)
    assert main(["prepare", str(tiny_raw), str(tmp_path / "prepared"), "--batch-rows", "64"]) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("[prepare]   train_samples: ")]
    assert len(lines) >= 2
    rows = int(lines[-1].split(": ")[1].split(" of ")[0].replace(",", ""))
    total = int(lines[-1].split(" of ")[1].split(" rows")[0].replace(",", ""))
    assert rows == total and "(100%)" in lines[-1]


def test_prepare_resumed_after_a_crash_says_which_steps_it_kept(tiny_raw, tmp_path, capsys, monkeypatch):
    from muse_rec.data import prepare_steps

    def crash(self):
        raise RuntimeError("killed")

    out = tmp_path / "prepared"
    with monkeypatch.context() as m:
        m.setattr(prepare_steps.Prepare, "step_popularity", crash)
        with pytest.raises(RuntimeError, match="killed"):
            main(["prepare", str(tiny_raw), str(out)])
    capsys.readouterr()
    assert main(["prepare", str(tiny_raw), str(out)]) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("[prepare] ")]
    assert lines[:-2] == [f"[prepare] {s}: already done, kept" for s in PREPARE_STEPS[:-1]]
    assert lines[-2] == "[prepare] popularity: started" and lines[-1].startswith("[prepare] popularity: done in ")


def test_no_progress_is_silent_and_a_terminal_gets_bars(tiny_raw, tmp_path, capsys, monkeypatch):
    assert main(["prepare", str(tiny_raw), str(tmp_path / "quiet"), "--no-progress"]) == 0
    assert "[prepare]" not in capsys.readouterr().err

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["prepare", str(tiny_raw), str(tmp_path / "tty")]) == 0
    err = capsys.readouterr().err
    assert "[prepare]" not in err and "row" in err  # tqdm's bars (unit "row"), not the log lines


@pytest.mark.parametrize("writer", ["memory", "stream"])
def test_synth_json_stdout_is_only_the_manifest(writer, tmp_path, capsys):
    """Progress lines go to stderr with either writer, so `synth --json` stays parseable."""
    assert main(["synth", str(tmp_path / "raw"), "--preset", "tiny", "--writer", writer, "--no-diagnostics",
                 "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["config"]["writer"] == writer
    assert "[synth] " in err

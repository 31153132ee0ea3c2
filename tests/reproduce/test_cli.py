"""`muse-rec reproduce` wiring: --dry-run prints the plan, --report-only reports finished runs."""
from __future__ import annotations

import json
from pathlib import Path

from muse_rec.cli import main
from muse_rec.reproduce.plan import build_plan
from tests.reproduce.test_report import write_fake_runs


def test_dry_run_prints_the_quick_plan(capsys, tmp_path: Path):
    assert main(["reproduce", str(tmp_path / "out"), "--quick", "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert len(plan["runs"]) == 30 and plan["seeds"] == [0, 1] and plan["fig5_lengths"] == [50, 200, 1000]
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def test_bad_what_is_a_clear_error(capsys, tmp_path: Path):
    assert main(["reproduce", str(tmp_path), "--what", "table4"]) == 2
    assert "table4" in capsys.readouterr().err


def test_report_only_over_finished_runs(capsys, tmp_path: Path):
    write_fake_runs(tmp_path, build_plan(("table5", "fig6"), seeds=2))
    assert main(["reproduce", str(tmp_path), "--what", "table5,fig6", "--seeds", "2", "--report-only"]) == 0
    out = capsys.readouterr().out
    assert "claims holding here" in out
    md = (tmp_path / "report.md").read_text()
    assert "## Table 5" in md and "## Fig. 6" in md and "## Table 3" not in md
    assert "command: `muse-rec reproduce" in md and "--what table5,fig6" in md
    assert (tmp_path / "table5.png").exists() and (tmp_path / "fig6.png").exists()
    # The same OUT with another data source is refused.
    assert main(["reproduce", str(tmp_path), "--prepared", "/elsewhere", "--report-only"]) == 2
    assert "reproduce.json" in capsys.readouterr().err

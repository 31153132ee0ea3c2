"""`muse-rec compare` says how many users its GAUCs average over."""
from __future__ import annotations

import json
from pathlib import Path

from muse_rec.cli import main as cli_main


def _run(d: Path, method: str, gauc: float, counts: bool = True) -> str:
    d.mkdir()
    doc = {"method": method, "gauc": gauc, "auc": 0.6, "logloss": 0.13}
    if counts:
        doc.update(users=2600, gauc_users=782)
    (d / "metrics.json").write_text(json.dumps(doc))
    return str(d)


def test_compare_names_the_users_gauc_averaged(tmp_path: Path, capsys) -> None:
    # An outside check at a 3% click rate: every GAUC of the table covered 782 of 2,600 users; the table and
    # the verdicts gave margins of 0.005 without that count (only each run's metrics.json had it).
    runs = [_run(tmp_path / "muse", "MUSE", 0.6653), _run(tmp_path / "din", "DIN", 0.5966)]
    assert cli_main(["compare", *runs, "--no-floors", "--out", str(tmp_path / "cmp")]) == 0
    line = "GAUC averages over 782 of 2,600 users (those with a click and a non-click in the split)"
    assert line in capsys.readouterr().out
    assert line in (tmp_path / "cmp.md").read_text()


def test_compare_of_runs_without_the_counts_adds_no_line(tmp_path: Path, capsys) -> None:
    runs = [_run(tmp_path / "muse", "MUSE", 0.66, counts=False), _run(tmp_path / "din", "DIN", 0.60, counts=False)]
    assert cli_main(["compare", *runs, "--no-floors"]) == 0
    assert "GAUC averages over" not in capsys.readouterr().out

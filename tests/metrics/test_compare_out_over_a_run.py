"""`muse-rec compare RUN... --out RUN/metrics` wrote its table's JSON over the run's own metrics.json (a
hand-written run has no run.json to mark its directory as a run's): the run's GAUC was gone, and the next
compare of it said "method: expected the method's name, got None". A file compare reads is no output."""
from __future__ import annotations

import json
from pathlib import Path

from muse_rec.cli import main as cli_main


def test_out_onto_a_runs_metrics_json_is_refused_and_the_run_kept(tmp_path: Path, capsys) -> None:
    runs = []
    for name, gauc in (("a", 0.6), ("b", 0.62)):
        d = tmp_path / name
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps({"method": "DIN", "gauc": gauc, "auc": gauc, "logloss": 0.4}))
        runs.append(d)
    before = (runs[0] / "metrics.json").read_text()
    assert cli_main(["compare", *map(str, runs), "--no-floors", "--out", str(runs[0] / "metrics")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"{runs[0] / 'metrics.json'} file this command reads" in err, err
    assert (runs[0] / "metrics.json").read_text() == before
    assert sorted(p.name for p in runs[0].iterdir()) == ["metrics.json"]  # nor the table's .md beside it

"""What `muse-rec compare` shows and writes: its spreads, its table's columns, its --out files.

`muse-rec compare` and `muse-rec reproduce` read a gap against one seed-to-seed spread: the pooled
standard deviation of the two cells (`muse_rec.metrics.seeds`). Compare divided its margins by the larger
of the two rows' stds and reproduce by sqrt((sd_A^2 + sd_B^2) / 2): the same runs showed two spreads."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import pytest

from muse_rec.cli import main as cli_main
from muse_rec.reproduce.claims import compare_sentence
from muse_rec.reproduce.results import Stats


def _pooled_by_hand(a: Sequence[float], b: Sequence[float]) -> float:
    """Squared deviations from each cell's own mean, over the degrees of freedom of both."""
    squares = sum((x - sum(c) / len(c)) ** 2 for c in (a, b) for x in c)
    return math.sqrt(squares / (len(a) - 1 + len(b) - 1))


@pytest.mark.parametrize("muse, din", [((0.70, 0.72), (0.60, 0.66)),  # equal seeds, unequal spreads
                                       ((0.60, 0.62, 0.67), (0.50, 0.54))])  # a failed run: 3 and 2 seeds
def test_compare_and_reproduce_show_one_spread_for_the_same_runs(tmp_path: Path, capsys, muse, din) -> None:
    runs = []
    for method, gaucs in (("MUSE", muse), ("DIN", din)):
        for i, g in enumerate(gaucs):
            d = tmp_path / f"{method}{i}"
            d.mkdir()
            (d / "metrics.json").write_text(json.dumps({"method": method, "gauc": g, "auc": 0.6, "logloss": 0.4}))
            runs.append(str(d))
    assert cli_main(["compare", *runs, "--no-floors"]) == 0
    out = capsys.readouterr().out
    spread, margin = _pooled_by_hand(muse, din), sum(muse) / len(muse) - sum(din) / len(din)
    assert (f"MUSE - DIN: {margin:+.4f} GAUC; seed-to-seed spread (pooled std, {len(muse)} and {len(din)} seeds) "
            f"{spread:.4f}; margin = {margin / spread:.1f} x spread") in out, out
    sentence = compare_sentence("beats", "MUSE", "DIN", Stats(list(muse)), Stats(list(din))).sentence
    assert f"{margin / spread:.1f} x the seed spread (pooled std {spread:.4f} GAUC;" in sentence, sentence


def test_the_table_shows_the_spread_of_every_metric_it_averages(tmp_path: Path, capsys) -> None:
    """The logloss column had no spread beside it (the JSON had logloss_std): a logloss gap could not be
    read against the noise from the table."""
    runs = []
    for i, logloss in enumerate((0.40, 0.43)):
        d = tmp_path / f"DIN{i}"
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps({"method": "DIN", "gauc": 0.6, "auc": 0.6, "logloss": logloss}))
        runs.append(str(d))
    assert cli_main(["compare", *runs, "--no-floors"]) == 0
    header, _, row = capsys.readouterr().out.splitlines()[:3]
    cells = dict(zip([c.strip() for c in header.split("|")], [c.strip() for c in row.split("|")]))
    assert cells["logloss_std"] == f"{0.03 / math.sqrt(2):.4f}", cells


def test_the_help_names_the_files_out_writes(tmp_path: Path, capsys) -> None:
    """--help said "also write the table (Markdown) and JSON next to this path": neither file is at that path
    (OUT's extension is replaced by .md and .json), and "next to" read as beside it in its directory."""
    with pytest.raises(SystemExit):
        cli_main(["compare", "--help"])
    said = " ".join(capsys.readouterr().out.split())
    assert "OUT.md" in said and "OUT.json" in said and "--out cmp/t.md writes cmp/t.md and cmp/t.json" in said, said
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"method": "DIN", "gauc": 0.6, "auc": 0.6, "logloss": 0.4}))
    assert cli_main(["compare", str(run), "--no-floors", "--out", str(tmp_path / "cmp" / "t.md")]) == 0
    assert sorted(p.name for p in (tmp_path / "cmp").iterdir()) == ["t.json", "t.md"]


def test_out_whose_json_sibling_is_a_directory_is_refused_before_writing_either(tmp_path: Path, capsys) -> None:
    """`--out cmp/t.md` with a directory at cmp/t.json checked only cmp/t.md: the .md replaced the earlier
    one, then the .json's rename failed ("cannot write ([Errno 21] Is a directory ...)"), leaving a pair of
    two runs where --help promises both or neither. Now refused up front, naming the .json, the .md as it was."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"method": "DIN", "gauc": 0.6, "auc": 0.6, "logloss": 0.4}))
    cmp = tmp_path / "cmp"
    (cmp / "t.json").mkdir(parents=True)
    (cmp / "t.md").write_text("earlier table\n")
    assert cli_main(["compare", str(run), "--no-floors", "--out", str(cmp / "t.md")]) == 2
    err = capsys.readouterr().err
    assert f"--out {cmp / 't.json'}: is a directory, expected a file path" in err, err
    assert (cmp / "t.md").read_text() == "earlier table\n"

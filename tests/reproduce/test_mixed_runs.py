"""The reproduce report read every run under OUT/runs whatever it scored: a run directory of another data set
(data_fingerprint) or split (eval_split) beside the others gave a report whose gaps and verdicts compared GAUCs
of different test sets (exit 0), which `muse-rec compare` refuses. It is refused naming a run of each."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from muse_rec.reproduce.plan import build_plan
from muse_rec.reproduce.results import load_metrics


def _runs(tmp_path: Path, odd: dict) -> None:
    """Every run of Fig. 6's plan at 2 seeds, scored on split test of data 'abc'; din-s1 with ``odd`` instead."""
    for name, gauc in (("din-s0", 0.60), ("din-s1", 0.61), ("muse-s0", 0.66), ("muse-s1", 0.67)):
        d = tmp_path / "runs" / name
        d.mkdir(parents=True)
        doc = {"method": name.split("-")[0], "gauc": gauc, "auc": gauc, "logloss": 0.4, "eval_split": "test",
               "data_fingerprint": "abc"}
        (d / "metrics.json").write_text(json.dumps({**doc, **(odd if name == "din-s1" else {})}))


def test_runs_of_one_split_and_data_are_read(tmp_path: Path) -> None:
    _runs(tmp_path, {})
    assert load_metrics(tmp_path, build_plan(("fig6",), seeds=2))["din"][1]["gauc"] == 0.61


@pytest.mark.parametrize("odd, words", [({"data_fingerprint": "def"}, "data fingerprints (din-s0: abc, din-s1: def)"),
                                        ({"eval_split": "train"}, "eval splits (din-s0: test, din-s1: train)")])
def test_a_run_of_other_data_or_another_split_is_refused_naming_both(tmp_path: Path, odd: dict, words: str) -> None:
    _runs(tmp_path, odd)
    with pytest.raises(ValueError, match=r"scored on different " + words.replace("(", r"\(").replace(")", r"\)")):
        load_metrics(tmp_path, build_plan(("fig6",), seeds=2))

"""A run whose GAUC is undefined (the trainer writes ``"gauc": null`` with ``gauc_undefined`` saying why) was
refused by the reproduce report as having "no 'gauc' key (was the run trained with train.eval_at_end=false?)":
the key is there, and that question sent its reader to the wrong setting. The line says the value and why."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from muse_rec.reproduce.plan import build_plan
from muse_rec.reproduce.results import load_metrics

WHY = "no user has both a click and a non-click"


def _write(tmp_path: Path, doc: dict) -> None:
    d = tmp_path / "runs" / "din-s0"
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({"method": "DIN", "auc": 0.6, "logloss": 0.4, **doc}))


def test_a_null_gauc_is_said_with_its_reason(tmp_path: Path) -> None:
    _write(tmp_path, {"gauc": None, "gauc_undefined": WHY})
    with pytest.raises(ValueError) as e:
        load_metrics(tmp_path, build_plan(("fig6",), seeds=1))
    assert f"din-s0/metrics.json: gauc: null ({WHY})" in str(e.value) and "eval_at_end" not in str(e.value)


def test_a_missing_gauc_still_asks_about_eval_at_end(tmp_path: Path) -> None:
    _write(tmp_path, {})
    with pytest.raises(ValueError, match="no 'gauc' key .*eval_at_end"):
        load_metrics(tmp_path, build_plan(("fig6",), seeds=1))

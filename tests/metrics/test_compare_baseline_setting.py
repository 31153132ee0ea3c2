"""`muse-rec compare` takes each method's margin against the baseline at the same training settings."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import yaml

from muse_rec.cli import main as cli_main
from muse_rec.spec import load_spec

SPECS = Path(__file__).resolve().parents[2] / "specs/methods"


def _run(d: Path, method: str, gauc: float, overrides: Sequence[str] = ()) -> str:
    """A finished run directory as the trainer leaves it: metrics.json + the resolved spec.yaml."""
    d.mkdir(parents=True)
    spec = load_spec(SPECS / f"{method}.yaml", list(overrides))
    (d / "metrics.json").write_text(json.dumps({"method": spec.model.method, "gauc": gauc, "auc": gauc,
                                                "logloss": 0.13}))
    (d / "spec.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    return str(d)


def test_a_method_is_measured_against_the_baseline_at_its_own_setting(tmp_path: Path, capsys) -> None:
    # An outside check: DIN and MUSE each at the paper's settings and at the demo profile's. MUSE at the demo's
    # was measured against DIN at the paper's (+0.0666; the first DIN row), with DIN at its own settings in the
    # table (+0.0649): the margin mixed the change of settings into the change of method.
    fast = ["train.dense_optimizer.lr=1e-3"]
    runs = [_run(tmp_path / "din_slow", "din", 0.5949), _run(tmp_path / "din_fast", "din", 0.5966, fast),
            _run(tmp_path / "muse_slow", "muse", 0.6560), _run(tmp_path / "muse_fast", "muse", 0.6615, fast)]
    assert cli_main(["compare", *runs, "--no-floors", "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert ("MUSE [train.dense_optimizer.lr=0.001] - DIN [train.dense_optimizer.lr=0.001]: +0.0649 GAUC "
            "(one seed each: no spread measured)") in out, out
    assert ("MUSE [train.dense_optimizer.lr=0.0002] - DIN [train.dense_optimizer.lr=0.0002]: +0.0611 GAUC") in out, out
    # The baseline's other setting is still measured against its first row, as before.
    assert "DIN [train.dense_optimizer.lr=0.001] - DIN [train.dense_optimizer.lr=0.0002]: +0.0017 GAUC" in out, out
    rows = {(r["method"], r.get("setting")): r for r in json.loads((tmp_path / "cmp.json").read_text())["rows"]}
    assert abs(rows[("MUSE", "train.dense_optimizer.lr=0.001")]["gauc_vs_DIN"] - (0.6615 - 0.5966)) < 1e-12


def test_a_method_at_settings_the_baseline_lacks_is_measured_against_its_first_row(tmp_path: Path, capsys) -> None:
    # DIN ran at lr 2e-4 only: MUSE at 1e-3 has no DIN of its settings and is measured against DIN's row, as before.
    # MUSE's rows are labelled by lr alone, DIN's by nothing: the labels cannot pair rows, the settings do.
    runs = [_run(tmp_path / "din", "din", 0.60), _run(tmp_path / "muse", "muse", 0.65),
            _run(tmp_path / "muse_fast", "muse", 0.66, ["train.dense_optimizer.lr=1e-3"])]
    assert cli_main(["compare", *runs, "--no-floors"]) == 0
    out = capsys.readouterr().out
    assert "MUSE [train.dense_optimizer.lr=0.0002] - DIN: +0.0500 GAUC" in out, out
    assert "MUSE [train.dense_optimizer.lr=0.001] - DIN: +0.0600 GAUC" in out, out


def test_equal_labels_of_other_settings_do_not_pair_rows(tmp_path: Path, capsys) -> None:
    """MUSE's runs differ in lr (all at batch 1000), DIN's in lr too (all at batch 256): both label their rows by
    lr alone, yet no DIN row shares MUSE's settings, so MUSE is measured against DIN's first row."""
    small = ["train.batch_size=256"]
    runs = [_run(tmp_path / "din", "din", 0.60, small),
            _run(tmp_path / "din_fast", "din", 0.61, small + ["train.dense_optimizer.lr=1e-3"]),
            _run(tmp_path / "muse", "muse", 0.65),
            _run(tmp_path / "muse_fast", "muse", 0.66, ["train.dense_optimizer.lr=1e-3"])]
    assert cli_main(["compare", *runs, "--no-floors"]) == 0
    out = capsys.readouterr().out
    assert "MUSE [train.dense_optimizer.lr=0.001] - DIN [train.dense_optimizer.lr=0.0002]: +0.0600 GAUC" in out, out

"""`muse-rec compare --floors FILE` refuses a floors file whose keys it compares with the runs (split, fit split,
data, sample count, history window) are present but of another type, in one line naming the key (exit 2).

The checks skip a key a file lacks (another writer's), and skipped one of the wrong type alike: floors of
``options.seq_len: "x"`` or ``-5`` judged runs of any window, ``train_split: 3`` runs of any fit split, and the
table came out as if the file were right (exit 0)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

import pytest

from muse_rec.cli import main as cli_main

FLOORS: Dict[str, Any] = {
    "split": "test", "train_split": "train", "prepared": "data/demo/prepared", "data_fingerprint": "abc",
    "samples": 100, "options": {"seq_len": 0},
    "floors": {"popularity": {"description": "smoothed train CTR of the target item", "gauc": 0.55, "auc": 0.55,
                              "logloss": 0.4}},
}


def _runs(tmp_path: Path) -> list:
    out = []
    for name, method, gauc in (("muse", "MUSE", 0.66), ("din", "DIN", 0.60)):
        d = tmp_path / name
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps({"method": method, "gauc": gauc, "auc": gauc, "logloss": 0.4}))
        out.append(str(d))
    return out


def _compare(tmp_path: Path, floors: Dict[str, Any]) -> int:
    f = tmp_path / "floors.json"
    f.write_text(json.dumps(floors))
    return cli_main(["compare", *_runs(tmp_path), "--floors", str(f)])


def test_a_well_formed_file_is_read(tmp_path: Path, capsys) -> None:
    assert _compare(tmp_path, FLOORS) == 0
    assert "every method is above it" in capsys.readouterr().out  # the floor judged the runs


@pytest.mark.parametrize("key, value", [
    ("split", 3), ("train_split", 3), ("train_split", None), ("prepared", ["a"]), ("data_fingerprint", 5),
    ("samples", "many"), ("samples", -1), ("samples", True), ("options", "x"),
    ("options.seq_len", "x"), ("options.seq_len", -5), ("options.seq_len", 50.0),
])
def test_a_key_of_another_type_is_refused_naming_it(tmp_path: Path, capsys, key: str, value: Any) -> None:
    floors = json.loads(json.dumps(FLOORS))
    if key.startswith("options."):
        floors["options"][key.split(".", 1)[1]] = value
    else:
        floors[key] = value
    assert _compare(tmp_path, floors) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"floors.json: {key}: expected" in err, err


def test_a_file_without_any_floor_is_refused_not_a_table_without_floors(tmp_path: Path, capsys) -> None:
    """``floors: {}`` gave the table without a floor row or verdict (exit 0): --floors asked, nothing said."""
    assert _compare(tmp_path, {**FLOORS, "floors": {}}) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "floors.json: floors: no floor in it" in err, err

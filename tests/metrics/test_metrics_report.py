"""Comparison table formatting and atomic metrics JSON."""
from __future__ import annotations

import json
import math
import os
import re
import resource
import signal
import stat

import numpy as np
import pytest
import torch

from muse_rec.data.files import OutputWriteError
from muse_rec.metrics import metrics_table, save_metrics_json

ROWS = [
    {"method": "DIN", "gauc": 0.60823, "auc": 0.7, "logloss": 0.41, "samples_per_s": 12345.6, "wall_s": 61},
    {"method": "MUSE", "gauc": 0.61541, "auc": float("nan"), "samples_per_s": 9876.0, "wall_s": 75},
]


def test_markdown_table():
    text = metrics_table(ROWS, formats={"samples_per_s": ",.0f"})
    lines = text.splitlines()
    assert len(lines) == 4
    assert [c.strip() for c in lines[0].strip("|").split("|")] == [
        "method", "gauc", "auc", "logloss", "samples_per_s", "wall_s"
    ]
    # Text left-aligned, numbers right-aligned.
    assert lines[1].startswith("| ------ | -----:")
    cells = [c.strip() for c in lines[3].strip("|").split("|")]
    assert cells == ["MUSE", "0.6154", "-", "-", "9,876", "75"]  # NaN and missing key show "-"
    assert len({len(x) for x in lines}) == 1  # columns aligned


def test_plain_table_with_chosen_columns():
    text = metrics_table(ROWS, columns=["method", "gauc"], float_digits=2, style="plain")
    assert text.splitlines() == ["method  gauc", "------  ----", "DIN     0.61", "MUSE    0.62"]
    with pytest.raises(ValueError, match="style"):
        metrics_table(ROWS, style="html")
    with pytest.raises(ValueError, match="not in the table's columns"):
        metrics_table(ROWS, columns=["method"], formats={"gauc": ".2f"})


def test_save_metrics_json_is_strict_and_atomic(tmp_path):
    metrics = {
        "gauc": np.float64(0.61),
        "samples": np.int64(7),
        "auc": float("nan"),
        "loss": torch.tensor(0.5),
        "by_popularity": [{"group": "[0,1)", "hi": math.inf, "n": np.arange(2)}],
    }
    path = save_metrics_json(tmp_path / "sub" / "metrics.json", metrics)
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]  # no temp left behind
    loaded = json.loads(path.read_text())
    assert loaded == {
        "gauc": 0.61,
        "samples": 7,
        "auc": None,
        "loss": 0.5,
        "by_popularity": [{"group": "[0,1)", "hi": None, "n": [0, 1]}],
    }
    save_metrics_json(path, {"gauc": 0.7})  # overwrite in place
    assert json.loads(path.read_text()) == {"gauc": 0.7}


def test_save_metrics_json_writes_through_a_link_with_the_usual_mode_and_names_the_file_it_cannot_write(tmp_path):
    """It wrote through `mkstemp`: the file got mode 0600 (unreadable by the group that reads the
    results), a symbolic link at the path was replaced by a file, and a failed write named no file."""
    target = tmp_path / "results" / "floors.json"
    target.parent.mkdir()
    link = tmp_path / "floors.json"
    link.symlink_to(target)
    save_metrics_json(link, {"gauc": 0.7})
    assert link.is_symlink() and json.loads(target.read_text()) == {"gauc": 0.7}
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    earlier = target.read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (8, hard))  # a full disk: no file may grow past 8 bytes
    try:
        with pytest.raises(OutputWriteError, match=re.escape(f"File too large: '{link}'")):
            save_metrics_json(link, {"gauc": 0.8})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    assert target.read_bytes() == earlier and sorted(p.name for p in target.parent.iterdir()) == ["floors.json"]


def test_replace_texts_replaces_every_file_or_none(tmp_path):
    """Files that belong together (compare's .md and .json, a run's spec.yaml and run.json): a write
    that fails on the second leaves the first as it was, and no temporary file behind."""
    from muse_rec.data.files import replace_texts

    first, second = tmp_path / "spec.yaml", tmp_path / "gone" / "run.json"  # the second cannot be created
    first.write_text("earlier\n")
    with pytest.raises(OutputWriteError, match=re.escape(str(second))):
        replace_texts({first: "new\n", second: "{}\n"})
    assert first.read_text() == "earlier\n" and sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]
    second.parent.mkdir()
    replace_texts({first: "new\n", second: "{}\n"})
    assert first.read_text() == "new\n" and second.read_text() == "{}\n"

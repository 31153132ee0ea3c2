"""`muse-rec synth` writes no release that `muse-rec prepare` refuses: every item without an item_features
row (``--item-features-missing 1``) was an empty item_features table ("empty table (0 rows)", exit 2 at
prepare); it is refused by synth, naming the knob."""
from __future__ import annotations

from pathlib import Path

import pytest


def test_every_item_without_item_features_is_refused_by_synth(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from muse_rec.cli import main

    out = tmp_path / "raw"
    assert main(["synth", str(out), "--preset", "tiny", "--quiet", "--no-diagnostics",
                 "--item-features-missing", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("muse-rec synth: --item-features-missing 1.0 must be in [0, 1)"), err
    assert err.count("\n") == 1 and not out.exists()

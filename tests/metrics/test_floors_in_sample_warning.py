"""`muse-rec baselines --split S --train-split S` names every floor that reads the scored samples' own clicks."""
from __future__ import annotations

from pathlib import Path

from muse_rec.cli import main as cli_main
from muse_rec.metrics.floors import compute_floors


def test_the_in_sample_warning_names_the_regression_too(tiny: Path, capsys) -> None:
    # The regression scores with the in-sample CTR as popularity does (an outside check's train split, 3% clicks:
    # regression 0.833 GAUC in-sample, 0.670 on test); the warning named the popularity floor alone.
    assert cli_main(["baselines", str(tiny), "--top-k", "9", "--train-split", "test"]) == 0
    err = capsys.readouterr().err
    assert "the popularity floor, and the logistic regression that reads it, count each scored sample's own click" in err


def test_the_regression_does_read_the_in_sample_ctr(tiny: Path) -> None:
    """What the warning says: scored on its own fit split, the regression ranks above its honest score there,
    as the popularity floor does. On the tiny preset (109 GAUC users) popularity goes 0.48 -> 0.90 and the
    regression 0.58 -> 0.85; a GAUC over ~100 users has a standard error of ~0.03, so 0.1 is > 3 of them."""
    from muse_rec.data.prepared import PreparedData

    data = PreparedData(str(tiny))
    honest = compute_floors(data, "test", train_split="train")["floors"]
    in_sample = compute_floors(data, "test", train_split="test")["floors"]
    for name in ("popularity", "logistic_regression"):
        assert in_sample[name]["gauc"] > honest[name]["gauc"] + 0.1, (name, in_sample[name], honest[name])

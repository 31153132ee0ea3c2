"""`muse-rec reproduce --what fusion`: the plan per SCL quality, the criterion, the report, CLI errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from muse_rec.cli import main
from muse_rec.reproduce.fusion import (
    DEFAULT_QUALITIES,
    FUSION_METHODS,
    criterion,
    diff_se,
    fusion_plan,
    judge_point,
    parse_qualities,
    quality_dir,
    write_fusion_report,
)
from muse_rec.reproduce.results import Stats


def test_plan_per_quality_trains_every_method_at_every_seed():
    plan = fusion_plan(0.2, seeds=3)
    assert [r.name for r in plan.runs] == [f"{stem}-s{s}" for _, stem in FUSION_METHODS for s in range(3)]
    assert all(Path(c.spec_path).exists() and c.spec_path.endswith(f"demo/{c.id}.yaml") for c in plan.configs.values())
    assert plan.config_of("fusion", "MUSE-fusion@Q=0.2") == "muse_fusion"
    assert quality_dir(Path("o"), 0.5) == Path("o/q0.5") and quality_dir(Path("o"), 1.0) == Path("o/q1")


@pytest.mark.parametrize("text", ["", "1,1", "1.5", "a,b", "-0.1"])
def test_bad_qualities_are_refused(text):
    with pytest.raises(ValueError, match="--scl-qualities"):
        parse_qualities(text)


def _stats(*v):
    return Stats(list(v), list(range(len(v))))


def _row(muse, sim, fus):
    return {"MUSE": _stats(*muse), "SIM-soft": _stats(*sim), "MUSE-fusion": _stats(*fus)}


def test_criterion_holds_only_when_never_worse_and_better_than_each_somewhere():
    good = {1.0: _row((0.70, 0.71, 0.72), (0.65, 0.66, 0.67), (0.71, 0.72, 0.73)),  # level with MUSE, above SIM-soft
            0.0: _row((0.60, 0.61, 0.62), (0.65, 0.66, 0.67), (0.68, 0.69, 0.70))}  # above both
    verdicts = [judge_point(q, r) for q, r in good.items()]
    assert criterion(verdicts, list(good))[0]
    assert verdicts[1].better_than == ("MUSE", "SIM-soft") and "above" in verdicts[1].sentence
    # MUSE leads everywhere and the fusion only equals it: never better than MUSE, fails.
    level = {q: dict(good[1.0], **{"MUSE-fusion": good[1.0]["MUSE"]}) for q in (1.0, 0.0)}
    ok, why = criterion([judge_point(q, r) for q, r in level.items()], list(level))
    assert not ok and "never better" in why
    # A clear loss at one point fails whatever happens elsewhere.
    bad = {**good, 0.5: _row((0.70, 0.71, 0.72), (0.65, 0.66, 0.67), (0.60, 0.61, 0.62))}
    ok, why = criterion([judge_point(q, r) for q, r in bad.items()], list(bad))
    assert not ok and "0.5" in why
    # A point with a method missing is incomplete, not a pass.
    assert judge_point(0.2, {"MUSE": _stats(0.7)}) is None
    assert not criterion(verdicts[:1], list(good))[0]


def test_report_has_the_table_one_sentence_per_point_and_the_plot(tmp_path: Path):
    table = {1.0: _row((0.70, 0.71, 0.72), (0.65, 0.66, 0.67), (0.71, 0.72, 0.73)),
             0.0: _row((0.60, 0.61, 0.62), (0.65, 0.66, 0.67), (0.68, 0.69, 0.70))}
    path, fig, holds = write_fusion_report(tmp_path, table, [1.0, 0.0], ["command: `x`"])
    md = path.read_text()
    assert holds and fig is not None and fig.exists()
    assert "| 1 | 0.7100 +- 0.0058 (n=3)" in md and md.count("\n- Q = ") == 2 and "**holds**" in md


def test_cli_dry_run_and_errors(capsys, tmp_path: Path):
    assert main(["reproduce", str(tmp_path / "o"), "--what", "fusion", "--dry-run", "--seeds", "2"]) == 0
    plans = json.loads(capsys.readouterr().out)
    assert list(plans) == [f"{q:g}" for q in DEFAULT_QUALITIES] and len(plans["0.5"]["runs"]) == 6
    assert not (tmp_path / "o").exists()
    assert main(["reproduce", str(tmp_path), "--what", "fusion,table5"]) == 2
    assert "alone" in capsys.readouterr().err
    assert main(["reproduce", str(tmp_path), "--what", "fusion", "--scl-qualities", "2"]) == 2
    assert "--scl-qualities" in capsys.readouterr().err
    assert main(["reproduce", str(tmp_path), "--what", "fusion", "--prepared", "x"]) == 2
    assert "synthetic" in capsys.readouterr().err


def test_gap_standard_error_is_paired_by_seed():
    # Seed 0 is bad for both methods: unpaired, the spread swamps the gap; paired, it cancels.
    a, b = _stats(0.58, 0.64, 0.63), _stats(0.56, 0.62, 0.62)
    paired = diff_se(a, b)
    diffs = [0.02, 0.02, 0.01]
    want = (sum((d - sum(diffs) / 3) ** 2 for d in diffs) / 2) ** 0.5 / 3 ** 0.5
    assert abs(paired - want) < 1e-12
    other_seeds = Stats([0.56, 0.62, 0.62], [3, 4, 5])
    assert diff_se(a, other_seeds) > 5 * paired  # unpaired: sqrt(se_a^2 + se_b^2)


def test_a_bad_set_is_refused_before_the_sweep_makes_any_data(capsys, tmp_path: Path):
    """`--what fusion --set train.nope=1` (or a key reproduce sets per run) printed its plan under --dry-run
    (exit 0), and a real sweep found it only after every quality's release was synthesised and prepared.
    Now each is one line naming the key, exit 2, and OUT is never created."""
    out = tmp_path / "out"
    for extra, words in ((["--set", "train.nope=1", "--dry-run"], "--set train.nope=1: train.nope: unknown key"),
                         (["--set", "train.nope=1"], "--set train.nope=1: train.nope: unknown key"),
                         (["--set", "name=x", "--dry-run"], "--set name: reproduce sets it for each run itself"),
                         (["--set", "train.seed=3"], "--set train.seed: reproduce sets it for each run itself")):
        assert main(["reproduce", str(out), "--what", "fusion", "--quick", "--scl-qualities", "1", *extra]) == 2, extra
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err and len(err.splitlines()) == 1, (extra, err)
        assert not out.exists(), extra
    # What it does not set per run stays the user's: allowed.
    assert main(["reproduce", str(out), "--what", "fusion", "--set", "train.batch_size=1000", "--dry-run"]) == 0


def test_a_dry_run_refuses_an_out_started_with_other_settings(capsys, tmp_path: Path):
    """A `--quick` sweep's OUT, dry-run without --quick (or a paper reproduction's OUT), printed the plan (exit 0)
    where the real sweep refuses it at once; the dry run now refuses it alike, one line naming the file, and
    leaves it as it was."""
    from muse_rec.cli.reproduce import DEFAULT_SYNTH_ARGS, QUICK_SYNTH_ARGS

    out = tmp_path / "out"
    out.mkdir()
    manifest = out / "reproduce.json"
    for recorded in ({"what": "fusion", "synth_args": list(QUICK_SYNTH_ARGS)},
                     {"data": "synthetic", "synth_args": list(DEFAULT_SYNTH_ARGS)}):
        manifest.write_text(json.dumps(recorded))
        assert main(["reproduce", str(out), "--what", "fusion", "--dry-run"]) == 2, recorded
        err = capsys.readouterr().err
        assert f"{manifest}: {out} was started with other settings" in err and len(err.splitlines()) == 1, err
        assert json.loads(manifest.read_text()) == recorded and sorted(p.name for p in out.iterdir()) == ["reproduce.json"]
    manifest.write_text(json.dumps({"what": "fusion", "synth_args": list(QUICK_SYNTH_ARGS)}))
    assert main(["reproduce", str(out), "--what", "fusion", "--quick", "--dry-run"]) == 0  # the same settings: planned


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA: --device cuda is valid")
def test_device_cuda_without_cuda_is_refused_before_the_sweep_makes_any_data(capsys, monkeypatch, tmp_path: Path):
    """`--what fusion --device cuda` where torch sees no CUDA device started the sweep: every quality's release
    was synthesised and prepared before each run failed on the device. Now one line, exit 2, OUT not created."""
    import muse_rec.reproduce.fusion as fusion

    def sweep(*args, **kwargs):
        raise AssertionError("the sweep started")

    monkeypatch.setattr(fusion, "run_sweep", sweep)
    out = tmp_path / "out"
    assert main(["reproduce", str(out), "--what", "fusion", "--quick", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "--device cuda: torch sees no CUDA device on this machine" in err and len(err.splitlines()) == 1, err
    assert not out.exists()
    # Previewing a GPU sweep trains nothing: allowed.
    assert main(["reproduce", str(out), "--what", "fusion", "--quick", "--device", "cuda", "--dry-run"]) == 0

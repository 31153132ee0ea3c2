"""`muse-rec compare` groups runs by method AND training settings (each run's spec.yaml, seed
aside): runs of one method at another lr are another row, and a copied run directory (same spec,
same seed) is refused instead of counting as a second seed with a spread of 0."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Sequence

import yaml

from muse_rec.cli import main as cli_main
from muse_rec.spec import load_spec, training_settings

SPEC = Path(__file__).resolve().parents[2] / "specs/methods/muse.yaml"


def _run(d: Path, gauc: float, overrides: Sequence[str] = ()) -> Path:
    """A finished run directory as the trainer leaves it: metrics.json + the resolved spec.yaml."""
    d.mkdir(parents=True)
    spec = load_spec(SPEC, list(overrides))
    (d / "metrics.json").write_text(json.dumps({"method": spec.model.method, "gauc": gauc, "auc": gauc,
                                                "logloss": 0.4}))
    (d / "spec.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    return d


def test_runs_at_another_lr_are_another_row_labelled_by_the_key_that_differs(tmp_path, capsys):
    runs = [_run(tmp_path / "p0", 0.66), _run(tmp_path / "p1", 0.67, ["train.seed=1"]),
            _run(tmp_path / "f0", 0.70, ["train.dense_optimizer.lr=1e-3"]),
            _run(tmp_path / "f1", 0.72, ["train.dense_optimizer.lr=1e-3", "train.seed=1"])]
    assert cli_main(["compare", *map(str, runs), "--no-floors", "--out", str(tmp_path / "cmp")]) == 0
    rows = json.loads((tmp_path / "cmp.json").read_text())["rows"]
    assert [(r["method"], r["setting"], r["seeds"]) for r in rows] == [
        ("MUSE", "train.dense_optimizer.lr=0.0002", 2), ("MUSE", "train.dense_optimizer.lr=0.001", 2)]
    assert abs(rows[0]["gauc"] - 0.665) < 1e-12 and abs(rows[1]["gauc"] - 0.71) < 1e-12
    assert abs(rows[1]["gauc_std"] - 0.02 ** 0.5 / 10) < 1e-12  # the spread of 0.70 and 0.72, not of all four
    assert "| setting " in capsys.readouterr().out


def test_runs_differing_only_in_what_they_log_or_where_they_live_are_one_setting(tmp_path, capsys):
    a = _run(tmp_path / "a", 0.66, ["name=first", "output_dir=elsewhere", "train.log_every=1"])
    b = _run(tmp_path / "b", 0.68, ["train.seed=1", "train.warn_below_clicks=0", "train.eval_batch_size=64"])
    assert cli_main(["compare", str(a), str(b), "--no-floors", "--out", str(tmp_path / "cmp")]) == 0
    rows = json.loads((tmp_path / "cmp.json").read_text())["rows"]
    assert [(r["method"], r.get("setting"), r["seeds"]) for r in rows] == [("MUSE", None, 2)]
    assert "setting" not in capsys.readouterr().out


def test_a_run_from_before_data_raw_was_dropped_is_the_same_setting(tmp_path):
    """Runs made before 53eb75e hold `data.raw: null` in spec.yaml (a key nothing read): compare put
    them in another row than the same settings' newer runs ("data.raw=null" vs "<absent>")."""
    old = _run(tmp_path / "old", 0.66)
    doc = yaml.safe_load((old / "spec.yaml").read_text())
    doc["data"]["raw"] = None
    (old / "spec.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    new = _run(tmp_path / "new", 0.68, ["train.seed=1"])
    assert cli_main(["compare", str(old), str(new), "--no-floors", "--out", str(tmp_path / "cmp")]) == 0
    rows = json.loads((tmp_path / "cmp.json").read_text())["rows"]
    assert [(r["method"], r.get("setting"), r["seeds"]) for r in rows] == [("MUSE", None, 2)]


def test_a_copied_run_directory_is_refused_not_counted_as_a_seed(tmp_path, capsys):
    a = _run(tmp_path / "a", 0.66)
    b = _run(tmp_path / "b", 0.68, ["train.seed=1"])
    shutil.copytree(a, tmp_path / "a_copy")
    assert cli_main(["compare", str(a), str(b), str(tmp_path / "a_copy"), "--no-floors"]) == 2
    err = capsys.readouterr().err
    assert (f"muse-rec compare: {tmp_path / 'a_copy'}: the same method, spec, ranks and train.seed (0) as {a} "
            "(a copy or a re-run, not another seed); give each seed's run once") in err, err


def test_the_same_seed_on_another_number_of_ranks_is_another_setting(tmp_path, capsys):
    """1 and 2 ranks of train.batch_size train on other global batches and step counts: two rows, not a
    run and its copy (compare refused them as "a copy or a re-run"). The ranks come from run.json."""
    one, two = _run(tmp_path / "r1", 0.766), _run(tmp_path / "r2", 0.761)
    for d, n in ((one, 1), (two, 2)):
        (d / "run.json").write_text(json.dumps({"run_id": d.name, "world_size": n}))
    assert cli_main(["compare", str(one), str(two), "--no-floors", "--out", str(tmp_path / "cmp")]) == 0
    rows = json.loads((tmp_path / "cmp.json").read_text())["rows"]
    assert [(r["setting"], r["seeds"]) for r in rows] == [("world_size=1", 1), ("world_size=2", 1)]
    (two / "run.json").write_text(json.dumps({"run_id": "r2", "world_size": "two"}))
    assert cli_main(["compare", str(one), str(two), "--no-floors"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"muse-rec compare: {two / 'run.json'}: world_size: expected a positive integer, got 'two'"], err


def test_a_run_without_spec_yaml_beside_runs_with_one_is_its_own_row(tmp_path):
    a = _run(tmp_path / "a", 0.66)
    b = _run(tmp_path / "b", 0.68, ["train.seed=1"])
    (b / "spec.yaml").unlink()
    assert cli_main(["compare", str(a), str(b), "--no-floors", "--out", str(tmp_path / "cmp")]) == 0
    rows = json.loads((tmp_path / "cmp.json").read_text())["rows"]
    assert [(r["setting"], r["seeds"]) for r in rows] == [("with spec.yaml", 1), ("no spec.yaml", 1)]


def test_a_malformed_spec_yaml_names_the_file(tmp_path, capsys):
    a = _run(tmp_path / "a", 0.66)
    b = _run(tmp_path / "b", 0.68, ["train.seed=1"])
    for text, words in (("train: [1,\n", "not valid YAML"), ("- 1\n- 2\n", "expected the run's resolved spec")):
        (b / "spec.yaml").write_text(text)
        assert cli_main(["compare", str(a), str(b), "--no-floors"]) == 2
        err = capsys.readouterr().err
        assert f"muse-rec compare: {b / 'spec.yaml'}: {words}" in err and "Traceback" not in err, err


def test_training_settings_leave_out_labels_and_logging_only():
    base = training_settings(load_spec(SPEC).to_dict())
    assert "train.seed" in base and "train.dense_optimizer.lr" in base and "model.gsu.top_k" in base
    assert not any(k.startswith(("name", "output_dir", "data.vocab_sizes", "train.log_every")) for k in base)
    relabelled = training_settings(load_spec(SPEC, ["name=x", "train.log_every=3", "data.num_workers=2"]).to_dict())
    assert relabelled == base
    assert training_settings(load_spec(SPEC, ["train.batch_size=250"]).to_dict()) != base


def test_settings_that_agree_on_the_first_differing_keys_stay_apart(tmp_path):
    """Labels show three of the differing keys; when two settings agree on those three, every
    differing key is shown, so the two are not merged into one row."""
    many = ["data.seq_len=500", "model.gsu.top_k=20", "train.batch_size=250"]
    runs = [_run(tmp_path / "a", 0.60), _run(tmp_path / "b", 0.62, many),
            _run(tmp_path / "c", 0.64, [*many, "train.dense_optimizer.lr=1e-3"])]
    assert cli_main(["compare", *map(str, runs), "--no-floors", "--out", str(tmp_path / "cmp")]) == 0
    rows = json.loads((tmp_path / "cmp.json").read_text())["rows"]
    assert [r["seeds"] for r in rows] == [1, 1, 1], rows
    assert rows[2]["setting"] == ("data.seq_len=500, model.gsu.top_k=20, train.batch_size=250, "
                                  "train.dense_optimizer.lr=0.001")


def test_a_run_without_a_gauc_is_no_seed_and_the_spread_says_whose_it_is(tmp_path, capsys):
    """DIN with one GAUC and one null (a split where it is undefined) read "seeds 2", and the verdict
    said "spread (std, 2+ seeds)" for a spread that was MUSE's alone."""
    def fake(d: Path, method: str, gauc) -> Path:
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({"method": method, "gauc": gauc, "auc": 0.6, "logloss": 0.4}))
        return d

    runs = [fake(tmp_path / f"m{i}", "MUSE", g) for i, g in enumerate((0.60, 0.62, 0.67))]
    runs += [fake(tmp_path / "d1", "DIN", 0.58), fake(tmp_path / "d2", "DIN", None)]
    assert cli_main(["compare", *map(str, runs), "--no-floors", "--baseline", "DIN",
                     "--out", str(tmp_path / "cmp")]) == 0
    rows = {r["method"]: r for r in json.loads((tmp_path / "cmp.json").read_text())["rows"]}
    assert (rows["MUSE"]["seeds"], rows["DIN"]["seeds"]) == (3, 1)
    out = capsys.readouterr().out
    assert "MUSE - DIN: +0.0500 GAUC; seed-to-seed spread (std, MUSE's, 3 seeds; the other has one) 0.0361" in out


def test_a_baseline_without_any_gauc_is_said_not_a_traceback(tmp_path, capsys):
    """Every DIN run with a null GAUC: compare raised KeyError 'gauc' (exit 1)."""
    def fake(d: Path, method: str, gauc) -> Path:
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({"method": method, "gauc": gauc, "auc": 0.6, "logloss": 0.4}))
        return d

    runs = [fake(tmp_path / "m1", "MUSE", 0.60), fake(tmp_path / "m2", "MUSE", 0.62),
            fake(tmp_path / "d1", "DIN", None), fake(tmp_path / "d2", "DIN", None)]
    assert cli_main(["compare", *map(str, runs), "--no-floors", "--baseline", "DIN"]) == 0
    assert "DIN: no run has a GAUC (undefined on its split), so no margin against it" in capsys.readouterr().out


def test_runs_that_recorded_different_floors_are_not_judged_by_one_of_them(tmp_path, capsys):
    # Two data sets: the second run is above its own floor (0.60) but below the first's (0.70). Before,
    # compare showed the first run's floors and called the second "BELOW it".
    def floors(gauc: float) -> dict:
        return {"popularity": {"description": "item popularity", "gauc": gauc, "auc": gauc, "logloss": 0.4}}

    runs = []
    for name, gauc, floor in (("a", 0.75, 0.70), ("b", 0.65, 0.60)):
        d = _run(tmp_path / name, gauc, [f"train.seed={len(runs)}"])
        doc = json.loads((d / "metrics.json").read_text())
        (d / "metrics.json").write_text(json.dumps({**doc, "floors": floors(floor)}))
        runs.append(d)
    assert cli_main(["compare", *map(str, runs)]) == 0
    out = capsys.readouterr()
    assert "BELOW" not in out.out and "floor:" not in out.out
    assert "floors not shown: the runs recorded different floors" in out.err
    # Runs of one data set keep theirs.
    assert cli_main(["compare", str(runs[0])]) == 0
    assert "floor: item popularity" in capsys.readouterr().out


def test_runs_scored_on_different_prepared_data_are_refused_naming_them(tmp_path, capsys):
    """DIN on one prepared set and MUSE on another: compare printed "MUSE - DIN: +0.0838 GAUC ... margin =
    2.0 x spread", a gap between GAUCs of two different test sets, and said only (on stderr) that the
    floors were not shown. The data a run scored is its metrics.json's data_fingerprint, else its
    run.json's (runs written before metrics.json recorded it)."""
    din, same = _run(tmp_path / "din", 0.56), _run(tmp_path / "din_same", 0.57, ["train.seed=1"])
    muse = _run(tmp_path / "muse", 0.65, ["train.seed=2"])
    for d, fingerprint in ((din, "aaaa"), (same, "aaaa")):  # as the trainer writes run.json
        doc = json.loads((d / "metrics.json").read_text())
        (d / "metrics.json").write_text(json.dumps({**doc, "method": "DIN"}))
        (d / "run.json").write_text(json.dumps({"run_id": d.name, "data_fingerprint": fingerprint, "world_size": 1}))
    doc = json.loads((muse / "metrics.json").read_text())
    (muse / "metrics.json").write_text(json.dumps({**doc, "data_fingerprint": "bbbb"}))
    assert cli_main(["compare", str(din), str(same), "--no-floors"]) == 0
    capsys.readouterr()
    assert cli_main(["compare", str(din), str(same), str(muse), "--no-floors", "--out", str(tmp_path / "cmp")]) == 2
    out = capsys.readouterr()
    assert out.out == "" and not (tmp_path / "cmp.md").exists()
    assert out.err == (f"muse-rec compare: the runs were scored on different prepared data (data fingerprints {din}: "
                       f"aaaa, {muse}: bbbb); compare runs of one data set\n"), out.err
    (muse / "metrics.json").write_text(json.dumps({**doc, "data_fingerprint": 7}))
    assert cli_main(["compare", str(din), str(muse), "--no-floors"]) == 2
    assert f"{muse / 'metrics.json'}: data_fingerprint: expected the prepared data's fingerprint, got 7" in \
        capsys.readouterr().err


def test_seeds_with_equal_gaucs_give_no_ratio_rather_than_a_division_by_1e_12(tmp_path, capsys):
    """Two seeds of each method with equal GAUCs (a spread of exactly 0): compare printed
    "margin = 50000000000.0 x spread", the margin divided by the 1e-12 that stood in for the spread."""
    def fake(d: Path, method: str, gauc: float) -> Path:
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({"method": method, "gauc": gauc, "auc": 0.6, "logloss": 0.4}))
        return d

    runs = [fake(tmp_path / "d1", "DIN", 0.5), fake(tmp_path / "d2", "DIN", 0.5),
            fake(tmp_path / "m1", "MUSE", 0.55), fake(tmp_path / "m2", "MUSE", 0.55)]
    assert cli_main(["compare", *map(str, runs), "--no-floors"]) == 0
    out = capsys.readouterr().out
    assert ("MUSE - DIN: +0.0500 GAUC; seed-to-seed spread (pooled std, 2 and 2 seeds) 0.0000; "
            "no margin-to-spread ratio (the seeds' GAUCs are equal)") in out, out
    assert " x spread" not in out


def test_runs_trained_on_the_scored_split_or_on_other_splits_are_warned_about_by_name(tmp_path, capsys):
    """DIN trained on `test` and scored on it (GAUC 0.898, a leak) beside MUSE trained on `train`: compare
    showed "MUSE - DIN: -0.25 GAUC" with no word that DIN's row had seen its test labels; within one
    method only a `setting` label showed it, across methods nothing."""
    din = _run(tmp_path / "din", 0.898, ["data.train_split=test"])
    doc = json.loads((din / "metrics.json").read_text())
    (din / "metrics.json").write_text(json.dumps({**doc, "method": "DIN", "eval_split": "test"}))
    muse = [_run(tmp_path / f"muse{i}", 0.65 + i / 100, [f"train.seed={i}"]) for i in (1, 2)]
    assert cli_main(["compare", str(din), *map(str, muse), "--no-floors"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == [f"muse-rec compare: WARNING: {din}: trained on the split scored here (test): its GAUC is not a "
                   "held-out score",
                   f"muse-rec compare: WARNING: the runs trained on different splits ({din}: test, {muse[0]}: train): "
                   "a gap between them is not the methods' alone"], err
    assert cli_main(["compare", *map(str, muse), "--no-floors"]) == 0
    assert capsys.readouterr().err == ""

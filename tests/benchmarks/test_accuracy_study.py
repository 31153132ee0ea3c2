"""benchmarks/accuracy_study.py: each ablation row flips exactly one knob; tables render partial results."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from benchmarks import accuracy_study as study
from muse_rec.spec import load_spec


def resolved(cfg: study.Config) -> dict:
    cmd = study.command(cfg, 0, Path("/out"), "PREPARED", "adagrad", None)
    sets = [cmd[i + 1] for i, c in enumerate(cmd) if c == "--set" and not cmd[i + 1].startswith("output_dir")]
    return load_spec(cmd[cmd.index("--spec") + 1], sets).to_dict()


def flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def test_each_ablation_row_differs_from_its_base_by_one_difference():
    rows = {c.key: c for c in study.ablation_configs("specs/demo/muse.yaml")}
    ours, ref = flat(resolved(rows["ours"])), flat(resolved(rows["reference"]))
    for name in study.DIFFERENCES:
        slug = study._slug(name)
        plus, minus = flat(resolved(rows["ours_plus_" + slug])), flat(resolved(rows["reference_minus_" + slug]))
        changed = {k for k in ours if ours[k] != plus[k]}
        assert changed and changed == {k for k in ref if ref[k] != minus[k]}, name
        assert all(plus[k] == ref[k] and minus[k] == ours[k] for k in changed), name
    # The committed MUSE spec = the reference parametrization except the bias and the 2-logit head,
    # plus the train-prior output bias, He's tower gain and the constant SimTier init (docs/accuracy.md);
    # neither ours nor the reference has those three. All three keep LeCun's fan-in over every column.
    pub = flat(resolved(next(c for c in study.method_configs("specs/demo") if c.key == "muse__published")))
    assert {k for k in ref if ref[k] != pub[k]} == {"model.parametrization.linear_bias",
                                                    "model.parametrization.output_head",
                                                    "model.parametrization.output_bias",
                                                    "model.parametrization.tower_gain",
                                                    "model.parametrization.simtier_init"}
    assert ours["model.parametrization.output_bias"] == ref["model.parametrization.output_bias"] == "linear"
    assert ours["model.parametrization.tower_gain"] == ref["model.parametrization.tower_gain"] == "unit"
    assert ours["model.parametrization.tower_fan_in"] == ref["model.parametrization.tower_fan_in"] == "all"
    assert pub["model.parametrization.output_bias"] == "train_prior"
    assert pub["model.parametrization.tower_gain"] == "activation"
    assert ours["model.parametrization.simtier_init"] == ref["model.parametrization.simtier_init"] == "uniform"
    assert pub["model.parametrization.tower_fan_in"] == "all"
    assert pub["model.parametrization.simtier_init"] == "constant"
    spec = flat(resolved(rows["spec"]))
    for knob in ("train_prior", "tower_gain", "simtier_init"):
        key = "model.parametrization." + ("output_bias" if knob == "train_prior" else knob)
        minus, plus = flat(resolved(rows["spec_minus_" + knob])), flat(resolved(rows["ours_plus_" + knob]))
        assert {k for k in spec if spec[k] != minus[k]} == {key}, knob
        assert {k for k in ours if ours[k] != plus[k]} == {key}, knob
    # The SCL-histogram fan-in is an option: one row switches it on over the spec, nothing else.
    plus = flat(resolved(rows["spec_plus_tower_fan_in"]))
    assert {k for k in spec if spec[k] != plus[k]} == {"model.parametrization.tower_fan_in"}
    assert plus["model.parametrization.tower_fan_in"] == "scl_histograms"


def test_tables_render_partial_results(tmp_path):
    cfgs = study.method_configs("specs/demo")
    run = study.run_dir(tmp_path, cfgs[0], 0)
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"gauc": 0.61}))
    rows = study.summarize(cfgs, [0, 1], tmp_path)
    md = study.methods_markdown(rows, 0.005, {"popularity": 0.55, "mean_topk_similarity": 0.66})
    assert "| muse | 0.6100 (n=1) | missing | missing |  | no (-0.0500) |" in md
    abl = study.summarize(study.ablation_configs("specs/demo/muse.yaml"), [0], tmp_path)
    assert "Not run: ours (torch defaults)" in study.ablation_markdown(abl)


def test_the_methods_table_lists_methods_not_asked_apart_and_gives_the_floor_margin(tmp_path):
    # A study run with --only on MUSE printed six rows of "missing" for the methods it was never asked to run,
    # and "yes" without the margin above the best floor.
    cfgs = study.method_configs("specs/demo")
    for seed, g in ((0, 0.70), (1, 0.72)):
        run = study.run_dir(tmp_path, cfgs[0], seed)
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({"gauc": g}))
    rows = study.summarize(cfgs, [0, 1], tmp_path)
    asked = ["muse__published", "din__published"]  # DIN asked but failed: still a row of "missing"
    md = study.methods_markdown(rows, 0.005, {"popularity": 0.55, "mean_topk_similarity": 0.66}, asked)
    assert "| muse | 0.7100 ± 0.0141 (n=2) | missing | missing |  | yes (+0.0500) |" in md, md
    assert "| din | missing | missing | missing |" in md, md
    assert "| sim_hard |" not in md and "Not run: din_ref, sim_hard, sim_soft, twin, miss." in md, md


def test_the_methods_table_names_the_tolerance_it_judged_by(tmp_path):
    # The column read "published within 0.003 of best?" at --tolerance 0.0025 (three decimals), whose
    # verdicts judged by 0.0025: a gap of -0.0028 was "no" under a heading that let it pass.
    cfgs = study.method_configs("specs/demo")
    for cfg, g in zip(cfgs[:2], (0.7000, 0.7028)):  # muse: published, 5x dense lr
        run = study.run_dir(tmp_path, cfg, 0)
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({"gauc": g}))
    rows = study.summarize(cfgs, [0], tmp_path)
    md = study.methods_markdown(rows, 0.0025, None, ["muse__published"])
    assert "| published within 0.0025 of best? |" in md.splitlines()[0], md
    assert "| no (-0.0028) |" in md, md
    assert "| published within 0.005 of best? |" in study.methods_markdown(rows, 0.005, None).splitlines()[0]


def test_reference_parametrization_rows_are_the_ablation_reference_row_at_each_setting():
    abl = flat(resolved(next(c for c in study.ablation_configs("specs/demo/muse.yaml") if c.key == "reference")))
    rows = {c.key: c for c in study.method_configs("specs/demo", "reference")}
    assert flat(resolved(rows["muse__published"])) == abl
    lr = flat(resolved(rows["muse__5x_dense_lr"]))
    assert {k for k in abl if abl[k] != lr[k]} == {"train.dense_optimizer.lr"} and lr["train.dense_optimizer.lr"] == 1e-3
    # Every method gets the reference's knobs (DIN too), the setting's overrides still win.
    din = flat(resolved(rows["din__4x_steps__batch_250"]))
    assert din["model.parametrization.output_head"] == "two_logits_dice" and din["train.batch_size"] == 250
    assert din["model.parametrization.output_bias"] == "linear" and din["model.parametrization.tower_gain"] == "unit"
    assert din["model.parametrization.tower_fan_in"] == "all"
    assert flat(resolved(rows["twin__published"]))["model.parametrization.simtier_init"] == "uniform"
    spec_rows = {c.key: c for c in study.method_configs("specs/demo")}
    assert flat(resolved(spec_rows["din__4x_steps__batch_250"]))["model.parametrization.output_bias"] == "train_prior"


def _no_runs(monkeypatch):
    """Bad input is refused before any training or floor computation starts."""
    def fail(*a, **k):
        raise AssertionError("a run or a floor computation started")
    monkeypatch.setattr(study, "run_all", fail)
    monkeypatch.setattr(study, "model_free_floors", fail)


def test_unknown_only_key_is_refused(tmp_path, monkeypatch, capsys):
    # A typo in --only ran nothing, exited 0 and printed a table of "missing".
    _no_runs(monkeypatch)
    rc = study.main([str(tmp_path / "out"), "--prepared", str(tmp_path), "--what", "methods",
                     "--spec-dir", "specs/methods", "--only", "muse__published,muse__publishd"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "muse__publishd" in err[0] and "muse__5x_dense_lr" in err[0]
    assert not (tmp_path / "out").exists()


def test_jobs_below_one_is_refused(tmp_path, monkeypatch, capsys):
    # --jobs 0 started no run and waited for one forever ("0 runs done, 63 to go", then nothing).
    cfg = study.method_configs("specs/methods")[0]
    raised = []

    def call():  # in a daemon thread: the old scheduler never returned
        try:
            study.run_all([(cfg, 0)], tmp_path, str(tmp_path), "profile", None, 0)
        except ValueError as e:
            raised.append(str(e))
    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(20)
    assert not worker.is_alive(), "run_all(parallel=0) waits forever"
    assert raised and "parallel" in raised[0]
    _no_runs(monkeypatch)
    rc = study.main([str(tmp_path / "out"), "--prepared", str(tmp_path), "--what", "methods",
                     "--spec-dir", "specs/methods", "--jobs", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--jobs" in err[0]


@pytest.mark.parametrize("seeds", ["a", "0,,1", "", "0,0", "-1"])
def test_bad_seeds_are_refused(tmp_path, monkeypatch, capsys, seeds):
    # "--seeds a" ended in a ValueError traceback; "0,0" ran seed 0 once and counted it twice.
    _no_runs(monkeypatch)
    rc = study.main([str(tmp_path / "out"), "--prepared", str(tmp_path), "--what", "methods",
                     "--spec-dir", "specs/methods", "--seeds", seeds])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--seeds" in err[0]


@pytest.mark.parametrize("lr", ["-1", "0", "nan", "inf"])
def test_a_sparse_lr_no_run_takes_is_refused(tmp_path, monkeypatch, capsys, lr):
    # --sparse-lr -1 started every run of the study, each refusing it in turn (exit 2), and wrote OUT/adagrad_lr-1.
    _no_runs(monkeypatch)
    monkeypatch.setattr(study, "unprepared", lambda prepared: None)
    rc = study.main([str(tmp_path / "out"), "--prepared", str(tmp_path), "--what", "methods",
                     "--spec-dir", "specs/methods", "--sparse-lr", lr])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--sparse-lr" in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("tolerance", ["-0.001", "nan", "inf"])
def test_a_tolerance_that_judges_nothing_is_refused(tmp_path, monkeypatch, capsys, tolerance):
    # --tolerance -0.001 (or nan) ran the whole study and judged every method "no" whatever its gap; inf "yes".
    _no_runs(monkeypatch)
    rc = study.main([str(tmp_path / "out"), "--prepared", str(tmp_path), "--what", "methods",
                     "--spec-dir", "specs/methods", "--tolerance", tolerance])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--tolerance" in err[0], err
    assert not (tmp_path / "out").exists()


def test_relative_paths_are_the_callers(tmp_path, monkeypatch):
    # The runs (and `baselines`) start with cwd = the repository: a relative OUT or --prepared, meant
    # from the caller's directory, put the run directories under the repository and read other data,
    # and the study then looked for their metrics.json under the caller's OUT ("FAILED").
    seen = {}

    def record(jobs, out, prepared, sparse, sparse_lr, parallel):
        seen["cmd"] = study.command(jobs[0][0], jobs[0][1], out, prepared, sparse, sparse_lr)
        seen["out"] = out
        out.mkdir(parents=True, exist_ok=True)

    monkeypatch.setattr(study, "run_all", record)
    monkeypatch.setattr(study, "model_free_floors", lambda prepared, out: seen.setdefault("floors", prepared) and None)
    monkeypatch.setattr(study, "unprepared", lambda prepared: None)  # an empty folder stands for prepared data
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prep").mkdir()
    rc = study.main(["study", "--prepared", "prep", "--what", "methods", "--spec-dir", "specs/methods",
                     "--sparse", "profile", "--only", "muse__published", "--seeds", "0"])
    assert rc == 0
    sets = dict(seen["cmd"][i + 1].split("=", 1) for i, c in enumerate(seen["cmd"]) if c == "--set")
    assert sets["output_dir"] == str(tmp_path / "study" / "profile" / "runs" / "muse__published-s0")
    assert sets["data.prepared"] == str(tmp_path / "prep") == seen["floors"]
    assert seen["out"] == tmp_path / "study" / "profile"
    assert (tmp_path / "study" / "profile" / "methods.md").exists()


def test_an_out_of_other_prepared_data_is_refused(tmp_path, monkeypatch, capsys):
    # A run whose metrics.json exists is skipped and the floors are read back from OUT/floors.json:
    # re-using an OUT with another --prepared printed the first data set's GAUCs and floors as the new one's.
    out = tmp_path / "out" / "profile"
    cfg = study.method_configs("specs/methods")[0]
    run = study.run_dir(out, cfg, 0)
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"gauc": 0.66}))
    (run / "spec.yaml").write_text(f"name: muse\ndata:\n  prepared: {tmp_path / 'a'}\n")
    args = ["--what", "methods", "--spec-dir", "specs/methods", "--sparse", "profile",
            "--only", "muse__published", "--seeds", "0"]
    _no_runs(monkeypatch)
    assert study.main([str(tmp_path / "out"), "--prepared", str(tmp_path / "b"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "a") in err[0] and "muse__published-s0" in err[0]
    (run / "spec.yaml").write_text(f"name: muse\ndata:\n  prepared: {tmp_path / 'b'}\n")
    (out / "floors.json").write_text(json.dumps({"prepared": str(tmp_path / "a"), "floors": {}}))
    assert study.main([str(tmp_path / "out"), "--prepared", str(tmp_path / "b"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "floors.json" in err[0]
    # The same data (a relative path of it too) is the same study: it reports.
    (out / "floors.json").write_text(json.dumps({"prepared": str(tmp_path / "b"), "floors": {"popularity": {"gauc": 0.6}}}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(study, "model_free_floors", lambda prepared, o: {"popularity": 0.6})
    assert study.main([str(tmp_path / "out"), "--prepared", "b", *args, "--report-only"]) == 0
    assert "| muse | 0.6600 (n=1) |" in capsys.readouterr().out


def test_a_prepared_without_prepared_data_is_refused_before_any_run(tmp_path, monkeypatch, capsys):
    # --prepared naming no prepared data (a typo, the raw release) started every run of the study, each
    # failing on it in turn (exit 2, ~3 s each on the demo: minutes for the 63 runs of --what methods), and
    # wrote OUT with a table of "missing"; the only line of stderr named the runs' logs, not the data.
    _no_runs(monkeypatch)
    raw = tmp_path / "raw"
    raw.mkdir()
    for prepared in (raw, tmp_path / "missing"):
        rc = study.main([str(tmp_path / "out"), "--prepared", str(prepared), "--what", "methods",
                         "--spec-dir", "specs/methods", "--only", "muse__published", "--seeds", "0"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1, err
        assert "--prepared" in err[0] and str(prepared) in err[0] and "meta.json" in err[0], err
        assert not (tmp_path / "out").exists()


def test_a_spec_that_cannot_be_loaded_is_refused_before_any_run(tmp_path, monkeypatch, capsys):
    # A --spec-dir without a <method>.yaml (or a typo in --spec, or a malformed spec) started every run of the
    # study, each refusing its spec in turn (exit 2), and wrote OUT/adagrad with a log per run and a table of
    # "missing"; stderr was one line of 63 log names, none naming the spec.
    import shutil

    _no_runs(monkeypatch)
    monkeypatch.setattr(study, "unprepared", lambda prepared: None)
    specs = tmp_path / "specs"
    shutil.copytree(study.REPO / "specs", specs)
    (specs / "methods" / "din.yaml").write_text("extends: ../base.yaml\nmodel: {method: DIN, gsu: [\n")
    out = tmp_path / "out"
    for bad, named in ((["--what", "methods", "--spec-dir", str(tmp_path / "nowhere")], "--spec-dir: "
                        + str(tmp_path / "nowhere" / "muse.yaml")),
                       (["--what", "methods", "--spec-dir", str(specs / "methods")], "--spec-dir: "
                        + str(specs / "methods" / "din.yaml")),
                       (["--what", "ablation", "--spec", "specs/demo/muse.yml"], "--spec: "
                        + str(study.REPO / "specs/demo/muse.yml"))):
        rc = study.main([str(out), "--prepared", str(tmp_path), "--seeds", "0", *bad])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and err[0].startswith(f"accuracy_study.py: {named}"), err
        assert not out.exists()
    # Every study of the committed specs passes the check (the runs load them with these overrides).
    for configs in (study.method_configs("specs/methods"), study.method_configs("specs/demo", "reference"),
                    study.ablation_configs("specs/demo/muse.yaml")):
        assert study.unreadable_spec(configs, out, str(tmp_path), "adam", 0.1) is None


@pytest.mark.parametrize("where", ["out", "out/adagrad"])
def test_an_out_that_is_a_file_is_refused(tmp_path, monkeypatch, capsys, where):
    # OUT a file (or its --sparse sub-directory one) ended in a NotADirectoryError traceback making OUT/adagrad/logs.
    _no_runs(monkeypatch)
    monkeypatch.setattr(study, "unprepared", lambda prepared: None)
    (tmp_path / where).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / where).write_text("mine")
    rc = study.main([str(tmp_path / "out"), "--prepared", str(tmp_path), "--what", "methods",
                     "--spec-dir", "specs/methods", "--only", "muse__published", "--seeds", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"accuracy_study.py: OUT {tmp_path / 'out'}: "), err
    assert (tmp_path / where).read_text() == "mine"


def test_a_run_of_other_specs_in_out_is_refused(tmp_path, monkeypatch, capsys):
    # A finished run is skipped and reported under its row's key: in an OUT of `--sparse profile` runs of
    # specs/demo (row-wise Adagrad 0.05), `--spec-dir specs/methods --sparse profile` reported them as the
    # methods specs' (0.02), and the DIN ablation (--spec specs/demo/din.yaml) MUSE's runs as DIN's.
    import yaml

    out, prepared = tmp_path / "out", str(tmp_path / "p")
    for what, cfg in (("methods", study.method_configs("specs/demo")[0]),
                      ("ablation", study.ablation_configs("specs/demo/muse.yaml")[0])):
        cmd = study.command(cfg, 0, out / "profile", prepared, "profile", None)
        sets = [cmd[i + 1] for i, c in enumerate(cmd) if c == "--set"]
        run = study.run_dir(out / "profile", cfg, 0)
        run.mkdir(parents=True)
        (run / "spec.yaml").write_text(yaml.safe_dump(load_spec(cmd[cmd.index("--spec") + 1], sets).to_dict()))
        (run / "metrics.json").write_text(json.dumps({"gauc": 0.66}))
    _no_runs(monkeypatch)
    monkeypatch.setattr(study, "unprepared", lambda p: None)
    args = [str(out), "--prepared", prepared, "--sparse", "profile", "--seeds", "0"]
    for bad, why in ((["--what", "methods", "--spec-dir", "specs/methods"], "train.sparse_optimizer.lr = 0.05"),
                     (["--what", "ablation", "--spec", "specs/demo/din.yaml"], "ours-s0: a run with model.")):
        assert study.main([*args, *bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and why in err[0] and str(out / "profile" / "runs") in err[0], err
    # The study that made them reports them.
    monkeypatch.setattr(study, "model_free_floors", lambda p, o: None)
    assert study.main([*args, "--what", "methods", "--report-only"]) == 0
    assert "| muse | 0.6600 (n=1) |" in capsys.readouterr().out
    assert study.main([*args, "--what", "ablation", "--report-only"]) == 0


def test_report_only_without_runs_is_refused(tmp_path, monkeypatch, capsys):
    # --report-only on an OUT (or its --sparse sub-directory) without runs ended in a FileNotFoundError
    # traceback writing methods.json: e.g. a study run with --sparse profile, reported without it.
    (tmp_path / "out" / "profile" / "runs").mkdir(parents=True)
    _no_runs(monkeypatch)
    rc = study.main([str(tmp_path / "out"), "--prepared", str(tmp_path), "--what", "methods",
                     "--spec-dir", "specs/methods", "--report-only"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert str(tmp_path / "out" / "adagrad") in err[0] and "runs in: profile" in err[0]


@pytest.mark.parametrize("status, expected", [(3, 1), (2, 2)])
def test_failed_runs_make_the_study_fail(tmp_path, monkeypatch, capsys, status, expected):
    # A study whose runs all failed (e.g. every `train` refusing its input: exit 2) printed a
    # table of "missing" and exited 0.
    monkeypatch.setattr(study, "command", lambda *a: [sys.executable, "-c", f"import sys; sys.exit({status})"])
    monkeypatch.setattr(study, "unprepared", lambda prepared: None)
    monkeypatch.setattr(study, "model_free_floors", lambda prepared, out: None)
    rc = study.main([str(tmp_path / "out"), "--prepared", str(tmp_path), "--what", "methods",
                     "--spec-dir", "specs/methods", "--sparse", "profile", "--only", "muse__published", "--seeds", "0"])
    captured = capsys.readouterr()
    assert rc == expected
    assert "| muse | missing |" in captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and f"muse__published-s0.log ({status})" in err[0]


def test_floors_of_an_older_floors_version_are_computed_again(tmp_path, monkeypatch, capsys):
    # A study's OUT/floors.json is read back on every re-run: floors written by older code (another
    # FLOORS_VERSION: other floors or other values) were shown as this code's.
    from muse_rec.metrics.floors import FLOORS_VERSION

    path = tmp_path / "floors.json"
    path.write_text(json.dumps({"version": FLOORS_VERSION - 1, "floors": {"popularity": {"gauc": 0.5}}}))
    calls = []

    def fake_baselines(cmd, **kwargs):
        calls.append(cmd)
        path.write_text(json.dumps({"version": FLOORS_VERSION, "floors": {"popularity": {"gauc": 0.6}}}))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(study.subprocess, "run", fake_baselines)
    assert study.model_free_floors("P", tmp_path) == {"popularity": 0.6}
    assert len(calls) == 1 and "version" in capsys.readouterr().out
    assert study.model_free_floors("P", tmp_path) == {"popularity": 0.6} and len(calls) == 1  # current: read back

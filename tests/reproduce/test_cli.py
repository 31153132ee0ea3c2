"""`muse-rec reproduce` wiring: --dry-run prints the plan, --report-only reports finished runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from muse_rec.cli import main
from muse_rec.reproduce.plan import build_plan
from tests.conftest import REPO, error_of_call_unblocking_fifos, subprocess_env
from tests.data.rawgen import write_raw_release
from tests.reproduce.test_report import write_fake_runs


def test_dry_run_prints_the_quick_plan(capsys, tmp_path: Path):
    assert main(["reproduce", str(tmp_path / "out"), "--quick", "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert len(plan["runs"]) == 30 and plan["seeds"] == [0, 1] and plan["fig5_lengths"] == [50, 200, 1000]
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def test_a_dry_run_of_one_experiment_lists_only_its_cells_and_configurations(capsys, tmp_path: Path):
    """`--what table5 --dry-run` listed all 22 cells and 17 configurations of every experiment beside the 18 runs
    of its 6: the plan read as if it trained the ablations too."""
    assert main(["reproduce", str(tmp_path / "out"), "--what", "table5", "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    methods = ["din", "sim_hard", "sim_soft", "twin", "miss", "muse"]
    assert list(plan["cells"]) == [f"table5/{m}" for m in ("DIN", "SIM-hard", "SIM-soft", "TWIN", "MISS", "MUSE")]
    assert list(plan["cells"].values()) == methods and list(plan["configs"]) == methods
    assert plan["runs"] == [f"{m}-s{s}" for m in methods for s in range(3)]


def test_a_dry_run_refuses_what_the_real_command_would(capsys, tmp_path: Path):
    # An OUT started at --quick: the default size is another synthetic release. The dry run printed a plan
    # and exited 0 where the real command exits 2 ("started with other settings").
    out = tmp_path / "out"
    out.mkdir()
    manifest = out / "reproduce.json"
    assert main(["reproduce", str(out), "--quick", "--dry-run"]) == 0 and not manifest.exists()
    capsys.readouterr()
    from muse_rec.cli.reproduce import QUICK_SYNTH_ARGS

    manifest.write_text(json.dumps({"data": "synthetic", "synth_args": list(QUICK_SYNTH_ARGS)}))
    assert main(["reproduce", str(out), "--quick", "--dry-run"]) == 0
    capsys.readouterr()
    assert main(["reproduce", str(out), "--seeds", "3", "--dry-run"]) == 2
    assert "was started with other settings" in capsys.readouterr().err


def test_bad_what_is_a_clear_error(capsys, tmp_path: Path):
    assert main(["reproduce", str(tmp_path), "--what", "table4"]) == 2
    assert "table4" in capsys.readouterr().err


def test_report_only_over_finished_runs(capsys, tmp_path: Path):
    write_fake_runs(tmp_path, build_plan(("table5", "fig6"), seeds=2))
    assert main(["reproduce", str(tmp_path), "--what", "table5,fig6", "--seeds", "2", "--report-only"]) == 0
    out = capsys.readouterr().out
    assert "claims holding here" in out
    md = (tmp_path / "report.md").read_text()
    assert "## Table 5" in md and "## Fig. 6" in md and "## Table 3" not in md
    assert "command: `muse-rec reproduce" in md and "--what table5,fig6" in md
    assert (tmp_path / "table5.png").exists() and (tmp_path / "fig6.png").exists()
    # The same OUT with another data source (a raw release that opens) is refused.
    elsewhere = tmp_path / "elsewhere"
    write_raw_release(str(elsewhere), n_train_users=4, n_test_users=2, n_items=20, n_cats=3, max_len=5)
    assert main(["reproduce", str(tmp_path), "--raw", str(elsewhere), "--report-only"]) == 2
    assert "reproduce.json" in capsys.readouterr().err


@pytest.mark.parametrize("what", [[], ["--what", "fusion"]])
@pytest.mark.parametrize("exists", [False, True])
def test_report_only_of_an_out_without_runs_is_refused(capsys, tmp_path: Path, what, exists: bool):
    """A mistyped OUT: `--report-only` created it, wrote "claims holding here: 0 of 19; missing runs: 51"
    and exited 0. Now one line naming OUT, exit 2, nothing created (an empty OUT stays empty)."""
    out = tmp_path / "typo"
    if exists:
        out.mkdir()
    assert main(["reproduce", str(out), "--report-only", *what]) == 2
    assert capsys.readouterr().err == (f"muse-rec reproduce: OUT {out}: no reproduce runs there "
                                       "(run without --report-only first)\n")
    assert (sorted(os.listdir(out)) == []) if exists else not out.exists()


@pytest.mark.parametrize("flag, named", [("--prepared", "prepared data {}: "), ("--raw", "--raw: {}: ")])
def test_report_only_checks_the_data_source(capsys, tmp_path: Path, flag: str, named: str):
    """`--report-only` skipped the --prepared and --raw checks: a JSON file given there was recorded as
    OUT's data and the command exited 0. Now one line naming it, exit 2, OUT not created."""
    given, out = tmp_path / "some.json", tmp_path / "out"
    given.write_text("{}")
    assert main(["reproduce", str(out), flag, str(given), "--report-only"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("muse-rec reproduce: " + named.format(given)) and err.count("\n") == 1, err
    assert not out.exists()


def test_what_would_fail_every_run_is_refused_before_training(capsys, tmp_path: Path):
    """Unreadable --prepared data or a --set key no spec has: one line, exit 2, nothing trained,
    and OUT is not pinned to the mistyped data (a corrected rerun starts normally)."""
    out = tmp_path / "out"
    assert main(["reproduce", str(out), "--prepared", str(tmp_path / "typo"), "--what", "table5", "--seeds", "1"]) == 2
    assert f"prepared data {tmp_path / 'typo'}" in capsys.readouterr().err and not out.exists()
    raw, prepared = tmp_path / "raw", tmp_path / "prepared"
    assert main(["synth", str(raw), "--preset", "tiny", "--quiet", "--no-diagnostics"]) == 0
    assert main(["prepare", str(raw), str(prepared), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["reproduce", str(out), "--prepared", str(prepared), "--what", "table5", "--seeds", "1",
                 "--set", "train.nope=1"]) == 2
    err = capsys.readouterr().err
    assert "--set train.nope=1: train.nope: unknown key" in err and "Traceback" not in err, err
    assert not (out / "logs").exists() and not (out / "runs").exists()


@pytest.fixture(scope="module")
def tiny_prepared(tmp_path_factory) -> Path:
    """A tiny synthetic release, prepared."""
    root = tmp_path_factory.mktemp("tiny")
    assert main(["synth", str(root / "raw"), "--preset", "tiny", "--quiet", "--no-diagnostics"]) == 0
    assert main(["prepare", str(root / "raw"), str(root / "prepared"), "--no-progress"]) == 0
    return root / "prepared"


def _reproduce_in_a_subprocess(out: Path, prepared: Path) -> subprocess.CompletedProcess:
    """`muse-rec reproduce OUT --prepared P` of one run, in a subprocess with a timeout: a blocked read or
    write of a FIFO ends the test (TimeoutExpired), not the session."""
    return subprocess.run([sys.executable, "-m", "muse_rec.cli", "reproduce", str(out), "--prepared", str(prepared),
                           "--what", "table5", "--seeds", "1", "--nproc", "1", "--device", "cpu"],
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=60)


def test_a_progress_file_that_is_a_fifo_is_refused_before_training(tiny_prepared: Path, tmp_path: Path):
    """OUT/progress.jsonl a FIFO: the launcher's read of it waited for a writer (forever where the job died
    first), else failed with "underlying stream is not seekable", naming no file. Refused before any training."""
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "progress.jsonl")
    done = _reproduce_in_a_subprocess(out, tiny_prepared)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.splitlines()[-1] == (f"muse-rec reproduce: {out / 'progress.jsonl'}: a FIFO (named pipe), not "
                                            "a regular file; reproduce writes its own progress there: remove it")
    assert not (out / "logs").exists() and not (out / "runs").exists()  # no job was launched


@pytest.mark.parametrize("name", ["job-1.json", "train-1.log"])
def test_a_log_file_that_is_a_fifo_is_refused_before_the_job_starts(tiny_prepared: Path, tmp_path: Path, name: str):
    """OUT/logs/job-1.json or train-1.log a FIFO (left in an OUT): opening it to write waited for a reader forever."""
    out = tmp_path / "out"
    (out / "logs").mkdir(parents=True)
    os.mkfifo(out / "logs" / name)
    done = _reproduce_in_a_subprocess(out, tiny_prepared)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.splitlines()[-1] == (f"muse-rec reproduce: {out / 'logs' / name}: a FIFO (named pipe), not "
                                            "a regular file; reproduce writes its own log there: remove it")
    assert sorted(p.name for p in (out / "logs").iterdir()) == [name]  # no job was launched


def test_a_raw_release_that_does_not_open_is_refused_before_anything_is_written(capsys, tmp_path: Path):
    """A mistyped --raw passed --dry-run (exit 0), and a real run wrote OUT/plan.json and
    reproduce.json before prepare failed on it in three lines. Now one line, exit 2, OUT untouched,
    as --prepared; the raw release's own problems are named too (here: a table missing)."""
    out = tmp_path / "out"
    for extra in (["--dry-run"], []):
        assert main(["reproduce", str(out), "--quick", "--raw", str(tmp_path / "typo"), *extra]) == 2
        err = capsys.readouterr().err
        assert err.strip() == (f"muse-rec reproduce: --raw: {tmp_path / 'typo'}: no such directory (the raw release: "
                               "a directory holding the six tables)"), err
        assert not out.exists()
    raw = tmp_path / "raw"
    assert main(["synth", str(raw), "--preset", "tiny", "--quiet", "--no-diagnostics"]) == 0
    next(raw.glob("item_features*")).rename(tmp_path / "moved")
    capsys.readouterr()
    assert main(["reproduce", str(out), "--quick", "--raw", str(raw)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("muse-rec reproduce: --raw: ") and "item_features" in err and len(err.splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA: --device cuda is valid")
def test_device_cuda_without_cuda_is_bad_input(capsys, tmp_path: Path):
    """`--device cuda` where torch sees no CUDA device was a RuntimeError traceback (exit 1) in train
    and evaluate, and reproduce ran synth and prepare before its first run failed on it."""
    line = "--device cuda: torch sees no CUDA device on this machine"
    assert main(["reproduce", str(tmp_path / "out"), "--quick", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert line in err and len(err.splitlines()) == 1 and not (tmp_path / "out").exists(), err
    # Previewing a GPU plan on a laptop trains nothing: allowed.
    assert main(["reproduce", str(tmp_path / "out"), "--quick", "--device", "cuda", "--dry-run"]) == 0
    capsys.readouterr()
    spec = Path(__file__).resolve().parents[2] / "specs" / "demo" / "din.yaml"
    for cmd in (["train", "--spec", str(spec)], ["evaluate", "--spec", str(spec), "--out", str(tmp_path / "ev")]):
        assert main([*cmd, "--set", f"output_dir={tmp_path}/runs/{{name}}", "--device", "cuda"]) == 2
        err = capsys.readouterr().err
        assert line in err and "Traceback" not in err and len(err.splitlines()) == 1, err


def test_a_bad_set_or_a_fusion_flag_is_refused_before_any_data_is_made(capsys, tmp_path: Path):
    """On the synthetic path a --set typo was found only after the release was synthesised and
    prepared (minutes), and --dry-run printed a plan with it; --scl-qualities / --parallel without
    --what fusion were ignored. Now each is one line, exit 2, and OUT is never created."""
    out = tmp_path / "out"
    for extra, words in ((["--set", "train.nope=1"], "run din-s0: --set train.nope=1: train.nope: unknown key"),
                         (["--set", "train.batch_size=0", "--dry-run"], "--set train.batch_size=0: train.batch_size: must be > 0"),
                         (["--scl-qualities", "0.5"], "--scl-qualities applies to --what fusion only"),
                         (["--parallel", "3"], "--parallel applies to --what fusion only")):
        assert main(["reproduce", str(out), "--quick", "--what", "table5", *extra]) == 2, extra
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err, (extra, err)
        assert not out.exists(), extra


def test_a_set_of_what_reproduce_sets_per_run_is_refused(capsys, tmp_path: Path):
    """`--set train.seed=3` trained every seed alike (the report's seed spread 0, its margins in units
    of it meaningless), `--set name=x` / `output_dir` put every run in one directory, `data.prepared`
    trained on other data than OUT records: each was accepted without a word."""
    out = tmp_path / "out"
    for extra, key in ((["--set", "train.seed=3"], "train.seed"), (["--set", "train={seed: 3}", "--dry-run"], "train.seed"),
                       (["--set", "name=x"], "name"), (["--set", f"output_dir={tmp_path}/r"], "output_dir"),
                       (["--set", f"data.prepared={tmp_path}/p"], "data.prepared")):
        assert main(["reproduce", str(out), "--quick", "--what", "table5", *extra]) == 2, extra
        err = capsys.readouterr().err
        assert f"--set {key}: reproduce sets it for each run itself" in err and len(err.splitlines()) == 1, (extra, err)
        assert not out.exists(), extra
    # What it does not set per run stays the user's: allowed.
    assert main(["reproduce", str(out), "--quick", "--what", "table5", "--set", "train.batch_size=500", "--dry-run"]) == 0


def test_report_only_names_the_key_of_a_malformed_run(capsys, tmp_path: Path):
    """The report reads each run's metrics.json with the same checks as `compare`."""
    plan = build_plan(("table5",), seeds=1)
    write_fake_runs(tmp_path, plan)
    bad = tmp_path / "runs" / plan.runs[0].name / "metrics.json"
    doc = json.loads(bad.read_text())
    doc["auc"] = "0.7"
    bad.write_text(json.dumps(doc))
    assert main(["reproduce", str(tmp_path), "--what", "table5", "--seeds", "1", "--report-only"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: auc: expected a finite number or null, got '0.7'" in err and "Traceback" not in err, err


_MUSE_GROUP_DAMAGE = {
    "a table that is a string": (lambda m: m.update(by_seq_length="x"), "by_seq_length: expected a list of groups"),
    "a table that is null": (lambda m: m.update(by_popularity=None), "by_popularity: expected a list of groups"),
    "a group that is a string": (lambda m: m["by_popularity"].__setitem__(0, "x"),
                                 "by_popularity[0]: expected a group (an object)"),
    "a group without its label": (lambda m: m["by_popularity"][0].pop("group"),
                                  "by_popularity[0].group: expected the group's label, got None"),
    "a label that is a number": (lambda m: m["by_popularity"][0].update(group=5),
                                 "by_popularity[0].group: expected the group's label, got 5"),
    "a label given twice": (lambda m: m["by_popularity"].__setitem__(1, dict(m["by_popularity"][0])),
                            "by_popularity[1].group: '[0,1)' is an earlier group's label too"),
    "a lower edge that is a string": (lambda m: m["by_popularity"][0].update(lo="a"),
                                      "by_popularity[0].lo: expected a finite number >= 0, got 'a'"),
    "a count below 0": (lambda m: m["by_popularity"][0].update(samples=-5),
                        "by_popularity[0].samples: expected an integer >= 0, got -5"),
    "a gauc that is a string": (lambda m: m["by_seq_length"][1].update(gauc="0.9"),
                                "by_seq_length[1].gauc: expected a finite number or null, got '0.9'"),
    # Not a traceback but worse: plotted and judged as a gain of ~1,500%.
    "a gauc of 9": (lambda m: m["by_popularity"][0].update(gauc=9.0),
                    "by_popularity[0].gauc: expected a value in [0, 1] or null, got 9.0"),
}


@pytest.mark.parametrize("case", sorted(_MUSE_GROUP_DAMAGE))
def test_report_only_names_the_key_of_a_malformed_group_table(capsys, tmp_path: Path, case: str):
    """Fig. 6 reads each run's by_seq_length / by_popularity, which `compare` does not check: a table or group of
    the wrong type was a TypeError / KeyError / ValueError traceback of the report (exit 1)."""
    plan = build_plan(("table5", "fig6"), seeds=1)
    write_fake_runs(tmp_path, plan)
    bad = tmp_path / "runs" / "muse-s0" / "metrics.json"
    doc = json.loads(bad.read_text())
    edit, needle = _MUSE_GROUP_DAMAGE[case]
    edit(doc)
    bad.write_text(json.dumps(doc))
    assert main(["reproduce", str(tmp_path), "--what", "table5,fig6", "--seeds", "1", "--report-only"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"muse-rec reproduce: {bad}: {needle}") and err.count("\n") == 1, err
    assert not (tmp_path / "report.md").exists()


def test_report_only_names_both_runs_whose_group_tables_disagree(capsys, tmp_path: Path):
    """Runs evaluated with other bins: the report's ValueError was a traceback that named neither run."""
    plan = build_plan(("table5", "fig6"), seeds=1)
    write_fake_runs(tmp_path, plan)
    din = tmp_path / "runs" / "din-s0" / "metrics.json"
    doc = json.loads(din.read_text())
    doc["by_popularity"][1]["group"] = "[1,5)"
    din.write_text(json.dumps(doc))
    assert main(["reproduce", str(tmp_path), "--what", "table5,fig6", "--seeds", "1", "--report-only"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("muse-rec reproduce: run din-s0: group tables disagree with run muse-s0's: expected group "
                          "'[1,10)' at position 1") and err.count("\n") == 1, err


@pytest.mark.parametrize("kind, says", [("fifo", "a FIFO (named pipe), not a regular file"),
                                         ("directory", "cannot read (Is a directory)"),
                                         ("not json", "not valid JSON ("), ("a list", "expected a JSON object, got list")])
def test_a_damaged_synthetic_release_manifest_is_one_line_naming_it(capsys, tmp_path: Path, kind, says):
    """The report's context line reads OUT/data/raw/_synth_manifest.json: a FIFO there blocked `reproduce
    --report-only` forever, a directory, bad JSON or a list was a traceback (exit 1)."""
    write_fake_runs(tmp_path, build_plan(("table5",), seeds=1))
    manifest = tmp_path / "data" / "raw" / "_synth_manifest.json"
    manifest.parent.mkdir(parents=True)
    {"fifo": os.mkfifo, "directory": Path.mkdir, "not json": lambda p: p.write_text("{"),
     "a list": lambda p: p.write_text("[1]")}[kind](manifest)
    codes = []
    report = ["reproduce", str(tmp_path), "--what", "table5", "--seeds", "1", "--report-only"]
    assert error_of_call_unblocking_fifos(lambda: codes.append(main(report)), tmp_path, Exception) == ""
    assert codes == [2]
    err = capsys.readouterr().err
    assert err.startswith(f"muse-rec reproduce: {manifest}: {says}") and err.count("\n") == 1, err
    assert not (tmp_path / "report.md").exists()


def test_a_second_reproduce_into_an_out_in_use_is_refused_naming_the_holder(capsys, tmp_path: Path):
    """Two reproductions in one OUT trained the same runs at once: one "FAILED" a run on the other's
    run-directory lock (exit 1) and each wrote its report over the other's."""
    from muse_rec.dirlock import DirLock

    write_fake_runs(tmp_path, build_plan(("table5",), seeds=1))
    with DirLock.acquire(tmp_path, "muse-rec reproduce OUT --what table5"):
        before = sorted(p.name for p in tmp_path.iterdir())
        assert main(["reproduce", str(tmp_path), "--what", "table5", "--seeds", "1", "--report-only"]) == 2
        err = capsys.readouterr().err
        assert "in use by another reproduce" in err and "muse-rec reproduce OUT --what table5" in err
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # no report written over the other's
    assert main(["reproduce", str(tmp_path), "--what", "table5", "--seeds", "1", "--report-only"]) == 0
    assert (tmp_path / "report.md").exists()


def test_a_report_the_disk_refuses_is_one_line_and_keeps_the_earlier_figures(tmp_path: Path):
    """A full disk cut the figure under its own name (a PNG that looks written) and ended in a
    traceback, exit 1; report.md and report.json were written one after the other."""
    from tests.robustness.test_full_disk import full_disk_cli

    write_fake_runs(tmp_path, build_plan(("table5",), seeds=2))
    args = ["reproduce", str(tmp_path), "--what", "table5", "--seeds", "2", "--report-only"]
    assert main(args) == 0
    png = tmp_path / "table5.png"
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and p.name != ".lock"}
    limit = len(png.read_bytes()) // 2  # room for the plan, not for the figure
    assert limit > len((tmp_path / "plan.json").read_bytes())
    out = full_disk_cli(*args, limit_bytes=limit)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.stderr.strip().splitlines()[-1] == f"muse-rec reproduce: [Errno 27] File too large: '{png}'"
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and p.name != ".lock"} == before


@pytest.mark.timeout(60)  # the old code never ended
@pytest.mark.parametrize("what", [[], ["--what", "fusion"]])
def test_seeds_past_the_most_a_plan_takes_are_refused_at_once(capsys, tmp_path: Path, what):
    """`reproduce --dry-run --seeds 2**62` never ended: the plan lists every run before it prints."""
    from muse_rec.reproduce.plan import MAX_SEEDS

    assert main(["reproduce", str(tmp_path / "out"), "--dry-run", "--seeds", str(2**62), *what]) == 2
    assert capsys.readouterr().err == f"muse-rec reproduce: --seeds {2**62}: need 1 to {MAX_SEEDS:,} seeds\n"
    assert main(["reproduce", str(tmp_path / "out"), "--dry-run", "--seeds", "0", *what]) == 2
    assert "--seeds 0: need 1 to" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_reports_command_names_the_overrides_and_the_threshold(capsys, tmp_path: Path):
    """The report printed `muse-rec reproduce OUT --seeds ...` without the `--set` overrides its runs were
    trained with and the `--min-z` its verdicts used: run again, that command trained other runs."""
    write_fake_runs(tmp_path, build_plan(("table5",), seeds=2))
    assert main(["reproduce", str(tmp_path), "--what", "table5", "--seeds", "2", "--report-only",
                 "--set", "train.max_steps=8", "--min-z", "3"]) == 0
    capsys.readouterr()
    md = (tmp_path / "report.md").read_text()
    assert "--set train.max_steps=8" in md and "--min-z 3" in md


def test_real_data_not_prepared_with_p90_is_warned(capsys, tiny_prepared: Path, tmp_path: Path):
    """`reproduce --prepared` sets the runs beside the paper's numbers, made on the reference's p90 item
    vocabulary; training sizes its tables from the data, so data prepared with `--vocab full` trained
    the taobao_mm_p90 specs on another vocabulary and the report said only "profile taobao_mm_p90"."""
    out = tmp_path / "out"
    args = ["reproduce", str(out), "--prepared", str(tiny_prepared), "--what", "table5", "--seeds", "1", "--dry-run"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "--vocab full, not the reference's p90" in err, err
    # The report says it too, beside the data line.
    from muse_rec.reproduce.plan import REAL

    write_fake_runs(out, build_plan(("table5",), seeds=1, profile=REAL, prepared=str(tiny_prepared)))
    assert main(args[:-1] + ["--report-only"]) == 0
    report = (out / "report.md").read_text()
    assert "--vocab full, not the reference's p90" in report, report[:2000]

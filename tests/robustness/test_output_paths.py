"""An output location that cannot be created, and numeric flags out of range: one line naming the
flag or path, exit 2, before any work and without touching what is there."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from muse_rec.output_paths import OutputPathError, check_output_path
from tests.robustness.conftest import SPEC, assert_bad_input, cli, sets, snapshot


def test_check_output_path_creates_nothing_and_names_the_culprit(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("kept")
    check_output_path(str(tmp_path / "new" / "deeper"), "--out")  # a missing chain under a directory is fine
    check_output_path(str(tmp_path / "new" / "x.json"), "--out", directory=False)
    assert sorted(os.listdir(tmp_path)) == ["a_file"]  # nothing created
    with pytest.raises(OutputPathError, match=rf"--out {blocker}/sub: cannot be created: {blocker} is not a directory"):
        check_output_path(str(blocker / "sub"), "--out")
    with pytest.raises(OutputPathError, match=rf"OUT {blocker}: exists and is not a directory"):
        check_output_path(str(blocker), "OUT")
    with pytest.raises(OutputPathError, match=rf"--out {tmp_path}: is a directory, expected a file path"):
        check_output_path(str(tmp_path), "--out", directory=False)
    assert blocker.read_text() == "kept"


def test_an_output_name_too_long_for_the_filesystem_is_one_line(tmp_path, capsys):
    """`evaluate --out`, `export --out`, `plan --json`, `reproduce OUT` with a name past NAME_MAX (255
    bytes) were an OSError traceback ("File name too long") from the up-front check itself."""
    from muse_rec.cli import main

    long = tmp_path / ("a" * 300)
    for target, directory in ((long, True), (long / "x", True), (tmp_path / ("b" * 300 + ".json"), False)):
        with pytest.raises(OutputPathError, match=r"--out .*: File name too long$"):
            check_output_path(str(target), "--out", directory=directory)
    assert main(["reproduce", str(long), "--quick", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("muse-rec reproduce: OUT ") and err.endswith(": File name too long\n"), err
    assert os.listdir(tmp_path) == []


def test_evaluate_into_a_run_directory_is_refused_and_an_earlier_evaluation_is_replaced(trained, tmp_path):
    """`--out` = the run directory overwrote the run's own metrics.json (its training result and floor
    check) with the evaluation's, silently. Now only a new, empty or earlier evaluation's --out is taken."""
    runs = trained.copy_run(tmp_path / "runs")
    run_dir = runs / "din"
    run_sets = sets(trained.prepared, runs)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    out = cli("evaluate", "--spec", SPEC, *run_sets, "--out", str(run_dir), "--max-batches", "1")
    assert_bad_input(out, f"--out {run_dir}: holds a training run (run.json)", "write into a new or empty directory")
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"} == before
    ev = tmp_path / "ev"
    for batches in ("1", "2"):  # the second replaces the first
        out = cli("evaluate", "--spec", SPEC, *run_sets, "--out", str(ev), "--max-batches", batches)
        assert out.returncode == 0, out.stderr[-2000:]
        assert "Warning" not in out.stderr, out.stderr[-2000:]  # DCP's ShardedTensor FutureWarnings, before
    assert sorted(p.name for p in ev.iterdir()) == [".lock", "metrics.json", "predictions.parquet"]
    # An evaluation's metrics.json has no training speed or wall time: compare showed a traceback.
    shown = cli("compare", str(ev), "--no-floors")
    assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr[-2000:]
    assert "| DIN " in shown.stdout, shown.stdout


def test_an_evaluation_killed_while_writing_metrics_json_is_replaced_by_the_next(trained, tmp_path):
    """The metrics.json temporary of an evaluation killed mid-write made every later `evaluate --out`
    into that directory refuse it as "holds an evaluation (predictions.parquet)", i.e. its own kind of
    output, with no way on but deleting files by hand."""
    ev = tmp_path / "ev"
    out = cli("evaluate", "--spec", SPEC, *trained.sets(), "--out", str(ev), "--max-batches", "1")
    assert out.returncode == 0, out.stderr[-2000:]
    (ev / "metrics.json.tmp.4242").write_text('{"gauc": 0.')  # what a kill during the write leaves
    out = cli("evaluate", "--spec", SPEC, *trained.sets(), "--out", str(ev), "--max-batches", "2")
    assert out.returncode == 0, out.stderr[-2000:]
    # ... and removed by it (under the lock no other evaluation can be writing it): it stayed for good.
    assert sorted(p.name for p in ev.iterdir()) == [".lock", "metrics.json", "predictions.parquet"]
    (ev / "notes.txt").write_text("mine")  # a file evaluate never writes is still refused, and named
    out = cli("evaluate", "--spec", SPEC, *trained.sets(), "--out", str(ev), "--max-batches", "1")
    assert_bad_input(out, f"--out {ev}: holds files this command did not write (notes.txt)")


def test_an_evaluation_into_a_directory_another_evaluation_is_writing_is_refused(trained, tmp_path):
    """Two evaluations into one --out (of two checkpoints, say) left one's metrics.json beside the
    other's predictions, and neither was told. The one that finds --out locked is refused, naming the
    holder, and changes nothing there (a killed one's temporary file included: the holder may be
    writing it); once free, the next evaluation replaces the earlier one."""
    from muse_rec.dirlock import DirLock

    ev = tmp_path / "ev"
    out = cli("evaluate", "--spec", SPEC, *trained.sets(), "--out", str(ev), "--max-batches", "1")
    assert out.returncode == 0, out.stderr[-2000:]
    (ev / "metrics.json.tmp.4242").write_text('{"gauc": 0.')
    before, one_batch = snapshot(ev), json.loads((ev / "metrics.json").read_text())["samples"]
    with DirLock.acquire(ev, command="muse-rec evaluate (the test's holder)"):
        refused = cli("evaluate", "--spec", SPEC, *trained.sets(), "--out", str(ev), "--max-batches", "2")
        assert snapshot(ev) == before
    assert_bad_input(refused, f"{ev}: in use by another evaluation (pid {os.getpid()} on ",
                     "muse-rec evaluate (the test's holder)); wait for it to end or choose another --out")
    again = cli("evaluate", "--spec", SPEC, *trained.sets(), "--out", str(ev), "--max-batches", "2")
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((ev / "metrics.json").read_text())["samples"] > one_batch  # two batches now
    assert sorted(p.name for p in ev.iterdir()) == [".lock", "metrics.json", "predictions.parquet"]


@pytest.mark.parametrize("command", ["evaluate", "export", "compare", "baselines", "reproduce"])
def test_an_output_under_a_file_is_refused_before_any_work(trained, tmp_path, command):
    blocker = tmp_path / "a_file"
    blocker.write_text("kept")
    out = str(blocker / ("x.json" if command in ("compare", "baselines") else "out"))
    args = {"evaluate": ["evaluate", "--spec", SPEC, *trained.sets(), "--out", out],
            "export": ["export", "--spec", SPEC, *trained.sets(), "--out", out],
            "compare": ["compare", str(trained.run_dir), "--no-floors", "--out", out],
            "baselines": ["baselines", str(trained.prepared), "--out", out],
            "reproduce": ["reproduce", out, "--quick", "--report-only"]}[command]
    result = cli(*args)
    assert_bad_input(result, "OUT" if command == "reproduce" else "--out", out,
                     f"cannot be created: {blocker} is not a directory")
    assert blocker.read_text() == "kept" and sorted(os.listdir(tmp_path)) == ["a_file"]


@pytest.mark.parametrize("args, needle", [
    (["evaluate", "--max-batches", "-1"], "--max-batches -1: must be >= 0"),
    (["export", "--seq-len", "0"], "--seq-len 0: must be >= 1"),
    # 0 named the library's argument (row_alignment), after the model was loaded; 2**40 was one "out of memory"
    # line that did not name the flag.
    (["export", "--row-alignment", "0"], "--row-alignment 0: must be a power of two in [1, 4,096] bytes"),
    (["export", "--row-alignment", str(1 << 40)],
     f"--row-alignment {1 << 40}: must be a power of two in [1, 4,096] bytes"),
    # 7 ended in torch's stride error (a traceback) after the model was loaded for --scl-dtype fp16 (256 B rows
    # padded to 259), and 3 was accepted though it pads a 64-value fp16 row to 129 B, which FBGEMM's CPU lookup
    # reads misaligned (tests/serving/test_row_alignment.py).
    (["export", "--row-alignment", "3"], "--row-alignment 3: must be a power of two in [1, 4,096] bytes"),
    (["export", "--row-alignment", "24"], "--row-alignment 24: must be a power of two in [1, 4,096] bytes"),
    (["rank", "--seq-len", "0"], "--seq-len 0: must be >= 1"),
    (["reproduce", "--nproc", "0"], "--nproc 0: must be in 1..16,384"),
    (["reproduce", "--nproc", "1000000"], "--nproc 1000000: must be in 1..16,384"),  # was accepted
    (["reproduce", "--threads", "0"], "--threads 0: must be >= 1"),
    (["reproduce", "--min-z", "-1"], "--min-z -1.0: must be a finite number >= 0"),
])
def test_numeric_flags_out_of_range_are_refused(trained, tmp_path, args, needle):
    """0 used to mean "the default" for --seq-len and --nproc, and negatives went through."""
    command, flags = args[0], args[1:]
    if command == "reproduce":
        full = ["reproduce", str(tmp_path / "rep"), "--quick", "--dry-run", *flags]
    elif command == "rank":
        (tmp_path / "req.json").write_text(json.dumps({"user": 1, "candidates": [1, 2]}))
        full = ["rank", "--spec", SPEC, *trained.sets(), "--request", str(tmp_path / "req.json"), *flags]
    else:
        full = [command, "--spec", SPEC, *trained.sets(), "--out", str(tmp_path / "out"), *flags]
    assert_bad_input(cli(*full), needle)
    assert not (tmp_path / "out").exists() and not (tmp_path / "rep").exists()


def test_plan_json_under_a_file_and_a_missing_exported_program_are_one_line(trained, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("kept")
    out = cli("plan", "--spec", SPEC, "--prepared", str(trained.prepared), "--json", str(blocker / "plan.json"))
    assert_bad_input(out, f"--json {blocker / 'plan.json'}", f"{blocker} is not a directory")
    (tmp_path / "req.json").write_text(json.dumps({"user": 1, "candidates": [1, 2]}))
    out = cli("rank", "--spec", SPEC, *trained.sets(), "--request", str(tmp_path / "req.json"),
              "--exported", str(tmp_path / "missing"))
    assert_bad_input(out, f"{tmp_path / 'missing'}: no such directory")
    out = cli("rank", "--spec", SPEC, *trained.sets(), "--request", str(tmp_path / "req.json"),
              "--exported", str(tmp_path / "req.json"))  # a file: was "no such directory" too
    assert_bad_input(out, f"{tmp_path / 'req.json'}: is a file, not a directory")


def test_export_into_a_directory_holding_other_files_is_refused(trained, tmp_path):
    """The integrity manifest covers every file of the export directory: someone else's files
    there would become part of the artifact (and a run directory's checkpoints would be hashed)."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("kept")
    result = cli("export", "--spec", SPEC, *trained.sets(), "--out", str(out))
    assert_bad_input(result, f"--out {out}: holds files this command did not write (notes.txt)",
                     "write into a new or empty directory")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and (out / "notes.txt").read_text() == "kept"


def test_an_export_into_a_directory_another_export_is_writing_is_refused(trained, tmp_path):
    """Two exports into one directory would leave one's program beside the other's manifest: the
    one that finds the directory locked is refused, naming the holder, and writes nothing; once
    free, a new export replaces the earlier one in place (its lock file is not part of the
    artifact)."""
    from muse_rec.dirlock import DirLock
    from muse_rec.integrity import verify

    out = tmp_path / "exported"
    shutil.copytree(trained.exported, out)  # an earlier export, being rewritten by another process
    before = snapshot(out)
    with DirLock.acquire(out, command="muse-rec export (the test's holder)"):
        refused = cli("export", "--spec", SPEC, *trained.sets(), "--out", str(out))
    assert_bad_input(refused, f"{out}: in use by another export (pid {os.getpid()} on ",
                     "muse-rec export (the test's holder)); wait for it to end or choose another --out")
    assert snapshot(out) == before
    again = cli("export", "--spec", SPEC, *trained.sets(), "--out", str(out))
    assert again.returncode == 0, again.stderr[-3000:]
    assert verify(out) == json.loads(again.stdout)["sha256"]
    assert (out / ".lock").exists() and sorted(snapshot(out)) == sorted(before)


def test_a_re_export_that_fails_midway_keeps_the_earlier_export(trained, tmp_path, monkeypatch):
    """The new files are written and hashed in `.staging` and only then moved over the earlier
    export's: a failure before that (here the integrity manifest's write, as on a full disk) leaves
    the earlier export whole and verifiable, and no staging directory behind. Before, the new
    program and manifest.json had already replaced the old ones, so the export was lost."""
    import errno

    from muse_rec.integrity import verify
    from muse_rec.serving import export as export_module
    from muse_rec.spec import load_spec
    from tests.conftest import REPO

    out = tmp_path / "exported"
    shutil.copytree(trained.exported, out)
    digest, before = verify(out), snapshot(out)
    spec = load_spec(REPO / SPEC, trained.sets()[1::2])  # the overrides of --set pairs

    def full_disk(root):
        raise OSError(errno.ENOSPC, "No space left on device", str(root))

    monkeypatch.setattr(export_module, "write_manifest", full_disk)
    with pytest.raises(OSError, match="No space left"):
        export_module.export_model(spec, str(out))
    assert verify(out) == digest and snapshot(out) == before
    assert not (out / export_module.STAGING_DIR).exists()
    # An earlier version's interrupted export left a partial program beside its files: the next
    # export removes it, or its integrity manifest would not list it.
    monkeypatch.undo()
    (out / "partial-ranker.pt2").write_bytes(b"half a program")
    manifest = export_module.export_model(spec, str(out))
    assert verify(out) == manifest["sha256"] and not (out / "partial-ranker.pt2").exists()


def test_a_killed_export_s_staging_directory_is_named_when_the_export_is_loaded(trained, tmp_path):
    """A running export, or a kill (not an exception), leaves `.staging` beside the earlier
    export's files: loading says what it is and what to do; once it is gone the earlier export
    loads as before."""
    from muse_rec.integrity import IntegrityError
    from muse_rec.serving.export import STAGING_DIR, load_program

    out = tmp_path / "exported"
    shutil.copytree(trained.exported, out)
    (out / STAGING_DIR).mkdir()
    (out / STAGING_DIR / "ranker.pt2").write_bytes(b"half a program")
    with pytest.raises(IntegrityError, match=rf"\.staging/ranker\.pt2: not listed .*; {out / STAGING_DIR} holds an "
                                             "export being written or stopped while writing: wait for it, "
                                             "or delete it to serve the earlier export"):
        load_program(str(out))
    shutil.rmtree(out / STAGING_DIR)
    assert load_program(str(out)) is not None
    # Killed between the moves: the new program is in, the earlier manifest still beside it. Deleting
    # the stage serves nothing then (the advice said it would serve the earlier export).
    (out / STAGING_DIR).mkdir()
    (out / STAGING_DIR / "manifest.json").write_text("{}")
    (out / "ranker.pt2").write_bytes(b"the new program")
    with pytest.raises(IntegrityError, match=rf"\.staging/manifest\.json: not listed .*; {out / STAGING_DIR} holds an export "
                                             "being written or stopped while writing: wait for it, the earlier "
                                             "export's files are already partly replaced, so export again"):
        load_program(str(out))


@pytest.mark.parametrize("what", ["exported", "run", "prepared"])
def test_reproduce_into_another_command_s_output_is_refused_and_writes_nothing(trained, tmp_path, what):
    """`reproduce EXPORT --report-only` exited 0 and added plan.json, report.* and reproduce.json
    to the export, whose integrity manifest then refused it for serving."""
    src = {"exported": trained.exported, "run": trained.run_dir, "prepared": trained.prepared}[what]
    target = tmp_path / what
    shutil.copytree(src, target)
    before, names = snapshot(target), sorted(os.listdir(target))
    out = cli("reproduce", str(target), "--quick", "--report-only")
    kind = {"exported": "an export (ranker.pt2)", "run": "a training run (run.json)",
            "prepared": "prepared data (meta.json)"}[what]
    assert_bad_input(out, f"OUT {target}: holds {kind}", "new or empty directory")
    assert snapshot(target) == before and sorted(os.listdir(target)) == names


def test_reproduce_into_a_directory_of_other_files_is_refused_but_resumes_its_own(tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    assert_bad_input(cli("reproduce", str(target), "--quick", "--report-only", "--what", "table5"),
                     f"OUT {target}: holds files this command did not write (notes.txt)")
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]
    own = tmp_path / "own"
    # Its own OUT, started (reproduce.json written by reproduce's own writer, as its first step does),
    # is taken again, and again once the report is in it (re-running resumes).
    from muse_rec.cli.reproduce import QUICK_SYNTH_ARGS
    from muse_rec.reproduce.runner import check_manifest

    check_manifest(own, {"data": "synthetic", "synth_args": list(QUICK_SYNTH_ARGS)})
    for _ in range(2):
        out = cli("reproduce", str(own), "--quick", "--report-only", "--what", "table5")
        assert out.returncode == 0, out.stderr[-3000:]
        assert (own / "reproduce.json").exists() and (own / "report.md").exists()


@pytest.mark.parametrize("overwrite", [False, True])
def test_synth_into_prepared_data_is_refused_even_with_overwrite(trained, tmp_path, overwrite):
    """It wrote the six raw tables and its manifest beside meta.json, exit 0."""
    target = tmp_path / "prepared"
    shutil.copytree(trained.prepared, target)
    before, names = snapshot(target), sorted(os.listdir(target))
    out = cli("synth", str(target), "--preset", "tiny", "--quiet", *(["--overwrite"] if overwrite else []))
    assert_bad_input(out, str(target), "holds prepared data (meta.json), not a release")
    assert snapshot(target) == before and sorted(os.listdir(target)) == names


def test_output_markers_are_the_writers_own_file_names():
    """output_paths spells the marker files literally (no heavy imports); they must be the writers'."""
    from muse_rec.data.synth import MANIFEST_NAME
    from muse_rec.integrity import MANIFEST as INTEGRITY_MANIFEST
    from muse_rec.output_paths import OUTPUT_MARKERS
    from muse_rec.serving.export_layout import PROGRAM_FILE

    markers = {m for m, _ in OUTPUT_MARKERS}
    assert {MANIFEST_NAME, PROGRAM_FILE, INTEGRITY_MANIFEST, "meta.json", "run.json", "reproduce.json",
            "predictions.parquet"} == markers


@pytest.mark.parametrize("what", ["exported", "run", "folder"])
def test_prepare_into_another_command_s_output_or_a_folder_of_files_is_refused(trained, tmp_path, what):
    """It added items/, vocab/, train/, test/ and meta.json to a run or an export (whose integrity
    check then refused it for serving), exit 0."""
    target = tmp_path / what
    if what == "folder":
        target.mkdir()
        (target / "notes.txt").write_text("mine")
    else:
        shutil.copytree(trained.exported if what == "exported" else trained.run_dir, target)
    before, names = snapshot(target), sorted(os.listdir(target))
    out = cli("prepare", str(trained.prepared.parent / "raw"), str(target), "--no-progress")
    kind = {"exported": "an export (ranker.pt2)", "run": "a training run (run.json)",
            "folder": "files this command did not write (notes.txt)"}[what]
    assert_bad_input(out, f"{target}: holds {kind}", "new or empty directory")
    assert snapshot(target) == before and sorted(os.listdir(target)) == names


# (command, artifact, file name): the artifact's own file it overwrote, exit 0 (prepared data then
# unreadable, a run's result or an export's manifest replaced), or a file added to it (the prepared
# data's `prepare` refuses it as not its own; a checkpoint's integrity manifest as tampering).
_INTO_ARTIFACTS = [
    ("baselines", "prepared", "meta.json"),
    ("baselines", "prepared", "floors.json"),
    ("plan", "run", "run.json"),
    ("plan", "exported", "manifest.json"),
    ("compare", "run", "metrics"),  # --out STEM writes STEM.md and STEM.json: the run's metrics.json
    ("compare", "checkpoint", "position"),  # the checkpoint's position.json
]
_HOLDS = {"prepared": "prepared data (meta.json)", "run": "a training run (run.json)",
          "exported": "an export (ranker.pt2)", "checkpoint": "a checkpoint (SHA256SUMS.json)"}


def _file_output_args(command: str, trained, out: str) -> list:
    return {"baselines": ["baselines", str(trained.prepared), "--out", out],
            "plan": ["plan", "--spec", SPEC, "--prepared", str(trained.prepared), "--json", out],
            "compare": ["compare", str(trained.run_dir), "--no-floors", "--out", out]}[command]


@pytest.mark.parametrize("command, what, name", _INTO_ARTIFACTS)
def test_a_file_output_into_another_command_s_output_is_refused_and_changes_nothing(trained, tmp_path, command,
                                                                                    what, name):
    """`baselines --out`, `plan --json` and `compare --out` wrote their file into the artifact
    directory, exit 0: over its own files or beside them. Refused like a directory output there."""
    if what == "checkpoint":
        src = next((trained.run_dir / "checkpoints").glob("step-*"))
    else:
        src = {"prepared": trained.prepared, "run": trained.run_dir, "exported": trained.exported}[what]
    target = tmp_path / what
    shutil.copytree(src, target)
    before, names = snapshot(target), sorted(os.listdir(target))
    out = str(target / name)
    flag = "--json" if command == "plan" else "--out"
    result = cli(*_file_output_args(command, trained, out))
    assert_bad_input(result, f"muse-rec {command}: {flag} {out}: {target} holds {_HOLDS[what]}",
                     "write the file outside that directory")
    assert len(result.stderr.splitlines()) == 1, result.stderr[-2000:]
    assert snapshot(target) == before and sorted(os.listdir(target)) == names  # byte-identical, nothing added


@pytest.mark.parametrize("command", ["baselines", "plan", "compare"])
def test_a_file_output_beside_unrelated_files_is_written_and_replaces_its_own(trained, tmp_path, command):
    """An ordinary folder takes the file, beside the user's files; a second run replaces its own."""
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    (folder / "data.json").write_text("{}")  # a JSON file of the user's, not an artifact marker
    out = folder / ("plan.json" if command == "plan" else "floors.json" if command == "baselines" else "cmp")
    written = [out] if command != "compare" else [out.with_suffix(".md"), out.with_suffix(".json")]
    for _ in range(2):
        result = cli(*_file_output_args(command, trained, str(out)))
        assert result.returncode == 0, result.stderr[-3000:]
        assert all(json.loads(p.read_text()) for p in written if p.suffix == ".json")
    assert sorted(os.listdir(folder)) == sorted(["notes.txt", "data.json"] + [p.name for p in written])
    assert (folder / "notes.txt").read_text() == "mine" and (folder / "data.json").read_text() == "{}"


def test_a_file_output_through_a_link_into_an_artifact_is_refused(trained, tmp_path):
    """A symbolic link to an artifact's file is opened through: the link's target directory counts."""
    target = tmp_path / "prepared"
    shutil.copytree(trained.prepared, target)
    before = snapshot(target)
    link = tmp_path / "floors.json"
    link.symlink_to(target / "meta.json")
    result = cli(*_file_output_args("baselines", trained, str(link)))
    assert_bad_input(result, f"--out {link}: {target} holds prepared data (meta.json)")
    assert snapshot(target) == before and link.is_symlink()


def test_check_output_path_refuses_any_depth_inside_an_artifact_but_not_inside_a_workspace(tmp_path):
    """Only the directory directly holding a file output was looked at: a directory output, or a
    file one level deeper, inside prepared data was taken. A reproduce OUT and a synthetic release
    hold other commands' outputs by design (reproduce writes its data and runs there)."""
    prepared = tmp_path / "prepared"
    (prepared / "vocab").mkdir(parents=True)
    (prepared / "meta.json").write_text("{}")
    for path, directory in ((prepared / "sub", True), (prepared / "a" / "b", True), (prepared / "a" / "x.json", False)):
        with pytest.raises(OutputPathError, match=rf"--out {path}: inside {prepared}, which holds prepared data "
                                                  r"\(meta\.json\); .*choose a path outside it"):
            check_output_path(str(path), "--out", directory=directory)
    (tmp_path / "link").symlink_to(prepared)  # through a link to it, or a link whose target lies in it
    (tmp_path / "alias").symlink_to(prepared / "sub")
    for path in (tmp_path / "link" / "sub", tmp_path / "alias"):
        with pytest.raises(OutputPathError, match=r"inside .*, which holds prepared data"):
            check_output_path(str(path), "OUT")
    assert sorted(os.listdir(prepared)) == ["meta.json", "vocab"]
    # A lone file of a common name (a meta.json or run.json in a home directory) closes nothing.
    home = tmp_path / "home"
    home.mkdir()
    for marker in ("meta.json", "run.json"):
        (home / marker).write_text("{}")
    check_output_path(str(home / "runs" / "muse"), "OUT")
    for marker in ("reproduce.json", "_synth_manifest.json"):
        workspace = tmp_path / marker.strip("_").split(".")[0]
        workspace.mkdir()
        (workspace / marker).write_text("{}")
        check_output_path(str(workspace / "data" / "prepared"), "OUT")


def test_a_path_that_goes_up_out_of_an_artifact_is_beside_it_not_inside(prepared_tiny, tmp_path):
    """`PREPARED/../x` names a sibling of PREPARED, as the OS resolves it; the ancestors were taken from the
    path as spelled, so `baselines --out PREPARED/../floors.json`, `evaluate --out RUN/../eval` and
    `synth PREPARED/../raw` were refused as "inside PREPARED" (exit 2)."""
    prepared = tmp_path / "prepared"
    shutil.copytree(prepared_tiny, prepared)
    before = snapshot(prepared)
    out = cli("baselines", str(prepared), "--out", f"{prepared}/../floors.json")
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "floors.json").is_file()
    check_output_path(f"{prepared}/../raw", "OUT")
    check_output_path(f"{prepared}/vocab/../../raw", "OUT")
    # Still inside: down again into it, or up from a name inside it that the command would create first.
    for path in (f"{prepared}/vocab/../sub", f"{prepared}/new/..", f"{prepared}/new/../sub"):
        with pytest.raises(OutputPathError, match=rf"inside {prepared}, which holds prepared data"):
            check_output_path(path, "OUT")
    assert snapshot(prepared) == before


def _evaluation(trained, tmp_path) -> Path:
    ev = tmp_path / "evaluation"
    out = cli("evaluate", "--spec", SPEC, *trained.sets(), "--out", str(ev), "--max-batches", "1")
    assert out.returncode == 0, out.stderr[-2000:]
    return ev


# (command, the artifact its output is nested in): each was rc 0, after which the artifact was
# unusable (an export: "sub/.lock: not listed in SHA256SUMS.json"; prepared data: `prepare` refused
# it as holding files it did not write) or its next `train --overwrite` moved the nested output away.
_NESTED = [("export", "exported"), ("evaluate", "prepared"), ("export", "prepared"), ("prepare", "prepared"),
           ("train", "prepared"), ("train", "run"), ("evaluate", "checkpoint"), ("evaluate", "evaluation"),
           ("synth", "run"), ("reproduce", "exported"), ("baselines", "prepared")]
_KIND = {**_HOLDS, "evaluation": "an evaluation (predictions.parquet)"}


@pytest.mark.parametrize("command, what", _NESTED)
def test_a_directory_output_inside_another_command_s_output_is_refused(trained, tmp_path, command, what):
    if what == "evaluation":
        target = _evaluation(trained, tmp_path)
    else:
        src = {"prepared": trained.prepared, "run": trained.run_dir, "exported": trained.exported,
               "checkpoint": next((trained.run_dir / "checkpoints").glob("step-*"))}[what]
        target = tmp_path / what
        shutil.copytree(src, target)
    before, names = snapshot(target), sorted(os.listdir(target))
    nested = target / "sub"
    out = str(nested / "floors.json") if command == "baselines" else str(nested)
    args = {"export": ["export", "--spec", SPEC, *trained.sets(), "--out", out],
            "evaluate": ["evaluate", "--spec", SPEC, *trained.sets(), "--out", out, "--max-batches", "1"],
            "prepare": ["prepare", str(trained.prepared.parent / "raw"), out, "--no-progress"],
            "train": ["train", "--spec", SPEC, *trained.sets([f"output_dir={out}", "train.max_steps=1"]),
                      "--device", "cpu"],
            "synth": ["synth", out, "--preset", "tiny", "--quiet", "--no-diagnostics"],
            "reproduce": ["reproduce", out, "--quick", "--report-only"],
            "baselines": ["baselines", str(trained.prepared), "--out", out]}[command]
    flag = {"prepare": "OUT", "synth": "OUT", "reproduce": "OUT", "train": "output_dir"}.get(command, "--out")
    result = cli(*args)
    assert_bad_input(result, f"{flag} {out}: inside {target}, which holds {_KIND[what]}", "choose a path outside it")
    assert snapshot(target) == before and sorted(os.listdir(target)) == names  # nothing added, nothing changed


@pytest.mark.parametrize("what", ["parent", "prepared"])
def test_train_overwrite_does_not_move_another_command_s_output_aside(trained, tmp_path, what):
    """`--overwrite` moved everything in output_dir to <dir>.old-<time>: a folder of runs (output_dir =
    their parent) or prepared data went with it, away from where their users look for them."""
    if what == "parent":
        root = trained.copy_run(tmp_path / "runs")
        run_dir, holder, kind = root, root / "din", "a training run (run.json)"
    else:
        root = run_dir = holder = tmp_path / "prepared"
        shutil.copytree(trained.prepared, root)
        kind = "prepared data (meta.json)"
    before = snapshot(root)
    out = cli("train", "--spec", SPEC, *trained.sets([f"output_dir={run_dir}", "train.max_steps=1"]),
              "--device", "cpu", "--overwrite")
    assert_bad_input(out, f"{run_dir}: --overwrite would move {holder} aside with it, which holds {kind}")
    assert snapshot(root) == before and not list(tmp_path.glob("*.old-*"))


@pytest.mark.parametrize("command", ["prepare", "synth", "evaluate", "export", "baselines", "train"])
def test_a_file_uri_output_is_the_local_directory_the_readers_take_it_for(trained, tmp_path, command):
    """`prepare RAW file:///abs/out` said "prepared file:///abs/out" but wrote ./file:/abs/out (Path
    took the URI for a relative path), so `check file:///abs/out`, which reads it through iopath as
    /abs/out, found no meta.json. Every output location takes a file:// URI as the readers do."""
    from tests.conftest import REPO

    out = tmp_path / ("floors.json" if command == "baselines" else "out")
    uri = "file://" + str(out)
    args = {"prepare": ["prepare", str(trained.prepared.parent / "raw"), uri, "--no-progress"],
            "synth": ["synth", uri, "--preset", "tiny", "--quiet", "--no-diagnostics"],
            "evaluate": ["evaluate", "--spec", SPEC, *trained.sets(), "--out", uri, "--max-batches", "1"],
            "export": ["export", "--spec", SPEC, *trained.sets(), "--out", uri],
            "baselines": ["baselines", str(trained.prepared), "--out", uri],
            "train": ["train", "--spec", SPEC, *trained.sets([f"output_dir={uri}", "train.max_steps=1"]),
                      "--device", "cpu"]}[command]
    stray = REPO / "file:"
    try:
        result = cli(*args)
        assert result.returncode == 0, result.stderr[-3000:]
        assert not stray.exists()
    finally:
        if stray.exists():  # what the old code wrote under the repository
            shutil.rmtree(stray)
    written = {"prepare": "meta.json", "synth": "_synth_manifest.json", "evaluate": "metrics.json",
               "export": "ranker.pt2", "train": "run.json"}
    assert (out / written[command]).is_file() if command != "baselines" else json.loads(out.read_text())
    if command == "prepare":
        checked = cli("check", uri)
        assert checked.returncode == 0, checked.stderr[-3000:]


@pytest.mark.parametrize("command", ["prepare", "synth", "evaluate", "train"])
def test_an_output_uri_of_another_filesystem_is_refused(trained, tmp_path, command):
    """`s3://bucket/out` was written to ./s3:/bucket/out: outputs are local; one line, exit 2."""
    from tests.conftest import REPO

    uri = "s3://bucket/out"
    args = {"prepare": ["prepare", str(trained.prepared.parent / "raw"), uri, "--no-progress"],
            "synth": ["synth", uri, "--preset", "tiny", "--quiet", "--no-diagnostics"],
            "evaluate": ["evaluate", "--spec", SPEC, *trained.sets(), "--out", uri, "--max-batches", "1"],
            "train": ["train", "--spec", SPEC, *trained.sets([f"output_dir={uri}", "train.max_steps=1"]),
                      "--device", "cpu"]}[command]
    stray = REPO / "s3:"
    try:
        result = cli(*args)
        assert not stray.exists()
    finally:
        if stray.exists():
            shutil.rmtree(stray)
    assert_bad_input(result, uri, "not a local path")


def test_an_earlier_evaluation_whose_metrics_json_is_a_symbolic_link_is_refused(trained, tmp_path):
    """An evaluation directory from elsewhere whose metrics.json is a link: the evaluation replacing it
    wrote its metrics over the link's target (any file the user can write)."""
    ev = tmp_path / "ev"
    ev.mkdir()
    victim = tmp_path / "elsewhere.txt"
    victim.write_text("not the evaluation's")
    (ev / "metrics.json").symlink_to(victim)
    out = cli("evaluate", "--spec", SPEC, *sets(trained.prepared, trained.copy_run(tmp_path / "runs")), "--out", str(ev),
              "--max-batches", "1")
    assert_bad_input(out, f"{ev / 'metrics.json'}: a symbolic link", "choose another --out")
    assert victim.read_text() == "not the evaluation's" and not (ev / "predictions.parquet").exists()


@pytest.mark.parametrize("kind", ["a link to a directory", "a file"])
def test_an_earlier_evaluation_whose_predictions_are_no_directory_of_its_own_is_refused(trained, tmp_path, kind):
    """An evaluation directory from elsewhere whose predictions.parquet is a link to a directory: the evaluation
    replaced the parts there, and deleted those of another world size (anything named part-*-of-*.parquet). A
    file in its place was a ValueError traceback once the whole split had been scored."""
    ev = tmp_path / "ev"
    ev.mkdir()
    victim = tmp_path / "elsewhere"
    victim.mkdir()
    for name in ("part-00000-of-00001.parquet", "part-00001-of-00002.parquet"):
        (victim / name).write_text("not the evaluation's")
    if kind == "a file":
        (ev / "predictions.parquet").write_text("x")
    else:
        (ev / "predictions.parquet").symlink_to(victim)
    before = snapshot(tmp_path)
    out = cli("evaluate", "--spec", SPEC, *trained.sets(), "--out", str(ev), "--max-batches", "1")
    says = "a symbolic link" if kind != "a file" else "not a directory"
    assert_bad_input(out, f"{ev / 'predictions.parquet'}: {says}", "choose another --out")
    assert snapshot(tmp_path) == before and not (ev / "metrics.json").exists()


def test_a_run_whose_predictions_directory_is_a_link_is_refused_before_training(trained, tmp_path):
    """The run's end-of-training evaluation wrote its parts into the link's target, as an evaluation did."""
    runs = trained.copy_run(tmp_path / "runs")
    victim = tmp_path / "elsewhere"
    victim.mkdir()
    (victim / "part-00000-of-00001.parquet").write_text("not the run's")
    (runs / "din" / "predictions.parquet").symlink_to(victim)
    before = snapshot(tmp_path)
    out = cli("train", "--spec", SPEC, *sets(trained.prepared, runs, ["train.max_steps=3", "train.eval_at_end=true"]),
              "--device", "cpu", "--resume")
    assert_bad_input(out, f"{runs / 'din' / 'predictions.parquet'}: a symbolic link", "choose another output_dir")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("path", ["", "file://"])
def test_an_empty_output_path_is_refused_not_taken_for_the_current_directory(tmp_path, monkeypatch, capsys, path):
    """`synth ''` wrote a whole release into the directory it was run from (Path('') is '.'), among
    the user's own files; every output location now refuses an empty path, naming the flag."""
    from muse_rec.cli import main

    for flag, directory in (("OUT", True), ("--out", False)):
        with pytest.raises(OutputPathError, match=rf"^{flag} '{path}': empty path"):
            check_output_path(path, flag, directory=directory)
    monkeypatch.chdir(tmp_path)
    if path:  # '' itself is argparse's usage error now (`muse_rec.cli.flags.nonempty_path`)
        assert main(["synth", path, "--preset", "tiny", "--quiet", "--no-diagnostics"]) == 2
        assert capsys.readouterr().err == f"muse-rec synth: OUT '{path}': empty path; name the output location\n"
    else:
        with pytest.raises(SystemExit, match="2"):
            main(["synth", path, "--preset", "tiny", "--quiet", "--no-diagnostics"])
    assert os.listdir(tmp_path) == []


def test_a_file_output_that_is_an_input_of_the_command_is_refused(prepared_tiny, tmp_path, capsys):
    """`plan --json spec.yaml` wrote the plan over the spec it had just read (the spec was lost), and
    `compare --out F --floors F.json` its table over the floors file it read; now one line, exit 2."""
    from muse_rec.cli import main
    from tests.conftest import REPO

    spec = tmp_path / "muse.yaml"
    spec.write_text(f"extends: [{REPO / 'specs/demo/muse.yaml'}]\ndata: {{prepared: {prepared_tiny}}}\n")  # plannable
    link = tmp_path / "link.yaml"
    link.symlink_to(spec)
    floors = tmp_path / "floors.json"
    floors.write_text("{}")
    kept = {p: p.read_bytes() for p in (spec, floors)}
    for target in (spec, link):
        assert main(["plan", "--spec", str(spec), "--world-size", "1", "--json", str(target)]) == 2
        assert capsys.readouterr().err == (f"muse-rec plan: --json {target}: is the --spec file this command reads; "
                                           "write the output to another path\n")
    assert main(["compare", str(tmp_path / "run"), "--floors", str(floors), "--out", str(tmp_path / "floors")]) == 2
    assert capsys.readouterr().err == (f"muse-rec compare: --out {floors}: is the --floors file this command reads; "
                                       "write the output to another path\n")
    assert {p: p.read_bytes() for p in (spec, floors)} == kept


def test_an_output_that_is_a_dangling_link_is_refused_naming_the_flag(tmp_path, capsys):
    """A dangling symbolic link as OUT / --out was "OUT: File exists" (prepare), "cannot create the
    directory or its lock (File exists)" (synth) or "exists and is not a directory" (evaluate)."""
    from muse_rec.cli import main

    link = tmp_path / "out"
    link.symlink_to(tmp_path / "gone")
    with pytest.raises(OutputPathError, match=rf"^--out {link}: a symbolic link to {tmp_path / 'gone'}, which "
                                              "does not exist"):
        check_output_path(str(link), "--out")
    check_output_path(str(link), "--out", directory=False)  # a file is written through it, creating the target
    assert main(["synth", str(link), "--preset", "tiny", "--quiet", "--no-diagnostics"]) == 2
    assert capsys.readouterr().err.startswith(f"muse-rec synth: OUT {link}: a symbolic link to ")
    assert os.listdir(tmp_path) == ["out"] and not (tmp_path / "gone").exists()


def test_an_output_that_is_a_symbolic_link_loop_is_refused_and_kept(prepared_tiny, tmp_path, capsys):
    """`plan --json LOOP` and `baselines --out LOOP` replaced the looping link with the file and exited 0
    (its target cannot be resolved, so the rename went over the link), while a directory output called
    it a link to nowhere: every output now names the loop, exit 2, the link kept."""
    from muse_rec.cli import main
    from tests.conftest import REPO

    loop = tmp_path / "loop"
    loop.symlink_to(loop.name)
    for directory in (True, False):
        with pytest.raises(OutputPathError, match=rf"^--out {loop}: a symbolic link loop"):
            check_output_path(str(loop), "--out", directory=directory)
    commands = {"plan": ["plan", "--spec", str(REPO / SPEC), "--set", f"data.prepared={prepared_tiny}",
                         "--world-size", "1", "--json", str(loop)],
                "baselines": ["baselines", str(prepared_tiny), "--out", str(loop)],
                "synth": ["synth", str(loop), "--preset", "tiny", "--quiet", "--no-diagnostics"]}
    for command, args in commands.items():
        assert main(args) == 2, command
        flag = "OUT" if command == "synth" else args[-2]
        assert capsys.readouterr().err.startswith(f"muse-rec {command}: {flag} {loop}: a symbolic link loop")
    assert os.listdir(tmp_path) == ["loop"] and os.readlink(loop) == loop.name

"""Items 1-3 of issue 13: a run directory belongs to one run, one process, and a refused resume changes nothing."""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

from muse_rec.training.checkpoint import save_checkpoint
from muse_rec.training.checkpoint_latest import latest_checkpoint
from muse_rec.training.checkpoint_position import Position, read_position
from muse_rec.training.run_dir import LOCK_FILE, RunDirLock
from tests.robustness.conftest import SPEC, assert_bad_input, cli, cli_without_torch, sets, snapshot


def test_fresh_run_into_used_run_dir_is_refused_and_changes_nothing(trained, tmp_path):
    """Nothing, the lock file included: the refused process wrote its own pid and command over the
    run's holder info (and left a .lock in a directory of other files)."""
    runs = trained.copy_run(tmp_path / "runs")
    before, lock = snapshot(runs / "din"), (runs / "din" / LOCK_FILE).read_bytes()
    out = cli("train", "--spec", SPEC, *sets(trained.prepared, runs, ["train.max_steps=3"]), "--device", "cpu")
    assert_bad_input(out, str(runs / "din"), "already holds a run", "--resume", "--overwrite")
    assert snapshot(runs / "din") == before and (runs / "din" / LOCK_FILE).read_bytes() == lock
    other = tmp_path / "other" / "din"
    other.mkdir(parents=True)
    (other / "a.txt").write_text("mine")
    out = cli("train", "--spec", SPEC, *sets(trained.prepared, other.parent, ["train.max_steps=3"]), "--device", "cpu")
    assert_bad_input(out, str(other), "holds files that are not a run (a.txt)", "choose another output_dir")
    assert "--resume" not in out.stderr  # it advised --resume, which then trained into the folder
    assert sorted(os.listdir(other)) == ["a.txt"]
    out = cli("train", "--spec", SPEC, *sets(trained.prepared, other.parent, ["train.max_steps=3"]), "--device", "cpu",
              "--resume")
    assert_bad_input(out, str(other), "--resume: holds no run to continue (a.txt)")
    assert sorted(os.listdir(other)) == ["a.txt"]


def test_a_refused_run_answers_before_the_training_stack_is_imported(trained, tmp_path):
    """A run refused for its run directory imported TorchRec and FBGEMM first (~4 s a process, about
    half of such a refusal). The checks now run before those imports; the refusal is the same line."""
    import subprocess

    from tests.conftest import REPO, subprocess_env

    runs = trained.copy_run(tmp_path / "runs")
    args = ["train", "--spec", SPEC, *sets(trained.prepared, runs, ["train.max_steps=3"]), "--device", "cpu"]
    probe = ("import sys; from muse_rec.cli import main; code = main(sys.argv[1:]); "
             "print('training stack imported:', 'torchrec' in sys.modules, 'fbgemm_gpu' in sys.modules); sys.exit(code)")
    out = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, cwd=REPO,
                         env=subprocess_env(), timeout=300)
    assert_bad_input(out, str(runs / "din"), "already holds a run")
    assert "training stack imported: False False" in out.stdout, (out.stdout, out.stderr[-2000:])


def test_overwrite_moves_the_old_run_aside_whole(trained, tmp_path):
    runs = trained.copy_run(tmp_path / "runs")
    before = snapshot(runs / "din")
    old_run_id = json.loads((runs / "din" / "run.json").read_text())["run_id"]
    out = cli("train", "--spec", SPEC, *sets(trained.prepared, runs, ["train.max_steps=3"]), "--device", "cpu",
              "--overwrite")
    assert out.returncode == 0, out.stderr[-3000:]
    moved = [p for p in runs.iterdir() if p.name.startswith("din.old-")]
    assert len(moved) == 1 and str(moved[0]) in out.stderr
    # the line names its command, as every other line of muse-rec does
    assert f"muse-rec train: --overwrite: moved the previous run in {runs / 'din'} to {moved[0]}" in out.stderr
    after_old = snapshot(moved[0])
    assert after_old == before
    new_run_id = json.loads((runs / "din" / "run.json").read_text())["run_id"]
    assert new_run_id != old_run_id
    ckpts = sorted((runs / "din" / "checkpoints").iterdir())
    assert [p.name for p in ckpts] == ["step-00000003"]
    assert read_position(ckpts[0]).run_id == new_run_id


def test_an_overwrite_refused_after_the_claim_puts_the_old_run_back(trained, tmp_path):
    """--overwrite moved the old run aside before the spec's device checks: a sparse optimizer the
    device lacks (or no sharding plan that fits) was refused after the move, leaving the run in
    din.old-<time> and an empty din/ behind, and a 'moved the previous run' line beside the error."""
    runs = trained.copy_run(tmp_path / "runs")
    before, lock = snapshot(runs / "din"), (runs / "din" / LOCK_FILE).read_bytes()
    for bad in ("train.sparse_optimizer.name=lamb", "train.batch_size=1000000000"):
        out = cli("train", "--spec", SPEC, *sets(trained.prepared, runs, ["train.max_steps=3", bad]), "--device", "cpu",
                  "--overwrite")
        assert_bad_input(out, *(("train.sparse_optimizer.name", "not supported on cpu") if "lamb" in bad
                                else ("no sharding plan fits",)))
        assert "moved the previous run" not in out.stderr, out.stderr[-2000:]
        assert sorted(p.name for p in runs.iterdir()) == ["din"], bad
        assert snapshot(runs / "din") == before and (runs / "din" / LOCK_FILE).read_bytes() == lock, bad


def test_resume_continues_and_overwrite_with_resume_is_refused(trained, tmp_path):
    """--resume continues the run; --resume with --overwrite is a usage error (exit 2, nothing touched)."""
    runs = trained.copy_run(tmp_path / "runs")
    out = cli("train", "--spec", SPEC, *sets(trained.prepared, runs, ["train.max_steps=3"]), "--device", "cpu",
              "--resume")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from" in out.stderr and "step 2" in out.stderr
    before = snapshot(runs / "din")
    out = cli("train", "--spec", SPEC, *sets(trained.prepared, runs, ["train.max_steps=4"]), "--device", "cpu",
              "--resume", "--overwrite")
    assert_bad_input(out, "argument --overwrite: not allowed with argument --resume")
    assert snapshot(runs / "din") == before


def test_resuming_a_finished_run_evaluates_it_and_keeps_its_checkpoint_and_training_figures(trained, tmp_path):
    """Before, it saved the same step again (new bytes, so a pinned --expect-sha256 no longer
    matched) and recorded "train 0 samples/s" and 0 s of training over the figures of the run."""
    runs = trained.copy_run(tmp_path / "runs")
    before = json.loads((runs / "din" / "metrics.json").read_text())
    checkpoints = snapshot(runs / "din" / "checkpoints")
    out = cli("train", "--spec", SPEC, *sets(trained.prepared, runs, ["train.max_steps=2"]), "--device", "cpu",
              "--resume")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "din: already trained (step 2 of 2); evaluating its checkpoint only" in out.stderr, out.stderr[-3000:]
    assert "(sha256 " not in out.stderr, out.stderr[-3000:]  # no "checkpoint DIR/step-... (sha256 ...)" save line
    assert "done: train 0 samples/s" not in out.stderr, out.stderr[-3000:]
    assert snapshot(runs / "din" / "checkpoints") == checkpoints
    after = json.loads((runs / "din" / "metrics.json").read_text())
    for key in ("train_samples_per_s", "wall_seconds", "steps"):  # (the fixture's run skips evaluation)
        assert after[key] == before[key] and before[key], (key, before.get(key), after.get(key))


def test_a_resumed_run_reports_the_training_figures_of_the_whole_run(trained, tmp_path):
    """Before, metrics.json's samples/s and training time were the resuming process's alone (here
    steps 3-4 of 4): the checkpoint now carries the time of the steps it holds."""
    runs = trained.copy_run(tmp_path / "runs")  # trained to step 2
    first = read_position(latest_checkpoint(str(runs / "din" / "checkpoints")))
    out = cli("train", "--spec", SPEC, *sets(trained.prepared, runs, ["train.max_steps=4"]), "--device", "cpu",
              "--resume")
    assert out.returncode == 0, out.stderr[-3000:]
    last = read_position(latest_checkpoint(str(runs / "din" / "checkpoints")))
    assert last.step == 4 and last.samples_seen == 2 * first.samples_seen > 0
    m = json.loads((runs / "din" / "metrics.json").read_text())
    assert m["wall_seconds"] == last.train_seconds > first.train_seconds > 0
    # samples/s x time = every sample of the run's 4 steps (was: of the 2 steps the resuming process ran)
    assert m["train_samples_per_s"] * m["wall_seconds"] == pytest.approx(last.samples_seen, rel=1e-9)


def test_a_resumed_run_keeps_the_tensorboard_points_up_to_its_checkpoint(trained, tmp_path):
    """TensorBoard's purge_step hides events at steps >= it. The resumed process logs from the
    checkpoint's step T + 1 on, so purging from T (as before) lost the loss logged at step T."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = trained.copy_run(tmp_path / "runs")  # trained to step 2 with a loss point per step
    out = cli("train", "--spec", SPEC, *sets(trained.prepared, runs, ["train.max_steps=3"]), "--device", "cpu",
              "--resume")
    assert out.returncode == 0, out.stderr[-3000:]
    events = EventAccumulator(str(runs / "din" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3]


def test_a_crashed_run_leaves_no_loader_worker_holding_its_run_directory(prepared_tiny, tmp_path):
    """A DataLoader worker is a fork of the trainer: it shares the run directory's lock and the
    trainer's stdout. When the trainer died (here: exits hard after a checkpoint, as on a kill or
    an OOM) while the worker was writing a batch larger than a pipe holds (~64 KiB) to it, the
    worker blocked forever on that write: the lock stayed taken, so `--resume` (or torchrun's
    restart) was refused, and `muse-rec train ... | tee log` never returned. Workers now die
    with the trainer."""
    import fcntl
    import subprocess
    import time

    from tests.conftest import REPO, subprocess_env

    runs = tmp_path / "runs"
    # Batches of 256 x 200 behaviours (~0.5 MB) with one worker prefetching ahead of the trainer.
    args = [sys.executable, "-m", "muse_rec.cli", "train", "--spec", SPEC, "--device", "cpu",
            *sets(prepared_tiny, runs, ["data.num_workers=1", "train.batch_size=256", "data.seq_len=200",
                                        "train.max_steps=6", "train.checkpoint_every=2"])]
    with open(tmp_path / "crash.log", "w") as log:  # a file, not a pipe: the call returns when the trainer ends
        crashed = subprocess.run(args, cwd=REPO, stdout=log, stderr=log, timeout=300,
                                 env=subprocess_env(MUSE_REC_CRASH_AFTER_STEP="2"))
    assert crashed.returncode == 3, (tmp_path / "crash.log").read_text()[-3000:]
    try:
        deadline = time.monotonic() + 20  # SIGKILL on the parent's death is immediate; torch's own check: 5 s
        with open(runs / "din" / ".lock", "a+") as lock:
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    assert time.monotonic() < deadline, "a process of the crashed run still holds its run directory"
                    time.sleep(0.2)
            fcntl.flock(lock, fcntl.LOCK_UN)
    finally:  # never leave an orphan behind in CI, whatever the outcome
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and str(runs) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    os.kill(int(proc.name), 9)
            except (OSError, ProcessLookupError):
                pass
    resumed = cli("train", "--spec", SPEC, "--device", "cpu", "--resume",
                  *sets(prepared_tiny, runs, ["data.num_workers=1", "train.batch_size=256", "data.seq_len=200",
                                              "train.max_steps=6", "train.checkpoint_every=2"]))
    assert resumed.returncode == 0 and "resumed from" in resumed.stderr, resumed.stderr[-3000:]


def test_second_process_on_a_locked_run_dir_exits_2_naming_the_holder(prepared_tiny, tmp_path):
    run_dir = tmp_path / "runs" / "din"
    lock = RunDirLock.acquire(run_dir, command="muse-rec train --spec held-by-the-test")
    try:
        out = cli("train", "--spec", SPEC, *sets(prepared_tiny, tmp_path / "runs", ["train.max_steps=1"]),
                  "--device", "cpu", "--resume")
        assert_bad_input(out, str(run_dir), "in use by another run", f"pid {os.getpid()}", "held-by-the-test")
        assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE]  # nothing written
    finally:
        lock.release()


def test_lock_of_a_dead_process_does_not_block(prepared_tiny, tmp_path):
    """A killed run leaves the lock file with its holder info but no lock: the next run proceeds."""
    run_dir = tmp_path / "runs" / "din"
    run_dir.mkdir(parents=True)
    (run_dir / LOCK_FILE).write_text(json.dumps({"host": "h", "pid": 999999, "started": "x", "command": "dead"}))
    out = cli("train", "--spec", SPEC, *sets(prepared_tiny, tmp_path / "runs", ["train.max_steps=1"]),
              "--device", "cpu")
    assert out.returncode == 0, out.stderr[-3000:]
    assert (run_dir / "checkpoints" / "step-00000001").is_dir()


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))


def test_pruning_never_touches_another_runs_checkpoints(tmp_path):
    """An old run's later checkpoints (steps 5, 6) must neither evict nor outrank the new run's."""
    root = tmp_path / "checkpoints"
    model = _Tiny()
    for step in (5, 6):
        save_checkpoint(str(root), model, None, Position(step=step, run_id="old"))
    for step in (1, 2, 3):
        save_checkpoint(str(root), model, None, Position(step=step, run_id="new"))
    names = sorted(p.name for p in root.iterdir())
    assert names == ["step-00000002", "step-00000003", "step-00000005", "step-00000006"]
    assert latest_checkpoint(str(root), run_id="new") == root / "step-00000003"


def test_export_and_rank_read_the_runs_own_newest_checkpoint_not_an_earlier_runs_later_step(tmp_path):
    """Such a directory (previous test): `evaluate` read the newest checkpoint of the run run.json names, but
    `export` and `rank` the newest of any run, i.e. the earlier run's step 6, a model this run never trained,
    exported or served under its name. All three choose alike now (one function)."""
    from muse_rec.serving.export import resolve_checkpoint
    from muse_rec.spec import load_spec

    spec = load_spec(SPEC, [f"output_dir={tmp_path}/{{name}}"])
    run_dir = Path(spec.run_dir)
    for run_id, steps in (("earlier", (5, 6)), ("this", (1, 2))):
        for step in steps:
            save_checkpoint(str(run_dir / "checkpoints"), _Tiny(), None, Position(step=step, run_id=run_id))
    (run_dir / "run.json").write_text(json.dumps({"run_id": "this"}))
    own = run_dir / "checkpoints" / "step-00000002"
    assert resolve_checkpoint(spec, None) == own  # what export and rank read

    from muse_rec.training.run_record import scored_checkpoint  # what evaluate reads

    assert scored_checkpoint(run_dir, None) == own
    (run_dir / "run.json").unlink()  # a run directory of an earlier version: no run to tell, the newest of any
    assert resolve_checkpoint(spec, None) == run_dir / "checkpoints" / "step-00000006"


def test_failed_resume_leaves_spec_and_run_record_untouched(trained, tmp_path):
    """A resume with a model that does not fit the checkpoint: exit 2 naming the keys; spec.yaml unchanged.
    The run's spec.yaml refuses it first; without one (a run directory of an earlier version, or
    one copied without it) the checkpoint's shapes do."""
    runs = trained.copy_run(tmp_path / "runs")
    before = snapshot(runs / "din")
    args = ("train", "--spec", SPEC, *sets(trained.prepared, runs, ["train.max_steps=3", "model.embedding_dim=8"]),
            "--device", "cpu", "--resume")
    assert_bad_input(cli(*args), "spec.yaml", "model.embedding_dim: 16 -> 8")
    assert snapshot(runs / "din") == before
    (runs / "din" / "spec.yaml").unlink()
    before = snapshot(runs / "din")
    out = cli(*args)
    assert_bad_input(out, "step-00000002", "does not fit this model")
    assert "size" in out.stderr.lower() or "mismatch" in out.stderr.lower()
    assert snapshot(runs / "din") == before


@pytest.mark.parametrize("blocked", ["checkpoints", "metrics.json"])
def test_an_unwritable_place_in_the_run_dir_fails_before_training(trained, tmp_path, blocked):
    """`checkpoints` as a file: the resume trained, rewrote spec.yaml and run.json, then failed at its
    first save with a NotADirectoryError traceback. Now one line before any step, nothing changed."""
    runs = trained.copy_run(tmp_path / "runs")
    run = runs / "din"
    if blocked == "checkpoints":
        shutil.move(str(run / "checkpoints"), str(tmp_path / "kept"))
        (run / "checkpoints").write_text("not a directory")
    else:
        (run / "metrics.json").unlink()
        (run / "metrics.json").mkdir()
    before = snapshot(run)
    out = cli("train", "--spec", SPEC, *sets(trained.prepared, runs, ["train.max_steps=3"]), "--device", "cpu",
              "--resume")
    kind = "directory" if blocked == "checkpoints" else "file"
    assert_bad_input(out, f"{run / blocked}: not a writable {kind}")
    assert "training din" not in out.stderr
    assert snapshot(run) == before


@pytest.mark.parametrize("name", ["memory/rank0.json", "metrics.json", "run.json", "spec.yaml"])
@pytest.mark.parametrize("kind", ["link", "dangling link", "directory"])
def test_a_link_or_directory_where_the_run_rewrites_a_file_is_refused_before_training(trained, tmp_path, name, kind):
    """A run directory from elsewhere with a symbolic link in place of a file the run rewrites: the resume
    overwrote the link's target (any file the user can write); a dangling link or a directory in place of
    memory/rank0.json failed at the run's end with a traceback (exit 1), after it had trained."""
    runs = trained.copy_run(tmp_path / "runs")
    run = runs / "din"
    victim = tmp_path / "elsewhere.txt"
    victim.write_text("not the run's")
    place = run / name
    assert place.is_file()
    place.unlink()
    if kind == "directory":
        place.mkdir()
    else:
        place.symlink_to(victim if kind == "link" else tmp_path / "gone")
    before = snapshot(run)
    out = cli("train", "--spec", SPEC, *sets(trained.prepared, runs, ["train.max_steps=3"]), "--device", "cpu",
              "--resume")
    assert_bad_input(out, str(place), "symbolic link" if "link" in kind else "not a writable file")
    assert "training din" not in out.stderr
    assert snapshot(run) == before and victim.read_text() == "not the run's"


@pytest.mark.parametrize("name", ["spec.yaml", "run.json"])
def test_a_link_to_a_directory_where_the_run_rewrites_a_file_is_named_a_link(tmp_path, name):
    """spec.yaml (run.json) a symbolic link to a directory: the resume said "not a writable file" (the
    directory test was made twice, first in the writability test), and once the user put a file there,
    refused it again as a symbolic link. Now the first refusal names what is there: the link."""
    from muse_rec.training.run_dir import RunDirError, check_resumable

    run = tmp_path / "run"
    run.mkdir()
    for f in ("spec.yaml", "run.json"):
        (run / f).write_text("{}")
    (tmp_path / "a_directory").mkdir()
    (run / name).unlink()
    (run / name).symlink_to(tmp_path / "a_directory")
    with pytest.raises(RunDirError, match=rf"^{run / name}: a symbolic link \(to {tmp_path / 'a_directory'}\)"):
        check_resumable(run)


def test_a_run_that_has_evaluated_resumes(trained, tmp_path):
    """Its predictions.parquet is a directory (a part per rank): the writability check first took it
    for a file and refused every resume of an evaluated run, re-evaluation and reproduce's included."""
    runs = trained.copy_run(tmp_path / "runs")
    for steps in (3, 4):
        out = cli("train", "--spec", SPEC, *sets(trained.prepared, runs, [f"train.max_steps={steps}",
                                                                           "train.eval_at_end=true"]),
                  "--device", "cpu", "--resume")
        assert out.returncode == 0, out.stderr[-3000:]
        assert (runs / "din" / "predictions.parquet").is_dir()
    assert json.loads((runs / "din" / "metrics.json").read_text())["steps"] == 4


def _read_back(command: str, trained, runs, ev):
    """The two commands that read a run directory back: `train --resume` and `evaluate`."""
    if command == "resume":
        return cli("train", "--spec", SPEC, *sets(trained.prepared, runs, ["train.max_steps=3"]), "--device", "cpu",
                   "--resume")
    return cli("evaluate", "--spec", SPEC, *sets(trained.prepared, runs), "--out", str(ev))


@pytest.mark.parametrize("command", ["resume", "evaluate"])
@pytest.mark.parametrize("entry, value, needle", [
    ("vocab_sizes", [1, 2], "vocab_sizes must map each table to its row count"),  # was AttributeError
    ("run_id", [1], "run_id must be a string"),  # was written back into the new run.json
])
def test_damaged_run_json_is_named_and_changes_nothing(trained, tmp_path, command, entry, value, needle):
    runs = trained.copy_run(tmp_path / "runs")
    record = json.loads((runs / "din" / "run.json").read_text())
    record[entry] = value
    (runs / "din" / "run.json").write_text(json.dumps(record))
    before = snapshot(runs / "din")
    out = _read_back(command, trained, runs, tmp_path / "ev")
    assert_bad_input(out, "run.json", needle)
    assert snapshot(runs / "din") == before and not (tmp_path / "ev").exists()


def test_a_run_json_without_vocab_sizes_resumes_as_one_without_run_json(trained, tmp_path):
    """Nothing recorded is nothing to compare, as for an empty run.json (which resumed): a run.json
    lacking only vocab_sizes was refused with every table's size shown as (None, n)."""
    runs = trained.copy_run(tmp_path / "runs")
    record = json.loads((runs / "din" / "run.json").read_text())
    record.pop("vocab_sizes")
    (runs / "din" / "run.json").write_text(json.dumps(record))
    out = _read_back("resume", trained, runs, tmp_path / "ev")
    assert out.returncode == 0, out.stderr
    assert json.loads((runs / "din" / "run.json").read_text())["vocab_sizes"]  # the resume records them again


def _forge_position(run_dir, edit) -> None:
    """Edit the newest checkpoint's position.json and re-write its manifest, as a checkpoint
    from elsewhere would come (the integrity check passes; the values are what is wrong)."""
    from muse_rec.integrity import write_manifest

    ck = latest_checkpoint(str(run_dir / "checkpoints"))
    pos = json.loads((ck / "position.json").read_text())
    (ck / "position.json").write_text(json.dumps(edit(pos)))
    write_manifest(ck)


@pytest.mark.parametrize("command", ["resume", "evaluate"])
@pytest.mark.parametrize("edit, needle", [
    (lambda p: {**p, "step": "x"}, "step must be a 64-bit integer >= 0, got 'x'"),  # was a TypeError traceback
    (lambda p: {**p, "world_size": 0}, "world_size must be a 64-bit integer >= 1"),
    # JSON has no bound: the step filled the fused optimizers' int64 step tensors, an OverflowError traceback
    (lambda p: {**p, "step": 10 ** 30}, f"step must be a 64-bit integer >= 0, got {10 ** 30}"),
    (lambda p: [p], "expected a JSON object"),  # was skipped: the run resumed from an older checkpoint
    (lambda p: {**p, "train_seconds": "x"}, "train_seconds must be a finite number >= 0 or null, got 'x'"),
])
def test_damaged_position_json_is_named_and_changes_nothing(trained, tmp_path, command, edit, needle):
    runs = trained.copy_run(tmp_path / "runs")
    _forge_position(runs / "din", edit)
    before = snapshot(runs / "din")
    out = _read_back(command, trained, runs, tmp_path / "ev")
    assert_bad_input(out, "position.json", needle)
    assert snapshot(runs / "din") == before and not (tmp_path / "ev").exists()


def test_resume_position_beyond_the_epoch_is_named(trained, tmp_path):
    """A batch_in_epoch past the epoch's end was the loader's ValueError traceback."""
    runs = trained.copy_run(tmp_path / "runs")
    _forge_position(runs / "din", lambda p: {**p, "batch_in_epoch": 10 ** 6})
    out = _read_back("resume", trained, runs, tmp_path / "ev")
    assert_bad_input(out, "position.json puts the run at batch 1000000 of an epoch of")


@pytest.mark.parametrize("command", ["evaluate", "export", "rank"])
def test_checkpoint_of_another_model_is_one_line_not_a_traceback(trained, tmp_path, command):
    req = tmp_path / "req.json"
    req.write_text(json.dumps({"user": 1, "candidates": [1, 2]}))
    extra = {"evaluate": ["--out", str(tmp_path / "ev")], "export": ["--out", str(tmp_path / "ex")],
             "rank": ["--request", str(req)]}[command]
    out = cli(command, "--spec", SPEC, *trained.sets(["model.embedding_dim=8"]), *extra)
    assert_bad_input(out, "step-00000002", "trained with other model settings than the spec",
                     "model.embedding_dim: 16 -> 8")
    assert not (tmp_path / "ev").exists() and not (tmp_path / "ex").exists()
    # A checkpoint that records no model (written before model.json, outside its run): loading refuses it.
    from muse_rec.integrity import write_manifest

    old = tmp_path / "old" / "step-00000002"
    shutil.copytree(next((trained.run_dir / "checkpoints").glob("step-00000002")), old)
    (old / "model.json").unlink()
    write_manifest(old)
    out = cli(command, "--spec", SPEC, *trained.sets(["model.embedding_dim=8"]), "--checkpoint", str(old), *extra)
    assert_bad_input(out, "step-00000002", "does not fit this model")
    assert not (tmp_path / "ev").exists() and not (tmp_path / "ex").exists()


@pytest.mark.parametrize("command", ["evaluate", "export", "rank"])
@pytest.mark.parametrize("named", [False, True])
def test_another_models_checkpoint_is_refused_before_torch_is_imported(trained, tmp_path, command, named):
    """`export` and `rank` refused it only after importing torch and TorchRec (3.4 s for export's refusal,
    0.3 s now), `evaluate` after importing torch: they read the chosen checkpoint's model record first now.
    Run where importing torch fails, the old code ended in an ImportError (exit 1)."""
    req = tmp_path / "req.json"
    req.write_text(json.dumps({"user": 1, "candidates": [1, 2]}))
    extra = {"evaluate": ["--out", str(tmp_path / "ex")], "export": ["--out", str(tmp_path / "ex")],
             "rank": ["--request", str(req)]}[command]
    ck = next((trained.run_dir / "checkpoints").glob("step-00000002"))
    chosen = ["--checkpoint", str(ck)] if named else []
    out = cli_without_torch(command, "--spec", SPEC, *trained.sets(["model.embedding_dim=8"]), *chosen, *extra)
    assert_bad_input(out, f"{ck}: trained with other model settings than the spec", "model.embedding_dim: 16 -> 8")
    assert not (tmp_path / "ex").exists()


def test_two_ranks_refuse_a_used_run_dir_together_without_hanging(trained, tmp_path):
    """Rank 0 decides and broadcasts: both ranks exit with the same one-line reason, none waits forever."""
    from tests.training.conftest import run_ranks

    runs = trained.copy_run(tmp_path / "runs")
    before = snapshot(runs / "din")
    out = run_ranks(["train", "--spec", SPEC, *sets(trained.prepared, runs, ["train.max_steps=3"]), "--device", "cpu"],
                    nproc=2, check=False, timeout=300)
    assert out.returncode != 0
    lines = [ln for ln in out.stderr.splitlines() if "muse-rec train:" in ln and "already holds a run" in ln]
    assert len(lines) == 2, out.stderr[-3000:]  # one per rank
    assert snapshot(runs / "din") == before


def test_an_error_line_reaches_stderr_in_one_write(monkeypatch):
    """Every rank reports; with PYTHONUNBUFFERED each write goes straight to the shared pipe, so a
    line written in two pieces (text, then newline) can merge with another rank's."""
    import io

    from muse_rec.cli.errors import report

    writes = []

    class Unbuffered(io.StringIO):
        def write(self, text):
            writes.append(text)
            return len(text)

    monkeypatch.setattr(sys, "stderr", Unbuffered())
    assert report("train", RuntimeError("runs/din: already holds\n a run")) == 2
    assert writes == ["muse-rec train: runs/din: already holds a run\n"]


def test_restarted_overwrite_job_continues_its_own_run(tmp_path):
    """torchrun restarts a job started with --overwrite as a resume: its directory must not be moved."""
    from muse_rec.training.run_dir import claim_run_dir

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "spec.yaml").write_text("name: x\n")
    lock = claim_run_dir(run_dir, is_main=True, resume=True, overwrite=True)
    lock.release()
    assert (run_dir / "spec.yaml").exists() and not list(tmp_path.glob("run.old-*"))


def test_ctrl_c_during_training_is_one_line_saying_how_to_go_on(prepared_tiny, tmp_path):
    """Ctrl-C printed torch's backward traceback (~30 lines) and exited 1, like a bug."""
    import signal
    import subprocess
    import threading

    from tests.conftest import REPO, subprocess_env

    args = [sys.executable, "-m", "muse_rec.cli", "train", "--spec", SPEC, "--device", "cpu",
            *sets(prepared_tiny, tmp_path / "runs", ["train.epochs=1000"])]
    # Ctrl-C's default action in the job, whatever this suite was started from: a shell without job
    # control starts a background command (`.ci/run &`) with SIGINT ignored, every child inherits
    # that, and Python then never raises KeyboardInterrupt (the run trained on for its 1000 epochs).
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=subprocess_env(), start_new_session=True,  # its own group, as a terminal's job
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # Reading stderr to its end waits for the process: a run that ignored the interrupt would hang the
    # suite instead of failing this test.
    watchdog = threading.Timer(240, os.killpg, (proc.pid, signal.SIGKILL))
    watchdog.start()
    try:
        for line in proc.stderr:  # interrupt once it trains
            if " step " in line:
                break
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends: every process of the job
        rest = proc.stderr.read()
        assert proc.wait(timeout=120) == 130, rest[-3000:]
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "Traceback" not in rest and "KeyboardInterrupt" not in rest, rest[-3000:]
    assert rest.strip().splitlines()[-1] == (
        "muse-rec train: interrupted; --resume continues it from its last checkpoint (one every "
        "train.checkpoint_every steps; without one, from step 0), --overwrite starts over"), rest[-3000:]


def test_a_resume_with_other_training_settings_is_refused_and_changes_nothing(trained, tmp_path):
    """Before, `--resume --set train.dense_optimizer.lr=0.5` trained on at 0.5 and wrote lr 0.5 into
    spec.yaml, which `compare` groups runs by, over steps trained at the run's own lr."""
    runs = trained.copy_run(tmp_path / "runs")
    before, lock = snapshot(runs / "din"), (runs / "din" / LOCK_FILE).read_bytes()
    for change, words in ((["train.dense_optimizer.lr=0.5"], "train.dense_optimizer.lr: 0.001 -> 0.5"),
                          (["train.seed=7", "model.dropout=0.2"], "train.seed: 0 -> 7")):
        out = cli("train", "--spec", SPEC, *sets(trained.prepared, runs, ["train.max_steps=3", *change]),
                  "--device", "cpu", "--resume")
        assert_bad_input(out, str(runs / "din" / "spec.yaml"), "--resume with other training settings", words)
        # The lock file too: the refused process's holder info replaced the run's.
        assert snapshot(runs / "din") == before and (runs / "din" / LOCK_FILE).read_bytes() == lock
    # How far it trains (and the data's path, checked by its fingerprint) may change: the run goes on.
    out = cli("train", "--spec", SPEC, *sets(trained.prepared, runs, ["train.max_steps=3", "train.epochs=2"]),
              "--device", "cpu", "--resume")
    assert out.returncode == 0, out.stderr[-3000:]


def test_an_abandoned_lock_leaves_the_directory_as_it_found_it(tmp_path):
    """`DirLock.abandon`: no lock file where there was none, the earlier holder info where there
    was one, and the directories it created removed (only while empty)."""
    from muse_rec.dirlock import DirLock

    fresh = tmp_path / "a" / "b"
    DirLock.acquire(fresh).abandon()
    assert not (tmp_path / "a").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / LOCK_FILE).write_text('{"pid": 1}\n')
    lock = DirLock.acquire(kept)
    assert (kept / LOCK_FILE).read_text() != '{"pid": 1}\n'  # held: its holder info is written
    lock.abandon()
    assert (kept / LOCK_FILE).read_text() == '{"pid": 1}\n'
    busy = tmp_path / "busy"
    lock = DirLock.acquire(busy)
    (busy / "x").write_text("written while held")
    lock.abandon()
    assert sorted(os.listdir(busy)) == ["x"]


@pytest.mark.parametrize("where", ["record", "spec"])
def test_a_model_section_replaced_by_a_value_is_a_difference_not_an_unknown_key(tmp_path, where):
    """A checkpoint's model.json whose section is a single value (``"esu": "x"``, re-hashed) shared no
    dotted key with the spec's ``model.esu.*``, so nothing of it was compared and the record passed."""
    from muse_rec.spec import load_spec
    from muse_rec.training.run_record import RunError, check_model_settings
    from tests.conftest import REPO

    spec = load_spec(REPO / "specs/demo/muse.yaml")
    record = json.loads(json.dumps(spec.to_dict()["model"]))
    section = next(k for k, v in record.items() if isinstance(v, dict))
    if where == "record":
        record[section] = "x"
    else:  # the record holds a section where the spec has a value
        scalar = next(k for k, v in record.items() if not isinstance(v, dict))
        record[scalar] = {"x": 1}
        section = scalar
    ck = tmp_path / "step-00000001"
    ck.mkdir()
    (ck / "model.json").write_text(json.dumps(record))
    with pytest.raises(RunError, match=rf"other model settings than the spec \(model\.{section}: "):
        check_model_settings(ck, spec)


def test_a_lock_file_that_is_a_symbolic_link_is_refused_and_its_target_kept(tmp_path):
    """A directory from elsewhere (a run, an evaluation, an export) whose .lock is a symbolic link: every
    command that took the lock wrote its holder info over the link's target (any file the user can write)."""
    from muse_rec.dirlock import DirLock, DirLockError

    victim = tmp_path / "elsewhere.txt"
    victim.write_text("not a lock")
    d = tmp_path / "run"
    d.mkdir()
    (d / LOCK_FILE).symlink_to(victim)
    with pytest.raises(DirLockError, match=rf"^{d / LOCK_FILE}: a symbolic link; the lock would write"):
        DirLock.acquire(d)
    assert victim.read_text() == "not a lock"
    with DirLock.acquire(tmp_path / "fresh") as lock:  # an ordinary lock still works
        assert json.loads((tmp_path / "fresh" / LOCK_FILE).read_text())["pid"] == os.getpid() and lock


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_run_spec_yaml_that_is_no_regular_file_is_named_on_resume(tmp_path, kind):
    """`train --resume` with the run's spec.yaml a FIFO blocked forever (its settings were read whole to
    compare them with the spec's); it is refused in one line naming the file, as a directory is."""
    from muse_rec.spec import load_spec
    from muse_rec.training.run_record import RunError, check_resume_settings
    from tests.conftest import REPO, error_of_call_unblocking_fifos

    spec_yaml = tmp_path / "spec.yaml"
    os.mkfifo(spec_yaml) if kind == "fifo" else spec_yaml.mkdir()
    spec = load_spec(REPO / SPEC)
    error = error_of_call_unblocking_fifos(lambda: check_resume_settings(spec_yaml, spec), tmp_path, RunError)
    expected = "a FIFO (named pipe), not a regular file" if kind == "fifo" else "unreadable ([Errno 21] Is a directory"
    assert error.startswith(f"{spec_yaml}: {expected}"), error


@pytest.mark.parametrize("text, says", [
    # PyYAML composes nested nodes recursively: a RecursionError traceback of `train --resume` and `launch`.
    ("train: " + "[" * 5000 + "]" * 5000 + "\n", "unreadable (nested too deeply to parse)"),
    # Read as a spec is: a key given twice was silently its last value in the comparison.
    ("train:\n  batch_size: 64\n  batch_size: 32\n", "unreadable (duplicate key 'batch_size'"),
])
def test_a_run_spec_yaml_yaml_cannot_take_as_written_is_named_on_resume(tmp_path, text, says):
    from muse_rec.spec import load_spec
    from muse_rec.training.run_record import RunError, check_resume_settings
    from tests.conftest import REPO

    spec_yaml = tmp_path / "spec.yaml"
    spec_yaml.write_text(text)
    with pytest.raises(RunError) as refused:
        check_resume_settings(spec_yaml, load_spec(REPO / SPEC))
    assert str(refused.value).startswith(f"{spec_yaml}: {says}"), refused.value


def test_a_run_whose_spec_yaml_is_nested_too_deeply_is_refused_in_one_line(trained, tmp_path):
    runs = trained.copy_run(tmp_path / "runs")
    (runs / "din" / "spec.yaml").write_text("train: " + "[" * 5000 + "]" * 5000 + "\n")
    before = snapshot(runs / "din")
    out = cli("train", "--spec", SPEC, *sets(trained.prepared, runs, ["train.max_steps=3"]), "--device", "cpu",
              "--resume")
    assert_bad_input(out, f"{runs / 'din' / 'spec.yaml'}: unreadable (nested too deeply to parse)")
    assert snapshot(runs / "din") == before


def test_a_lock_file_that_is_a_fifo_is_named_as_such(tmp_path):
    """A directory from elsewhere whose .lock is a FIFO: opened read-write it did not block, but the holder
    info could not be written: "cannot create the directory or its lock (None)", naming neither."""
    from muse_rec.dirlock import DirLock, DirLockError

    os.mkfifo(tmp_path / LOCK_FILE)
    with pytest.raises(DirLockError) as refused:
        DirLock.acquire(tmp_path)
    assert str(refused.value) == (f"{tmp_path / LOCK_FILE}: a FIFO (named pipe), not a regular file; the lock is a "
                                  "regular file: remove it")


def test_a_lock_file_of_bytes_that_are_no_text_is_holder_unknown_and_kept(tmp_path):
    """A directory from elsewhere whose .lock holds bytes that are not UTF-8: every command locking it (train,
    evaluate, prepare, export) ended in a UnicodeDecodeError traceback, held or not."""
    import fcntl

    from muse_rec.dirlock import DirLock, DirLockError

    junk = b"\xb7\xd0\xff{not text\n"
    (tmp_path / LOCK_FILE).write_bytes(junk)
    lock = DirLock.acquire(tmp_path)
    lock.abandon()  # a refused command puts the earlier bytes back as they were
    assert (tmp_path / LOCK_FILE).read_bytes() == junk
    with open(tmp_path / LOCK_FILE) as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with pytest.raises(DirLockError, match=r"in use by another process \(holder unknown\)"):
            DirLock.acquire(tmp_path)
    assert (tmp_path / LOCK_FILE).read_bytes() == junk


def test_a_held_lock_whose_holder_info_is_nested_too_deeply_is_holder_unknown(tmp_path):
    """The refusal's description of the holder parsed its JSON: nested thousands deep, a RecursionError."""
    import fcntl

    from muse_rec.dirlock import DirLock, DirLockError

    (tmp_path / LOCK_FILE).write_text("[" * 100_000 + "]" * 100_000)
    with open(tmp_path / LOCK_FILE) as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with pytest.raises(DirLockError, match=r"in use by another process \(holder unknown\)"):
            DirLock.acquire(tmp_path)


def test_train_into_a_run_dir_whose_lock_file_is_no_text_resumes(trained, tmp_path):
    runs = trained.copy_run(tmp_path / "runs")
    (runs / "din" / LOCK_FILE).write_bytes(b"\xb7\xd0\xff")
    out = cli("train", "--spec", SPEC, *sets(trained.prepared, runs, ["train.max_steps=3"]), "--device", "cpu",
              "--resume")
    assert out.returncode == 0, out.stderr[-3000:]

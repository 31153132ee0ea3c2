"""What a user gets for a wrong data path, an unsupported optimizer or mismatched vocabularies."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.training.conftest import metrics, run_ranks, train_args


def test_missing_data_path_is_a_clear_error(tmp_path):
    out = run_ranks(["train", "--spec", "specs/demo/muse.yaml", "--set", f"data.prepared={tmp_path}/nope"],
                    nproc=1, check=False)
    assert out.returncode == 2
    assert "data.prepared" in out.stderr and "nope" in out.stderr and "muse-rec prepare" in out.stderr


def test_cuda_only_optimizer_on_cpu_is_refused_not_substituted(prepared, tmp_path):
    # lamb is fused on CUDA only; adam works on CPU too (RowSparseAdam, tests/training/test_cpu_adam.py).
    out = run_ranks(train_args("specs/demo/muse.yaml", prepared, tmp_path,
                               ["train.sparse_optimizer.name=lamb", "train.max_steps=1"]), nproc=1, check=False)
    assert out.returncode == 2
    assert "train.sparse_optimizer.name" in out.stderr and "'lamb'" in out.stderr
    assert "exact_row_wise_adagrad" in out.stderr and "adam" in out.stderr
    assert not (tmp_path / "muse" / "metrics.json").exists()


def test_a_weight_decay_the_kernel_would_drop_is_refused(prepared, tmp_path):
    # The demo's exact_row_wise_adagrad runs in FBGEMM without a decay mode: 0.01 would change nothing.
    out = run_ranks(train_args("specs/demo/muse.yaml", prepared, tmp_path,
                               ["train.sparse_optimizer.weight_decay=0.01", "train.max_steps=1"]), nproc=1, check=False)
    assert out.returncode == 2, out.stderr
    assert "train.sparse_optimizer.weight_decay" in out.stderr and "'exact_row_wise_adagrad' on cpu" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "muse" / "metrics.json").exists()


def test_resume_on_other_vocabularies_is_refused(prepared, tmp_path):
    run_ranks(train_args("specs/demo/din.yaml", prepared, tmp_path, ["train.max_steps=2", "train.eval_at_end=false"]),
              nproc=1)
    run_json = tmp_path / "din" / "run.json"
    info = json.loads(run_json.read_text())
    info["vocab_sizes"]["item"] += 7  # as if the checkpoint came from another prepare
    run_json.write_text(json.dumps(info))
    ckpts = sorted((tmp_path / "din" / "checkpoints").iterdir())
    out = run_ranks(train_args("specs/demo/din.yaml", prepared, tmp_path, ["train.max_steps=4"]) + ["--resume"],
                    nproc=1, check=False)
    assert out.returncode == 2
    assert "other vocabularies" in out.stderr and "'item'" in out.stderr
    assert sorted((tmp_path / "din" / "checkpoints").iterdir()) == ckpts  # nothing overwritten


def test_bad_spec_key_names_the_key(tmp_path):
    out = run_ranks(["train", "--spec", "specs/demo/muse.yaml", "--set", "model.gsu.top_k=lots"], nproc=1, check=False)
    assert out.returncode == 2
    assert "model.gsu.top_k: expected an integer" in out.stderr


def test_start_line_shows_the_epochs_clicks_and_a_bad_count_is_one_line(prepared, tmp_path):
    """The start line reports the train split's impressions and clicks (what sets how far one epoch
    gets at a fixed lr, docs/accuracy.md), with a warning below train.warn_below_clicks; a damaged
    count in meta.json is exit 2 naming the key."""
    import shutil

    split = json.loads((prepared / "meta.json").read_text())["splits"]["train"]
    out = run_ranks(train_args("specs/demo/din.yaml", prepared, tmp_path, ["train.max_steps=1", "train.eval_at_end=false"]),
                    nproc=1)
    start = next(line for line in out.stderr.splitlines() if "training din" in line)
    assert f"split train: {split['samples']:,} impressions, {split['positives']:,} clicks " \
           f"({100 * split['positives'] / split['samples']:.1f}%)" in start, start
    # The demo profile is the few-clicks warning's advice, so it sets the warning off; the paper's
    # specs (specs/base.yaml: 20,000) warn on this tiny set, with the clicks of the whole epoch.
    assert "warn_below_clicks" not in out.stderr
    # TorchRec's root-logger note that one process's local world size falls back to its world size (1).
    assert "LOCAL_WORLD_SIZE" not in out.stderr, out.stderr[-2000:]
    out = run_ranks(train_args("specs/methods/din.yaml", prepared, tmp_path / "paper", ["train.eval_at_end=false"]),
                    nproc=1)
    assert f"this run trains on {split['positives']:,} clicks (64 samples per step, dense lr 0.0002), " \
           "fewer than train.warn_below_clicks = 20,000" in out.stderr, out.stderr[-2000:]

    damaged = tmp_path / "prepared"
    shutil.copytree(prepared, damaged)
    meta = json.loads((damaged / "meta.json").read_text())
    meta["splits"]["train"]["positives"] = split["samples"] + 1
    (damaged / "meta.json").write_text(json.dumps(meta))
    out = run_ranks(train_args("specs/demo/din.yaml", damaged, tmp_path / "runs2", ["train.max_steps=1"]),
                    nproc=1, check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "splits.train.positives must be an integer in [0, " in out.stderr
    assert not (tmp_path / "runs2" / "din" / "run.json").exists()


def test_resume_continues_the_epoch_on_other_ranks_and_refuses_another_batch_size(prepared, tmp_path):
    """A resume read the checkpoint's per-rank step as this run's: on other ranks or at another
    batch size it re-read or skipped part of the epoch, silently, and rewrote spec.yaml. Now the
    place in the epoch carries over between world sizes, and what cannot carry over exits 2 with
    the run directory as it was (tests/data/test_loader_partition.py checks the samples)."""
    spec, run = "specs/demo/din.yaml", tmp_path / "din"

    def resume(nproc, extra):
        return run_ranks(train_args(spec, prepared, tmp_path, ["train.eval_at_end=false", *extra]) + ["--resume"],
                         nproc=nproc, check=False)

    def position():
        last = sorted((run / "checkpoints").iterdir())[-1]
        return json.loads((last / "position.json").read_text())

    run_ranks(train_args(spec, prepared, tmp_path, ["train.max_steps=3", "train.eval_at_end=false"]), nproc=1)
    assert {k: position()[k] for k in ("batch_in_epoch", "world_size", "batch_size")} == \
        {"batch_in_epoch": 3, "world_size": 1, "batch_size": 64}
    before = {f: (run / f).read_text() for f in ("spec.yaml", "run.json")}
    for nproc, extra, words in ((1, ["train.max_steps=6", "train.batch_size=32"],
                                 "at train.batch_size 64; at 32 the rest of that epoch would re-read or skip samples"),
                                (2, ["train.max_steps=6"], "after 3 global batches, where 2 ranks cannot continue")):
        out = resume(nproc, extra)
        # Each rank exits 2 with the line; torchrun itself then exits 1 (docs/launch.md).
        assert out.returncode == (2 if nproc == 1 else 1) and words in out.stderr, out.stderr[-3000:]
        assert {f: (run / f).read_text() for f in before} == before
    assert resume(1, ["train.max_steps=4"]).returncode == 0  # 4 global batches done: 2 ranks go on at their step 2
    out = resume(2, ["train.max_steps=5"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert {k: position()[k] for k in ("step", "batch_in_epoch", "world_size")} == \
        {"step": 5, "batch_in_epoch": 3, "world_size": 2}


def test_a_checkpoint_at_an_epochs_end_resumes_on_other_ranks(prepared, tmp_path):
    """A `checkpoint_every` save on an epoch's last step recorded (epoch e, batch len(loader)), the
    epoch not yet rolled over: on other ranks that read as more global batches than the epoch has
    (45 at batch 100 on this set, 46 "done" from 23 steps of 2 ranks) and the resume was refused.
    Such a save is now (e + 1, 0); one written before this version is read the same way."""
    import shutil

    from muse_rec.integrity import write_manifest

    spec, run = "specs/demo/din.yaml", tmp_path / "din"
    common = ["train.batch_size=100", "train.epochs=2", "train.eval_at_end=false"]
    run_ranks(train_args(spec, prepared, tmp_path, [*common, "train.checkpoint_every=45", "train.max_steps=46"]),
              nproc=1)
    ck = run / "checkpoints" / "step-00000045"
    pos = json.loads((ck / "position.json").read_text())
    assert (pos["epoch"], pos["batch_in_epoch"]) == (1, 0), pos
    shutil.rmtree(run / "checkpoints" / "step-00000046")
    saved = tmp_path / "step-45"
    shutil.copytree(ck, saved)
    for legacy in (False, True):
        if legacy:  # as the previous version wrote it
            shutil.rmtree(run / "checkpoints")
            (run / "checkpoints").mkdir()
            shutil.copytree(saved, ck)
            (ck / "position.json").write_text(json.dumps({**pos, "epoch": 0, "batch_in_epoch": 45, "batch_size": 0}))
            write_manifest(ck)
        out = run_ranks(train_args(spec, prepared, tmp_path, [*common, "train.max_steps=47"]) + ["--resume"], nproc=2,
                        check=False)
        assert out.returncode == 0, out.stderr[-3000:]
        last = json.loads((run / "checkpoints" / "step-00000047" / "position.json").read_text())
        assert {k: last[k] for k in ("step", "epoch", "batch_in_epoch", "world_size")} == \
            {"step": 47, "epoch": 1, "batch_in_epoch": 2, "world_size": 2}, (legacy, last)
    # Without max_steps the run ends with its epochs, whatever the steps behind it were worth: the
    # second epoch's 23 steps of 2 ranks (steps 45-68), not 2 x 23 = 46 steps in all.
    out = run_ranks(train_args(spec, prepared, tmp_path, common) + ["--resume"], nproc=2, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    last = json.loads((run / "checkpoints" / "step-00000068" / "position.json").read_text())
    assert (last["epoch"], last["batch_in_epoch"]) == (2, 0), last


def test_a_resume_landing_on_an_epochs_end_moves_on_and_counts_its_epochs(prepared, tmp_path):
    """An older checkpoint (batch size unrecorded) 24 steps of 64 into an epoch, resumed on 2 ranks at
    batch 200 (12 steps an epoch), landed on batch 12 of 12: the step loop found no step left and
    rebuilt its loader forever, holding the run directory. It is now the next epoch's start. The
    few-clicks warning counts the run's own epochs (2: 1,184 clicks), not steps of another size."""
    from muse_rec.integrity import write_manifest

    spec, run = "specs/demo/din.yaml", tmp_path / "din"
    # Dense lr 2e-4: at the demo profile's 1e-3 and a batch <= 256 the warning has nothing to advise
    # (and a resume keeps the run's settings).
    run_ranks(train_args(spec, prepared, tmp_path, ["train.max_steps=24", "train.eval_at_end=false",
                                                    "train.dense_optimizer.lr=2e-4"]), nproc=1)
    ck = run / "checkpoints" / "step-00000024"
    pos = json.loads((ck / "position.json").read_text())
    (ck / "position.json").write_text(json.dumps({**pos, "batch_size": 0}))  # as before it was recorded
    write_manifest(ck)
    split = json.loads((prepared / "meta.json").read_text())["splits"]["train"]
    out = run_ranks(train_args(spec, prepared, tmp_path, ["train.batch_size=200", "train.epochs=2",
                                                          "train.eval_at_end=false", "train.warn_below_clicks=1000000",
                                                          "train.dense_optimizer.lr=2e-4"])
                    + ["--resume"], nproc=2, check=False, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    last = json.loads((run / "checkpoints" / "step-00000036" / "position.json").read_text())
    assert (last["epoch"], last["batch_in_epoch"]) == (2, 0), last
    assert f"this run trains on {2 * split['positives']:,} clicks" in out.stderr, out.stderr[-3000:]


@pytest.mark.parametrize("end", ["max_steps", "epochs"])
def test_an_evaluation_only_resume_keeps_the_runs_ranks(prepared, tmp_path, end):
    """A run trained to its end on 1 rank, `--resume`d on 2 ranks (nothing left to train: evaluated
    again). Its record said 2 ranks afterwards, and `compare` then took a real 2-rank run of the same
    seed for a copy of it; at 3 steps the resume was even refused, as if 2 ranks had to continue the
    epoch. The run keeps its record; the evaluation's ranks are noted apart."""
    spec, run = "specs/demo/din.yaml", tmp_path / "din"
    # Ended by train.max_steps (3 steps of 1 rank: 2 cannot continue that epoch evenly) or by the
    # spec's one epoch (at batch 500: 9 steps), the usual end.
    common = ["train.check_floors=false", *(["train.max_steps=3"] if end == "max_steps" else ["train.batch_size=500"])]
    run_ranks(train_args(spec, prepared, tmp_path, common), nproc=1)
    record = (run / "run.json").read_text()
    first = metrics(run)
    assert (first["world_size"], first["eval_world_size"]) == (1, 1)
    out = run_ranks(train_args(spec, prepared, tmp_path, common) + ["--resume"], nproc=2, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "evaluating its checkpoint only" in out.stderr
    again = metrics(run)
    assert (again["world_size"], again["eval_world_size"]) == (1, 2) and again["steps"] == first["steps"]
    assert again["eval_split"] == "test"
    assert again["gauc"] == first["gauc"]  # exact metrics: the same at any evaluation world size
    assert (run / "run.json").read_text() == record


def test_a_resume_of_nothing_says_it_starts_a_new_run(prepared, tmp_path):
    """`--resume` into a directory with no run (a mistyped output_dir or name) trained from scratch
    with only an INFO line. It still starts (a torchrun restart before the first checkpoint needs
    that), but says so as a warning naming the directory."""
    out = run_ranks(train_args("specs/demo/din.yaml", prepared, tmp_path, ["train.max_steps=1", "train.eval_at_end=false"])
                    + ["--resume"], nproc=1, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    warned = [ln for ln in out.stderr.splitlines() if "] WARNING: --resume:" in ln and "holds no run" in ln]
    assert warned and str(tmp_path / "din") in warned[0] and "check output_dir and name" in warned[0], out.stderr[-3000:]


def _step_dir(root, step: int, run_id: str = "r", position: bool = True):
    """A checkpoint directory as `save_checkpoint` leaves it (as far as `latest_checkpoint` looks):
    position.json listed in SHA256SUMS.json; ``position=False`` = it was lost since."""
    d = root / f"step-{step:08d}"
    d.mkdir(parents=True)
    (d / "position.json").write_text(json.dumps({"step": step, "run_id": run_id}))
    (d / "SHA256SUMS.json").write_text(json.dumps({"format": "muse_rec.sha256/1",
                                                   "files": {"position.json": "0" * 64}, "digest": "0" * 64}))
    if not position:
        (d / "position.json").unlink()
    return d


@pytest.mark.parametrize("run_id", [None, "r"])
def test_the_newest_checkpoint_without_position_json_is_refused_not_passed_over(tmp_path, run_id):
    """A step directory gets its final name only once whole (it is written as .tmp), so the newest one
    without position.json is damage: `evaluate`, `train --resume`, `export` and `rank` silently used the
    older checkpoint. Now a CheckpointError (exit 2) naming the file and how to go on."""
    from muse_rec.training.checkpoint_latest import latest_checkpoint
    from muse_rec.training.checkpoint_position import CheckpointError

    root = tmp_path / "checkpoints"
    _step_dir(root, 2)
    damaged = _step_dir(root, 4, position=False)
    (root / "step-00000006.tmp").mkdir()  # a save in progress: never looked at
    with pytest.raises(CheckpointError) as e:
        latest_checkpoint(str(root), run_id=run_id)
    assert str(e.value).startswith(f"{damaged / 'position.json'}: missing, so the checkpoint is damaged")
    assert f"remove {damaged} to fall back to the previous checkpoint" in str(e.value)


@pytest.mark.parametrize("run_id", [None, "r"])
def test_staging_and_older_damaged_step_directories_do_not_stop_the_newest(tmp_path, run_id):
    """.tmp directories (saves in progress or killed), other names, and a damaged (or being pruned)
    directory older than the newest checkpoint are not in the way; steps order by number."""
    from muse_rec.training.checkpoint_latest import latest_checkpoint

    root = tmp_path / "checkpoints"
    _step_dir(root, 3, position=False)
    _step_dir(root, 9)
    newest = _step_dir(root, 10)
    for name in ("step-00000011.tmp", "step-12", "step-000000013"):
        (root / name).mkdir()
    (root / "step-00000014").write_text("a file, not a checkpoint directory")
    assert latest_checkpoint(str(root), run_id=run_id) == newest
    assert latest_checkpoint(str(tmp_path / "nothing")) is None


def test_a_checkpoint_pruned_while_it_is_looked_up_is_not_called_damaged(tmp_path, monkeypatch):
    """With one checkpoint kept, a save that finishes during the look-up renames step 6 in and deletes
    step 4 (position.json may go first): the look-up lists again and takes step 6."""
    from muse_rec.training import checkpoint_latest

    root = tmp_path / "checkpoints"
    newest = _step_dir(root, 6)
    listings = [[(4, root / "step-00000004")]]  # what was listed before the save finished
    real = checkpoint_latest.step_dirs
    monkeypatch.setattr(checkpoint_latest, "step_dirs", lambda r: listings.pop() if listings else real(r))
    assert checkpoint_latest.latest_checkpoint(str(root)) == newest


def test_pruning_keeps_a_damaged_step_directory_and_resumes_from_the_newest(tmp_path):
    """A damaged directory (no position.json: whose run it is cannot be told) is never pruned; once a
    newer checkpoint exists it is passed over (it is not the newest)."""
    from muse_rec.training.checkpoint import save_checkpoint
    from muse_rec.training.checkpoint_latest import latest_checkpoint
    from muse_rec.training.checkpoint_position import Position

    root = tmp_path / "checkpoints"
    model = torch.nn.Linear(2, 1)
    for step in (1, 2):
        save_checkpoint(str(root), model, None, Position(step=step, run_id="r"))
    damaged = _step_dir(root, 3, position=False)
    (root / "step-00000004.tmp").mkdir()  # left by a killed save of step 4
    save_checkpoint(str(root), model, None, Position(step=4, run_id="r"))
    assert sorted(p.name for p in root.iterdir()) == ["step-00000002", "step-00000003", "step-00000004"]
    assert damaged.is_dir()
    assert latest_checkpoint(str(root)) == latest_checkpoint(str(root), run_id="r") == root / "step-00000004"


def test_a_save_killed_while_deleting_the_step_it_replaces_leaves_a_whole_checkpoint(tmp_path, monkeypatch):
    """Saving a step saved before (a resume) deleted the old step directory in place, then renamed the
    new one in: a kill during the delete left the step half-deleted, the newest checkpoint refused as
    damaged. The old directory is now renamed aside first and deleted after the new one is in place."""
    from muse_rec.training import checkpoint
    from muse_rec.training.checkpoint import save_checkpoint
    from muse_rec.training.checkpoint_latest import latest_checkpoint
    from muse_rec.training.checkpoint_position import Position

    root = tmp_path / "checkpoints"
    model = torch.nn.Linear(2, 1)
    save_checkpoint(str(root), model, None, Position(step=2, run_id="r"))
    real_rmtree = checkpoint.shutil.rmtree

    def killed_half_way(path, *args, **kwargs):  # the first file goes, then the process is killed
        if (Path(path) / "position.json").exists():
            (Path(path) / "position.json").unlink()
            raise KeyboardInterrupt
        real_rmtree(path, *args, **kwargs)

    with torch.no_grad():
        model.weight.fill_(0.5)
    monkeypatch.setattr(checkpoint.shutil, "rmtree", killed_half_way)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(str(root), model, None, Position(step=2, run_id="r"))
    monkeypatch.setattr(checkpoint.shutil, "rmtree", real_rmtree)
    newest = latest_checkpoint(str(root), run_id="r")
    assert newest == root / "step-00000002" and (newest / "position.json").exists()
    save_checkpoint(str(root), model, None, Position(step=3, run_id="r"))  # the next save clears what was left
    assert sorted(p.name for p in root.iterdir()) == ["step-00000002", "step-00000003"]


def test_damage_that_only_one_rank_reads_ends_every_rank_in_one_line(prepared, tmp_path):
    """A label that only rank 1's first batch reads: rank 1 exits 2 naming the file, and rank 0, whose
    collective then failed (gloo: "Connection closed by peer"), printed a traceback through TorchRec's
    pipeline before torchrun stopped it. Now it says in one line that another rank ended."""
    damaged = tmp_path / "prepared"
    shutil.copytree(prepared, damaged)
    labels = np.load(damaged / "train" / "labels.npy", mmap_mode="r+")
    labels[64 + 6] = 7  # sample 70: global batch 1 at batch size 64, the first one of rank 1 on 2 ranks
    labels.flush()
    del labels
    out = run_ranks(train_args("specs/demo/din.yaml", damaged, tmp_path), nproc=2, check=False, timeout=300)
    assert out.returncode == 1, out.stderr[-3000:]  # torchrun's code for a failed worker (docs/launch.md)
    assert f"muse-rec train: {damaged}/train/labels.npy: label 7 is outside [0, 2)" in out.stderr
    # torch prefixes a rank's uncaught exception with "[rank0]:"; torchrun's own report follows it.
    assert not [line for line in out.stderr.splitlines() if line.startswith("[rank0]:")], out.stderr[-4000:]


def test_a_damaged_file_that_only_rank_1_loads_refuses_the_resume_on_every_rank(prepared, tmp_path):
    """Each rank reads only its own rng-<rank>.pt of a checkpoint. A damaged rng-1.pt (its manifest
    rewritten to match: the file as saved, not a flipped bit) raised on rank 1 alone; rank 0 went on,
    rewrote the run record with the resume's settings (run.json's total_steps) and trained into a
    collective rank 1 never joined. Now every rank refuses, naming the file, before anything is written."""
    from muse_rec.integrity import write_manifest

    spec, run = "specs/demo/din.yaml", tmp_path / "din"
    first = train_args(spec, prepared, tmp_path, ["train.max_steps=2", "train.eval_at_end=false"])
    run_ranks(first, nproc=2)
    ck = run / "checkpoints" / "step-00000002"
    (ck / "rng-1.pt").write_bytes(b"not a tensor")
    write_manifest(ck)
    before = {f: (run / f).read_text() for f in ("spec.yaml", "run.json")}
    out = run_ranks(train_args(spec, prepared, tmp_path, ["train.max_steps=4", "train.eval_at_end=false"])
                    + ["--resume"], nproc=2, check=False, timeout=300)
    assert out.returncode != 0, out.stderr[-3000:]
    line = f"muse-rec train: {ck}/rng-1.pt: not a torch RNG state"
    assert out.stderr.count(line) == 2, out.stderr[-3000:]  # rank 1's own, and rank 0's (the same line)
    assert {f: (run / f).read_text() for f in before} == before
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000002"]


def test_a_restart_of_a_refused_fresh_run_does_not_continue_the_earlier_run(prepared, tmp_path):
    """A fresh run into a directory holding an earlier run is refused (exit 2). Under torchrun's
    --max-restarts (the cluster profiles' max_restarts, whose schedulers `muse-rec launch` cannot check
    the directory for) the restarted attempt resumes, and it resumed the earlier run: trained it on, wrote
    its checkpoints and metrics, exit 0. A restart now resumes only a run its own job started."""
    spec, run = "specs/demo/din.yaml", tmp_path / "din"
    args = train_args(spec, prepared, tmp_path, ["train.max_steps=2", "train.eval_at_end=false"])
    run_ranks(args, nproc=1)
    before = {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file() and p.name != ".lock"}
    out = run_ranks(train_args(spec, prepared, tmp_path, ["train.max_steps=4", "train.eval_at_end=false"]),
                    nproc=2, check=False, timeout=300, torchrun_args=["--max-restarts", "1"])
    assert out.returncode != 0, out.stderr[-3000:]
    assert f"muse-rec train: {run}: already holds a run" in out.stderr
    assert "restart 1 of the job" in out.stderr  # the restart ran, and was refused too
    after = {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file() and p.name != ".lock"}
    assert after == before


def test_a_slurm_requeue_of_a_run_continues_it(prepared, tmp_path):
    """TorchX's Slurm script requeues a failed job up to the profile's max_retries. The requeued job's torchrun
    starts again at restart 0 (SLURM_RESTART_COUNT=1 tells the requeue), and the trainer refused it as a fresh
    run into a used directory, exit 2: a retry could never continue the run. Now it resumes from the run's
    latest checkpoint, as a torchrun restart does (the same job: a requeue keeps the Slurm job id, which
    TorchX makes the rendezvous id)."""
    from muse_rec.training.train_loop import KILL_ENV

    run = tmp_path / "din"
    args = train_args("specs/demo/din.yaml", prepared, tmp_path,
                      ["train.max_steps=4", "train.checkpoint_every=2", "train.eval_at_end=false"])
    job = ["--rdzv-id", "slurm-job-42"]
    first = run_ranks(args, nproc=2, check=False, timeout=300, torchrun_args=job, env_extra={KILL_ENV: "1:3"})
    assert first.returncode != 0, first.stderr[-3000:]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000002"], first.stderr[-3000:]
    again = run_ranks(args, nproc=2, check=False, timeout=300, torchrun_args=job,
                      env_extra={KILL_ENV: "1:3", "SLURM_RESTART_COUNT": "1"})
    assert again.returncode == 0, again.stderr[-3000:]
    assert "retry 1 of the job (its scheduler's requeue" in again.stderr, again.stderr[-3000:]
    assert (run / "checkpoints" / "step-00000004").is_dir()
    assert json.loads((run / "checkpoints" / "step-00000004" / "position.json").read_text())["step"] == 4


@pytest.mark.parametrize("variables, words", [
    ({"RANK": "x"}, "environment variable RANK='x' is not an integer"),
    ({"SLURM_RESTART_COUNT": "-1"}, "environment variable SLURM_RESTART_COUNT=-1 is negative"),
    ({"RANK": "5", "WORLD_SIZE": "2"}, "environment has RANK=5, WORLD_SIZE=2: need 0 <= RANK < WORLD_SIZE"),
    ({"WORLD_SIZE": "2", "RANK": "0"}, "WORLD_SIZE=2 but MASTER_ADDR/MASTER_PORT are not set"),
    # Read with int() where a restart resumes: a ValueError traceback.
    ({"TORCHELASTIC_RESTART_COUNT": "x"}, "environment variable TORCHELASTIC_RESTART_COUNT='x' is not an integer"),
    ({"TORCHELASTIC_RESTART_COUNT": "-1"}, "environment variable TORCHELASTIC_RESTART_COUNT=-1 is negative"),
])
def test_a_bad_rank_environment_is_one_line(prepared, tmp_path, variables, words):
    """The launcher's variables (RANK, WORLD_SIZE, ...: a hand-written job script, a scheduler's
    template) set wrong were a traceback through DistEnv, exit 1; now the line naming the variable, exit 2."""
    out = run_ranks(train_args("specs/demo/din.yaml", prepared, tmp_path), nproc=1, check=False, timeout=120,
                    env_extra=variables)
    assert out.returncode == 2 and out.stderr.strip().splitlines()[-1].startswith(f"muse-rec train: {words}"), \
        out.stderr[-3000:]
    assert "Traceback" not in out.stderr and not (tmp_path / "din").exists()


def test_a_run_directory_given_as_checkpoint_names_the_checkpoint_to_pass(prepared, tmp_path):
    """`--checkpoint RUN` (or `RUN/checkpoints`) where one checkpoint is asked for was refused as
    "no complete checkpoint at RUN" by `evaluate`, `export` and `rank`, though the run holds several
    (export and rank added "train first, or pass --checkpoint DIR", which the user just did). Now one
    line, exit 2, saying what the path is and naming the newest step directory to pass instead."""
    sets = train_args("specs/demo/din.yaml", prepared, tmp_path / "runs",
                      ["train.max_steps=2", "train.checkpoint_every=1", "train.eval_at_end=false"])[3:]
    run_ranks(["train", "--spec", "specs/demo/din.yaml", *sets], nproc=1)
    run = tmp_path / "runs" / "din"
    newest = run / "checkpoints" / "step-00000002"
    assert (newest / "position.json").is_file()
    request = tmp_path / "req.json"
    request.write_text('{"user": 1, "candidates": [1]}')
    calls = {"evaluate": ["--out", str(tmp_path / "eval")], "export": ["--out", str(tmp_path / "exported")],
             "rank": ["--request", str(request)]}
    for (command, extra), named, what in zip(calls.items(), (run, run / "checkpoints", run),
                                             ("a run directory", "a run's checkpoints directory", "a run directory")):
        out = run_ranks([command, "--spec", "specs/demo/din.yaml", *sets, "--checkpoint", str(named), *extra], 1,
                        check=False)
        assert out.returncode == 2 and "Traceback" not in out.stderr, (command, out.stderr[-3000:])
        assert out.stderr.strip().splitlines() == [
            f"muse-rec {command}: --checkpoint {named}: {what}, not one checkpoint; pass one of its step "
            f"directories, e.g. the newest: --checkpoint {newest}"], (command, out.stderr[-3000:])
    assert not (tmp_path / "eval").exists() and not (tmp_path / "exported").exists()


def test_a_checkpoint_of_other_vocabularies_is_refused_naming_its_runs_spec(prepared, tmp_path):
    """A checkpoint scored with a spec whose data.prepared has other vocabularies (the published spec
    without the run's `--set data.prepared=...`) was refused by `evaluate` with "re-prepare the same data
    or start a new run directory", and by `export` and `rank` with "use the same data or pass
    --allow-data-mismatch", which then failed as "does not fit this model: ValueError: Size mismatch".
    Now each names the run's spec.yaml and says --allow-data-mismatch cannot help (one line, exit 2)."""
    from tests.conftest import subprocess_env, venv_bin

    other = tmp_path / "other"
    for cmd in (["synth", str(other / "raw"), "--preset", "tiny", "--users", "150", "--quiet", "--no-diagnostics"],
                ["prepare", str(other / "raw"), str(other / "prepared"), "--no-progress"]):
        assert subprocess.run([venv_bin("muse-rec"), *cmd], capture_output=True, env=subprocess_env()).returncode == 0
    sets = train_args("specs/demo/din.yaml", prepared, tmp_path / "runs", ["train.max_steps=2", "train.eval_at_end=false"])[3:]
    run_ranks(["train", "--spec", "specs/demo/din.yaml", *sets], nproc=1)
    run = tmp_path / "runs" / "din"
    request = tmp_path / "req.json"
    request.write_text('{"user": 1, "candidates": [1]}')
    calls = {"evaluate": ["--out", str(tmp_path / "eval")], "export": ["--out", str(tmp_path / "exported")],
             "rank": ["--request", str(request)]}
    for command, extra in calls.items():
        out = run_ranks([command, "--spec", "specs/demo/din.yaml", *sets, "--set", f"data.prepared={other / 'prepared'}",
                         "--allow-data-mismatch", *extra], 1, check=False)
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, (command, out.stderr[-3000:])
        assert f"{run / 'run.json'}: the checkpoint was trained on other vocabularies" in out.stderr, out.stderr
        assert (f"(--spec {run / 'spec.yaml'}); --allow-data-mismatch cannot load tables of other sizes"
                in out.stderr), (command, out.stderr)
    assert not (tmp_path / "eval").exists() and not (tmp_path / "exported").exists()

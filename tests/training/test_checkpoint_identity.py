"""Which model a checkpoint holds, and which checkpoint an evaluation scores.

- `evaluate`, `export` and `rank --checkpoint` refuse a spec whose model is not the checkpoint's,
  also where every tensor has the same shape (loading alone would accept it and score MUSE's weights
  as "SIM-hard", or at another top-k);
- `compare` counts one trained model once (a run and its evaluations), and refuses partial
  evaluations and scores of different splits in one table;
- an evaluation of a run that is still training reads the run's newest checkpoint again when the
  one it chose is deleted (pruned) while it is read.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import List

import pytest
import yaml

from muse_rec.integrity import write_manifest
from muse_rec.spec import load_spec
from tests.conftest import REPO
from tests.training.conftest import metrics, overrides, run_ranks, train_args

MUSE = "specs/methods/muse.yaml"


def _sets(prepared: Path, out: Path, extra: List[str] = ()) -> List[str]:
    args: List[str] = []
    for ov in overrides(prepared, out, ["name=muse", *extra]):
        args += ["--set", ov]
    return args


@pytest.fixture(scope="module")
def runs(prepared, tmp_path_factory) -> Path:
    """Two seeds of MUSE: ``runs/seed0``, ``runs/seed1`` (each keeps its newest two checkpoints)."""
    root = tmp_path_factory.mktemp("identity")
    for seed in (0, 1):
        run_ranks(train_args(MUSE, prepared, root, [f"name=seed{seed}", f"train.seed={seed}", "train.checkpoint_every=30",
                                                    "train.check_floors=false"]), 1)
    return root


def _one_line_refusal(out, *needles: str) -> None:
    assert out.returncode == 2, (out.stdout[-1500:], out.stderr[-1500:])
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    for n in needles:
        assert n in out.stderr, (n, out.stderr)


def test_another_model_is_refused_by_key_even_where_its_tensors_fit(runs, prepared, tmp_path):
    run = runs / "seed0"
    ck = sorted((run / "checkpoints").glob("step-*"))[-1]
    sets = ["--set", f"data.prepared={prepared}", "--set", "data.seq_len=100", "--set", "model.tower_hidden=[64,32]",
            "--set", "train.eval_batch_size=256"]
    # SIM-hard's tensors are MUSE's: before, this scored MUSE's weights as "SIM-hard" with exit 0.
    out = run_ranks(["evaluate", "--spec", "specs/methods/sim_hard.yaml", *sets, "--checkpoint", str(ck),
                     "--out", str(tmp_path / "simhard")], 1, check=False)
    _one_line_refusal(out, "model.method: 'MUSE' -> 'SIM-hard'", f"--spec {run / 'spec.yaml'}")
    assert not (tmp_path / "simhard").exists()
    for cmd in (["evaluate", "--out", str(tmp_path / "k20")], ["export", "--out", str(tmp_path / "x20")]):
        out = run_ranks([cmd[0], "--spec", str(run / "spec.yaml"), "--set", "model.gsu.top_k=20", *cmd[1:]], 1,
                        check=False)
        _one_line_refusal(out, "model.gsu.top_k: 50 -> 20")
    request = tmp_path / "req.json"
    request.write_text(json.dumps({"user": 1, "candidates": [1, 2, 3]}))
    out = run_ranks(["rank", "--spec", str(run / "spec.yaml"), "--set", "model.gsu.top_k=20", "--checkpoint", str(ck),
                     "--request", str(request)], 1, check=False)
    _one_line_refusal(out, "model.gsu.top_k: 50 -> 20")

    # Keys that only set the init do not make another model: the same scores.
    same = run_ranks(["evaluate", "--spec", str(run / "spec.yaml"), "--set", "model.parametrization.simtier_init=uniform",
                      "--set", "model.init_std=0.01", "--out", str(tmp_path / "init")], 1)
    assert metrics(tmp_path / "init")["gauc"] == metrics(run)["gauc"], same.stderr[-500:]

    # A checkpoint copied out of its run still knows its model (model.json); an older one without it
    # is checked against its run's spec.yaml.
    copied = tmp_path / "copied" / ck.name
    shutil.copytree(ck, copied)
    out = run_ranks(["evaluate", "--spec", str(run / "spec.yaml"), "--set", "model.gsu.top_k=20", "--checkpoint",
                     str(copied), "--out", str(tmp_path / "c")], 1, check=False)
    _one_line_refusal(out, "model.gsu.top_k: 50 -> 20", "model.json")
    older = tmp_path / "older"
    shutil.copytree(run, older, ignore=shutil.ignore_patterns("*.lock"))
    older_ck = older / "checkpoints" / ck.name
    (older_ck / "model.json").unlink()
    write_manifest(older_ck)
    out = run_ranks(["evaluate", "--spec", str(older / "spec.yaml"), "--set", "model.gsu.top_k=20", "--checkpoint",
                     str(older_ck), "--out", str(tmp_path / "o")], 1, check=False)
    _one_line_refusal(out, "model.gsu.top_k: 50 -> 20", "spec.yaml")


def test_compare_counts_a_trained_model_once_and_one_split(runs, tmp_path):
    def evaluate(run: str, out: str, *extra: str) -> Path:
        run_ranks(["evaluate", "--spec", str(runs / run / "spec.yaml"), *extra, "--out", str(tmp_path / out)], 1)
        return tmp_path / out

    def compare(*paths: Path):
        return run_ranks(["compare", *map(str, paths), "--no-floors"], 1, check=False)

    a, b = evaluate("seed0", "a"), evaluate("seed0", "b")
    # The data each scored, so that compare refuses runs of other data sets in one table.
    fingerprint = json.loads((runs / "seed0" / "run.json").read_text())["data_fingerprint"]
    assert metrics(a)["data_fingerprint"] == metrics(runs / "seed0")["data_fingerprint"] == fingerprint
    # ... and its spec's data keys, from which compare computes the floors (an evaluation has no spec.yaml).
    data = yaml.safe_load((runs / "seed0" / "spec.yaml").read_text())["data"]
    assert metrics(a)["data"] == {k: data[k] for k in ("prepared", "train_split", "eval_split", "seq_len")}
    older = sorted((runs / "seed0" / "checkpoints").glob("step-*"))[0]
    older_step = evaluate("seed0", "older", "--checkpoint", str(older))
    for pair in ((a, b), (runs / "seed0", a), (a, older_step)):
        _one_line_refusal(compare(*pair), "scores the same trained model", str((runs / "seed0").resolve()))
    partial = evaluate("seed1", "partial", "--max-batches", "1")
    assert json.loads((partial / "metrics.json").read_text())["max_batches"] == 1
    _one_line_refusal(compare(runs / "seed0", partial), "scored different parts of the split",
                      "the first 1 batch(es) per rank", "the whole split")
    assert compare(partial).returncode == 0  # alone, or beside scores of the same part, it is shown
    on_train = evaluate("seed1", "on_train", "--set", "data.eval_split=train")
    _one_line_refusal(compare(runs / "seed0", on_train), "different splits", "test", "train")

    # An evaluation of the other seed is that seed's run: two seeds of one setting, one row.
    seed1 = evaluate("seed1", "seed1_eval")
    out = compare(runs / "seed0", seed1)
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if line.startswith("| MUSE"))
    assert [c.strip() for c in row.split("|")][2] == "2", out.stdout


def test_a_checkpoint_deleted_while_it_is_read_is_replaced_by_the_runs_newest(runs, tmp_path, monkeypatch):
    # A copy of seed0 as a run still training: while its newest checkpoint is read, a save lands (a newer
    # step) and prunes the one being read.
    import muse_rec.training.checkpoint_choice as choice
    from muse_rec.training.checkpoint_position import CheckpointError
    from muse_rec.training.run_record import RunError
    from muse_rec.training.trainer import evaluate_checkpoint

    run = tmp_path / "run"
    shutil.copytree(runs / "seed0", run, ignore=shutil.ignore_patterns("*.lock"))
    spec = load_spec(run / "spec.yaml", [f"output_dir={run}"])
    real_load, seen = choice.load_checkpoint, []

    def load_while_training(ck, *args, **kwargs):
        seen.append(Path(ck).name)
        if len(seen) == 1:
            step = int(Path(ck).name.split("-")[1])
            Path(ck).rename(Path(ck).parent / f"step-{step + 30:08d}")  # the save: newer step, the old one gone
            raise CheckpointError(f"{ck}: does not fit this model: FileNotFoundError: {ck}/__0_0.distcp")
        return real_load(ck, *args, **kwargs)

    monkeypatch.setattr(choice, "load_checkpoint", load_while_training)
    newest = sorted((run / "checkpoints").glob("step-*"))[-1]
    result = evaluate_checkpoint(spec, None, str(tmp_path / "ev"))
    moved = f"step-{int(newest.name.split('-')[1]) + 30:08d}"
    assert seen == [newest.name, moved]
    assert Path(result["checkpoint"]).name == moved and result["gauc"] == metrics(runs / "seed0")["gauc"]

    # A checkpoint the user named is not swapped for another: one line saying what happened.
    seen.clear()
    named = sorted((run / "checkpoints").glob("step-*"))[-1]
    with pytest.raises(RunError, match="deleted while it was read"):
        evaluate_checkpoint(spec, str(named), str(tmp_path / "ev2"))
    # Damage that is not a deletion is not retried.
    seen.clear()

    def damaged(ck, *args, **kwargs):
        seen.append(Path(ck).name)
        raise CheckpointError(f"{ck}: damaged")

    monkeypatch.setattr(choice, "load_checkpoint", damaged)
    with pytest.raises(CheckpointError, match="damaged"):
        evaluate_checkpoint(spec, None, str(tmp_path / "ev3"))
    assert len(seen) == 1


def test_a_runs_spec_yaml_names_its_run_and_data_from_any_directory(prepared, tmp_path):
    # Trained with paths relative to where it ran: its spec.yaml kept them so, and `--spec RUN/spec.yaml`
    # (what the refusals above suggest) found no prepared data from anywhere else.
    import os
    import subprocess

    from tests.conftest import subprocess_env, venv_bin

    work = tmp_path / "work"
    work.mkdir()
    sets = ["--set", f"data.prepared={os.path.relpath(prepared, work)}", "--set", "output_dir=runs/{name}",
            "--set", "name=rel", "--set", "train.max_steps=2", "--set", "train.check_floors=false"]
    for ov in ["data.seq_len=100", "train.batch_size=64", "train.eval_batch_size=256", "model.tower_hidden=[64,32]"]:
        sets += ["--set", ov]
    out = subprocess.run([venv_bin("muse-rec"), "train", "--spec", str(REPO / MUSE), *sets], cwd=work,
                         capture_output=True, text=True, env=subprocess_env(), timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    run = work / "runs" / "rel"
    record = load_spec(run / "spec.yaml")
    assert record.data.prepared == str(prepared.resolve()) and record.run_dir == str(run.resolve())
    out = subprocess.run([venv_bin("muse-rec"), "evaluate", "--spec", str(run / "spec.yaml"), "--out",
                          str(tmp_path / "ev")], cwd=tmp_path, capture_output=True, text=True, env=subprocess_env(),
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert metrics(tmp_path / "ev")["gauc"] == metrics(run)["gauc"]


def test_a_copied_runs_spec_yaml_does_not_train_into_the_original(runs, tmp_path):
    # spec.yaml names its run by absolute path: `--spec COPY/spec.yaml --resume` resumed (and re-evaluated,
    # rewriting its metrics.json) the original run, not the copy.
    copy = tmp_path / "copy"
    shutil.copytree(runs / "seed1", copy, ignore=shutil.ignore_patterns("*.lock"))
    original = {p: p.read_bytes() for p in (runs / "seed1").rglob("*") if p.is_file() and p.name != ".lock"}
    out = run_ranks(["train", "--spec", str(copy / "spec.yaml"), "--resume"], 1, check=False)
    _one_line_refusal(out, f"{copy / 'spec.yaml'}: the spec.yaml of the run in {copy}",
                      f"output_dir is {(runs / 'seed1').resolve()}", f"--set output_dir={copy}")
    assert {p: p.read_bytes() for p in (runs / "seed1").rglob("*") if p.is_file() and p.name != ".lock"} == original
    out = run_ranks(["train", "--spec", str(copy / "spec.yaml"), "--resume", "--set", f"output_dir={copy}"], 1)
    assert metrics(copy)["gauc"] == metrics(runs / "seed1")["gauc"]


def test_a_runs_spec_yaml_with_another_output_dir_trains_a_new_run_there(runs, tmp_path):
    # The refusal above says "(or another output_dir for a new run)": a run's spec.yaml with --set output_dir=NEW
    # (another seed of the same settings) was refused with that very advice, whatever output_dir was set.
    original = {p: p.read_bytes() for p in (runs / "seed0").rglob("*") if p.is_file() and p.name != ".lock"}
    new = tmp_path / "seed2"
    run_ranks(["train", "--spec", str(runs / "seed0" / "spec.yaml"), "--set", f"output_dir={new}",
               "--set", "train.seed=2", "--set", "train.max_steps=2"], 1)
    assert metrics(new)["steps"] == 2
    assert load_spec(new / "spec.yaml").train.seed == 2
    assert {p: p.read_bytes() for p in (runs / "seed0").rglob("*") if p.is_file() and p.name != ".lock"} == original

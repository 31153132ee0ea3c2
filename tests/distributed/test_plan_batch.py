"""The batch a sharding plan is sized for: the run's largest batch per rank, not TorchRec's 512.

TorchRec's planner sizes each shard's lookup input and output buffers, and its reservation for
input batches, with a per-rank batch size; given none it takes 512. A MUSE sample looks up
1 + L SCL rows, so at L = 300,000 a 512-sample batch's buffers (~40 GiB) refused a run of batch 8
on a 23.5 GiB rank that holds ~0.6 GiB of them.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from muse_rec.cli import main
from muse_rec.spec import load_spec

REPO = Path(__file__).resolve().parents[2]
DEMO = "specs/demo/muse.yaml"
# The demo release's table sizes (rows incl. row 0), as `muse-rec prepare` records them in meta.json.
DEMO_SIZES = {"category": 301, "item": 29683, "item_f213": 4543, "item_f214": 13, "user_f1": 9, "user_f2": 4,
              "user_f3": 41, "user_f4": 91, "user_f5": 9, "user_id": 4501}

warnings.filterwarnings("ignore", category=FutureWarning)


def _plan(tmp_path: Path, capsys, monkeypatch, *args: str):
    """`muse-rec plan --spec DEMO --prepared <demo sizes> --device cpu --world-size 1 ARGS --json`: (exit, JSON, stdout)."""
    prepared = tmp_path / "prepared"
    prepared.mkdir(exist_ok=True)
    (prepared / "meta.json").write_text(json.dumps({"vocab_sizes": DEMO_SIZES}))
    out = tmp_path / "plan.json"
    monkeypatch.chdir(REPO)
    code = main(["plan", "--spec", DEMO, "--prepared", str(prepared), "--device", "cpu", "--world-size", "1",
                 "--json", str(out), *args])
    text = capsys.readouterr()
    return code, json.loads(out.read_text()), text.out + text.err


def _sets(*overrides: str):
    return [a for o in overrides for a in ("--set", o)]


def test_a_small_batch_at_a_long_history_is_not_refused_for_buffers_it_never_holds(tmp_path, capsys, monkeypatch):
    # `muse-rec train --set data.seq_len=300000 --set train.batch_size=8` on this box's 23.54 GiB: before,
    # "no sharding plan fits ... DDR 23.54 GiB" (exit 1 here): buffers of 512 samples x 300,001 SCL rows of
    # 128 fp16 (39 GiB) for a batch of 8 (0.6 GiB).
    code, doc, text = _plan(tmp_path, capsys, monkeypatch, "--ddr-gib", "23.54",
                            *_sets("data.seq_len=300000", "train.batch_size=8", "train.eval_batch_size=8"))
    assert code == 0, text
    rank = doc["plan"]["ranks"][0]
    # The SCL lookup's output alone, 8 x 300,001 x 128 fp16, is what the buffers must at least hold; the rest
    # (ids, the other lookups) is under 10% of it.
    scl_out = 8 * 300_001 * 128 * 2
    assert scl_out <= rank["buffer_bytes"] < 1.1 * scl_out


def test_the_lookup_buffers_follow_the_batch(tmp_path, capsys, monkeypatch):
    # Every buffer TorchRec counts is ids or lookups of one batch: linear in it. Before, the same at any batch.
    buffers = {}
    for batch in (8, 64):
        code, doc, text = _plan(tmp_path, capsys, monkeypatch,
                                *_sets(f"train.batch_size={batch}", "train.eval_at_end=false"))
        assert code == 0, text
        assert doc["plan"]["batch_size_per_rank"] == batch and doc["setup"]["batch_size_per_rank"] == batch
        buffers[batch] = doc["plan"]["ranks"][0]["buffer_bytes"]
    # TorchRec rounds each shard's buffer up to a byte: 11 tables, input and output each.
    assert abs(buffers[64] - 8 * buffers[8]) <= 8 * 2 * 11


@pytest.mark.parametrize("overrides, batch, source", [
    (("train.batch_size=256", "train.eval_batch_size=1000"), 1000,
     "the larger of train.batch_size 256 and train.eval_batch_size 1000"),
    (("train.batch_size=256", "train.eval_batch_size=1000", "train.eval_at_end=false"), 256,
     "train.batch_size 256; the run does not evaluate"),
    (("train.batch_size=2000", "train.eval_batch_size=1000"), 2000,
     "the larger of train.batch_size 2000 and train.eval_batch_size 1000"),
])
def test_the_plan_says_the_batch_it_is_sized_for(tmp_path, capsys, monkeypatch, overrides, batch, source):
    code, doc, text = _plan(tmp_path, capsys, monkeypatch, *_sets(*overrides))
    assert code == 0, text
    assert doc["plan"]["batch_size_per_rank"] == batch
    assert f"batch {batch:,} samples per rank ({source}" in text
    assert f"buffers sized for a batch of {batch:,} samples per rank" in text


def test_planned_batch_size_is_the_largest_batch_the_process_holds():
    from muse_rec.distributed.rank_memory import planned_batch_size

    spec = load_spec(REPO / DEMO, ["train.batch_size=256", "train.eval_batch_size=1000"])
    assert planned_batch_size(spec) == 1000  # the run evaluates at the end with the larger batch
    assert planned_batch_size(spec, evaluation_only=True) == 1000
    spec = load_spec(REPO / DEMO, ["train.batch_size=256", "train.eval_batch_size=1000", "train.eval_at_end=false"])
    assert planned_batch_size(spec) == 256
    spec = load_spec(REPO / DEMO, ["train.batch_size=4000", "train.eval_batch_size=1000"])
    assert planned_batch_size(spec) == 4000 and planned_batch_size(spec, evaluation_only=True) == 1000

"""Multi-process training: TorchX end to end, crash + resume, world-size invariance."""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Dict

import pandas as pd
import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from muse_rec.dirlock import DirLock
from muse_rec.distributed.env import free_port
from muse_rec.metrics import read_predictions
from tests.conftest import REPO, subprocess_env, venv_bin
from tests.training.conftest import metrics, overrides, run_ranks, train_args

pytestmark = pytest.mark.multiprocess


@pytest.mark.torchx
def test_torchx_two_ranks_end_to_end(prepared, tmp_path):
    sets = ",".join(overrides(prepared, tmp_path, ["train.max_steps=6"]))
    out = subprocess.run(
        [venv_bin("torchx"), "run", "-s", "local_cwd", "components/train.py:train", "--profile", "cpu-demo",
         "--spec", "specs/demo/muse.yaml", "--set", sets, "--rdzv_port", str(free_port())],
        capture_output=True, text=True, cwd=REPO, env=subprocess_env(), timeout=600,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    assert "SUCCEEDED" in out.stderr + out.stdout
    run = tmp_path / "muse"
    m = metrics(run)
    assert m["world_size"] == 2 and m["steps"] == 6 and m["method"] == "MUSE"
    assert 0.0 < m["gauc"] < 1.0 and 0.0 < m["auc"] < 1.0 and m["logloss"] > 0
    assert m["train_samples_per_s"] > 0
    assert {"by_seq_length", "by_popularity"} <= set(m)
    preds = read_predictions(run / "predictions.parquet")
    assert len(preds) == m["samples"]  # every real test sample once, padding rows dropped
    assert preds[["user_key", "item_key", "label", "score"]].notna().all().all()
    assert list((run / "tensorboard").iterdir()), "no TensorBoard events written"
    ckpts = sorted((run / "checkpoints").iterdir())
    assert ckpts and ckpts[-1].name == "step-00000006"


def checkpoint_tensors(step_dir: Path, scratch: Path) -> Dict[str, torch.Tensor]:
    """Every tensor of a DCP checkpoint directory (weights and optimizer state), by dotted key."""
    dcp_to_torch_save(str(step_dir), str(scratch))
    found: Dict[str, torch.Tensor] = {}

    def walk(node: object, key: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif torch.is_tensor(node):
            found[key] = node

    walk(torch.load(scratch, weights_only=False), "")
    return found


# 3 ranks: DDP's gradient buckets are laid out anew after a process's first step, and a sum over 3 ranks
# depends on an element's place in its bucket; a resume was exact only to fp32 rounding (grad_sync.py).
@pytest.mark.parametrize("world", [2, 3])
def test_resume_after_crash_matches_uninterrupted_run(prepared, tmp_path, world):
    spec = "specs/demo/muse.yaml"
    common = ["train.max_steps=10", "train.checkpoint_every=4", "train.seed=3"]
    full = tmp_path / "full"
    run_ranks(train_args(spec, prepared, full, common), nproc=world)

    broken = tmp_path / "broken"
    crashed = run_ranks(train_args(spec, prepared, broken, common), nproc=world,
                        env_extra={"MUSE_REC_CRASH_AFTER_STEP": "6"}, check=False)
    assert crashed.returncode != 0, "the injected crash did not happen"
    assert not (broken / "muse" / "metrics.json").exists()
    ckpts = sorted(p.name for p in (broken / "muse" / "checkpoints").iterdir())
    assert ckpts == ["step-00000004"], ckpts  # step 6 was never saved: resume must replay 5-6

    run_ranks(train_args(spec, prepared, broken, common) + ["--resume"], nproc=world)
    a, b = metrics(full / "muse"), metrics(broken / "muse")
    assert b["steps"] == a["steps"] == 10
    # CPU, fixed seed, same data order, optimizer state restored: bit-identical predictions.
    pa = read_predictions(full / "muse" / "predictions.parquet").sort_values(["user_key", "item_key"]).reset_index(drop=True)
    pb = read_predictions(broken / "muse" / "predictions.parquet").sort_values(["user_key", "item_key"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(pa, pb, check_exact=True)
    for k in ("gauc", "auc", "logloss"):
        assert a[k] == b[k], (k, a[k], b[k])
    ta, tb = (checkpoint_tensors(run / "muse" / "checkpoints" / "step-00000010", tmp_path / f"{run.name}.pt")
              for run in (full, broken))
    assert ta.keys() == tb.keys()
    differ = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not differ, f"{len(differ)} of {len(ta)} tensors differ, e.g. {differ[:3]}"


def test_checkpoint_metrics_identical_at_one_and_two_ranks(prepared, tmp_path):
    spec = "specs/demo/sim_hard.yaml"
    run_ranks(train_args(spec, prepared, tmp_path, ["train.max_steps=4", "train.eval_at_end=false"]), nproc=2)
    sets = []
    for ov in overrides(prepared, tmp_path):
        sets += ["--set", ov]
    ev1, ev2 = tmp_path / "eval1", tmp_path / "eval2"
    one = run_ranks(["evaluate", "--spec", spec, *sets, "--out", str(ev1)], nproc=1)  # 2-rank checkpoint on 1 rank
    two = run_ranks(["evaluate", "--spec", spec, *sets, "--out", str(ev2)], nproc=2)
    # In a log (no terminal) rank 0 reports every train.log_every (2) batches, not only at the end.
    for out, batches in ((one, 7), (two, 4)):
        lines = [ln for ln in out.stderr.splitlines() if "eval test: batch " in ln]
        assert [ln.split("eval test: batch ")[1].split(" ")[0] for ln in lines] == \
            [f"{b}/{batches}" for b in range(2, batches, 2)], out.stderr[-3000:]
        assert all("samples/s on this rank | ETA " in ln for ln in lines)
    m1, m2 = metrics(ev1), metrics(ev2)
    assert (m1["world_size"], m2["world_size"]) == (1, 2)
    assert m1["samples"] == m2["samples"] > 0
    for k in ("gauc", "auc", "logloss"):
        assert m1[k] == m2[k], (k, m1[k], m2[k])
    assert m1["by_seq_length"] == m2["by_seq_length"] and m1["by_popularity"] == m2["by_popularity"]
    # An --out another evaluation is writing: rank 0 is refused by the lock and rank 1 with it (the
    # verdict is broadcast), in one line each, instead of rank 1 waiting in a collective.
    with DirLock.acquire(ev2, command="muse-rec evaluate (the test's holder)"):
        refused = run_ranks(["evaluate", "--spec", spec, *sets, "--out", str(ev2)], nproc=2, check=False, timeout=240)
    assert refused.returncode != 0, refused.stderr[-3000:]
    lines = [ln for ln in refused.stderr.splitlines() if "in use by another evaluation" in ln]
    assert len(lines) == 2 and all("muse-rec evaluate: " in ln for ln in lines), refused.stderr[-3000:]
    assert metrics(ev2) == m2  # nothing of the refused evaluation was written

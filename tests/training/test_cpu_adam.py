"""`train.sparse_optimizer.name: adam` on CPU, end to end: RowSparseAdam trains, evaluates, resumes exactly."""
from __future__ import annotations

import json

import pandas as pd
import torch.distributed.checkpoint as dcp

from muse_rec.metrics import read_predictions
from tests.training.conftest import metrics, run_ranks, train_args

ADAM = ["train.sparse_optimizer.name=adam", "train.sparse_optimizer.lr=0.002", "train.max_steps=8",
        "train.checkpoint_every=4", "train.seed=3"]


def test_adam_trains_on_cpu_and_resumes_identically(prepared, tmp_path):
    spec = "specs/demo/muse.yaml"
    full = tmp_path / "full"
    out = run_ranks(train_args(spec, prepared, full, ADAM), nproc=1)
    assert "adam (lr 0.002) via RowSparseAdam on cpu" in out.stderr  # the start line names the route
    run = full / "muse"
    assert json.loads((run / "run.json").read_text())["sparse_optimizer_route"] == "row_sparse_adam"
    m = metrics(run)
    assert m["steps"] == 8 and 0.0 < m["gauc"] < 1.0 and m["logloss"] > 0
    # The checkpoint holds Adam's moments and step for every trainable table, none for SCL.
    keys = dcp.FileSystemReader(str(run / "checkpoints" / "step-00000008")).read_metadata().state_dict_metadata
    adam = {k.rsplit(".", 1)[1] for k in keys if ".row_sparse_adam." in k}
    assert adam == {"exp_avg", "exp_avg_sq", "step"}
    assert any("sparse_arch.ids.embeddings.item.weight.exp_avg" in k for k in keys)
    assert not any(".scl." in k for k in keys)

    broken = tmp_path / "broken"
    crashed = run_ranks(train_args(spec, prepared, broken, ADAM), nproc=1,
                        env_extra={"MUSE_REC_CRASH_AFTER_STEP": "6"}, check=False)
    assert crashed.returncode != 0 and not (broken / "muse" / "metrics.json").exists()
    run_ranks(train_args(spec, prepared, broken, ADAM) + ["--resume"], nproc=1)
    pa = read_predictions(run / "predictions.parquet").sort_values(["user_key", "item_key"]).reset_index(drop=True)
    pb = read_predictions(broken / "muse" / "predictions.parquet").sort_values(["user_key", "item_key"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(pa, pb, check_exact=True)  # moments restored: bit-identical continuation

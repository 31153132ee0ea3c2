"""Resume on 3 ranks of a run whose sparse optimizer keeps no fused state (CPU Adam = RowSparseAdam, exact_sgd)."""
from __future__ import annotations

import pytest
import torch

from tests.training.conftest import run_ranks, train_args
from tests.training.test_distributed_training import checkpoint_tensors

pytestmark = pytest.mark.multiprocess

COMMON = ["train.max_steps=5", "train.checkpoint_every=2", "train.eval_at_end=false", "train.seed=3"]


@pytest.mark.parametrize("optimizer, state_key", [("adam", "row_sparse_adam"), ("exact_sgd", None)])
def test_a_three_rank_run_resumes_after_a_crash_as_if_uninterrupted(prepared, tmp_path, optimizer, state_key):
    """On 3 ranks the planner puts some pooled tables whole on one rank. A stateless fused optimizer (exact_sgd;
    the CPU Adam route's unused one) held an empty state per table of its rank, and every resume (a user's
    --resume, torchrun's restart) was refused: 'does not fit this model: ... Missing key in checkpoint
    state_dict: optim.state.model.sparse_arch.pooled.embedding_bags.<table>.weight.' (exit 2)."""
    spec, world = "specs/demo/muse.yaml", 3
    sets = COMMON + [f"train.sparse_optimizer.name={optimizer}"]
    full, broken = tmp_path / "full", tmp_path / "broken"
    run_ranks(train_args(spec, prepared, full, sets), nproc=world)
    crashed = run_ranks(train_args(spec, prepared, broken, sets), nproc=world,
                        env_extra={"MUSE_REC_CRASH_AFTER_STEP": "3"}, check=False)
    assert crashed.returncode != 0, "the injected crash did not happen"
    assert sorted(p.name for p in (broken / "muse" / "checkpoints").iterdir()) == ["step-00000002"]
    resumed = run_ranks(train_args(spec, prepared, broken, sets) + ["--resume"], nproc=world, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # CPU, fixed seed, the same batches, moments and steps restored: every tensor bit for bit.
    ta, tb = (checkpoint_tensors(run / "muse" / "checkpoints" / "step-00000005", tmp_path / f"{run.name}.pt")
              for run in (full, broken))
    assert ta.keys() == tb.keys()
    assert state_key is None or any(state_key in k and k.endswith("exp_avg_sq") for k in ta)  # its moments compared
    differ = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not differ, f"{len(differ)} of {len(ta)} tensors differ, e.g. {differ[:3]}"

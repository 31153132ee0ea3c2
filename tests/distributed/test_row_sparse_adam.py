"""CPU Adam route (RowSparseAdam) == torch SparseAdam on nn.Embedding(sparse=True), at 1 and 2 gloo ranks.

The comparisons are bit-exact (tolerance 0): the worker feeds dyadic upstream gradients whose
row sums are exact in fp32 in any order, and RowSparseAdam performs SparseAdam's fp32 ops in
the same order (see tests/distributed/row_sparse_adam_worker.py). Any deviation - a moment
updated for an untouched row (dense Adam), the padding row moved, a lost or doubled gradient
contribution from the other rank, another bias correction - shows up as mismatching rows.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fbgemm_gpu.split_embedding_configs import EmbOptimType

from muse_rec.distributed.env import DistEnv, destroy_distributed, init_distributed
from tests.distributed.row_sparse_adam_worker import POOL_KEY, SEQ_KEY, run_case
from tests.distributed.spawn import run_worker_ranks

CASES = ("table_wise", "row_wise", "column_wise")


@pytest.fixture(scope="module")
def env():
    e = init_distributed(DistEnv.from_environ({}, device_type="cpu"))
    yield e
    destroy_distributed()


def _check(report: dict) -> None:
    assert report["mismatch"] == {}, report["mismatch"]
    assert set(report["step"]) == set(report["plan_local_shards"]) and report["ref_step"] == 4
    assert all(s == 4 for s in report["step"].values())
    # The data really exercises lazy semantics: rows touched only early, rows never touched.
    assert len(report["early_only_rows"]) >= 5 and len(report["never_touched_rows"]) >= 5


def test_spec_names_are_fbgemms_plus_cpu_adam() -> None:
    from muse_rec.env import fused_optimizers
    from muse_rec.spec import SPARSE_OPTIMIZER_NAMES

    assert set(SPARSE_OPTIMIZER_NAMES) == set(fused_optimizers("cuda")) | {"adam"}
    assert "adam" not in fused_optimizers("cpu")  # else the CPU route could use FBGEMM's kernel


@pytest.mark.parametrize("sharding", CASES)
def test_one_rank_matches_sparse_adam_bit_for_bit(env, sharding: str) -> None:
    _check(run_case(env, sharding))


@pytest.mark.parametrize("sharding", ["table_wise", "row_wise"])
def test_weight_decay_is_decoupled_on_the_touched_rows_only(env, sharding: str) -> None:
    """`train.sparse_optimizer.weight_decay` on CPU, as FBGEMM's fused Adam on CUDA: SparseAdam's step,
    then w -= lr * wd * w_before for the rows looked up; the moments see only the gradient, and
    early-only and never-touched rows keep their values (no decay without a lookup)."""
    _check(run_case(env, sharding, weight_decay=0.25))  # the same fp32 ops in the same order: still bit-exact


def test_fbgemm_cpu_adagrad_drops_weight_decay_so_a_run_refuses_it() -> None:
    """Why `DECAYING_OPTIMIZERS` leaves FBGEMM's CPU kernels out: the same step with weight_decay 0 and
    0.5 gives identical rows. If FBGEMM starts applying it, this fails and the table should allow it."""
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (ComputeDevice,
                                                                        SplitTableBatchedEmbeddingBagsCodegen)

    from muse_rec.distributed.sharders import FusedOptimizerConfig

    rows = []
    for wd in (0.0, 0.5):
        tbe = SplitTableBatchedEmbeddingBagsCodegen([(10, 4, EmbeddingLocation.HOST, ComputeDevice.CPU)],
                                                    optimizer=EmbOptimType.EXACT_ROWWISE_ADAGRAD, learning_rate=0.1,
                                                    weight_decay=wd)
        with torch.no_grad():
            tbe.split_embedding_weights()[0].copy_(torch.arange(40.0).view(10, 4) / 10)
        tbe(torch.tensor([1, 2]), torch.tensor([0, 1, 2])).mul(torch.tensor([1.0, -2.0, 3.0, 0.5])).sum().backward()
        rows.append(tbe.split_embedding_weights()[0][1:3].clone())
    # With L2 or decoupled decay, row 1 ([0.4 .. 0.7]) would move by lr * 0.5 * w ~ 0.02 more than without.
    assert torch.equal(rows[0], rows[1])
    with pytest.raises(ValueError, match=r"0.5 would be ignored: 'exact_row_wise_adagrad' on cpu"):
        FusedOptimizerConfig(name="exact_row_wise_adagrad", weight_decay=0.5).fused_params("cpu")
    FusedOptimizerConfig(name="adam", weight_decay=0.5).fused_params("cpu")  # RowSparseAdam decays
    FusedOptimizerConfig(name="adam", weight_decay=0.5).check_weight_decay("cuda")  # FBGEMM's Adam decays


def test_dense_adam_semantics_would_fail(env, monkeypatch) -> None:
    """The comparison catches moments/weights that move for untouched rows (dense Adam)."""
    from muse_rec.distributed import sparse_adam

    # Dense Adam = the same update with zero gradients for rows not looked up: emulate it by
    # adding every row with a zero gradient to the pending lists before each step.
    orig_step = sparse_adam.RowSparseAdam.step

    def dense_step(self, closure=None):
        for shard in self._shards:
            if shard.rows:
                n = shard.weight.shape[0]
                shard.rows.append(torch.arange(n))
                shard.grads.append(torch.zeros(n, shard.weight.shape[1]))
        return orig_step(self, closure)

    monkeypatch.setattr(sparse_adam.RowSparseAdam, "step", dense_step)
    report = run_case(env, "table_wise")
    bad = report["mismatch"]
    assert f"{SEQ_KEY}:exp_avg" in bad and f"{SEQ_KEY}:weight" in bad
    # The rows touched early and then left alone are wrong: dense Adam keeps decaying their
    # moments and moving them. (Never-touched rows keep m = v = 0 and do not move either way.)
    early = set(report["early_only_rows"])
    assert early <= set(bad[f"{SEQ_KEY}:weight"]) and early <= set(bad[f"{SEQ_KEY}:exp_avg"])
    assert not set(report["never_touched_rows"]) & set(bad[f"{SEQ_KEY}:weight"])


@pytest.mark.multiprocess
def test_two_ranks_match_sparse_adam_on_the_global_batch(env, tmp_path: Path) -> None:
    """2 gloo ranks == SparseAdam on the global batch; their row-wise checkpoint loads on 1 rank
    (DCP reshards tables and moments) into exactly the reference's tables and moments."""
    world = 2
    run_worker_ranks("tests.distributed.row_sparse_adam_worker", tmp_path, world, timeout=300)
    shards = {}
    for rank in range(world):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for case in ("table_wise", "row_wise"):
            _check(report[case])
            shards[(rank, case)] = report[case]["plan_local_shards"]
    # Row-wise really splits both tables over the two ranks (each holds one shard of each).
    assert shards[(0, "row_wise")] == shards[(1, "row_wise")] == {SEQ_KEY: 1, POOL_KEY: 1}
    # Table-wise puts each table on one rank only.
    assert sorted(shards[(r, "table_wise")].get(SEQ_KEY, 0) for r in range(world)) == [0, 1]
    assert sorted(shards[(r, "table_wise")].get(POOL_KEY, 0) for r in range(world)) == [0, 1]

    from muse_rec.distributed.model_parallel import combined_optimizer, shard_model
    from muse_rec.training.checkpoint import load_checkpoint
    from tests.distributed.row_sparse_adam_worker import Tables

    dmp = shard_model(Tables(torch.device("meta")), env, fused_optimizer="adam", fused_lr=2e-2)
    opt = combined_optimizer(dmp, dense_lr=0.0)
    assert load_checkpoint(tmp_path / "row_wise" / "ckpt" / "step-00000004", dmp, opt).world_size == 2
    ref = torch.load(tmp_path / "row_wise" / "reference.pt")
    state, osd = dmp.state_dict(), opt.state_dict()["state"]
    for key in (SEQ_KEY, POOL_KEY):
        got = {"weight": state[key], **{k: osd[f"row_sparse_adam.{key}"][k] for k in ("exp_avg", "exp_avg_sq")}}
        assert int(osd[f"row_sparse_adam.{key}"]["step"]) == 4
        for what, st in got.items():
            (shard,) = st.local_shards()  # one rank holds the whole table
            assert tuple(shard.metadata.shard_offsets) == (0, 0)
            assert torch.equal(shard.tensor, ref[key][what]), (key, what)


def _tables_and_moments(dmp, opt) -> dict:
    """Every local shard of the tables and of RowSparseAdam's state, cloned."""
    out = {}
    state, osd = dmp.state_dict(), opt.state_dict()["state"]
    for key in (SEQ_KEY, POOL_KEY):
        out[key] = [s.tensor.clone() for s in state[key].local_shards()]
        for k in ("exp_avg", "exp_avg_sq"):
            out[f"{key}:{k}"] = [s.tensor.clone() for s in osd[f"row_sparse_adam.{key}"][k].local_shards()]
        out[f"{key}:step"] = osd[f"row_sparse_adam.{key}"]["step"].clone()
    return out


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(x, y) if isinstance(x, torch.Tensor) else all(torch.equal(p, q) for p, q in zip(x, y))
        for x, y in zip(a.values(), (b[k] for k in a)))


def test_checkpoint_round_trip_continues_identically(env, tmp_path: Path) -> None:
    """The project's DCP checkpoint saves RowSparseAdam's moments and step; a fresh model
    loaded from it trains on exactly as the uninterrupted one (and not without the state)."""
    from muse_rec.distributed.model_parallel import combined_optimizer, shard_model
    from muse_rec.training.checkpoint import load_checkpoint, save_checkpoint
    from muse_rec.training.checkpoint_position import Position
    from tests.distributed.row_sparse_adam_worker import Tables, sharded_step

    def fresh(seed: int):
        torch.manual_seed(seed)  # other initial tables: the load must overwrite them
        dmp = shard_model(Tables(torch.device("meta")), env, fused_optimizer="adam", fused_lr=2e-2)
        return dmp, combined_optimizer(dmp, dense_lr=1e-2)

    dmp, opt = fresh(0)
    for step in range(3):
        sharded_step(dmp, opt, env.rank, env.world_size, step)
    ck = save_checkpoint(str(tmp_path / "ckpt"), dmp, opt, Position(step=3))
    for step in range(3, 6):
        sharded_step(dmp, opt, env.rank, env.world_size, step)
    want = _tables_and_moments(dmp, opt)
    assert int(want[f"{SEQ_KEY}:step"]) == 6

    for with_state in (True, False):
        dmp2, opt2 = fresh(1)
        assert load_checkpoint(ck, dmp2, opt2 if with_state else None).step == 3
        for step in range(3, 6):
            sharded_step(dmp2, opt2, env.rank, env.world_size, step)
        # Without the optimizer state the moments restart from zero: the continuation differs.
        assert _same(_tables_and_moments(dmp2, opt2), want) is with_state


def test_explicit_sharders_keep_the_adam_route(env) -> None:
    """Sharders made for CPU adam and handed to shard_model (e.g. with a precomputed plan) still
    get their RowSparseAdam, with the sharders' hyper-parameters: the tables never silently freeze."""
    from muse_rec.distributed.model_parallel import row_sparse_adam, shard_model
    from muse_rec.distributed.planner import make_plan, topology_for
    from muse_rec.distributed.sharders import FusedOptimizerConfig, make_sharders
    from tests.distributed.row_sparse_adam_worker import Tables

    config = FusedOptimizerConfig(name="adam", learning_rate=3e-3, eps=1e-6, extra={"beta1": 0.8, "beta2": 0.99})
    sharders = make_sharders(config, "cpu")
    model = Tables(torch.device("meta"))
    dmp = shard_model(model, env, plan=make_plan(model, topology_for(env), sharders), sharders=sharders)
    sparse = row_sparse_adam(dmp)
    assert sparse is not None and set(sparse.params) == {SEQ_KEY, POOL_KEY}
    group = sparse.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"]) == (3e-3, (0.8, 0.99), 1e-6)
    # Before any step the (lazily zeroed) state reads as Adam's initial state.
    for key, st in sparse.state_dict()["state"].items():
        assert int(st["step"]) == 0
        assert all(not s.tensor.any() for k in ("exp_avg", "exp_avg_sq") for s in st[k].local_shards()), key


def test_cuda_keeps_fbgemm_fused_adam_with_the_spec_betas() -> None:
    """No GPU needed: the sharders a CUDA run gets for `adam` carry FBGEMM's fused Adam."""
    from fbgemm_gpu.split_embedding_configs import EmbOptimType

    from muse_rec.distributed.model_parallel import optimizer_config
    from muse_rec.distributed.sharders import make_sharders, row_sparse_optimizer

    config = optimizer_config("adam", 2e-3, betas=(0.8, 0.99))
    cuda, cpu = make_sharders(config, "cuda"), make_sharders(config, "cpu")
    assert row_sparse_optimizer(cuda) is None and row_sparse_optimizer(cpu) is config
    for s in cuda[:2]:  # the trainable EBC and EC sharders
        assert s.fused_params["optimizer"] == EmbOptimType.ADAM
        assert (s.fused_params["beta1"], s.fused_params["beta2"], s.fused_params["learning_rate"]) == (0.8, 0.99, 2e-3)
    for s in cpu[:2]:
        assert s.fused_params == {"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": 0.0}

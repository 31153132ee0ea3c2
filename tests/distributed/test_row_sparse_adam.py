"""CPU Adam route (RowSparseAdam) == torch SparseAdam on nn.Embedding(sparse=True), at 1 and 2 gloo ranks.

The comparisons are bit-exact (tolerance 0): the worker feeds dyadic upstream gradients whose
row sums are exact in fp32 in any order, and RowSparseAdam performs SparseAdam's fp32 ops in
the same order (see tests/distributed/row_sparse_adam_worker.py). Any deviation - a moment
updated for an untouched row (dense Adam), the padding row moved, a lost or doubled gradient
contribution from the other rank, another bias correction - shows up as mismatching rows.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from muse_rec.distributed.env import DistEnv, destroy_distributed, free_port, init_distributed
from tests.distributed.row_sparse_adam_worker import POOL_KEY, SEQ_KEY, run_case

REPO = Path(__file__).resolve().parents[2]
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
def test_two_ranks_match_sparse_adam_on_the_global_batch(tmp_path: Path) -> None:
    port, world = str(free_port()), 2
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                   LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                   OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tests.distributed.row_sparse_adam_worker", str(tmp_path)],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = []
    for p in procs:
        try:
            outputs.append(p.communicate(timeout=300)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("2-rank worker timed out")
    for rank, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"rank {rank} failed:\n{out[-4000:]}"
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
    from muse_rec.training.checkpoint import Position, load_checkpoint, save_checkpoint
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

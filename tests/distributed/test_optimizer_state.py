"""`FusedOptimizerStateEstimator`: each shard's storage = TorchRec's estimate + exactly its
fused-optimizer state, in the memory FBGEMM keeps it in, however often the planner re-estimates."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Dict, Tuple

import pytest
import torch
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torchrec.distributed.planner.constants import BATCH_SIZE, DEFAULT_PERF_ESTIMATOR
from torchrec.distributed.planner.enumerators import EmbeddingEnumerator
from torchrec.distributed.planner.shard_estimators import EmbeddingPerfEstimatorFactory, EmbeddingStorageEstimator

from muse_rec.distributed.optimizer_state import STATE_FLOATS, FusedOptimizerStateEstimator, state_bytes
from muse_rec.distributed.planner import GiB, make_constraints, make_topology
from muse_rec.distributed.sharders import FusedOptimizerConfig, make_sharders
from muse_rec.env import fused_optimizers
from muse_rec.models.ctr_model import build_train_model
from muse_rec.spec import load_spec

REPO = Path(__file__).resolve().parents[2]
warnings.filterwarnings("ignore", category=FutureWarning)


def _storages(module, topology, sharders, with_state: bool) -> Dict[Tuple[str, str, str, int], Tuple[int, int, int, int]]:
    """(table, sharding type, kernel, shard) -> (hbm, ddr, rows, cols) of every option TorchRec enumerates."""
    constraints = make_constraints(module)
    estimators = [EmbeddingPerfEstimatorFactory.create(DEFAULT_PERF_ESTIMATOR, topology=topology, constraints=constraints),
                  EmbeddingStorageEstimator(topology=topology, constraints=constraints)]
    if with_state:
        estimators.append(FusedOptimizerStateEstimator(topology, sharders))
    enumerator = EmbeddingEnumerator(topology=topology, batch_size=BATCH_SIZE, constraints=constraints, estimator=estimators)
    options = enumerator.enumerate(module, sharders)
    enumerator.populate_estimates(options)  # the planner re-estimates: the state must not be added twice
    return {(o.name, o.sharding_type, o.compute_kernel, i): (s.storage.hbm, s.storage.ddr, s.size[0], s.size[1])
            for o in options for i, s in enumerate(o.shards)}


@pytest.fixture(scope="module")
def model():
    spec = load_spec(REPO / "specs/taobao_mm_p90/muse.yaml")
    return build_train_model(spec.model, spec.data.vocab_sizes, seq_len=spec.data.seq_len, device=torch.device("meta"))


@pytest.mark.parametrize("device,optimizer", [("cuda", "adam"), ("cuda", "exact_row_wise_adagrad"),
                                              ("cpu", "adam"), ("cpu", "exact_row_wise_adagrad")])
def test_each_shard_gets_exactly_its_state_where_fbgemm_keeps_it(model, device: str, optimizer: str) -> None:
    topology = make_topology(2, device, hbm_bytes_per_rank=80 * GiB, ddr_bytes_per_rank=512 * GiB)
    sharders = make_sharders(FusedOptimizerConfig(name=optimizer), device)
    base = _storages(model, topology, sharders, with_state=False)
    ours = _storages(model, topology, sharders, with_state=True)
    assert base.keys() == ours.keys()
    # Adam: two fp32 moments per element, beside the rows (HBM only for `fused` on CUDA). Row-wise
    # Adagrad: one fp32 per row of each shard, in HBM on CUDA whatever the kernel (FBGEMM's rule).
    kernels = set()
    for key, (hbm, ddr, rows, cols) in ours.items():
        table, _, kernel, _ = key
        if table == "scl":  # frozen: stateless
            expect = (0, 0)
        elif optimizer == "adam":
            per = 8 * rows * cols
            expect = (per, 0) if device == "cuda" and kernel == "fused" else (0, per)
        else:
            expect = (4 * rows, 0) if device == "cuda" else (0, 4 * rows)
        assert (hbm - base[key][0], ddr - base[key][1]) == expect, key
        kernels.add(kernel)
    if device == "cuda":
        assert {"fused", "fused_uvm", "fused_uvm_caching"} <= kernels  # every placement rule was exercised


def test_every_optimizer_a_spec_accepts_has_a_known_state_size() -> None:
    for name in fused_optimizers("cuda") + fused_optimizers("cpu"):
        assert EmbOptimType(name) in STATE_FLOATS, name
    assert state_bytes(EmbOptimType.PARTIAL_ROWWISE_ADAM, 10, 16) == 10 * (16 + 1) * 4
    assert state_bytes(EmbOptimType.LAMB, 10, 16) == 10 * 2 * 16 * 4
    assert state_bytes(None, 10, 16) == 0  # a frozen table
    with pytest.raises(ValueError, match="no state size known"):
        state_bytes("some_new_optimizer", 10, 16)

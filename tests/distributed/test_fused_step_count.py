"""`count_only_training_lookups`: a no-grad lookup must not advance a fused optimizer's step count.

FBGEMM's kernel advances ``iter``/``iter_cpu`` on every forward, grad or not (its CPU kernels too, so
this runs on the real thing); Adam's and LAMB's bias correction read it (CUDA).
tests/distributed/test_fused_adam_cuda.py checks the effect on Adam against torch SparseAdam on a GPU.
"""
from __future__ import annotations

import pytest
import torch
from torchrec import KeyedJaggedTensor

from muse_rec.distributed.env import DistEnv, destroy_distributed, init_distributed
from muse_rec.distributed.model_parallel import shard_model
from muse_rec.distributed.planner import make_constraints
from muse_rec.distributed.sparse_adam import fused_kernels
from tests.distributed.row_sparse_adam_worker import Tables


@pytest.fixture(scope="module")
def env():
    e = init_distributed(DistEnv.from_environ({}, device_type="cpu"))
    yield e
    destroy_distributed()


def _lookup(dmp) -> None:
    dmp(KeyedJaggedTensor(keys=["f"], values=torch.tensor([1, 2, 3]), lengths=torch.tensor([2, 1])),
        KeyedJaggedTensor(keys=["g"], values=torch.tensor([1, 2]), lengths=torch.tensor([1, 1])))


def _steps(dmp) -> list:
    return [(int(k.emb_module.iter_cpu), int(k.emb_module.iter)) for k in fused_kernels(dmp)]


def test_no_grad_lookups_leave_the_step_count_alone(env):
    model = Tables(torch.device("meta"))
    dmp = shard_model(model, env, fused_optimizer="exact_row_wise_adagrad", fused_lr=0.1,
                      constraints=make_constraints(model, {"t": ["table_wise"], "p": ["table_wise"]}))
    kernels = fused_kernels(dmp)
    assert len(kernels) == 2  # the sequence table's and the pooled table's
    start = _steps(dmp)
    _lookup(dmp)  # a training lookup: one step
    assert _steps(dmp) == [(a + 1, b + 1) for a, b in start]
    with torch.no_grad():
        _lookup(dmp)  # evaluation, or the whole-sequence ID scoring of SIM-soft/TWIN
        _lookup(dmp)
    assert _steps(dmp) == [(a + 1, b + 1) for a, b in start]
    _lookup(dmp)
    assert _steps(dmp) == [(a + 2, b + 2) for a, b in start]

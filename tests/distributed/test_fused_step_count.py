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


def test_a_loaded_checkpoint_gives_fbgemm_its_step_back(env, tmp_path):
    """TorchRec's checkpoint does not hold FBGEMM's step count: loaded into a new model it would read 0,
    and Adam's bias correction would start over. Loading with an optimizer (a resume) sets it from the
    checkpoint's position; loading for evaluation (no optimizer) leaves it."""
    from muse_rec.distributed.model_parallel import combined_optimizer
    from muse_rec.training.checkpoint import load_checkpoint, save_checkpoint
    from muse_rec.training.checkpoint_position import Position

    def sharded():
        model = Tables(torch.device("meta"))
        dmp = shard_model(model, env, fused_optimizer="exact_row_wise_adagrad", fused_lr=0.1,
                          constraints=make_constraints(model, {"t": ["table_wise"], "p": ["table_wise"]}))
        return dmp, combined_optimizer(dmp, dense_lr=0.0)

    def train_step(dmp, opt):
        seq, pool = dmp(KeyedJaggedTensor(keys=["f"], values=torch.tensor([1, 2, 3]), lengths=torch.tensor([2, 1])),
                        KeyedJaggedTensor(keys=["g"], values=torch.tensor([1, 2]), lengths=torch.tensor([1, 1])))
        (seq.sum() + pool.sum()).backward()
        opt.step()
        opt.zero_grad()

    trained, opt = sharded()
    for _ in range(3):
        train_step(trained, opt)
    assert _steps(trained) == [(3, 3), (3, 3)]
    ck = save_checkpoint(str(tmp_path / "ckpt"), trained, opt, Position(step=3, world_size=1))
    evaluated, _ = sharded()
    load_checkpoint(ck, evaluated, None)
    assert _steps(evaluated) == [(0, 0), (0, 0)]  # what TorchRec's state restores: nothing
    resumed, opt = sharded()
    load_checkpoint(ck, resumed, opt)
    assert _steps(resumed) == [(3, 3), (3, 3)]
    train_step(resumed, opt)
    assert _steps(resumed) == [(4, 4), (4, 4)]  # as the uninterrupted run's next step

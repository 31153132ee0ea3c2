"""The sharded model a job trains or evaluates: built on ``meta``, placed by TorchRec's planner,
the frozen SCL table loaded, the dense optimizer combined with the fused sparse one."""
from __future__ import annotations

from typing import Optional

import torch
from fbgemm_gpu.split_embedding_configs import SparseType

from muse_rec.data.loader import usable_workers
from muse_rec.data.prepared import PreparedData
from muse_rec.distributed.env import DistEnv
from muse_rec.distributed.model_parallel import build_optimizer, shard_model
from muse_rec.distributed.planner import PlanDoesNotFit, rank_memory_line, topology_for, training_constraints
from muse_rec.distributed.rank_memory import dense_parameter_bytes, planned_batch_size, spec_rank_overhead_bytes
from muse_rec.distributed.sharders import FusedOptimizerConfig
from muse_rec.memory import format_gib
from muse_rec.models.ctr_model import build_train_model, is_frozen_key
from muse_rec.spec import Spec
from muse_rec.training.run_record import RunError


def _output_prior(spec: Spec, data: PreparedData) -> Optional[float]:
    """The click rate of ``data.train_split`` the output logit starts at (``output_bias: train_prior``), else None."""
    if spec.model.parametrization.output_bias != "train_prior":
        return None
    rate = data.positive_rate(spec.data.train_split)
    if not 0.0 < rate < 1.0:
        raise RunError(f"{spec.data.prepared}: split {spec.data.train_split!r} has click rate {rate:g} (one class): a CTR model "
                       "needs clicks and non-clicks (model.parametrization.output_bias: train_prior)")
    return rate


def _plan_failure(spec: Spec, env: DistEnv, model: torch.nn.Module, dense_bytes: Optional[int], e: PlanDoesNotFit) -> str:
    """One line: why no plan fits this job, what it reserves outside the tables, where to look next."""
    reserved = ""
    if dense_bytes is not None:
        reserved = (f"; each rank also holds {format_gib(dense_bytes)} outside the tables (runtime, a step of "
                    f"train.batch_size {spec.train.batch_size} / train.eval_batch_size {spec.train.eval_batch_size} "
                    f"x data.seq_len {spec.data.seq_len}, data.num_workers {spec.data.num_workers}, the dense layers' "
                    f"training state {format_gib(dense_parameter_bytes(model))}, a checkpoint's copy)")
    return (f"no sharding plan fits {env.world_size} x {env.device.type} ({rank_memory_line(topology_for(env))}): "
            f"TorchRec planner: {e}{reserved}; `muse-rec plan --spec SPEC --prepared {spec.data.prepared} "
            f"--device {env.device.type} --world-size {env.world_size}` shows the tables and what would fit")


def build_sharded(spec: Spec, data: PreparedData, env: DistEnv, evaluation_only: bool = False):
    """Model on meta -> DMP (planner picks the sharding) -> SCL loaded -> combined optimizer.

    ``evaluation_only``: the process only evaluates (``muse-rec eval``): its plan is sized for
    ``train.eval_batch_size`` (`rank_memory.planned_batch_size`).

    Returns ``(dmp, optimizer, skip)``; ``skip(key)`` is True for state that checkpoints leave
    out (the frozen SCL table, reloaded from the prepared data instead).
    """
    sparse = spec.train.sparse_optimizer
    # An optimizer neither FBGEMM nor RowSparseAdam serves on this device, or a decay its kernel would drop.
    problem = FusedOptimizerConfig(name=sparse.name, weight_decay=sparse.weight_decay).problem(env.device.type)
    if problem is not None:
        raise RunError(f"train.sparse_optimizer.{problem[0]}: {problem[1]}")
    model = build_train_model(spec.model, data.vocab_sizes, seq_len=spec.data.seq_len, device=torch.device("meta"),
                              positive_rate=_output_prior(spec, data))
    # The frozen SCL lookups are the largest all-to-all of a step ([U*L, 128] per rank): send them
    # as fp16 (exact for the int8 values). TorchRec 1.8 returns correct fp16 lookups across ranks
    # only for row-wise tables (docs/sharding.md), so with several ranks the SCL table is row-wise.
    constraints = training_constraints(model, env.world_size)
    # The planner reserves per rank what the job holds outside the tables (`muse-rec plan` shows it), here with
    # the loader workers this host starts (at most one per CPU; a plan for another machine counts them all).
    dense_bytes = spec_rank_overhead_bytes(spec, model, env.device.type, env.world_size,
                                           loader_workers=usable_workers(spec.data.num_workers),
                                           evaluation_only=evaluation_only)
    try:
        dmp = shard_model(model, env, sparse_optimizer=spec.train.sparse_optimizer, constraints=constraints,
                          frozen_output_dtype=SparseType.FP16, dense_bytes=dense_bytes,
                          batch_size=planned_batch_size(spec, evaluation_only))
    except PlanDoesNotFit as e:
        raise RunError(_plan_failure(spec, env, model, dense_bytes, e)) from None
    arch = dmp.module.model.sparse_arch
    arch.load_scl_(data.scl())  # frozen: loaded, never trained, never saved
    optimizer = build_optimizer(dmp, spec.train.dense_optimizer)
    return dmp, optimizer, is_frozen_key


def make_pipeline(kind: str, dmp: torch.nn.Module, optimizer: torch.optim.Optimizer, env: DistEnv):
    from torchrec.distributed.train_pipeline import TrainPipelineBase, TrainPipelineSparseDist

    cls = TrainPipelineSparseDist if kind == "sparse_dist" else TrainPipelineBase
    return cls(dmp, optimizer, env.device)

"""DistributedModelParallel construction and the combined (fused sparse + dense) optimizer.

The canonical TorchRec wiring (facebookresearch/dlrm ``torchrec_dlrm``): plan -> DMP with
sharders that carry the fused optimizer -> a dense optimizer over the parameters DMP did
not fuse -> one `CombinedOptimizer` the train loop steps. Fused tables are updated inside
the backward; ``CombinedOptimizer.step()`` only steps the dense part for them. On CPU with
``adam`` (no fused Adam in FBGEMM) the tables are instead updated by a `RowSparseAdam` that
`shard_model` attaches to the DMP and `combined_optimizer` steps (touched rows only, torch
SparseAdam's update; `muse_rec.distributed.sparse_adam`).

    env = init_distributed()
    model = MyModel(..., device=torch.device("meta"))
    dmp = shard_model(model, env, fused_optimizer="exact_row_wise_adagrad", fused_lr=2e-3)
    optimizer = combined_optimizer(dmp, dense_lr=2e-4)
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, List, Mapping, Optional, Tuple

import torch
import torch.distributed as dist
from fbgemm_gpu.split_embedding_configs import SparseType
from torch import nn
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.types import ModuleSharder, ShardingEnv, ShardingPlan
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from muse_rec.distributed.env import DistEnv
from muse_rec.distributed.fused_step_count import count_only_training_lookups
from muse_rec.distributed.grad_sync import sum_dense_gradients_in_parameter_order
from muse_rec.distributed.planner import BATCH_SIZE, make_plan, topology_for
from muse_rec.distributed.sharders import (
    FusedOptimizerConfig,
    check_frozen_output_dtype,
    make_sharders,
    row_sparse_optimizer,
)
from muse_rec.distributed.sparse_adam import RowSparseAdam
from muse_rec.models.frozen_scl import FrozenEmbeddingCollection

DenseOptimizerFactory = Callable[[List[nn.Parameter]], torch.optim.Optimizer]
# Attribute of a DMP holding its RowSparseAdam (CPU Adam route), and its CombinedOptimizer key.
_ROW_SPARSE_ATTR = "_muse_row_sparse_adam"
ROW_SPARSE_KEY = "row_sparse_adam"
# FBGEMM fused optimizers that read Adam's betas as `beta1`/`beta2` fused params.
_FUSED_WITH_BETAS = ("adam", "partial_row_wise_adam", "lamb", "partial_row_wise_lamb")


def shard_model(
    model: nn.Module,
    env: DistEnv,
    plan: Optional[ShardingPlan] = None,
    fused_optimizer: str = "exact_row_wise_adagrad",
    fused_lr: float = 2e-3,
    fused_eps: float = 1e-8,
    fused_weight_decay: float = 0.0,
    fused_extra: Optional[Mapping[str, Any]] = None,
    fused_betas: Tuple[float, float] = (0.9, 0.999),
    frozen_output_dtype: SparseType = SparseType.FP32,
    constraints: Optional[Mapping[str, ParameterConstraints]] = None,
    sharders: Optional[List[ModuleSharder[nn.Module]]] = None,
    sparse_optimizer: Optional[Any] = None,
    dense_bytes: Optional[int] = None,
    batch_size: Optional[int] = None,
) -> DistributedModelParallel:
    """Shard `model` (built on ``meta`` or any device) over the process group.

    Args:
        model: the unsharded model; its TorchRec collections are replaced by sharded ones.
        env: this process's `DistEnv`; the default process group must exist
            (`init_distributed`).
        plan: a plan from `planner.make_plan` (same sharders!); None = plan here for `env`.
        fused_optimizer: FBGEMM in-backward optimizer of trainable tables; must be one of
            ``muse_rec.env.fused_optimizers(env.device.type)`` (on CPU no Adam).
        fused_lr, fused_eps, fused_weight_decay, fused_extra, fused_betas: its hyper-parameters
            (betas reach FBGEMM as ``beta1``/``beta2`` for its Adam/LAMB, and `RowSparseAdam`).
        frozen_output_dtype: output dtype of frozen-table lookups; FP16 only with a row-wise
            frozen table on several ranks (checked; see `sharders`).
        constraints: planner constraints when `plan` is None (default: `make_constraints`).
        sharders: override the sharders entirely (then the fused_* arguments are unused; sharders
            of the CPU Adam route, from `make_sharders`, carry their Adam config).
        sparse_optimizer: an optimizer spec (``.name``, ``.lr``, ``.eps``, ``.weight_decay``,
            ``.betas``, e.g. ``muse_rec.spec.OptimizerSpec``); when given it replaces the
            fused_* arguments.
        dense_bytes: per-rank memory outside the tables for the planner's reservation when
            `plan` is None (`planner.make_plan`); None = TorchRec's estimate.
        batch_size: samples per rank of the largest batch the job runs, which the planner sizes the
            lookups' buffers with when `plan` is None; None = TorchRec's default (512).

    Returns:
        The DMP; ``dmp.fused_optimizer`` holds the fused tables' optimizers, and on the CPU
        Adam route `row_sparse_adam(dmp)` the `RowSparseAdam` that trains the tables.
    """
    if not dist.is_initialized():
        raise RuntimeError("shard_model needs a process group: call muse_rec.distributed.env.init_distributed() first")
    if sparse_optimizer is not None:
        fused_optimizer, fused_lr = sparse_optimizer.name, sparse_optimizer.lr
        fused_eps = getattr(sparse_optimizer, "eps", fused_eps)
        fused_weight_decay = getattr(sparse_optimizer, "weight_decay", fused_weight_decay)
        fused_betas = tuple(getattr(sparse_optimizer, "betas", fused_betas))  # type: ignore[assignment]
    config = optimizer_config(fused_optimizer, fused_lr, fused_eps, fused_weight_decay, fused_betas, fused_extra)
    if sharders is None:
        sharders = make_sharders(config, env.device.type, frozen_output_dtype)
    if plan is None:
        plan = make_plan(model, topology_for(env), sharders, dict(constraints) if constraints else None,
                         dense_bytes=dense_bytes, batch_size=batch_size or BATCH_SIZE)
    check_frozen_output_dtype(model, plan, sharders, env.world_size)
    frozen = [path for path, m in model.named_modules() if isinstance(m, FrozenEmbeddingCollection)]
    dmp = DistributedModelParallel(
        module=model,
        env=ShardingEnv.from_process_group(dist.GroupMember.WORLD),
        device=env.device,
        plan=plan,
        sharders=sharders,
    )
    # A resume at 3+ ranks was exact only to fp32 rounding: DDP's bucket layout changes after a process's first step.
    sum_dense_gradients_in_parameter_order(dmp, dist.GroupMember.WORLD)
    count_only_training_lookups(dmp)  # FBGEMM would count no-grad lookups as optimizer steps
    adam = row_sparse_optimizer(sharders)  # the sharders (given or made here) decide the route
    if adam is not None:
        tables = [k for k in dmp.fused_optimizer.params if not any(k.startswith(f + ".") for f in frozen)]
        betas = (adam.extra.get("beta1", 0.9), adam.extra.get("beta2", 0.999))
        setattr(dmp, _ROW_SPARSE_ATTR, RowSparseAdam(dmp, tables, lr=adam.learning_rate, betas=betas,
                                                     eps=adam.eps, weight_decay=adam.weight_decay))
    return dmp


def optimizer_config(name: str, lr: float, eps: float = 1e-8, weight_decay: float = 0.0,
                     betas: Tuple[float, float] = (0.9, 0.999),
                     extra: Optional[Mapping[str, Any]] = None) -> FusedOptimizerConfig:
    """The table optimizer's config; Adam/LAMB betas become FBGEMM's ``beta1``/``beta2`` (CUDA's
    fused kernels read them there, and the CPU route's `RowSparseAdam` takes them from there)."""
    with_betas = {"beta1": betas[0], "beta2": betas[1]} if name in _FUSED_WITH_BETAS else {}
    return FusedOptimizerConfig(name=name, learning_rate=lr, eps=eps, weight_decay=weight_decay,
                                extra={**with_betas, **dict(extra or {})})


def row_sparse_adam(dmp: DistributedModelParallel) -> Optional[RowSparseAdam]:
    """The `RowSparseAdam` training `dmp`'s tables (CPU Adam route), or None (fused route)."""
    return getattr(dmp, _ROW_SPARSE_ATTR, None)


def dense_parameters(dmp: DistributedModelParallel) -> Mapping[str, nn.Parameter]:
    """Parameters not updated by a fused optimizer (the dense towers), by name."""
    fused = {id(p) for p in _fused_tensors(dmp)}
    return {
        name: p
        for name, p in in_backward_optimizer_filter(dmp.named_parameters())
        if p.requires_grad and id(p) not in fused
    }


def _fused_tensors(dmp: DistributedModelParallel) -> Iterable[torch.Tensor]:
    for group in dmp.fused_optimizer.param_groups:
        yield from group["params"]


def dense_optimizer(
    dmp: DistributedModelParallel,
    lr: float = 2e-4,
    weight_decay: float = 0.0,
    factory: Optional[DenseOptimizerFactory] = None,
) -> KeyedOptimizerWrapper:
    """A keyed optimizer over `dense_parameters` (default AdamW, lr 2e-4 as in the reference).

    Raises if no dense parameter exists (a sparse-only model needs no dense optimizer).
    """
    params = dense_parameters(dmp)
    if not params:
        raise ValueError("the model has no dense (non-fused) trainable parameters")
    make = factory or (lambda ps: torch.optim.AdamW(ps, lr=lr, weight_decay=weight_decay))
    return KeyedOptimizerWrapper(dict(params), make)


def combined_optimizer(
    dmp: DistributedModelParallel,
    dense_lr: float = 2e-4,
    dense_weight_decay: float = 0.0,
    factory: Optional[DenseOptimizerFactory] = None,
) -> CombinedOptimizer:
    """``CombinedOptimizer([fused, row-sparse Adam, dense])``; absent parts, and a fused part without state, are
    omitted."""
    parts: List[Any] = []
    # A stateless fused optimizer (exact_sgd; on the CPU Adam route the exact_sgd at lr 0 that never runs) has
    # nothing to step outside the backward and nothing to save, only an empty dict per table this rank holds.
    # Where the ranks hold different tables (3 ranks: table-wise pooled tables), a checkpoint has keys a rank
    # lacks, so DCP re-flattens that rank's state as for a torch 2.3 checkpoint, where an empty dict is a value
    # that no file holds: every resume was refused ("Missing key in checkpoint state_dict: optim.state.<table>").
    if any(dmp.fused_optimizer.state.values()):
        parts.append(dmp.fused_optimizer)
    sparse = row_sparse_adam(dmp)
    if sparse is not None:
        parts.append((ROW_SPARSE_KEY, sparse))
    if dense_parameters(dmp):
        parts.append(dense_optimizer(dmp, dense_lr, dense_weight_decay, factory))
    return CombinedOptimizer(parts)


# Dense optimizers an optimizer spec may name, built from (params, spec).
_DENSE_OPTIMIZERS: Mapping[str, Callable[[List[nn.Parameter], Any], torch.optim.Optimizer]] = {
    "adamw": lambda ps, o: torch.optim.AdamW(ps, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay),
    "adam": lambda ps, o: torch.optim.Adam(ps, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay),
    "sgd": lambda ps, o: torch.optim.SGD(ps, lr=o.lr, weight_decay=o.weight_decay),
    "adagrad": lambda ps, o: torch.optim.Adagrad(ps, lr=o.lr, eps=o.eps, weight_decay=o.weight_decay),
}


def build_optimizer(dmp: DistributedModelParallel, dense: Any) -> CombinedOptimizer:
    """`combined_optimizer` from a dense optimizer spec (``.name`` in adamw/adam/sgd/adagrad,
    ``.lr``, ``.eps``, ``.betas``, ``.weight_decay``, e.g. ``muse_rec.spec.OptimizerSpec``)."""
    if dense.name not in _DENSE_OPTIMIZERS:
        raise ValueError(f"dense optimizer {dense.name!r} unknown; known: {sorted(_DENSE_OPTIMIZERS)}")
    make = _DENSE_OPTIMIZERS[dense.name]
    return combined_optimizer(dmp, dense.lr, dense.weight_decay, factory=lambda ps: make(ps, dense))

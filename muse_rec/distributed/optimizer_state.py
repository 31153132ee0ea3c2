"""Fused-optimizer state of the embedding tables, in bytes, and a planner estimator that counts it.

TorchRec's storage estimator counts optimizer state only for weights tagged by
``apply_optimizer_in_backward`` (``param._optimizer_classes``). Our sharders carry the table
optimizer in ``fused_params`` (FBGEMM) or, on CPU, in `RowSparseAdam` (``state_optimizer``):
both are invisible to it. Left so, the planner places shards as if the state were free: for the
full item vocabulary (243M x 16 fp32) it put the whole table on one CPU rank table-wise (14.5 GiB
of weights fit) beside 29 GiB of Adam state that did not, while row-wise over the same ranks
fits. `FusedOptimizerStateEstimator` adds each shard's state to the planner's own per-shard
storage estimate, in the memory FBGEMM keeps it in, so placement, the storage check and
`plan_report` all see the same bytes.

Units: bytes.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torch import nn
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.planner.types import (ParameterConstraints, ShardEstimator, SharderDataMap,
                                                ShardingOption, Topology)
from torchrec.distributed.types import ModuleSharder

from muse_rec.distributed.sharders import state_optimizer

# State bytes per row as a function of the shard's row width; FBGEMM keeps fp32 state (the
# row-wise optimizers one fp32 per row of each shard).
STATE_BYTES_PER_ROW: Dict[Any, Callable[[int], int]] = {
    EmbOptimType.EXACT_SGD: lambda dim: 0,
    EmbOptimType.EXACT_ROWWISE_ADAGRAD: lambda dim: 4,
    EmbOptimType.EMAINPLACE_ROWWISE_ADAGRAD: lambda dim: 4,
    EmbOptimType.EXACT_ADAGRAD: lambda dim: 4 * dim,
    EmbOptimType.ADAM: lambda dim: 8 * dim,
    EmbOptimType.PARTIAL_ROWWISE_ADAM: lambda dim: 4 * dim + 4,
}
# Kernels whose rows (and fused-optimizer state) live in device memory on CUDA; every other
# kernel, and every kernel on CPU, keeps the state in host memory beside the rows.
DEVICE_MEMORY_KERNELS = (EmbeddingComputeKernel.FUSED.value, EmbeddingComputeKernel.DENSE.value)


def state_bytes(optimizer: Any, rows: int, dim: int) -> int:
    """State bytes of a ``rows x dim`` shard under `optimizer` (0 for None or an unknown one)."""
    per_row = STATE_BYTES_PER_ROW.get(optimizer) if optimizer is not None else None
    return rows * per_row(dim) if per_row is not None else 0


def state_optimizers_by_module(sharders: Sequence[ModuleSharder[nn.Module]]) -> Dict[type, Any]:
    """Module type -> the optimizer whose state its sharder's tables carry (None: frozen)."""
    return {s.module_type: state_optimizer(s) for s in sharders}  # type: ignore[attr-defined]


class FusedOptimizerStateEstimator(ShardEstimator):
    """Adds each shard's fused-optimizer state to TorchRec's storage estimate (runs after it).

    Args:
        topology: the planner's topology (its compute device decides HBM or host memory).
        sharders: the sharders the plan is made for (their optimizers, by module type).
    """

    def __init__(self, topology: Topology, sharders: Sequence[ModuleSharder[nn.Module]],
                 constraints: Optional[Dict[str, ParameterConstraints]] = None) -> None:
        self._compute_device = topology.compute_device
        self._optimizers = state_optimizers_by_module(sharders)

    def estimate(self, sharding_options: List[ShardingOption],
                 sharder_data_map: Optional[SharderDataMap] = None) -> None:
        for option in sharding_options:
            if getattr(option.tensor, "_optimizer_classes", None):
                continue  # tagged for in-backward optimizers: TorchRec counted the state itself
            optimizer = self._optimizers.get(type(option.module[1]))
            in_device = self._compute_device == "cuda" and option.compute_kernel in DEVICE_MEMORY_KERNELS
            for shard in option.shards:
                extra = state_bytes(optimizer, shard.size[0], shard.size[1])
                if extra and shard.storage is not None:
                    if in_device:
                        shard.storage.hbm += extra
                    else:
                        shard.storage.ddr += extra

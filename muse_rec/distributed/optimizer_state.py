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

from typing import Any, Dict, List, Optional, Sequence, Tuple

from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torch import nn
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.planner.types import (ParameterConstraints, ShardEstimator, SharderDataMap,
                                                ShardingOption, Topology)
from torchrec.distributed.types import ModuleSharder

from muse_rec.distributed.sharders import state_optimizer

# fp32 state per shard of each FBGEMM optimizer: (values per element, values per row). FBGEMM keeps a
# per-element moment beside the rows (HBM for `fused`, host memory for the UVM kernels) and a per-row
# one in device memory whatever the kernel (`construct_split_state`: "if optimizer state is rowwise,
# optimizer is on device"). An optimizer missing here is an error, not free.
STATE_FLOATS: Dict[Any, Tuple[int, int]] = {
    EmbOptimType.EXACT_SGD: (0, 0),
    EmbOptimType.EXACT_ROWWISE_ADAGRAD: (0, 1),
    EmbOptimType.EMAINPLACE_ROWWISE_ADAGRAD: (0, 1),
    EmbOptimType.EXACT_ADAGRAD: (1, 0),
    EmbOptimType.ADAM: (2, 0),
    EmbOptimType.PARTIAL_ROWWISE_ADAM: (1, 1),
    EmbOptimType.LAMB: (2, 0),
    EmbOptimType.PARTIAL_ROWWISE_LAMB: (1, 1),
    EmbOptimType.LARS_SGD: (1, 0),
}
STATE_VALUE_BYTES = 4  # FBGEMM's moments are fp32 (no optimizer_state_dtypes is set)
# The kernel whose rows (and per-element state) live in device memory on CUDA; the UVM kernels keep
# them in host memory, and on CPU everything is host memory. (`dense` is data-parallel only, which no
# sharder here allows.)
DEVICE_MEMORY_KERNELS = (EmbeddingComputeKernel.FUSED.value,)


def _floats(optimizer: Any) -> Tuple[int, int]:
    if optimizer is None:
        return 0, 0
    if optimizer not in STATE_FLOATS:
        raise ValueError(f"no state size known for the fused optimizer {getattr(optimizer, 'value', optimizer)!r}")
    return STATE_FLOATS[optimizer]


def state_bytes(optimizer: Any, rows: int, dim: int) -> int:
    """State bytes of a ``rows x dim`` shard under `optimizer` (0 for None: a frozen table)."""
    per_element, per_row = _floats(optimizer)
    return rows * (per_element * dim + per_row) * STATE_VALUE_BYTES


def state_placement(optimizer: Any, rows: int, dim: int, compute_device: str, kernel: str) -> Tuple[int, int]:
    """(HBM, host) bytes of a shard's state: see `STATE_FLOATS` for where FBGEMM keeps each part."""
    per_element, per_row = _floats(optimizer)
    element_bytes = rows * per_element * dim * STATE_VALUE_BYTES
    row_bytes = rows * per_row * STATE_VALUE_BYTES
    if compute_device != "cuda":
        return 0, element_bytes + row_bytes
    if kernel in DEVICE_MEMORY_KERNELS:
        return element_bytes + row_bytes, 0
    return row_bytes, element_bytes


def state_memory(optimizer: Any, compute_device: str, kernel: str) -> str:
    """Where a table's state lives: ``hbm``, ``ddr``, ``hbm+ddr`` (per-row part in HBM) or ``-`` (none)."""
    hbm, ddr = state_placement(optimizer, 1, 1, compute_device, kernel)
    return "+".join(m for m, b in (("hbm", hbm), ("ddr", ddr)) if b) or "-"


def state_optimizers_by_module(sharders: Sequence[ModuleSharder[nn.Module]]) -> Dict[type, Any]:
    """Module type -> the optimizer whose state its sharder's tables carry (None: frozen)."""
    return {s.module_type: state_optimizer(s) for s in sharders}  # type: ignore[attr-defined]


class FusedOptimizerStateEstimator(ShardEstimator):
    """Adds each shard's fused-optimizer state to TorchRec's storage estimate (must run after it:
    `EmbeddingStorageEstimator` assigns each shard a fresh storage, this adds to it).

    Args:
        topology: the planner's topology (its compute device decides HBM or host memory).
        sharders: the sharders the plan is made for (their optimizers, by module type).
        constraints: unused; `ShardEstimator`'s constructor signature.
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
            for shard in option.shards:
                hbm, ddr = state_placement(optimizer, shard.size[0], shard.size[1], self._compute_device,
                                           option.compute_kernel)
                if hbm or ddr:
                    assert shard.storage is not None, "FusedOptimizerStateEstimator runs after the storage estimator"
                    shard.storage.hbm += hbm
                    shard.storage.ddr += ddr

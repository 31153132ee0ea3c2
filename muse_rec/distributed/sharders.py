"""Sharders: which sharding types and kernels each kind of table may use, and its fused optimizer.

Three sharders, one per kind of table in `SparseArch`:

* `TrainableEmbeddingBagCollectionSharder` (pooled features) and
  `TrainableEmbeddingCollectionSharder` (item/category): never ``data_parallel``. A
  data-parallel table is handed to the *dense* optimizer, which moves every row each step
  (momentum, weight decay) instead of only the rows the batch touched; and a data-parallel
  EC crashes on CPU in TorchRec 1.8 (``split_with_sizes``). The pooled sharder also allows
  ``row_wise``/``table_row_wise`` on CPU, which the stock sharder offers only on CUDA.
* `FrozenEmbeddingCollectionSharder` (the SCL table, keyed on `FrozenEmbeddingCollection`):
  no ``data_parallel``, fused kernels only, a stateless ``exact_sgd`` at learning rate 0.
  The table is also only looked up under no_grad. Its lookups leave the kernel as fp32 by
  default: with fp16 output, TorchRec 1.8's table-/column-wise sequence all-to-all returns
  garbage (inf) on the ranks that do not hold the table (seen with gloo; row-wise is fine),
  so FP16 output is allowed only with row-wise sharding (`check_frozen_output_dtype`).

The fused (in-backward) optimizer of the trainable tables is validated against what FBGEMM
supports on the device (`muse_rec.env.fused_optimizers`); nothing is substituted silently.
One exception, by design: ``adam`` on CPU, where FBGEMM has no fused Adam, takes the
`ROW_SPARSE_ADAM` route (`sparse_optimizer_route`): the trainable tables keep the fused kernel
with a no-op ``exact_sgd`` at lr 0 and `muse_rec.distributed.sparse_adam.RowSparseAdam` applies
torch SparseAdam's update to the touched rows (see that module for why this route).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple, Type

from fbgemm_gpu.split_embedding_configs import EmbOptimType, SparseType
from torch import nn
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.types import ModuleSharder, ShardingPlan, ShardingType

from muse_rec.env import fused_optimizers
from muse_rec.models.frozen_scl import FrozenEmbeddingCollection

# Sharding types per table kind, valid on CPU and CUDA (STACK.md lists what works).
EC_SHARDING_TYPES: List[str] = [
    ShardingType.TABLE_WISE.value,
    ShardingType.ROW_WISE.value,
    ShardingType.COLUMN_WISE.value,
]
EBC_SHARDING_TYPES: List[str] = [
    ShardingType.TABLE_WISE.value,
    ShardingType.ROW_WISE.value,
    ShardingType.COLUMN_WISE.value,
    ShardingType.TABLE_ROW_WISE.value,
    ShardingType.TABLE_COLUMN_WISE.value,
]
# How the trainable tables are updated (`sparse_optimizer_route`).
FBGEMM_FUSED = "fbgemm_fused"  # FBGEMM's optimizer inside the TBE backward
ROW_SPARSE_ADAM = "row_sparse_adam"  # CPU Adam: RowSparseAdam after the backward, touched rows only
# Optimizer names this project's `RowSparseAdam` serves where FBGEMM has no fused kernel for them.
ROW_SPARSE_ADAM_NAMES = ("adam",)
# Optimizers whose kernels apply `weight_decay`, per device. FBGEMM's Adam kernels (CUDA) decay
# decoupled, on the rows a step touches: w -= lr * (adam_step + weight_decay * w), and RowSparseAdam
# (CPU adam) does the same; its LAMB and LARS kernels apply it inside their own (trust-ratio)
# updates. FBGEMM's Adagrad/SGD kernels run with TorchRec's
# default weight_decay_mode NONE and drop it (measured on CPU: identical rows with 0 and 0.5),
# so a non-zero weight_decay there is refused rather than silently ignored.
DECAYING_OPTIMIZERS = {
    "cuda": ("adam", "partial_row_wise_adam", "lamb", "partial_row_wise_lamb", "lars_sgd"),
    "cpu": ROW_SPARSE_ADAM_NAMES,
}

# Kernels that keep a table's rows as plain fused TBE weights (HBM, UVM or a UVM cache);
# key-value / SSD kernels are left out for the frozen table: they have their own load path.
FROZEN_KERNELS: List[str] = [
    EmbeddingComputeKernel.FUSED.value,
    EmbeddingComputeKernel.FUSED_UVM.value,
    EmbeddingComputeKernel.FUSED_UVM_CACHING.value,
]


@dataclass(frozen=True)
class FusedOptimizerConfig:
    """The in-backward optimizer of the trainable embedding tables.

    Attributes:
        name: an FBGEMM `EmbOptimType` value, e.g. ``exact_row_wise_adagrad``.
        learning_rate: sparse learning rate (2e-3 in the reference).
        eps: optimizer epsilon.
        weight_decay: decay of the touched rows, for the optimizers of ``DECAYING_OPTIMIZERS``
            (decoupled for Adam; 0 = none).
        extra: further FBGEMM fused params passed through (e.g. ``beta1`` for Adam on CUDA).
    """

    name: str = "exact_row_wise_adagrad"
    learning_rate: float = 2e-3
    eps: float = 1e-8
    weight_decay: float = 0.0
    extra: Mapping[str, Any] = field(default_factory=dict)

    def route(self, device_type: str) -> str:
        """`FBGEMM_FUSED` or `ROW_SPARSE_ADAM` for this optimizer on `device_type`."""
        return sparse_optimizer_route(self.name, device_type)

    def check_weight_decay(self, device_type: str) -> None:
        """Raise ValueError if `weight_decay` is set but this optimizer on `device_type` would drop it."""
        decaying = DECAYING_OPTIMIZERS["cuda" if device_type == "cuda" else "cpu"]
        if self.weight_decay and self.name not in decaying:
            raise ValueError(
                f"{self.weight_decay:g} would be ignored: {self.name!r} on {device_type} applies no weight decay "
                f"(FBGEMM's kernel runs without a decay mode); set 0, or use one that decays the rows it "
                f"touches there: {', '.join(decaying)}")

    def check_supported(self, device_type: str) -> None:
        """Raise ValueError unless FBGEMM or `RowSparseAdam` serves this optimizer on `device_type`."""
        if self.route(device_type) == ROW_SPARSE_ADAM:
            return
        supported = fused_optimizers(device_type)
        if self.name not in supported:
            also = [n for n in ROW_SPARSE_ADAM_NAMES if n not in supported and device_type != "cuda"]
            raise ValueError(
                f"fused optimizer {self.name!r} is not supported on {device_type} by FBGEMM; "
                f"supported there: {supported + also}"
            )

    def problem(self, device_type: str) -> Optional[Tuple[str, str]]:
        """What stops this config on `device_type`, the optimizer before its decay: ``(key, why)``
        with key ``name`` or ``weight_decay`` (callers prefix their spec section), or None."""
        for key, check in (("name", self.check_supported), ("weight_decay", self.check_weight_decay)):
            try:
                check(device_type)
            except ValueError as e:
                return key, str(e)
        return None

    def fused_params(self, device_type: str) -> Dict[str, Any]:
        """TorchRec ``fused_params`` for `device_type`; raises ValueError with `problem`'s reason if
        neither FBGEMM nor `RowSparseAdam` serves the optimizer there, or if it would drop `weight_decay`."""
        problem = self.problem(device_type)
        if problem is not None:
            raise ValueError(problem[1])
        if self.route(device_type) == ROW_SPARSE_ADAM:
            # The kernel's own optimizer is never invoked (RowSparseAdam detaches the lookups);
            # exact_sgd at lr 0 keeps no state and is a no-op even if it were.
            return {"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": 0.0}
        params: Dict[str, Any] = {
            "optimizer": EmbOptimType(self.name),
            "learning_rate": self.learning_rate,
            "eps": self.eps,
            "weight_decay": self.weight_decay,
        }
        params.update(self.extra)
        return params


def sparse_optimizer_route(name: str, device_type: str) -> str:
    """Which code updates the trainable tables for optimizer `name` on `device_type`.

    CUDA: always FBGEMM's fused optimizer (fused Adam included). CPU: FBGEMM's fused kernels
    for what they support; ``adam`` goes to `RowSparseAdam` (lazy Adam on touched rows).
    """
    return ROW_SPARSE_ADAM if device_type != "cuda" and name in ROW_SPARSE_ADAM_NAMES else FBGEMM_FUSED


def describe_sparse_route(name: str, lr: float, device_type: str) -> str:
    """One line for logs and `muse-rec info`: what updates the ID tables."""
    if sparse_optimizer_route(name, device_type) == ROW_SPARSE_ADAM:
        return f"{name} (lr {lr:g}) via RowSparseAdam on {device_type}: torch SparseAdam's update, touched rows only"
    return f"{name} (lr {lr:g}) fused by FBGEMM on {device_type}"


class TrainableEmbeddingCollectionSharder(EmbeddingCollectionSharder):
    """EmbeddingCollectionSharder without ``data_parallel`` (see module docstring)."""

    def sharding_types(self, compute_device_type: str) -> List[str]:
        return [t for t in super().sharding_types(compute_device_type) if t in EC_SHARDING_TYPES]


class TrainableEmbeddingBagCollectionSharder(EmbeddingBagCollectionSharder):
    """EmbeddingBagCollectionSharder without ``data_parallel``, with row-wise on CPU too."""

    def sharding_types(self, compute_device_type: str) -> List[str]:
        return list(EBC_SHARDING_TYPES)


class _RowSparseAdamRoute:
    """Mixin of the `ROW_SPARSE_ADAM` sharders: the plain ``fused`` kernel only (RowSparseAdam
    taps FBGEMM's CPU kernel modules), and the Adam config `shard_model` builds RowSparseAdam from.

    Args:
        row_sparse_optimizer: the ``adam`` config (lr, eps, weight_decay, ``beta1``/``beta2``).
    """

    # The optimizer whose state the tables carry (for plan reports): RowSparseAdam keeps Adam's
    # two fp32 moments per element, although the kernel's own fused optimizer is exact_sgd.
    state_optimizer = EmbOptimType.ADAM

    def __init__(self, row_sparse_optimizer: FusedOptimizerConfig, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # type: ignore[call-arg]
        self.row_sparse_optimizer = row_sparse_optimizer

    def compute_kernels(self, sharding_type: str, compute_device_type: str) -> List[str]:
        return [EmbeddingComputeKernel.FUSED.value]


class RowSparseAdamECSharder(_RowSparseAdamRoute, TrainableEmbeddingCollectionSharder):
    """Trainable EC sharder of the `ROW_SPARSE_ADAM` route (see `_RowSparseAdamRoute`)."""


class RowSparseAdamEBCSharder(_RowSparseAdamRoute, TrainableEmbeddingBagCollectionSharder):
    """Trainable EBC sharder of the `ROW_SPARSE_ADAM` route (see `_RowSparseAdamRoute`)."""


def row_sparse_optimizer(sharders: List[ModuleSharder[nn.Module]]) -> Optional[FusedOptimizerConfig]:
    """The Adam config when `sharders` take the `ROW_SPARSE_ADAM` route, else None."""
    return next((s.row_sparse_optimizer for s in sharders if isinstance(s, _RowSparseAdamRoute)), None)


class FrozenEmbeddingCollectionSharder(EmbeddingCollectionSharder):
    """Sharder for `FrozenEmbeddingCollection`: fused kernels, lr 0, stateless, no data_parallel.

    Args:
        output_dtype: dtype of the looked-up vectors; FP32 (default) is correct for every
            sharding type, FP16 halves the all-to-all but only works row-wise (module docstring).
    """

    def __init__(self, output_dtype: SparseType = SparseType.FP32) -> None:
        super().__init__(
            fused_params={
                # exact_sgd keeps no per-row state (Adagrad on a 35M x 128 table would add
                # 17 GB of state); lr 0 makes even a stray gradient a no-op.
                "optimizer": EmbOptimType.EXACT_SGD,
                "learning_rate": 0.0,
                "output_dtype": output_dtype,
            }
        )

    @property
    def module_type(self) -> Type[FrozenEmbeddingCollection]:  # type: ignore[override]
        return FrozenEmbeddingCollection

    def sharding_types(self, compute_device_type: str) -> List[str]:
        return [t for t in super().sharding_types(compute_device_type) if t in EC_SHARDING_TYPES]

    def compute_kernels(self, sharding_type: str, compute_device_type: str) -> List[str]:
        return [k for k in super().compute_kernels(sharding_type, compute_device_type) if k in FROZEN_KERNELS]


def state_optimizer(sharder: ModuleSharder[nn.Module]) -> Any:
    """The optimizer whose per-row state `sharder`'s tables carry: its fused optimizer, or
    Adam for the `ROW_SPARSE_ADAM` sharders (None when it carries no optimizer)."""
    return getattr(sharder, "state_optimizer", None) or (getattr(sharder, "fused_params", None) or {}).get("optimizer")


def make_sharders(
    optimizer: FusedOptimizerConfig,
    device_type: str,
    frozen_output_dtype: SparseType = SparseType.FP32,
) -> List[ModuleSharder[nn.Module]]:
    """The sharders for a model built from `SparseArch`, for the planner and for DMP.

    Args:
        optimizer: fused optimizer of the trainable tables (validated for `device_type`).
        device_type: ``cpu`` or ``cuda``.
        frozen_output_dtype: output dtype of frozen lookups (see the frozen sharder).
    """
    fused = optimizer.fused_params(device_type)
    if optimizer.route(device_type) == ROW_SPARSE_ADAM:
        trainable: List[ModuleSharder[nn.Module]] = [
            RowSparseAdamEBCSharder(row_sparse_optimizer=optimizer, fused_params=dict(fused)),
            RowSparseAdamECSharder(row_sparse_optimizer=optimizer, fused_params=dict(fused)),
        ]  # type: ignore[list-item]
    else:
        trainable = [TrainableEmbeddingBagCollectionSharder(fused_params=dict(fused)),
                     TrainableEmbeddingCollectionSharder(fused_params=dict(fused))]  # type: ignore[list-item]
    return [
        *trainable,
        FrozenEmbeddingCollectionSharder(output_dtype=frozen_output_dtype),
    ]  # type: ignore[list-item]


def check_frozen_output_dtype(
    module: nn.Module, plan: ShardingPlan, sharders: List[ModuleSharder[nn.Module]], world_size: int
) -> None:
    """Refuse fp16 frozen lookups under a plan that would return garbage (module docstring)."""
    frozen = [s for s in sharders if isinstance(s, FrozenEmbeddingCollectionSharder)]
    if world_size == 1 or not frozen or (frozen[0].fused_params or {}).get("output_dtype") != SparseType.FP16:
        return
    for path, m in module.named_modules():
        if not isinstance(m, FrozenEmbeddingCollection):
            continue
        for table, ps in (plan.get_plan_for_module(path) or {}).items():  # type: ignore[union-attr]
            if ps.sharding_type != ShardingType.ROW_WISE.value:
                raise ValueError(
                    f"frozen table {table!r} ({path}) is planned {ps.sharding_type} with fp16 output on "
                    f"{world_size} ranks: TorchRec 1.8 returns wrong values there; use "
                    "frozen_output_dtype=FP32 or constrain the table to row_wise"
                )

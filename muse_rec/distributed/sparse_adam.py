"""Lazy (sparse) Adam for TorchRec-sharded tables on CPU: torch SparseAdam's update, touched rows only.

Why this exists: FBGEMM's fused CPU kernels have no Adam ("Optimizer adam is not supported in
CPU mode"), and the paper trains every ID table with torch ``SparseAdam`` (lr 2e-3). TorchRec's
other route, the ``DENSE`` compute kernel, is refused by the TorchRec 1.8 planner for anything
but ``data_parallel`` (a full replica per rank, the whole table all-reduced every step), and
its FBGEMM backward writes a full-table gradient each step. So the tables stay on TorchRec's
``FUSED`` kernel (sharded table-/row-/column-wise exactly as before, same lookups, same
checkpoints) and this optimizer takes over their update:

1. Tap: a forward hook on each trainable kernel module (``BatchedFusedEmbedding[Bag]``) that
   runs with grad enabled replaces the kernel's output by a detached leaf and keeps the ids
   the kernel looked up (this rank's local rows, after TorchRec's input all-to-all). FBGEMM's
   own backward therefore never runs for these tables (their fused optimizer is a stateless
   ``exact_sgd`` at lr 0 that is never invoked). Lookups under ``no_grad`` (evaluation, the
   whole-sequence ID lookup of SIM-soft/TWIN) are not tapped: they touch nothing, as with
   SparseAdam on ``nn.Embedding(sparse=True)``.
2. Backward: the leaf's gradient (``[N, D]`` per looked-up id for sequence lookups, ``[B, sum D]``
   per bag for pooled SUM lookups) arrives at a tensor hook, which stores ``(rows, grads)``.
3. ``step()``: per table shard, duplicates are summed (``unique`` + ``index_add_``: the
   coalesced sparse gradient), padding row 0 is dropped (the reference's ``padding_idx=0``:
   never updated), and torch's ``sparse_adam`` update is applied to those rows only, with the
   same floating-point operations in the same order, so identical gradients give bit-identical
   rows, moments and weights.

Cost per step: O(looked-up ids x D) for gathering gradients plus O(touched rows x D) for the
update; nothing proportional to the table. State: ``exp_avg`` and ``exp_avg_sq`` fp32, one
element each per table element (2x the table, as any Adam), plus one step count per table.
The state is exposed as ShardedTensors with the table's own shard layout, so the project's
DCP checkpoints save it and reshard it like the tables (N ranks -> M ranks). It is zeroed on
first use, so a model built only for evaluation never makes those pages resident.

Bias correction counts training steps of this optimizer (one per ``step()`` after a backward),
as FBGEMM's fused Adam counts iterations; SparseAdam counts per table, which is the same when
every table is in every step's loss (true for the models here: all tables are looked up each
batch). Weight decay, if set, is decoupled and lazy as in FBGEMM's fused Adam on CUDA: a touched
row also loses ``lr * weight_decay * w`` (its value before the step), its moments see only the
gradient, and untouched rows do not decay; SparseAdam itself has none (the paper's setting: 0).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.distributed._shard.sharded_tensor import Shard, ShardedTensor
from torchrec.distributed.batched_embedding_kernel import BatchedFusedEmbedding, BatchedFusedEmbeddingBag
from torchrec.distributed.embedding import ShardedEmbeddingCollection
from torchrec.distributed.embeddingbag import ShardedEmbeddingBagCollection
from torchrec.optim.keyed import KeyedOptimizer
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

# Row 0 of every ID table is padding / unknown: the reference never updates it (padding_idx=0).
PADDING_ROW = 0
# fbgemm_gpu PoolingMode values of the kernels this optimizer understands.
_POOLING_SUM, _POOLING_NONE = 0, 2


@dataclass
class _TableShard:
    """One local shard of one table: its weight view, its Adam state, this step's gradients."""

    key: str  # the table's state-dict key, e.g. "model.sparse_arch.ids.embeddings.item.weight"
    weight: torch.Tensor  # [local rows, local cols] view of the FBGEMM weights
    row_offset: int  # global row of local row 0 (row-wise shards)
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    rows: List[torch.Tensor] = field(default_factory=list)  # pending local row ids
    grads: List[torch.Tensor] = field(default_factory=list)  # pending [n, local cols] gradients


@dataclass
class _FeatureRoute:
    """Where one KJT feature of a kernel goes: its table shard and its columns in a pooled output."""

    shard: _TableShard
    col: int
    dim: int


class RowSparseAdam(KeyedOptimizer):
    """torch ``SparseAdam`` semantics for the fused-kernel tables of a DMP (CPU route).

    Args:
        dmp: the sharded model (``DistributedModelParallel``); its tables must use TorchRec's
            ``FUSED`` kernel with a no-op fused optimizer (`sharders.make_sharders` does that
            for ``adam`` on CPU).
        table_keys: state-dict keys of the tables to train (``dmp.fused_optimizer.params``
            keys, frozen tables left out).
        lr, betas, eps, weight_decay: Adam's hyper-parameters (SparseAdam's defaults but lr).

    State per table (by ``table_keys`` key): ``exp_avg``, ``exp_avg_sq`` (ShardedTensors laid
    out like the table) and ``step`` (0-dim int64).
    """

    def __init__(
        self,
        dmp: nn.Module,
        table_keys: Sequence[str],
        lr: float = 2e-3,
        betas: Tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        if not 0.0 <= betas[0] < 1.0 or not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"RowSparseAdam: betas must be in [0, 1), got {betas}")
        fused_params: Mapping[str, Any] = dmp.fused_optimizer.params  # type: ignore[union-attr]
        missing = sorted(set(table_keys) - set(fused_params))
        if missing:
            raise ValueError(f"RowSparseAdam: {missing} are not fused tables of this model on this rank")
        params: Dict[str, ShardedTensor] = {}
        state: Dict[Any, Dict[str, Any]] = {}
        by_ptr: Dict[Tuple[int, Tuple[int, ...]], _TableShard] = {}
        self._shards: List[_TableShard] = []
        for key in table_keys:
            weight = fused_params[key]
            if not isinstance(weight, ShardedTensor):
                raise ValueError(f"RowSparseAdam: {key} is a {type(weight).__name__}, expected a ShardedTensor")
            avg, avg_sq = [], []
            for s in weight.local_shards():
                # Allocated, zeroed on first use (`_zero_state_once`): a model built only to
                # evaluate never touches these pages, so they never become resident.
                shard = _TableShard(key, s.tensor, int(s.metadata.shard_offsets[0]),
                                    torch.empty_like(s.tensor, dtype=torch.float32),
                                    torch.empty_like(s.tensor, dtype=torch.float32))
                by_ptr[(s.tensor.data_ptr(), tuple(s.tensor.shape))] = shard
                self._shards.append(shard)
                avg.append(Shard(shard.exp_avg, s.metadata))
                avg_sq.append(Shard(shard.exp_avg_sq, s.metadata))
            # A distinct ShardedTensor over the same shards: CombinedOptimizer keys state by
            # parameter object, and the fused optimizer already holds `weight` itself.
            param = _like(weight, weight.local_shards())
            params[key] = param
            state[param] = {"exp_avg": _like(weight, avg), "exp_avg_sq": _like(weight, avg_sq),
                            "step": torch.zeros((), dtype=torch.int64)}
        self._steps: Dict[str, torch.Tensor] = {k: state[p]["step"] for k, p in params.items()}
        self._routes: Dict[int, Tuple[List[_FeatureRoute], int]] = {}
        self._tapped_since_step = False
        self._state_zeroed = False
        for kernel in fused_kernels(dmp):
            routes = _kernel_routes(kernel, by_ptr)
            if routes is None:
                continue
            self._routes[id(kernel)] = routes
            kernel.register_forward_hook(self._tap)
        untapped = sorted({s.key for s in self._shards} - {r.shard.key for rs, _ in self._routes.values() for r in rs})
        if untapped:
            raise ValueError(f"RowSparseAdam: no fused CPU kernel holds {untapped} (unsupported compute kernel?)")
        group = {"params": list(params.values()), "lr": lr, "betas": tuple(betas), "eps": eps,
                 "weight_decay": weight_decay}
        super().__init__(params, state, [group])

    # -- capture -----------------------------------------------------------------------------

    def _tap(self, kernel: nn.Module, inputs: Tuple[Any, ...], output: torch.Tensor) -> Optional[torch.Tensor]:
        """Forward hook: a grad-enabled lookup hands its gradient to us instead of to FBGEMM."""
        if not (torch.is_grad_enabled() and output.requires_grad):
            return None
        features: KeyedJaggedTensor = inputs[0]
        routes, pooling = self._routes[id(kernel)]
        ids = features.values().detach()
        per_key = features.length_per_key()
        lengths = features.lengths() if pooling == _POOLING_SUM else None
        weights = features.weights_or_none()
        stride = features.stride()
        leaf = output.detach().requires_grad_(True)

        def collect(grad: torch.Tensor) -> None:
            start = 0
            for i, (route, n) in enumerate(zip(routes, per_key)):
                rows = ids[start : start + n]
                if pooling == _POOLING_NONE:  # one output row per id: [N, D]
                    g = grad[start : start + n]
                else:  # SUM pooling: each id gets its bag's gradient, [B, sum D]
                    bag = torch.repeat_interleave(torch.arange(stride), lengths[i * stride : (i + 1) * stride])
                    g = grad[bag, route.col : route.col + route.dim]
                    if weights is not None:
                        g = g * weights[start : start + n].unsqueeze(1)
                route.shard.rows.append(rows)
                route.shard.grads.append(g)
                start += n

        leaf.register_hook(collect)
        self._tapped_since_step = True
        return leaf

    # -- optimizer ---------------------------------------------------------------------------

    def _zero_state_once(self) -> None:
        if not self._state_zeroed:
            for shard in self._shards:
                shard.exp_avg.zero_()
                shard.exp_avg_sq.zero_()
            self._state_zeroed = True

    def state_dict(self) -> Dict[str, Any]:
        self._zero_state_once()
        return super().state_dict()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for shard in self._shards:
            shard.rows.clear()
            shard.grads.clear()

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        """SparseAdam on the rows this step's backward touched (module docstring)."""
        if not self._tapped_since_step:  # no training forward since the last step
            return
        self._tapped_since_step = False
        self._zero_state_once()
        group = self.param_groups[0]  # type: ignore[index]
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        for step in self._steps.values():
            step += 1
        for shard in self._shards:
            if not shard.rows:
                continue
            rows, grads = torch.cat(shard.rows), torch.cat(shard.grads)
            shard.rows.clear()
            shard.grads.clear()
            rows, inverse = torch.unique(rows, return_inverse=True)
            grad = torch.zeros((rows.numel(), grads.shape[1]), dtype=torch.float32).index_add_(0, inverse, grads.float())
            keep = rows + shard.row_offset != PADDING_ROW
            if not bool(keep.all()):
                rows, grad = rows[keep], grad[keep]
            if rows.numel() == 0:
                continue
            w_old = shard.weight.index_select(0, rows)
            # Decoupled, as FBGEMM's CUDA Adam: w - lr * (adam_step + wd * w), from the old w.
            decay = w_old * (lr * wd) if wd else None
            # torch.optim._functional.sparse_adam, op for op (same rounding).
            m_old = shard.exp_avg.index_select(0, rows)
            v_old = shard.exp_avg_sq.index_select(0, rows)
            m_new = grad.sub(m_old).mul_(1 - beta1).add_(m_old)
            v_new = grad.pow(2).sub_(v_old).mul_(1 - beta2).add_(v_old)
            shard.exp_avg.index_copy_(0, rows, m_new)
            shard.exp_avg_sq.index_copy_(0, rows, v_new)
            t = int(self._steps[shard.key])
            step_size = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)
            update = -step_size * m_new.div_(v_new.sqrt_().add_(eps))
            w_new = w_old.add_(update.to(w_old.dtype))
            if decay is not None:
                w_new.sub_(decay)
            shard.weight.index_copy_(0, rows, w_new)

    def post_load_state_dict(self) -> None:
        # Moments and steps were copied in place (KeyedOptimizer.load_state_dict).
        self._state_zeroed = True
        self._tapped_since_step = False


def _like(template: ShardedTensor, shards: List[Shard]) -> ShardedTensor:
    """A ShardedTensor with `template`'s global layout over `shards` (fp32 state or the weight)."""
    meta = copy.deepcopy(template.metadata())
    meta.tensor_properties.dtype = shards[0].tensor.dtype if shards else meta.tensor_properties.dtype
    meta.tensor_properties.requires_grad = False
    return ShardedTensor._init_from_local_shards_and_global_metadata(
        local_shards=shards, sharded_tensor_metadata=meta, process_group=template._process_group
    )


def fused_kernels(dmp: nn.Module) -> List[nn.Module]:
    """The FBGEMM fused kernel modules of every sharded (bag) collection of `dmp`."""
    out: List[nn.Module] = []
    for module in dmp.modules():
        if isinstance(module, (ShardedEmbeddingCollection, ShardedEmbeddingBagCollection)):
            for lookup in module._lookups:
                out.extend(k for k in getattr(lookup, "_emb_modules", []) if isinstance(k, (BatchedFusedEmbedding, BatchedFusedEmbeddingBag)))
    return out


def _kernel_routes(kernel: nn.Module, by_ptr: Mapping[Tuple[int, Tuple[int, ...]], _TableShard]
                   ) -> Optional[Tuple[List[_FeatureRoute], int]]:
    """Per KJT feature of `kernel`: the table shard it reads and its output columns; None if
    `kernel` holds none of our tables. Raises for a kernel mixing ours and others'."""
    views = kernel.emb_module.split_embedding_weights()  # type: ignore[union-attr]
    tables = [by_ptr.get((v.data_ptr(), tuple(v.shape))) for v in views]
    if all(t is None for t in tables):
        return None
    names = [t.name for t in kernel._config.embedding_tables]  # type: ignore[union-attr]
    if any(t is None for t in tables):
        raise ValueError(f"RowSparseAdam: kernel groups tables {names} of which only some are ours")
    pooling = int(kernel.emb_module.pooling_mode)  # type: ignore[union-attr]
    if pooling not in (_POOLING_SUM, _POOLING_NONE):
        raise ValueError(f"RowSparseAdam: tables {names} use pooling mode {pooling}; supported: SUM and sequence")
    routes, col = [], 0
    for t in kernel._feature_table_map:  # type: ignore[union-attr]
        dim = int(views[t].shape[1])
        routes.append(_FeatureRoute(tables[t], col, dim))  # type: ignore[arg-type]
        col += dim
    return routes, pooling

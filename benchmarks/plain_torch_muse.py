"""A plain-PyTorch twin of the TorchRec MUSE model, the baseline the training benchmark compares against.

What it IS:
* the very same dense model: `LifelongCTRModel`'s GSU / ESU / short-term branch / Dice tower
  (from ``muse_rec.models`` and ``muse_rec.modules``), built from the same `ModelSpec`, with the
  same tables at the same sizes and widths (item / category tables shared by target and
  behaviours, one pooled table per `POOLED_FEATURES` entry, the 8-d small user fields);
* every TorchRec collection replaced by ``nn.Embedding(sparse=True)`` (`PlainSparseArch`),
  the frozen SCL table by a plain fp16 tensor indexed under ``no_grad``;
* trained by stock torch optimizers: ``SparseAdam`` (the reference's choice) or ``Adagrad``
  on the embeddings, the spec's dense optimizer (AdamW) on the rest, and plain
  ``DistributedDataParallel`` (gloo, sparse gradients all-reduced) for several processes.

What it is NOT: sharded (every rank holds every table), pipelined (no input distribution
overlapped with compute), fused (no optimizer inside the backward, no FBGEMM TBE kernels), or a
second implementation of the model's math. The ratio TorchRec / plain in the benchmark is
therefore what TorchRec + FBGEMM (sharded embeddings, fused row-wise optimizers, the train
pipeline) buy over ``nn.Embedding`` for the same computation.

Lookups follow the TorchRec model exactly: only valid (selected / real) ids are looked up with
gradient, so an optimizer step touches the same rows in both. `copy_from_torchrec` loads an
unsharded TorchRec `SparseArch`'s weights so tests can check both produce the same logits.

Example::

    model = build_plain_model(spec.model, data.vocab_sizes, seq_len=1000, device=torch.device("cpu"))
    model.model.sparse_arch.load_scl_(data.scl())
    step = PlainTrainStep(model, spec.train.dense_optimizer, sparse_optimizer="sparse_adam", sparse_lr=2e-3)
    loss = step(batch)
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torchrec import KeyedJaggedTensor, KeyedTensor

from muse_rec.data.batch import POOLED_FEATURES, Batch
from muse_rec.models.ctr_model import LifelongCTRModel, LifelongCTRTrain
from muse_rec.models.sparse_arch import CATEGORY_TABLE, ITEM_TABLE, REQUIRED_TABLES, IdTokens, SparseArch
from muse_rec.spec import ModelSpec

SCL_DIM = 128
SPARSE_OPTIMIZERS = ("sparse_adam", "adagrad")


def _masked_lookup(table: nn.Embedding, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B, N]`` ids -> ``[B, N, D]``; only ``mask`` positions are looked up (zeros elsewhere).

    Looking up a masked id with a zero gradient would still make SparseAdam move that row
    (its moments decay), so masked ids never reach the table, as in the TorchRec model.
    """
    out = table.weight.new_zeros(*ids.shape, table.embedding_dim)
    out[mask] = table(ids[mask])
    return out


class PooledEmbeddings(nn.Module):
    """One ``nn.Embedding(sparse=True)`` per pooled feature (one id per sample each).

    ``forward(kjt)`` takes `Batch.pooled` (keys `POOLED_FEATURES`, one id per sample) and
    returns a KeyedTensor ``[B, sum dims]`` in `POOLED_FEATURES` order, the TorchRec EBC's contract.
    """

    def __init__(self, sizes: Mapping[str, int], dims: Mapping[str, int], device: torch.device) -> None:
        super().__init__()
        self.tables = nn.ModuleDict({
            f: nn.Embedding(int(sizes[f]), int(dims[f]), sparse=True, device=device) for f in POOLED_FEATURES
        })

    def forward(self, kjt: KeyedJaggedTensor) -> KeyedTensor:
        if kjt.keys() != POOLED_FEATURES:
            raise ValueError(f"pooled KJT keys {kjt.keys()} != {POOLED_FEATURES}")
        B = kjt.stride()
        ids = kjt.values().view(len(POOLED_FEATURES), B)  # feature-major, exactly one id each
        return KeyedTensor.from_tensor_list(
            POOLED_FEATURES, [self.tables[f](ids[i]) for i, f in enumerate(POOLED_FEATURES)])


class PlainSparseArch(nn.Module):
    """`SparseArch`'s interface on plain ``nn.Embedding(sparse=True)`` tables and an fp16 SCL tensor.

    Args:
        table_sizes: rows per table (row 0 = padding), keys `REQUIRED_TABLES`.
        dims: width per table (as `SparseArch.dims`).
        init_std: trunc-normal std of the trainable tables (truncated at +-2 std).
        scl_dim: width of the frozen multimodal vectors.
        device: where tables live.
    """

    in_feature_order = staticmethod(SparseArch.in_feature_order)

    def __init__(self, table_sizes: Mapping[str, int], dims: Mapping[str, int], init_std: float = 1e-3,
                 scl_dim: int = SCL_DIM, device: Optional[torch.device] = None) -> None:
        super().__init__()
        device = device or torch.device("cpu")
        missing = [t for t in REQUIRED_TABLES if t not in table_sizes]
        if missing:
            raise KeyError(f"table_sizes lacks {missing}; it needs {REQUIRED_TABLES}")
        self.dims: Dict[str, int] = {t: int(dims[t]) for t in REQUIRED_TABLES}
        self.pooled = PooledEmbeddings(table_sizes, self.dims, device)
        self.item = nn.Embedding(int(table_sizes[ITEM_TABLE]), self.dims[ITEM_TABLE], sparse=True, device=device)
        self.category = nn.Embedding(int(table_sizes[CATEGORY_TABLE]), self.dims[CATEGORY_TABLE], sparse=True,
                                     device=device)
        # Frozen: a buffer (no gradient, no optimizer), non-persistent (reloaded from data).
        self.register_buffer("scl", torch.zeros(int(table_sizes[ITEM_TABLE]), scl_dim, dtype=torch.float16,
                                                device=device), persistent=False)
        with torch.no_grad():
            for emb in self.trainable_tables():
                nn.init.trunc_normal_(emb.weight, std=init_std, a=-2 * init_std, b=2 * init_std)

    def trainable_tables(self) -> List[nn.Embedding]:
        return [self.item, self.category, *self.pooled.tables.values()]

    @property
    def token_dim(self) -> int:
        return self.dims[ITEM_TABLE] + self.dims[CATEGORY_TABLE]

    @property
    def pooled_dim(self) -> int:
        return sum(self.dims[f] for f in POOLED_FEATURES)

    def id_tokens(self, target_item: torch.Tensor, target_cat: torch.Tensor, gsu_items: torch.Tensor,
                  gsu_cats: torch.Tensor, gsu_mask: torch.Tensor, recent_items: torch.Tensor,
                  recent_cats: torch.Tensor, recent_mask: torch.Tensor) -> IdTokens:
        """Same contract as `SparseArch.id_tokens`: ``[B, D_tok]``, ``[B, K, D_tok]``, ``[B, R, D_tok]``."""
        target = torch.cat([self.item(target_item), self.category(target_cat)], dim=-1)
        gsu = torch.cat([_masked_lookup(self.item, gsu_items, gsu_mask),
                         _masked_lookup(self.category, gsu_cats, gsu_mask)], dim=-1)
        recent = torch.cat([_masked_lookup(self.item, recent_items, recent_mask),
                            _masked_lookup(self.category, recent_cats, recent_mask)], dim=-1)
        return IdTokens(target=target, gsu=gsu, recent=recent)

    def sequence_tokens_no_grad(self, seq_items: torch.Tensor, seq_cats: torch.Tensor,
                                seq_mask: torch.Tensor) -> torch.Tensor:
        """``[U, L, D_tok]`` tokens of whole histories without gradient (SIM-soft / TWIN GSUs)."""
        with torch.no_grad():
            tok = torch.cat([self.item(seq_items), self.category(seq_cats)], dim=-1)
            return tok * seq_mask.unsqueeze(-1).to(tok.dtype)

    def scl_vectors(self, target_item: torch.Tensor, seq_items: torch.Tensor,
                    seq_mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``[B, 128]`` target and ``[U, L, 128]`` behaviour SCL vectors (fp16, zeros at padding)."""
        with torch.no_grad():
            seq = self.scl[seq_items]
            return self.scl[target_item], seq.masked_fill_(~seq_mask.unsqueeze(-1), 0)

    def load_scl_(self, array: np.ndarray) -> int:
        """Copy the prepared ``[n_items, 128]`` SCL array (int8 or float) into the fp16 tensor."""
        if tuple(array.shape) != tuple(self.scl.shape):
            raise ValueError(f"SCL array has shape {tuple(array.shape)}, expected {tuple(self.scl.shape)} "
                             "(item vocabulary rows incl. row 0, SCL dim)")
        self.scl.copy_(torch.from_numpy(np.ascontiguousarray(array)).to(torch.float16))
        return int(array.shape[0])

    @torch.no_grad()
    def copy_from_torchrec(self, arch: SparseArch) -> None:
        """Load the weights of an unsharded TorchRec `SparseArch` (for equivalence tests)."""
        state = arch.state_dict()
        for f in POOLED_FEATURES:
            self.pooled.tables[f].weight.copy_(state[f"pooled.embedding_bags.{f}.weight"])
        self.item.weight.copy_(state[f"ids.embeddings.{ITEM_TABLE}.weight"])
        self.category.weight.copy_(state[f"ids.embeddings.{CATEGORY_TABLE}.weight"])
        self.scl.copy_(state["scl.collection.embeddings.scl.weight"].to(torch.float16))


def build_plain_model(spec: ModelSpec, table_sizes: Mapping[str, int], seq_len: int,
                      device: Optional[torch.device] = None) -> LifelongCTRTrain:
    """The spec's `LifelongCTRTrain` with `PlainSparseArch` in place of the TorchRec `SparseArch`.

    The model is first built on ``meta`` (no TorchRec table is ever allocated), its sparse arch is
    swapped, then its dense modules are materialised on `device` and re-initialised by their own
    ``reset_parameters``.
    """
    device = device or torch.device("cpu")
    model = LifelongCTRModel(spec, table_sizes, seq_len, device=torch.device("meta"))
    plain = PlainSparseArch(table_sizes, model.sparse_arch.dims, spec.init_std, device=device)
    model.sparse_arch = plain
    for name, child in model.named_children():
        if name == "sparse_arch":
            continue
        child.to_empty(device=device)
        for m in child.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset):
                reset()
    return LifelongCTRTrain(model)


def plain_sparse_arch(model: nn.Module) -> PlainSparseArch:
    """The `PlainSparseArch` inside a (possibly DDP-wrapped) plain model."""
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    arch = inner.model.sparse_arch
    if not isinstance(arch, PlainSparseArch):
        raise TypeError(f"not a plain model: sparse_arch is {type(arch).__name__}")
    return arch


class PlainTrainStep:
    """forward + backward + both optimizers on one `Batch` (the plain model's training step).

    Args:
        model: from `build_plain_model`, optionally wrapped in DDP
            (``broadcast_buffers=False``: the frozen SCL buffer never changes).
        dense: the spec's dense optimizer (``.name`` adamw / adam, ``.lr``, ``.betas``, ``.eps``,
            ``.weight_decay``).
        sparse_optimizer: "sparse_adam" (the reference's) or "adagrad" for the embeddings.
        sparse_lr: embeddings' learning rate.
    """

    def __init__(self, model: nn.Module, dense, sparse_optimizer: str = "sparse_adam",
                 sparse_lr: float = 2e-3) -> None:
        if sparse_optimizer not in SPARSE_OPTIMIZERS:
            raise ValueError(f"sparse_optimizer {sparse_optimizer!r} unknown; known: {SPARSE_OPTIMIZERS}")
        self.model = model
        sparse_params = [t.weight for t in plain_sparse_arch(model).trainable_tables()]
        sparse_ids = {id(p) for p in sparse_params}
        dense_params = [p for p in model.parameters() if p.requires_grad and id(p) not in sparse_ids]
        if sparse_optimizer == "sparse_adam":
            self.sparse = torch.optim.SparseAdam(sparse_params, lr=sparse_lr)
        else:
            self.sparse = torch.optim.Adagrad(sparse_params, lr=sparse_lr)
        if dense.name not in ("adamw", "adam"):
            raise ValueError(f"dense optimizer {dense.name!r}: the plain baseline supports adamw and adam")
        cls = torch.optim.AdamW if dense.name == "adamw" else torch.optim.Adam
        self.dense = cls(dense_params, lr=dense.lr, betas=tuple(dense.betas), eps=dense.eps,
                         weight_decay=dense.weight_decay)

    def __call__(self, batch: Batch) -> torch.Tensor:
        """One step; returns the detached loss."""
        self.sparse.zero_grad(set_to_none=True)
        self.dense.zero_grad(set_to_none=True)
        loss, _ = self.model(batch)
        loss.backward()
        self.sparse.step()
        self.dense.step()
        return loss.detach()


"""The frozen multimodal (SCL) item table: a TorchRec EmbeddingCollection that is never trained.

TorchRec 1.8 has no "frozen table" flag (see STACK.md). What works, and what this module
does, is a table of its own, `FrozenEmbeddingCollection`, that is

* looked up only under ``torch.no_grad()``, so the fused TBE kernel never builds an autograd
  node for it: no backward work, no optimizer update (fused optimizers update inside the
  backward), whatever else happens in the step;
* given its own sharder (``muse_rec.distributed.sharders.FrozenEmbeddingCollectionSharder``,
  keyed on this subclass) that forbids ``data_parallel`` (DMP would hand a data-parallel
  table to the dense optimizer) and carries a stateless ``exact_sgd`` with learning rate 0,
  so even a stray gradient could not move it and no optimizer state is allocated per row.

Storage is fp16 by default: the int8 SCL values are exact in fp16 and FBGEMM's CPU training
TBE accepts fp16 weights (256 B/row for 128-d); int8 weights fail inside TorchRec's fused
optimizer wrapper (see docs/sharding.md).
"""
from __future__ import annotations

import warnings
from typing import Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torchrec import DataType, EmbeddingCollection, EmbeddingConfig
from torchrec.modules.embedding_configs import data_type_to_dtype

from torchrec import KeyedJaggedTensor

from muse_rec.data.schema import SCL_DIM
from muse_rec.models.sparse_ids import dense_from_jagged, traced

SCL_TABLE = "scl"
SCL_TARGET_FEATURE = "scl_target"
SCL_SEQ_FEATURE = "scl_seq"
# Rows copied per step by `load_` (it makes no temporary copy; a bound on each step's work).
DEFAULT_LOAD_CHUNK_ROWS = 1 << 20


class FrozenEmbeddingCollection(EmbeddingCollection):
    """An `EmbeddingCollection` whose tables are frozen.

    Behaves exactly like its parent; the subclass exists so DMP picks the frozen sharder for
    it (DMP chooses sharders by exact module type) and so planners can tell it apart.
    """


class FrozenSCL(nn.Module):
    """Frozen per-item multimodal vectors looked up by item row.

    Args:
        num_rows: rows of the table = the item vocabulary size, row 0 = padding/unknown
            (kept all-zero, so padding and items without an SCL vector have cosine 0).
        dim: vector width (128 for Taobao-MM SCL).
        data_type: storage type; FP16 (default) or FP32. The lookup returns this dtype.
        device: where the table lives; ``meta`` to build without allocating (then shard
            with DMP and fill with `load_`).

    Example::

        scl = FrozenSCL(num_rows=1000, device=torch.device("meta"))
        # ... DistributedModelParallel(...) ...; scl.load_(np.load("scl.npy", mmap_mode="r"))
        target, seq = scl(target_item, seq_items, seq_mask)   # [B, 128], [B, L, 128]
    """

    def __init__(
        self,
        num_rows: int,
        dim: int = SCL_DIM,
        data_type: DataType = DataType.FP16,
        device: Optional[torch.device] = None,
    ) -> None:
        super().__init__()
        if num_rows < 1:
            raise ValueError(f"FrozenSCL needs at least 1 row (row 0 = padding), got num_rows={num_rows}")
        if data_type not in (DataType.FP16, DataType.FP32):
            raise ValueError(
                f"FrozenSCL data_type must be FP16 or FP32, got {data_type}: FBGEMM's training "
                "TBE cannot build an INT8 table under TorchRec's fused optimizer (docs/sharding.md)"
            )
        self.num_rows = num_rows
        self.dim = dim
        self.dtype: torch.dtype = data_type_to_dtype(data_type)
        self.collection = FrozenEmbeddingCollection(
            tables=[
                EmbeddingConfig(
                    name=SCL_TABLE,
                    embedding_dim=dim,
                    num_embeddings=num_rows,
                    feature_names=[SCL_TARGET_FEATURE, SCL_SEQ_FEATURE],
                    data_type=data_type,
                    # Zeros until `load_`: an unloaded table means "no SCL vector", never noise.
                    init_fn=nn.init.zeros_,
                )
            ],
            device=device,
        )

    @property
    def bytes_per_row(self) -> int:
        """Stored bytes per item row (weights only; the frozen sharder keeps no optimizer state)."""
        return self.dim * torch.empty((), dtype=self.dtype).element_size()

    def forward(
        self, target_item: torch.Tensor, seq_items: torch.Tensor, seq_mask: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Look up target and behaviour vectors, without autograd.

        Args:
            target_item: ``[B]`` int64 item rows.
            seq_items: ``[U, L]`` int64 item rows, right-aligned; U <= B (the model passes one
                row per distinct user of the batch: a user's ~11 impressions share a history).
            seq_mask: ``[U, L]`` bool, True at real behaviours; only those are looked up.

        Returns:
            ``[B, dim]`` target vectors and ``[U, L, dim]`` behaviour vectors (zeros where
            ``seq_mask`` is False), in the lookup's output dtype (fp32 from a sharded table by
            default, see sharders.py; the values are the stored int8 values, exactly).
        """
        B = target_item.shape[0]
        U, L = seq_items.shape
        if U > B:
            raise ValueError(f"{U} sequences for {B} targets: pass at most one sequence per sample")
        dev = target_item.device
        static = traced()  # once: both the ids and the output's layout follow it
        if static:
            # A traced program needs static shapes: every position is looked up, padding as row 0,
            # whose vector is zero (checked by `load_`), so the output is already the dense [U, L, dim]
            # layout. Rows 0..U-1 of the sequence feature hold the histories (a KJT has one stride for
            # all keys; no `B - U` sized tensor, whose size would guard B in a program with a dynamic B).
            seq_ids = torch.where(seq_mask, seq_items, 0).reshape(-1)
            seq_lengths = (torch.arange(B, device=dev) < U).to(torch.int32) * L
        else:
            # Only real behaviours are looked up (`traced`): at L = 100K on the demo's histories padding
            # is ~99% of the positions, and rank 0 held ~0.4 GiB more than rank 1 per step when it was
            # looked up (batch 8, 2 gloo ranks). The zero rows are filled in locally instead.
            seq_ids = seq_items[seq_mask]
            seq_lengths = torch.zeros(B, dtype=torch.int32, device=dev)
            seq_lengths[:U] = seq_mask.sum(dim=1, dtype=torch.int32)
        lengths = torch.cat([torch.ones(B, dtype=torch.int32, device=dev), seq_lengths])
        with torch.no_grad():
            kjt = KeyedJaggedTensor(keys=[SCL_TARGET_FEATURE, SCL_SEQ_FEATURE],
                                    values=torch.cat([target_item.to(torch.int64), seq_ids.to(torch.int64)]),
                                    lengths=lengths)
            out = self.collection(kjt)
            target = out[SCL_TARGET_FEATURE].values()
            seq = out[SCL_SEQ_FEATURE].values()
            # Output sizes are data-dependent for torch.export; state them (no-op in eager).
            torch._check(target.shape[0] == B)
            if static:
                torch._check(seq.shape[0] == U * L)
                seq = seq.view(U, L, self.dim)
            else:
                seq = dense_from_jagged(seq, seq_mask)
        return target, seq

    @torch.no_grad()
    def load_(self, array: np.ndarray, chunk_rows: int = DEFAULT_LOAD_CHUNK_ROWS) -> int:
        """Fill this rank's part of the table from the prepared SCL array.

        Works on the plain module and after DMP sharding: a sharded table's state_dict holds a
        `ShardedTensor` whose local shards are views of the TBE weights; only those slices of
        `array` are read (a memory-mapped array is never materialised whole).

        Args:
            array: ``[num_rows, dim]`` (int8 from prepare, or float), row 0 all zero.
            chunk_rows: rows converted per copy.

        Returns:
            The number of rows this rank wrote (summed over its shards).
        """
        if array.ndim != 2 or tuple(array.shape) != (self.num_rows, self.dim):
            raise ValueError(
                f"SCL array has shape {tuple(array.shape)}, expected ({self.num_rows}, {self.dim}) "
                "= (item vocabulary rows incl. row 0, SCL dim)"
            )
        if np.any(np.asarray(array[0]) != 0):
            raise ValueError("SCL array row 0 (padding/unknown item) must be all zeros")
        state = self.collection.state_dict()
        key = f"embeddings.{SCL_TABLE}.weight"
        if key not in state:
            raise KeyError(f"FrozenSCL state_dict has no {key!r} (keys: {sorted(state)})")
        weight = state[key]
        if isinstance(weight, ShardedTensor):
            pieces = [(s.tensor, s.metadata.shard_offsets) for s in weight.local_shards()]
        else:
            pieces = [(weight, [0, 0])]
        written = 0
        for tensor, (row0, col0) in pieces:
            rows, cols = tensor.shape
            for start in range(0, rows, chunk_rows):
                stop = min(rows, start + chunk_rows)
                # Converted by `copy_` straight from the array's memory: an fp16 copy of each chunk held 256 B per
                # row of a 1M-row chunk (256 MiB: the peak of loading a model for export), and a column shard's
                # slice was copied once more to be contiguous.
                tensor[start:stop].copy_(read_only_view(array[row0 + start : row0 + stop, col0 : col0 + cols]))
            written += rows
        return written


def read_only_view(array: np.ndarray) -> torch.Tensor:
    """A tensor over ``array``'s own memory (no copy), to be read only. A memory-mapped array is read-only and
    `torch.from_numpy` warns that writing through such a tensor is undefined; nothing here writes to it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)

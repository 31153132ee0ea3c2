"""Dense, masked id tensors <-> the jagged form TorchRec's EmbeddingCollection consumes.

The models hold ids densely (``[B, N]`` plus a validity mask) because the GSU works on dense
tensors; the EC wants a `KeyedJaggedTensor`. Only the *valid* ids go into the KJT: a fused
optimizer updates every row it sees in a backward, so a masked-out id must never reach the
table (not even as a padding row 0 with a zero gradient: Adagrad-style state still moves).
"""
from __future__ import annotations

from typing import List, Sequence

import torch
from torchrec import KeyedJaggedTensor


def masked_kjt(
    keys: Sequence[str], ids: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]
) -> KeyedJaggedTensor:
    """One KJT holding, per feature, the valid ids of each sample in row-major order.

    Args:
        keys: feature names, one per entry of `ids`; their order is the KJT's key order
            (keep it fixed across calls: a sharded EC fixes its feature order on first use).
        ids: per feature an integer tensor ``[B, N_f]``.
        masks: per feature a bool tensor ``[B, N_f]``, True where the id is looked up.

    Returns:
        KJT with ``stride() == B``; feature f has ``masks[f].sum(1)`` ids per sample.
    """
    if not (len(keys) == len(ids) == len(masks)):
        raise ValueError(f"masked_kjt got {len(keys)} keys, {len(ids)} id tensors, {len(masks)} masks")
    batch = {t.shape[0] for t in ids} | {m.shape[0] for m in masks}
    if len(batch) != 1:
        raise ValueError(f"masked_kjt: features have different batch sizes {sorted(batch)} ({list(keys)})")
    values: List[torch.Tensor] = []
    lengths: List[torch.Tensor] = []
    for key, idx, mask in zip(keys, ids, masks):
        if idx.shape != mask.shape or mask.dtype != torch.bool:
            raise ValueError(
                f"feature {key!r}: ids {tuple(idx.shape)} and bool mask {tuple(mask.shape)} "
                f"({mask.dtype}) must have the same shape"
            )
        # Boolean indexing walks row-major: sample 0's valid ids first, as the KJT wants.
        values.append(idx[mask].to(torch.int64))
        lengths.append(mask.sum(dim=1).to(torch.int32))
    return KeyedJaggedTensor(keys=list(keys), values=torch.cat(values), lengths=torch.cat(lengths))


def dense_from_jagged(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scatter looked-up rows back to their dense positions, zeros elsewhere.

    Args:
        values: ``[mask.sum(), D]`` embeddings in `masked_kjt` order.
        mask: ``[B, N]`` bool.

    Returns:
        ``[B, N, D]``; differentiable with respect to `values`.
    """
    B, N = mask.shape
    flat = mask.reshape(-1)
    positions = flat.nonzero().squeeze(1)
    if positions.numel() != values.shape[0]:
        raise ValueError(f"{values.shape[0]} embeddings for {positions.numel()} valid positions")
    # In place into the zeros: an out-of-place index_copy held a second [B, N, D] while it ran (the SCL
    # lookup's [users, L, 128]: +1.4 GiB at batch 64, L = 100K). The gradient to `values` is the same.
    out = values.new_zeros(B * N, values.shape[1])
    out.index_copy_(0, positions, values)
    return out.view(B, N, values.shape[1])


def traced() -> bool:
    """True while ``torch.export`` or ``torch.compile`` traces the model: lookups then take every
    slot with fixed lengths (static shapes) instead of the valid ids of `masked_kjt`, whose count is
    data-dependent. Eagerly only valid ids are looked up, in evaluation too: padding looked up as
    row 0 goes, in a row-wise sharded table, to the one rank holding row 0 from every rank."""
    return torch.compiler.is_exporting() or torch.compiler.is_compiling()

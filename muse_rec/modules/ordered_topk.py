"""Top-k whose ties are decided: equal values lowest position first, as the native running top-K keeps them.

`topk_lowest_position_first` is one `torch.topk` of int64 keys (value order, then position), so it
traces and exports; wide rows pre-select whole blocks of columns by their maxima first.
"""
from __future__ import annotations

from typing import Tuple

import torch

# `topk_lowest_position_first`'s pre-selection: columns per block, and the fewest blocks per pick for
# which it runs. A row of C columns then costs one block-maximum pass, a key top-k of C / 8 block
# maxima and one of the k picked blocks' 8 k columns, instead of a key top-k of all C (measured on
# [1000, 4096] fp32, k = 50, one thread: 8 columns 16 ms, 16 columns 22 ms, 32 columns 54 ms, no
# pre-selection 76 ms). Below 2 blocks per pick it would read about as many columns as it skips.
TOPK_BLOCK: int = 8
PRESELECT_MIN_BLOCKS_PER_PICK: int = 2


def _order_keys(values: torch.Tensor, positions: torch.Tensor, span: int) -> torch.Tensor:
    """int64 keys of ``values`` (fp32, not NaN) at ``positions`` in ``[0, span)`` (same shape, or
    broadcast): a larger key is a larger value, or an equal value at a lower position. Float order as
    int32 order: non-negative floats compare as their bits, negative ones reversed (flip the 31
    magnitude bits); ``+ 0.0`` makes -0.0 +0.0 (equal floats, one key)."""
    bits = (values + 0.0).view(torch.int32)
    ordered = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(torch.int64)
    return (ordered << 32) | (span - 1 - positions)


def topk_lowest_position_first(scores: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """fp32 ``scores [R, C]`` (not NaN) -> the k best ``values [R, k]`` descending and their columns
    ``[R, k]``, equal values lowest column first (the native kernel's order).

    `torch.topk` keeps any of several equal values at the k-th place: a user's repeated item
    (equal cosines) then made the training and serving GSUs keep different positions, and MISS's
    merge, which drops positions the other GSU took, scored the same sample differently (up to
    7e-4 in probability). One `torch.topk` of an int64 key ``(value order, C - 1 - column)`` is a
    total order: ~2-3x a float topk on the CPU, against ~7-20x for a stable sort of the chunk.

    Wide rows (at least `PRESELECT_MIN_BLOCKS_PER_PICK` blocks of `TOPK_BLOCK` columns per pick) key
    only the columns of the k blocks whose maxima are best in the same order (a block's maximum keyed
    at the block's index), plus the columns after the last whole block. The same k columns, bit for
    bit: if a column e of the row's k best lay in a block beta not picked, each of the k picked blocks
    holds a maximum m with m > e, or m == e at a lower block index, hence a lower column, so k
    columns would come before e. The exported serving program keyed every column of every chunk
    (keys and `torch.topk` of B x L scores: ~1.2 s of the 2.1 s a call took at L = 100K, 1,000 candidates).
    """
    if scores.dtype != torch.float32:
        raise ValueError(f"float32 scores expected, got {scores.dtype}")
    R, C = scores.shape
    columns = torch.arange(C, dtype=torch.int64, device=scores.device)
    blocks = C // TOPK_BLOCK
    if k < 1 or blocks < PRESELECT_MIN_BLOCKS_PER_PICK * k:
        _, j = torch.topk(_order_keys(scores, columns, C), k, dim=1)
        return scores.gather(1, j), j
    whole = blocks * TOPK_BLOCK
    maxima = scores[:, :whole].reshape(R, blocks, TOPK_BLOCK).amax(2)  # [R, blocks]
    _, picked = torch.topk(_order_keys(maxima, columns[:blocks], blocks), k, dim=1)  # [R, k] block indices
    kept = (picked.unsqueeze(2) * TOPK_BLOCK + columns[:TOPK_BLOCK]).reshape(R, k * TOPK_BLOCK)
    kept = torch.cat([kept, columns[whole:].expand(R, C - whole)], 1)  # [R, N] columns
    values = scores.gather(1, kept)
    _, j = torch.topk(_order_keys(values, kept, C), k, dim=1)
    return values.gather(1, j), kept.gather(1, j)

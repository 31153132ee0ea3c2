"""Running per-row top-K over score chunks: a fused native filter and its plain-PyTorch twin.

The serving GSU scores ~1,000 candidates against up to 100K behaviours: 10^8 scores per
request, produced chunk by chunk by a GEMM. ``torch.topk`` costs ~25x the GEMM per score on
CPU (it sorts index/value pairs per row), and no torch or FBGEMM op fuses "keep the K best of
a stream". `RunningTopK` keeps, per row, a threshold (the K-th best so far) and a small
buffer: a chunk row is scanned in blocks of 32 with one vectorised max; only blocks whose max
beats the threshold are looked at element by element, and once the threshold has settled
(after ~K log(L / K) hits per row) almost every block is skipped. Cost: one streaming read of
the chunk, ~0.05 ns per score, instead of a sort.

The native kernel is C compiled on first use (`muse_rec.modules.native_kernels`); where no
compiler is available, or while torch is tracing (``torch.compile`` / ``torch.export``),
callers use `torch_running_topk` (same contract, pure PyTorch), which also serves as the
reference in the tests. Its order of equal values is `ordered_topk.topk_lowest_position_first`'s.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from muse_rec.modules.native_kernels import native_library
from muse_rec.modules.ordered_topk import topk_lowest_position_first

# Buffer slots per row, as a multiple of K: a full buffer is cut back to the K best with one
# quickselect, so a larger factor means fewer cuts but a larger working set per row.
BUFFER_FACTOR: int = 4

# Value of empty result slots (rows with fewer than K scores above -FLT_MAX).
EMPTY_VALUE: float = -torch.finfo(torch.float32).max


class RunningTopK:
    """Per-row top-K of a stream of ``[R, C]`` score chunks (fp32 or bf16, CPU), native kernel.

    Args:
        rows: R. k: K (>= 1).

    Example::

        sel = RunningTopK(rows=1000, k=100)
        for c0 in range(0, L, C):
            sel.update(scores_chunk, c0)           # [1000, <=C], columns c0..c0+C
        values, indices = sel.result()             # [1000, 100] descending; EMPTY_VALUE / -1 if short
    """

    def __init__(self, rows: int, k: int) -> None:
        lib = native_library()
        if lib is None:
            raise RuntimeError("the native running top-K kernel is not available (see the log)")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.lib, self.rows, self.k = lib, rows, k
        self.cap = BUFFER_FACTOR * k
        # pair_t = {float v; int64 i}: 16 bytes with padding, as two int64 per slot.
        self.buf = torch.empty(rows, self.cap, 2, dtype=torch.int64)
        self.count = torch.zeros(rows, dtype=torch.int64)
        self.thr = torch.full((rows,), EMPTY_VALUE, dtype=torch.float32)

    def update(self, scores: torch.Tensor, col0: int, row0: int = 0) -> None:
        """Offer ``scores [r, C]`` (unit column stride) for rows ``row0 .. row0 + r``; column j
        is position ``col0 + j``. Row blocks let a caller keep its chunk and these rows'
        buffers in cache together. Each row's chunks must come in increasing ``col0`` (equal
        values are kept lowest position first, which the kernel decides as they arrive)."""
        r = scores.shape[0] if scores.dim() == 2 else -1
        if r < 0 or row0 < 0 or row0 + r > self.rows or scores.device.type != "cpu":
            raise ValueError(f"scores must be a CPU [r, C] tensor for rows within [0, {self.rows}), got "
                             f"{tuple(scores.shape)} at row {row0} on {scores.device}")
        if scores.shape[1] and scores.stride(1) != 1:
            scores = scores.contiguous()
        if scores.dtype == torch.float32:
            fn = self.lib.topk_update_f32
        elif scores.dtype == torch.bfloat16:
            fn = self.lib.topk_update_bf16
        else:
            raise ValueError(f"scores must be float32 or bfloat16, got {scores.dtype}")
        fn(scores.data_ptr(), r, scores.shape[1], scores.stride(0), col0, self.buf[row0].data_ptr(),
           self.count[row0:].data_ptr(), self.thr[row0:].data_ptr(), self.k, self.cap)

    def result(self, sort: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
        """``values [R, K]`` fp32 and ``indices [R, K]`` int64: descending (ties: lower position
        first), or in no particular order with ``sort=False`` (cheaper)."""
        vals = torch.empty(self.rows, self.k, dtype=torch.float32)
        idx = torch.empty(self.rows, self.k, dtype=torch.int64)
        self.lib.topk_finish(self.buf.data_ptr(), self.count.data_ptr(), self.rows, self.k, self.cap, int(sort),
                             vals.data_ptr(), idx.data_ptr())
        return vals, idx


def torch_running_topk(chunks, rows: int, k: int,
                       device: Optional[torch.device] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """`RunningTopK`'s contract in plain PyTorch: ``chunks`` yields ``(scores [R, C], col0)``.

    Merges each chunk's top-k into the running best with `torch.topk` (static shapes, so it
    traces); padding slots are ``EMPTY_VALUE`` / -1 as in the native kernel. ``device``: where
    the result of an empty stream lives (otherwise the chunks' device).
    """
    best_v: Optional[torch.Tensor] = None
    best_i: Optional[torch.Tensor] = None
    for scores, col0 in chunks:
        s = scores.to(torch.float32)
        v, i = topk_lowest_position_first(s, min(k, s.shape[1]))
        i = i + col0
        if best_v is not None:  # the kept positions precede this chunk's: ties stay lowest first
            v, j = topk_lowest_position_first(torch.cat([best_v, v], 1), min(k, best_v.shape[1] + v.shape[1]))
            i = torch.gather(torch.cat([best_i, i], 1), 1, j)
        best_v, best_i = v, i
    if best_v is None:
        best_v = torch.empty(rows, 0, device=device)
        best_i = torch.empty(rows, 0, dtype=torch.int64, device=device)
    short = k - best_v.shape[1]
    if short > 0:
        best_v = torch.cat([best_v, best_v.new_full((rows, short), EMPTY_VALUE)], 1)
        best_i = torch.cat([best_i, best_i.new_full((rows, short), -1)], 1)
    return best_v, best_i

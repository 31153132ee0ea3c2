"""Cosine top-K of many candidates against ONE shared history: the serving shape.

A ranking request scores ~1,000 candidates against one user's history of up to 100K
behaviours (SCL vectors, int8 ``[L, D]``), so the keys are shared by every query row and the
training path's grouped GEMM (`muse_rec.modules.cosine`) does not apply. Never a ``[B, L]``
matrix:

* `certified_shared_keys_cosine_topk` (eager on the CPU, with the native running top-K, int8 values): the
  bf16 GEMM of unit vectors (oneDNN; AMX where present, ~8x the fp32 GEMM on this project's
  CPU) shortlists ``SHORTLIST_FACTOR * K`` candidates per row with a fused running top-K
  (`muse_rec.modules.running_topk`), the shortlist is re-scored exactly (int8 dot products,
  `muse_rec.modules.cosine.finish_cosine`'s arithmetic), and a per-row certificate (exact K-th
  score above the shortlist's approximate floor plus the bf16 error bound `approx_cosine_bound`)
  proves the exact top-K was found; rows without the certificate are retried with a longer
  shortlist, then recomputed on the static path.
* `static_shared_keys_cosine_topk`: static shapes only, one exact GEMM per chunk and
  `finish_cosine`'s arithmetic (the training path's cosines, bit for bit); what ``torch.export``
  traces for the serving program.
* `shared_keys_cosine_topk` dispatches between the two.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from muse_rec.modules.cosine import (
    DEFAULT_CHUNK_ROWS,
    F32_UNIT_ROUNDOFF,
    INT8_COSINE_BOUND,
    eager_cpu,
    finish_cosine,
    rows_as_fp32,
)
from muse_rec.modules.int8_kernels import int8_gathered_dots, int8_unit_rows_bf16
from muse_rec.modules.native_kernels import native_library
from muse_rec.modules.running_topk import RunningTopK, torch_running_topk
from muse_rec.modules.selection import cosine_selection_scores

_BF16_U: float = 2.0 ** -8  # bf16 unit roundoff (8 significant bits)
# Storage of int8 values (the release's SCL vectors; the model's SCL table holds them as fp16): every
# dot product is an integer below 2^24, exact in fp32 in any summation order, which the certified path's
# re-scoring and certificate rely on. Float embeddings (SIM-soft's ID tokens) take the static path,
# whose GEMM is training's: re-scored in another order, near-ties at the K-th place kept other
# behaviours than the evaluation did (a trained SIM-soft served up to 1e-3 from its evaluation).
INT8_VALUED_DTYPES = (torch.int8, torch.float16)
_INT8 = torch.iinfo(torch.int8)


def int8_valued(x: torch.Tensor) -> bool:
    """Whether every value of ``x`` is an int8 value: its dtype stores them (`INT8_VALUED_DTYPES`), or
    it is a float tensor of integers in int8's range. The SCL table's lookups return the int8 values
    as fp32 (TorchRec's output dtype), so the dtype alone sent MUSE's serving queries, ``[B, 128]``,
    to the static path, ~10x slower at L = 100K; the check reads B x D values, not the history.
    Eager tensors only (data-dependent)."""
    if x.dtype in INT8_VALUED_DTYPES:
        return True
    if not x.is_floating_point():
        return False
    return bool(((x == torch.round(x)) & (x >= _INT8.min) & (x <= _INT8.max)).all())


def approx_cosine_bound(dim: int) -> float:
    """Bound on ``|a - cos|`` of the serving shortlist score ``a = bf16(bf16(q/|q|) . bf16(k/|k|))``.

    Rounding each unit vector's components to bf16 moves the dot product by at most
    ``(2u + u^2) * sum |q_i k_i| <= 2u + u^2`` (Cauchy-Schwarz, u = 2^-8); the fp32
    accumulation of D exact bf16 products adds ``<= D * 2^-24 (1 + u)^2``; rounding the
    output to bf16 adds ``<= u (1 + 2u + u^2)``; the fp32 divisions before rounding add
    ``<= 2 * 2^-24``. Summed (rounded up): ``3u + 4u^2 + (D + 4) 2^-24``.
    """
    return 3 * _BF16_U + 4 * _BF16_U**2 + (dim + 4) * F32_UNIT_ROUNDOFF


# Shortlist per row on the serving path, as a multiple of K: wide enough that the bf16
# error band (~0.012 in cosine) rarely holds more than the extra K near the K-th score;
# rows where it does are retried with a 4x longer shortlist.
SHORTLIST_FACTOR: int = 2
# Positions per shortlist GEMM: [1000, 512] bf16 scores = 1 MiB, read back by the running
# top-K while still in L2 (2048 columns spill it and cost ~1.5x in the selection).
SHORTLIST_CHUNK: int = 512
# Rows and columns of every shortlist GEMM are rounded up to a multiple of this (zero rows/columns,
# their scores never offered to the top-K). oneDNN keeps state for every bf16 GEMM shape it has run
# (~0.6 MB each, never freed), and the exact shape was [candidates, positions with a vector in the
# last chunk]: one new shape per history length, so a Ranker serving its 1,200 first users of the
# medium synthetic release grew by 1.2 GB. Rounded, the shapes are at most
# (max_batch / 64) x (SHORTLIST_CHUNK / 64), at a cost of < 64 extra rows and columns per GEMM.
SHORTLIST_SHAPE_QUANTUM: int = 64


@torch.no_grad()
def shared_keys_cosine_topk(
    query: torch.Tensor,
    keys: torch.Tensor,
    mask: torch.Tensor,
    top_k: int,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Running top-K of many queries against ONE shared sequence (the serving shape).

    Args:
        query: ``[B, D]`` candidates' vectors.
        keys: ``[L, D]`` the user's sequence.
        mask: ``[L]`` bool, True = real behaviour.
        top_k: K.
        chunk_rows: positions per step.

    Returns:
        ``values [B, k]`` cosine selection scores (see `cosine_selection_scores`),
        descending, and ``indices [B, k]`` int64, ``k = min(K, L)``.

    Eager on the CPU with the native running top-K, for int8 values (keys of `INT8_VALUED_DTYPES`,
    a query of int8 values in any float dtype, `int8_valued`): the
    certified bf16 shortlist (module docstring); float embeddings (SIM-soft's ID tokens), while
    tracing (``torch.export`` of the serving program) or elsewhere: `static_shared_keys_cosine_topk`,
    static shapes only.
    """
    # Keys by dtype (the Ranker's cached history is int8; reading L x D values would cost a pass over
    # the history), the query by value (checked last: only eager tensors can be read).
    if (keys.dtype in INT8_VALUED_DTYPES and eager_cpu(query) and eager_cpu(keys) and keys.shape[0] > 0
            and native_library() is not None and int8_valued(query)):
        if keys.dtype == torch.int8 and query.dtype != torch.int8:
            # The same values as int8 (exact): the shortlist is re-scored by the native int8 dot
            # products instead of a gathered fp32 copy (3x faster at L = 1K, the same integers).
            query = query.to(torch.int8)
        return certified_shared_keys_cosine_topk(query, keys, mask, top_k, chunk_rows)
    return static_shared_keys_cosine_topk(query, keys, mask, top_k, chunk_rows)


@torch.no_grad()
def static_shared_keys_cosine_topk(
    query: torch.Tensor,
    keys: torch.Tensor,
    mask: torch.Tensor,
    top_k: int,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """`shared_keys_cosine_topk` with static shapes only (traceable by ``torch.export``).

    Per chunk of C positions: the exact dot products ``q @ k^T`` (one fp32 GEMM, exact on int8
    values) and `finish_cosine`'s arithmetic, so every cosine is the same fp32 number, bit for bit,
    as the training path's (`muse_rec.modules.cosine.grouped_cosine`) and the certified path's.
    Why not the cheaper GEMM of unit vectors: it rounds each component, and an exact cosine of 0
    (orthogonal int8 vectors are common) came out as +-1e-8, on the SimTier tier edge at 0: the
    exported program put it in another tier than training did, and moved a click probability by
    ~1e-3. Columns that are padding or have no vector take their sentinel.
    Arguments and result as `shared_keys_cosine_topk`.
    """
    L, D = keys.shape
    q = query.to(torch.float32)
    q_norm = torch.linalg.vector_norm(q, dim=1, keepdim=True)  # [B, 1]
    step = max(1, chunk_rows)
    buf = None
    if keys.dtype != torch.float32:
        buf = torch.empty(min(L, step) * D, dtype=torch.float32, device=keys.device)
    # Column sentinels of every position (what a position scores without a cosine).
    fill = cosine_selection_scores(
        torch.zeros(1, L, device=keys.device), torch.zeros(1, L, dtype=torch.bool, device=keys.device),
        mask.unsqueeze(0), 0, L,
    )[0]  # [L]

    # Int8 keys: every chunk's scores and denominators are written into these two [B, C] buffers (flat, so
    # that the last, narrower chunk's prefix is contiguous), not into new tensors: in the exported program a
    # fresh 16 MB [1000, 4096] tensor per GEMM and per denominator, ~50 of them a call at L = 100K, cost their
    # pages' first touch each time. A chunk's scores live until the next chunk: `torch_running_topk` keeps
    # copies of its top k only.
    # Float keys (an fp16 SCL table) take `finish_cosine` below and need neither.
    B = q.shape[0]
    int8_keys = keys.dtype == torch.int8
    width_max = B * min(L, step) if int8_keys else 0
    score_buf = torch.empty(width_max, dtype=torch.float32, device=keys.device)
    denom_buf = torch.empty(width_max, dtype=torch.float32, device=keys.device)

    def chunks():  # (selection scores [B, C], first position) per chunk of positions
        for l0 in range(0, L, step):
            l1 = min(L, l0 + step)
            kf = rows_as_fp32(keys[l0:l1], buf)  # [C, D]
            k_norm = torch.linalg.vector_norm(kf, dim=1)  # [C]
            scored = (k_norm > 0) & mask[l0:l1]
            if int8_keys:
                width = B * (l1 - l0)
                dots = torch.mm(q, kf.t(), out=score_buf[:width].view(B, l1 - l0))
                yield int8_keys_selection_scores(dots, k_norm, q_norm, scored, fill[l0:l1],
                                                 denom_buf[:width].view(B, l1 - l0)), l0
                continue
            cos, _ = finish_cosine(q @ kf.t(), k_norm.unsqueeze(0), q_norm)  # [B, C]
            yield torch.where(scored.unsqueeze(0), cos, fill[l0:l1].unsqueeze(0)), l0

    # k = min(K, L) <= the L columns streamed, so nothing is padded.
    best_vals, best_idx = torch_running_topk(chunks(), query.shape[0], min(top_k, L), device=keys.device)
    # Rows whose query has no vector: no cosines, only the sentinels (newest real first).
    # Branch-free (no data-dependent Python control flow, so the op stays exportable).
    no_query = (q_norm == 0)  # [B, 1]
    fvals, fidx = torch.topk(fill, min(top_k, L))
    best_vals = torch.where(no_query, fvals.unsqueeze(0), best_vals)
    best_idx = torch.where(no_query, fidx.unsqueeze(0), best_idx)
    return best_vals, best_idx


def int8_keys_selection_scores(dots: torch.Tensor, key_norms: torch.Tensor, query_norms: torch.Tensor,
                               scored: torch.Tensor, fill: torch.Tensor,
                               denom_out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The static path's selection scores of a chunk of int8 keys, ``[B, C]`` fp32: the cosine
    ``clamp(dots / (|k| |q|), -1, 1)`` where ``scored``, ``fill`` elsewhere; 3 passes over ``[B, C]``
    (``mul``, ``div``, ``clamp``) instead of the 7 of `finish_cosine` and a sentinels' ``where`` (``mul``,
    ``gt``, ``clamp_min``, ``div``, ``where``, ``clamp``, ``where``): ~0.45 s of the exported MUSE
    program's call at L = 100K, 1,000 candidates.

    Args: ``dots [B, C]`` exact dot products; ``key_norms [C]`` of int8 keys; ``query_norms [B, 1]``;
    ``scored [C]`` bool (real behaviour with a non-zero key); ``fill [C]`` the sentinels; ``denom_out [B, C]``
    where to write the denominators (None: a new tensor). The result is ``dots``, overwritten.

    The same fp32 bits as `finish_cosine` + ``where`` for every row whose query norm is 0 (a row the
    caller replaces by the sentinels) or at least the smallest normal fp32 (every query of int8 values:
    norm 0 or >= 1): an int8 key's norm is 0 or >= 1 (the root of an integer sum of squares), so at a
    scored column ``|k| |q| >= |q| >= tiny`` (rounding is monotone): ``gt`` is True and ``clamp_min``
    leaves it, and the quotient is the same division of the same numbers. Unscored columns get
    ``fill`` from clamp bounds ``lo = hi = fill`` (``min(max(x, f), f) = f`` for any x not NaN); the
    norms are raised to 1 and ``tiny`` where they are 0 so that no 0 / 0 makes a NaN there.
    """
    tiny = torch.finfo(torch.float32).tiny
    lo = torch.where(scored, -1.0, fill)  # [C]
    hi = torch.where(scored, 1.0, fill)
    denom = torch.mul(key_norms.clamp_min(1.0), query_norms.clamp_min(tiny), out=denom_out)  # [B, C]
    return dots.div_(denom).clamp_(lo, hi)


def _row_norms(keys: torch.Tensor, chunk_rows: int) -> torch.Tensor:
    """``[L, D]`` -> ``[L]`` fp32 L2 norms (exact squared sums for int8), fp32 chunk by chunk."""
    out = torch.empty(keys.shape[0], dtype=torch.float32, device=keys.device)
    for l0 in range(0, keys.shape[0], chunk_rows):
        torch.linalg.vector_norm(keys[l0:l0 + chunk_rows].to(torch.float32), dim=1, out=out[l0:l0 + chunk_rows])
    return out


@dataclass
class SharedKeys:
    """One history prepared for `certified_shared_keys_cosine_topk` (per user: a Ranker can
    build it at prefetch time, off the request path).

    Attributes:
        keys: ``[L, D]`` the history's vectors as given. mask: ``[L]`` bool.
        pos: ``[n]`` int64 positions with a cosine (real and non-zero vector).
        unit: ``[n, D]`` bf16 unit vectors of those positions. norms: ``[n]`` fp32 exact norms.
        fill: ``[L]`` fp32 selection score of every position without a cosine (sentinels).
    """

    keys: torch.Tensor
    mask: torch.Tensor
    pos: torch.Tensor
    unit: torch.Tensor
    norms: torch.Tensor
    fill: torch.Tensor


@torch.no_grad()
def prepare_shared_keys(keys: torch.Tensor, mask: torch.Tensor, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> SharedKeys:
    """`SharedKeys` of ``keys [L, D]``, ``mask [L]`` (one pass over the keys; native for int8)."""
    L, D = keys.shape
    if keys.dtype == torch.int8 and native_library() is not None:
        k = keys.contiguous()
        # Non-zero rows, 8 bytes at a time when the row length allows it.
        nz = (k.view(torch.int64) if D % 8 == 0 else k).ne(0).any(1)
        pos = (mask & nz).nonzero().squeeze(1)
        unit, norms = int8_unit_rows_bf16(k, pos)
    else:
        k_norm = _row_norms(keys, chunk_rows)
        pos = (mask & (k_norm > 0)).nonzero().squeeze(1)
        norms = k_norm[pos]
        unit = (keys.index_select(0, pos).to(torch.float32) / norms.unsqueeze(1)).to(torch.bfloat16)
    fill = cosine_selection_scores(
        torch.zeros(1, L, device=keys.device), torch.zeros(1, L, dtype=torch.bool, device=keys.device),
        mask.unsqueeze(0), 0, L)[0]
    return SharedKeys(keys, mask, pos, unit, norms, fill)


def _shortlist(q_hat: torch.Tensor, unit: torch.Tensor, kp: int, chunk_rows: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Approximate top-``kp`` of ``q_hat [B, D] @ unit[n, D]^T`` (bf16), chunk by chunk."""
    B, n = q_hat.shape[0], unit.shape[0]
    D = unit.shape[1]
    sel = RunningTopK(B, kp)
    step = max(1, chunk_rows)
    # Shapes rounded up to `SHORTLIST_SHAPE_QUANTUM` (bounded oneDNN state, see there): zero query
    # rows and zero key columns score 0 and are cut off before the top-K sees them.
    rows = _round_up(B)
    q = q_hat if rows == B else torch.cat([q_hat, q_hat.new_zeros(rows - B, D)])
    out = torch.empty(rows * _round_up(min(step, n)), dtype=torch.bfloat16)
    for c0 in range(0, n, step):
        c1 = min(n, c0 + step)
        width, cols = c1 - c0, _round_up(c1 - c0)
        keys = unit[c0:c1] if cols == width else torch.cat([unit[c0:c1], unit.new_zeros(cols - width, D)])
        scores = out[: rows * cols].view(rows, cols)
        torch.mm(q, keys.t(), out=scores)
        sel.update(scores[:B, :width], c0)  # row stride `cols`: the kernel takes any leading dimension
    return sel.result(sort=False)


def _round_up(size: int) -> int:
    """``size`` rounded up to a multiple of `SHORTLIST_SHAPE_QUANTUM` (a GEMM dimension)."""
    return -(-size // SHORTLIST_SHAPE_QUANTUM) * SHORTLIST_SHAPE_QUANTUM


@torch.no_grad()
def certified_shared_keys_cosine_topk(
    query: torch.Tensor,
    keys: torch.Tensor,
    mask: torch.Tensor,
    top_k: int,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    prepared: Optional[SharedKeys] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """`shared_keys_cosine_topk` by a bf16 shortlist, exact re-scoring and a per-row certificate.

    1. `prepare_shared_keys` (or `prepared`): positions with a cosine, their bf16 unit vectors.
    2. Per chunk, ``bf16(q_hat) @ unit^T`` (oneDNN; AMX where present) -> `RunningTopK` keeps
       the ``K' = SHORTLIST_FACTOR * K`` best approximate scores per row.
    3. The shortlist is re-scored exactly (int8 dot products, `finish_cosine`'s arithmetic).
    4. Certificate: every position off the shortlist has approximate score <= the
       shortlist's floor ``a_K'``, so exact cosine <= ``a_K' + eps`` (`approx_cosine_bound`).
       Where the exact K-th score exceeds that (plus the fp32 bound), the top-K is exact up
       to ties. Other rows (near-duplicates around the K-th score) are retried with a 4x
       longer shortlist, then on the static path.
    5. Sentinels (no-vector / padding positions, the same for every row) are merged in.
    """
    L, D = keys.shape
    B = query.shape[0]
    k = min(top_k, L)
    sk = prepared if prepared is not None else prepare_shared_keys(keys, mask, chunk_rows)
    q = query.to(torch.float32)
    q_norm = torch.linalg.vector_norm(q, dim=1, keepdim=True)  # [B, 1]
    n = int(sk.pos.numel())
    vals, idx = q.new_empty(B, 0), sk.pos.new_empty(B, 0)
    bad = torch.zeros(B, dtype=torch.bool)
    if n > 0:
        q_hat = (q / q_norm.clamp_min(torch.finfo(torch.float32).tiny)).to(torch.bfloat16)
        vals, idx, bad = _certified_rows(query, q, q_norm, q_hat, sk, min(SHORTLIST_FACTOR * k, n), k, chunk_rows)
        if bool(bad.any()):  # retry the uncertified rows with a longer shortlist
            rows = bad.nonzero().squeeze(1)
            v2, i2, bad2 = _certified_rows(query[rows], q[rows], q_norm[rows], q_hat[rows], sk,
                                           min(4 * SHORTLIST_FACTOR * k, n), k, chunk_rows)
            vals[rows], idx[rows] = v2, i2
            bad = torch.zeros_like(bad)
            bad[rows] = bad2
    # Sentinels of the positions without a cosine, shared by all rows; cosines outrank them.
    others = sk.fill.clone()
    others[sk.pos] = float("-inf")
    fv, fi = torch.topk(others, k)
    all_v = torch.cat([vals, fv.unsqueeze(0).expand(B, -1)], 1)
    all_i = torch.cat([idx, fi.unsqueeze(0).expand(B, -1)], 1)
    best_v, j = torch.sort(all_v, dim=1, descending=True, stable=True)  # keeps the tie order
    best_v, best_i = best_v[:, :k], torch.gather(all_i, 1, j[:, :k])
    # Rows whose query has no vector: no cosines, only the sentinels (newest real first).
    no_query = q_norm == 0  # [B, 1]
    nv, ni = torch.topk(sk.fill, k)
    best_v = torch.where(no_query, nv.unsqueeze(0), best_v)
    best_i = torch.where(no_query, ni.unsqueeze(0), best_i)
    if bool(bad.any()):
        rows = bad.nonzero().squeeze(1)
        rv, ri = static_shared_keys_cosine_topk(query[rows], keys, mask, top_k, chunk_rows)
        best_v[rows], best_i[rows] = rv, ri
    return best_v, best_i


def _certified_rows(query: torch.Tensor, q: torch.Tensor, q_norm: torch.Tensor, q_hat: torch.Tensor,
                    sk: SharedKeys, kp: int, k: int, chunk_rows: int
                    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Steps 2-4 for some rows: exact ``[B, min(k, kp)]`` cosines, positions, uncertified rows."""
    B, D = q.shape
    approx, cand = _shortlist(q_hat, sk.unit, kp, SHORTLIST_CHUNK)  # cand: indices into sk.pos
    cpos = sk.pos[cand]  # [B, K'] positions
    if query.dtype == torch.int8 and sk.keys.dtype == torch.int8:
        dots = int8_gathered_dots(query, sk.keys, cpos)  # exact, no gathered copy
    else:
        picked = sk.keys.index_select(0, cpos.view(-1)).view(B, kp, D).to(torch.float32)
        dots = torch.bmm(picked, q.unsqueeze(2)).squeeze(2)
    cos, _ = finish_cosine(dots, sk.norms[cand], q_norm)
    # Best first, equal cosines lowest position first (the order of `RunningTopK`, so the
    # grouped training path and this one pick the same behaviours among exact ties).
    cpos, by_pos = torch.sort(cpos, dim=1)
    vals, order = torch.sort(cos.gather(1, by_pos), dim=1, descending=True, stable=True)
    vals, idx = vals[:, :min(k, kp)], torch.gather(cpos, 1, order[:, :min(k, kp)])
    bad = torch.zeros(B, dtype=torch.bool)
    if kp < sk.pos.numel():
        floor = approx.min(dim=1).values + approx_cosine_bound(D) + INT8_COSINE_BOUND
        bad = (vals[:, -1] <= floor) & (q_norm[:, 0] > 0)
    return vals, idx, bad

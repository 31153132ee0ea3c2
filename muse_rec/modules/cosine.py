"""Cosine kernels of the multimodal GSU: batched fast paths and an fp64 reference.

Everything here is a pure function without gradients (the SCL vectors are frozen; the
trainable-embedding GSUs detach their inputs before calling in), except `grouped_dot`.

Inputs are SCL vectors as int8 ``[*, D]`` (``trunc(127 * clip(v, -1, 1))`` of an
L2-normalised vector; the all-zero vector means "no SCL vector") or the same values as
fp16/bf16/fp32. Cosine is scale-invariant, so the int8 scale never has to be undone.

Exactness (the parity tests check this bound). int8 values, their products and any sum of
D = 128 of them are integers below 2^24, so fp32 holds every dot product and squared norm
*exactly* (as would int32): the only rounding is the final normalisation, ``sqrt`` of the
two squared norms, their product and the division, each within half an fp32 ulp. Hence
``|cos_fast - cos_exact| <= 4 * 2^-24 * |cos| (+ O(2^-48))`` = `INT8_COSINE_BOUND`.

Which arithmetic, measured on this project's CPU (Xeon with AVX512-VNNI, AMX-INT8/BF16,
torch 2.13, one thread; ``benchmarks/bench_gsu.py``):

* fp32 GEMM on int8 values converted to fp32 is exact; ``torch._int_mm`` (int8 in, int32
  out) is no faster than it on this CPU, and oneDNN's int8 linear (``onednn.qlinear_pointwise``,
  u8 x s8 -> fp32) only ~2x, while its bf16 GEMM (AMX) is ~8x faster but only writes bf16.
* Training (`grouped_cosine`): one padded batched GEMM ``[U, P, D] x [U, D, C]`` in fp32
  (exact), queries grouped by history row (`group_members`), positions in chunks.
* Serving (`shared_keys_cosine_topk`, ~1,000 candidates x up to 100K behaviours): the bf16
  GEMM of unit vectors shortlists 2K candidates per row with a fused running top-K
  (`muse_rec.modules.running_topk`), the shortlist is re-scored exactly, and a per-row
  certificate (exact K-th score above the shortlist's approximate floor plus the bf16 error
  bound `APPROX_COSINE_BOUND`) proves the exact top-K was found; rows without the
  certificate are recomputed on the exact path. Never a ``[B, L]`` matrix.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from muse_rec.modules.running_topk import RunningTopK, int8_gathered_dots, int8_unit_rows_bf16, native_library
from muse_rec.modules.selection import cosine_selection_scores

# Default number of key rows converted to fp32 at once: 2048 x 128 x 4 B = 1 MiB (an L2).
DEFAULT_CHUNK_ROWS: int = 2048
# Key rows per step of the padded grouped GEMM: U histories x C positions (fp32 buffer of
# 4 MiB at D = 128: large enough that each per-history GEMM has a few hundred columns).
GROUPED_CHUNK_ROWS: int = 8192

_F32_U: float = 2.0 ** -24  # fp32 unit roundoff
# |cos_fast - cos_exact| / |cos| for int8 (or fp16) inputs: see the module docstring.
INT8_COSINE_BOUND: float = 4 * _F32_U
_BF16_U: float = 2.0 ** -8  # bf16 unit roundoff (8 significant bits)


def approx_cosine_bound(dim: int) -> float:
    """Bound on ``|a - cos|`` of the serving shortlist score ``a = bf16(bf16(q/|q|) . bf16(k/|k|))``.

    Rounding each unit vector's components to bf16 moves the dot product by at most
    ``(2u + u^2) * sum |q_i k_i| <= 2u + u^2`` (Cauchy-Schwarz, u = 2^-8); the fp32
    accumulation of D exact bf16 products adds ``<= D * 2^-24 (1 + u)^2``; rounding the
    output to bf16 adds ``<= u (1 + 2u + u^2)``; the fp32 divisions before rounding add
    ``<= 2 * 2^-24``. Summed (rounded up): ``3u + 4u^2 + (D + 4) 2^-24``.
    """
    return 3 * _BF16_U + 4 * _BF16_U**2 + (dim + 4) * _F32_U


# Shortlist per row on the serving path, as a multiple of K: wide enough that the bf16
# error band (~0.012 in cosine) rarely holds more than the extra K near the K-th score;
# rows where it does are retried with a 4x longer shortlist.
SHORTLIST_FACTOR: int = 2
# Positions per shortlist GEMM: [1000, 512] bf16 scores = 1 MiB, read back by the running
# top-K while still in L2 (2048 columns spill it and cost ~1.5x in the selection).
SHORTLIST_CHUNK: int = 512


def eager_cpu(x: torch.Tensor) -> bool:
    """True when ``x`` is a plain CPU tensor outside any tracing (``torch.compile``,
    ``torch.export``, FX): only then may a kernel use data-dependent shapes or native code."""
    if torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return False
    return type(x) is torch.Tensor and x.device.type == "cpu"  # fake/functional tensors are subclasses


def check_cosine_inputs(query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> None:
    """Validate ``query [B, D]``, ``keys [B or 1, L, D]``, ``mask [B or 1, L]`` bool."""
    if query.dim() != 2:
        raise ValueError(f"query must be [B, D], got shape {tuple(query.shape)}")
    if keys.dim() != 3:
        raise ValueError(f"keys must be [B, L, D] (or [1, L, D] shared), got {tuple(keys.shape)}")
    B, D = query.shape
    if keys.shape[2] != D:
        raise ValueError(f"keys have dim {keys.shape[2]} but query has dim {D}")
    if keys.shape[0] not in (1, B):
        raise ValueError(f"keys batch {keys.shape[0]} must be 1 (shared) or the query batch {B}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool, got {mask.dtype}")
    if mask.shape != keys.shape[:2]:
        raise ValueError(f"mask shape {tuple(mask.shape)} must equal keys[:2] {tuple(keys.shape[:2])}")


def check_grouped_inputs(query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor, index: torch.Tensor) -> None:
    """Validate ``query [B, D]``, ``keys [U, L, D]``, ``mask [U, L]`` bool, ``index [B]`` in [0, U).

    The value range of `index` is checked only in eager mode on the CPU, where reading it
    costs no device synchronisation and no graph break.
    """
    if query.dim() != 2 or keys.dim() != 3 or keys.shape[2] != query.shape[1]:
        raise ValueError(f"query must be [B, D] and keys [U, L, D]; got {tuple(query.shape)}, {tuple(keys.shape)}")
    if mask.dtype != torch.bool or mask.shape != keys.shape[:2]:
        raise ValueError(f"mask must be bool {tuple(keys.shape[:2])}, got {mask.dtype} {tuple(mask.shape)}")
    if index.shape != (query.shape[0],) or index.dtype != torch.int64:
        raise ValueError(f"index must be int64 [{query.shape[0]}], got {index.dtype} {tuple(index.shape)}")
    if index.numel() and eager_cpu(index):
        if int(index.min()) < 0 or int(index.max()) >= keys.shape[0]:
            raise ValueError(f"index values must lie in [0, {keys.shape[0]})")


def group_members(index: torch.Tensor, num_rows: int) -> torch.Tensor:
    """``index [B]`` (history row of each sample) -> ``members [U, P]``: the samples of each
    row, padded with B (P = the largest group). Reads P on the host: the data loader
    precomputes this per batch (`muse_rec.data.batch.history_groups`) so the training step
    never has to; this is the fallback for callers that did not.
    """
    B = index.shape[0]
    counts = torch.bincount(index, minlength=num_rows)
    P = max(1, int(counts.max())) if B else 1
    order = torch.argsort(index, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(B, device=index.device) - starts[index[order]]
    members = torch.full((num_rows, P), B, dtype=torch.int64, device=index.device)
    members[index[order], slot] = order
    return members


def member_positions(members: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``[B]`` flat position ``u * P + slot`` of each sample in ``members [U, P]`` (no host sync).

    Padding entries (value B) all land in an extra slot that is dropped.
    """
    U, P = members.shape
    flat = torch.zeros(batch_size + 1, dtype=torch.int64, device=members.device)
    flat.scatter_(0, members.reshape(-1), torch.arange(U * P, device=members.device))
    return flat[:batch_size]


def _grouped_queries(query: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """``[B, D]`` -> ``[U, P, D]`` queries of each history (zero rows at padding)."""
    padded = torch.cat([query, query.new_zeros(1, query.shape[1])], 0)
    return padded[members]


def _rows_as_fp32(src: torch.Tensor, buf: Optional[torch.Tensor]) -> torch.Tensor:
    """``src`` as fp32; a view when it already is, else converted into (a prefix of) ``buf``."""
    if src.dtype == torch.float32:
        return src
    assert buf is not None
    out = buf.view(-1)[: src.numel()].view(src.shape)
    out.copy_(src)
    return out


@torch.no_grad()
def batched_cosine(
    query: torch.Tensor,
    keys: torch.Tensor,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    per_user_gemv: Optional[bool] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cosine of each query with its own sequence.

    Args:
        query: ``[B, D]`` int8 / fp16 / bf16 / fp32.
        keys: ``[B, L, D]`` same value kinds (may differ from the query's dtype).
        chunk_rows: key rows converted to fp32 per step (``B_chunk * L_chunk``).
        per_user_gemv: one ``torch.mv`` per user and chunk (fastest on CPU, where a ``bmm``
            with a ``[D, 1]`` operand is ~7x slower) instead of one batched ``bmm`` per chunk
            (one kernel launch: what an accelerator wants). None = True on CPU only.

    Returns:
        ``cos [B, L]`` fp32 clamped to [-1, 1] (0 where either vector is zero) and
        ``has_vector [B, L]`` bool (key and query both non-zero).
    """
    B, L, D = keys.shape
    gemv = keys.device.type == "cpu" if per_user_gemv is None else per_user_gemv
    q = query.to(torch.float32)
    q_norm = torch.linalg.vector_norm(q, dim=1)  # [B]
    dots = torch.empty(B, L, dtype=torch.float32, device=keys.device)
    norms = torch.empty(B, L, dtype=torch.float32, device=keys.device)
    # Short sequences: several users per chunk; long ones: one user, a slice of positions.
    l_step = max(1, min(L, chunk_rows))
    b_step = max(1, chunk_rows // l_step)
    buf = None
    if keys.dtype != torch.float32:
        buf = torch.empty(b_step * l_step * D, dtype=torch.float32, device=keys.device)
    for b0 in range(0, B, b_step):
        b1 = min(B, b0 + b_step)
        for l0 in range(0, L, l_step):
            l1 = min(L, l0 + l_step)
            kf = _rows_as_fp32(keys[b0:b1, l0:l1], buf)  # [b, c, D]
            torch.linalg.vector_norm(kf, dim=2, out=norms[b0:b1, l0:l1])
            if gemv:
                for i in range(b1 - b0):
                    torch.mv(kf[i], q[b0 + i], out=dots[b0 + i, l0:l1])
            else:
                dots[b0:b1, l0:l1] = torch.bmm(kf, q[b0:b1].unsqueeze(2)).squeeze(2)
    return finish_cosine(dots, norms, q_norm.unsqueeze(1))


@torch.no_grad()
def grouped_cosine(
    query: torch.Tensor,
    keys: torch.Tensor,
    index: torch.Tensor,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    members: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cosine of each query with the sequence it points at, ``keys[index[b]]``.

    A user's ~11 impressions in a batch share one history, so the model keeps one sequence per
    distinct user. All users at once: the queries are grouped by history row into
    ``[U, P, D]`` (`members`) and each chunk of positions is ONE batched GEMM
    ``[U, P, D] x [U, D, C]`` in fp32 (exact for int8, see the module docstring); each key is
    converted and normed once however many targets read it. No per-user Python loop.

    Args:
        query: ``[B, D]`` targets' vectors.
        keys: ``[U, L, D]`` one sequence per distinct user.
        index: ``[B]`` int64 in ``[0, U)``: the sequence of sample b.
        chunk_rows: key rows converted to fp32 per step (at least `GROUPED_CHUNK_ROWS`).
        members: ``[U, P]`` int64, the samples of each row padded with B (`group_members`;
            computed here, with a host read, when not given).

    Returns:
        ``cos [B, L]`` fp32 in [-1, 1] (0 where a vector is zero) and ``has_vector [B, L]``.
    """
    dots, key_norms, q_norm = _grouped_dots(query, keys, index, chunk_rows, members)
    return finish_cosine(dots, key_norms.index_select(0, index), q_norm.unsqueeze(1))


def _grouped_dots(query: torch.Tensor, keys: torch.Tensor, index: torch.Tensor, chunk_rows: int,
                  members: Optional[torch.Tensor], l0: int = 0, l1: Optional[int] = None
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact dot products ``[B, l1 - l0]``, key norms ``[U, l1 - l0]`` and query norms ``[B]``."""
    U, L, D = keys.shape
    B = query.shape[0]
    l1 = L if l1 is None else l1
    if members is None:
        members = group_members(index, U)
    q = query.to(torch.float32)
    q_norm = torch.linalg.vector_norm(q, dim=1)
    qg = _grouped_queries(q, members)  # [U, P, D]
    P = members.shape[1]
    n = l1 - l0
    dots = torch.empty(U, P, n, dtype=torch.float32, device=keys.device)
    key_norms = torch.empty(U, n, dtype=torch.float32, device=keys.device)
    step = max(1, min(n, max(chunk_rows, GROUPED_CHUNK_ROWS) // max(U, 1)))
    for c0 in range(0, n, step):
        c1 = min(n, c0 + step)
        kf = keys[:, l0 + c0:l0 + c1].to(torch.float32)  # [U, c, D]
        torch.linalg.vector_norm(kf, dim=2, out=key_norms[:, c0:c1])
        if step == n:
            torch.bmm(qg, kf.transpose(1, 2), out=dots)
        else:
            dots[:, :, c0:c1] = torch.bmm(qg, kf.transpose(1, 2))
    flat = member_positions(members, B)
    return dots.view(U * P, n).index_select(0, flat), key_norms, q_norm


@torch.no_grad()
def grouped_cosine_topk(
    query: torch.Tensor,
    keys: torch.Tensor,
    mask: torch.Tensor,
    index: torch.Tensor,
    top_k: int,
    members: Optional[torch.Tensor] = None,
    chunk_positions: int = 4096,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Top-K cosine selection of each query over its own history, running over chunks of L.

    Same contract as `shared_keys_cosine_topk` (values are `cosine_selection_scores`,
    descending; ``k = min(K, L)``) for the grouped training shape; memory is
    ``O(B * chunk_positions)`` for any L. Per chunk: `grouped_cosine`'s exact GEMM, then the
    fused native running top-K on the CPU in eager mode, `torch.topk` merges otherwise.

    Args:
        query: ``[B, D]``; keys: ``[U, L, D]``; mask: ``[U, L]`` bool; index: ``[B]``;
        members: ``[U, P]`` (see `grouped_cosine`).
    """
    U, L, D = keys.shape
    B = query.shape[0]
    k = min(top_k, L)
    if members is None:
        members = group_members(index, U)
    native = eager_cpu(query) and native_library() is not None
    sel = RunningTopK(B, k) if native and k > 0 else None
    best_v: Optional[torch.Tensor] = None
    best_i: Optional[torch.Tensor] = None
    for l0 in range(0, L, chunk_positions):
        l1 = min(L, l0 + chunk_positions)
        dots, key_norms, q_norm = _grouped_dots(query, keys, index, DEFAULT_CHUNK_ROWS, members, l0, l1)
        cos, has_vec = finish_cosine(dots, key_norms.index_select(0, index), q_norm.unsqueeze(1))
        scores = cosine_selection_scores(cos, has_vec, mask[:, l0:l1].index_select(0, index), l0, L)
        if sel is not None:
            sel.update(scores, l0)
            continue
        v, i = torch.topk(scores, min(k, l1 - l0), dim=1)
        i = i + l0
        if best_v is not None and best_i is not None:
            v, j = torch.topk(torch.cat([best_v, v], 1), min(k, best_v.shape[1] + v.shape[1]), dim=1)
            i = torch.gather(torch.cat([best_i, i], 1), 1, j)
        best_v, best_i = v, i
    if sel is not None:
        return sel.result()
    if best_v is None or best_i is None:
        return query.new_zeros((B, 0), dtype=torch.float32), query.new_zeros((B, 0), dtype=torch.int64)
    return best_v, best_i


def grouped_dot(query: torch.Tensor, keys: torch.Tensor, index: torch.Tensor,
                members: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``out[b, l] = query[b] . keys[index[b], l]``: ``[B, H]`` x ``[U, L, H]`` -> ``[B, L]``.

    One padded batched GEMM over all distinct sequences (see `grouped_cosine`); differentiable.
    """
    B, U = query.shape[0], keys.shape[0]
    if members is None:
        members = group_members(index, U)
    out = torch.bmm(_grouped_queries(query, members), keys.transpose(1, 2))  # [U, P, L]
    return out.reshape(U * members.shape[1], keys.shape[1]).index_select(0, member_positions(members, B))


def finish_cosine(
    dots: torch.Tensor, key_norms: torch.Tensor, query_norms: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``dots / (|q| |k|)`` clamped to [-1, 1]; 0 and has_vector=False where a norm is 0."""
    denom = key_norms * query_norms
    has_vector = denom > 0
    cos = torch.where(has_vector, dots / denom.clamp_min(torch.finfo(torch.float32).tiny), 0.0)
    return cos.clamp_(-1.0, 1.0), has_vector


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

    Eager on the CPU with the native running top-K: the certified bf16 shortlist (module
    docstring); while tracing (``torch.export`` of the serving program) or elsewhere:
    `static_shared_keys_cosine_topk`, static shapes only.
    """
    if eager_cpu(query) and eager_cpu(keys) and keys.shape[0] > 0 and native_library() is not None:
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

    Per chunk of C positions the whole selection score is ONE GEMM with a bias:
    ``sel = bias + q_hat @ (k / |k|)^T`` where ``q_hat`` is the unit query, and columns that
    are padding or have no vector get a zero key row and their sentinel as bias (exactly,
    since ``0 * x = 0``). No elementwise pass over ``[B, C]`` is needed before ``topk``.

    Args:
        query: ``[B, D]`` candidates' vectors.
        keys: ``[L, D]`` the user's sequence.
        mask: ``[L]`` bool, True = real behaviour.
        top_k: K.
        chunk_rows: positions per step.

    Returns:
        ``values [B, k]`` cosine selection scores (see `cosine_selection_scores`),
        descending, and ``indices [B, k]`` int64, ``k = min(K, L)``.
    """
    L, D = keys.shape
    q = query.to(torch.float32)
    q_norm = torch.linalg.vector_norm(q, dim=1, keepdim=True)  # [B, 1]
    q_hat = q / q_norm.clamp_min(torch.finfo(torch.float32).tiny)  # zero rows stay zero
    step = max(1, chunk_rows)
    buf = None
    if keys.dtype != torch.float32:
        buf = torch.empty(min(L, step) * D, dtype=torch.float32, device=keys.device)
    best_vals: Optional[torch.Tensor] = None
    best_idx: Optional[torch.Tensor] = None
    # Column sentinels of every position (what a position scores without a cosine).
    fill = cosine_selection_scores(
        torch.zeros(1, L, device=keys.device), torch.zeros(1, L, dtype=torch.bool, device=keys.device),
        mask.unsqueeze(0), 0, L,
    )[0]  # [L]
    for l0 in range(0, L, step):
        l1 = min(L, l0 + step)
        kf = _rows_as_fp32(keys[l0:l1], buf)  # [C, D]
        k_norm = torch.linalg.vector_norm(kf, dim=1)  # [C]
        scored = (k_norm > 0) & mask[l0:l1]
        inv = torch.where(scored, 1.0 / k_norm.clamp_min(torch.finfo(torch.float32).tiny), 0.0)
        bias = torch.where(scored, 0.0, fill[l0:l1])
        sel = torch.addmm(bias.unsqueeze(0), q_hat, (kf * inv.unsqueeze(1)).t())  # [B, C]
        vals, arg = torch.topk(sel, min(top_k, sel.shape[1]), dim=1)
        idx = arg + l0
        if best_vals is not None:
            vals, arg = torch.topk(torch.cat([best_vals, vals], 1), min(top_k, best_vals.shape[1] + vals.shape[1]), dim=1)
            idx = torch.gather(torch.cat([best_idx, idx], 1), 1, arg)
        best_vals, best_idx = vals, idx
    assert best_vals is not None and best_idx is not None
    # Rows whose query has no vector: no cosines, only the sentinels (newest real first).
    # Branch-free (no data-dependent Python control flow, so the op stays exportable).
    no_query = (q_norm == 0)  # [B, 1]
    fvals, fidx = torch.topk(fill, min(top_k, L))
    best_vals = torch.where(no_query, fvals.unsqueeze(0), best_vals)
    best_idx = torch.where(no_query, fidx.unsqueeze(0), best_idx)
    # Cosines may exceed [-1, 1] by an ulp; sentinels are below -1 and stay as they are.
    best_vals = torch.where(best_vals > -1.01, best_vals.clamp(-1.0, 1.0), best_vals)
    return best_vals, best_idx


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
    sel = RunningTopK(B, kp)
    step = max(1, chunk_rows)
    out = torch.empty(B * min(step, n), dtype=torch.bfloat16)
    for c0 in range(0, n, step):
        c1 = min(n, c0 + step)
        scores = out[: B * (c1 - c0)].view(B, c1 - c0)
        torch.mm(q_hat, unit[c0:c1].t(), out=scores)
        sel.update(scores, c0)
    return sel.result(sort=False)


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


@torch.no_grad()
def reference_cosine(
    query: torch.Tensor, keys: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Plain fp64 cosine, obviously correct: ``query [B, D]``, ``keys [B or 1, L, D]``.

    Returns ``cos [B, L]`` fp64 in [-1, 1] (0 where a vector is zero) and ``has_vector``.
    """
    q = query.to(torch.float64)
    k = keys.to(torch.float64).expand(q.shape[0], -1, -1)
    dots = (k * q.unsqueeze(1)).sum(-1)
    denom = k.norm(dim=-1) * q.norm(dim=-1, keepdim=True)
    has_vector = denom > 0
    cos = torch.where(has_vector, dots / torch.where(has_vector, denom, 1.0), 0.0)
    return cos.clamp(-1.0, 1.0), has_vector


@torch.no_grad()
def cosine_at(
    query: torch.Tensor, keys: torch.Tensor, indices: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cosine of the query with selected positions only (R for a non-cosine GSU's picks).

    Args:
        query: ``[B, D]``; keys: ``[B or 1, L, D]``; indices: ``[B, K]`` int64 positions.

    Returns:
        ``cos [B, K]`` fp32 (0 where a vector is zero) and ``has_vector [B, K]`` bool.
    """
    B, K = indices.shape
    D = keys.shape[2]
    src = keys.expand(B, -1, -1)
    picked = torch.gather(src, 1, indices.unsqueeze(2).expand(B, K, D)).to(torch.float32)
    q = query.to(torch.float32)
    dots = torch.bmm(picked, q.unsqueeze(2)).squeeze(2)
    return finish_cosine(
        dots,
        torch.linalg.vector_norm(picked, dim=2),
        torch.linalg.vector_norm(q, dim=1, keepdim=True),
    )

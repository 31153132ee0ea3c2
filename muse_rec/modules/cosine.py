"""Cosine kernels of the multimodal GSU: chunked fast paths and an fp64 reference.

Everything here is a pure function without gradients (the SCL vectors are frozen; the
trainable-embedding GSUs detach their inputs before calling in).

Inputs are SCL vectors as int8 ``[*, D]`` (``trunc(127 * clip(v, -1, 1))`` of an
L2-normalised vector; the all-zero vector means "no SCL vector") or the same values as
fp16/bf16/fp32. Cosine is scale-invariant, so the int8 scale never has to be undone.

Why the fast paths look the way they do (measured on a 2-core AMD EPYC, torch 2.13 CPU; see
``benchmarks/bench_gsu.py``):

* int8 and fp16 values are exact in fp32, and fp32 accumulates a 128-term int8 dot product
  exactly (``128 * 127^2 < 2^24``). Converting a *chunk* of keys to fp32 and using BLAS is
  therefore exact and fast; ``torch._int_mm`` on this CPU is ~15x slower than fp32 GEMM,
  and fp16/bf16 GEMM ~7x slower (no native support on AVX2).
* The chunk is converted into one reused fp32 buffer of ``chunk_size`` rows (1 MiB at the
  default), which stays in L2 while it is read by the dot product and the norm. A float32
  copy of the whole ``[B, L, 128]`` sequence is never made.
* Training shape (every query has its own sequence, keys ``[B, L, D]``): per chunk, the
  fp32 conversion, key norms and one ``torch.mv`` per user (CPU; one ``bmm`` elsewhere);
  the result is ``[B, L]`` fp32 scores (4 bytes per position), followed by one top-K.
* Serving shape (one user, many candidates, keys ``[1, L, D]`` shared): a real GEMM
  ``[B, D] x [D, C]`` per chunk with a running top-K, so memory stays ``O(B * (K + C))``
  even for L = 100K and B = 1000.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from muse_rec.modules.selection import cosine_selection_scores

# Default number of key rows converted to fp32 at once: 2048 x 128 x 4 B = 1 MiB (an L2).
DEFAULT_CHUNK_ROWS: int = 2048


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
    """Validate ``query [B, D]``, ``keys [U, L, D]``, ``mask [U, L]`` bool, ``index [B]`` in [0, U)."""
    if query.dim() != 2 or keys.dim() != 3 or keys.shape[2] != query.shape[1]:
        raise ValueError(f"query must be [B, D] and keys [U, L, D]; got {tuple(query.shape)}, {tuple(keys.shape)}")
    if mask.dtype != torch.bool or mask.shape != keys.shape[:2]:
        raise ValueError(f"mask must be bool {tuple(keys.shape[:2])}, got {mask.dtype} {tuple(mask.shape)}")
    if index.shape != (query.shape[0],) or index.dtype != torch.int64:
        raise ValueError(f"index must be int64 [{query.shape[0]}], got {index.dtype} {tuple(index.shape)}")
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= keys.shape[0]):
        raise ValueError(f"index values must lie in [0, {keys.shape[0]})")


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
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cosine of each query with the sequence it points at, ``keys[index[b]]``.

    A user's ~11 impressions in a batch share one history, so the model keeps one sequence per
    distinct user: each user's keys are converted and normed once and scored against all of
    that user's targets with one GEMM ``[n_u, D] x [D, C]`` (instead of n_u mat-vecs over
    n_u copies of the same keys).

    Args:
        query: ``[B, D]`` targets' vectors.
        keys: ``[U, L, D]`` one sequence per distinct user.
        index: ``[B]`` int64 in ``[0, U)``: the sequence of sample b.
        chunk_rows: positions converted to fp32 per step.

    Returns:
        ``cos [B, L]`` fp32 in [-1, 1] (0 where a vector is zero) and ``has_vector [B, L]``.
    """
    U, L, D = keys.shape
    B = query.shape[0]
    if index.shape != (B,):
        raise ValueError(f"index must be [B] = [{B}], got {tuple(index.shape)}")
    q = query.to(torch.float32)
    q_norm = torch.linalg.vector_norm(q, dim=1)
    dots = torch.empty(B, L, dtype=torch.float32, device=keys.device)
    key_norms = torch.empty(U, L, dtype=torch.float32, device=keys.device)
    step = max(1, min(L, chunk_rows))
    buf = torch.empty(step * D, dtype=torch.float32, device=keys.device) if keys.dtype != torch.float32 else None
    order = torch.argsort(index, stable=True)
    counts = torch.bincount(index, minlength=U).tolist()
    start = 0
    for u, n in enumerate(counts):
        if n == 0:
            continue
        rows = order[start : start + n]
        start += n
        q_u = q.index_select(0, rows)  # [n, D]
        for l0 in range(0, L, step):
            l1 = min(L, l0 + step)
            kf = _rows_as_fp32(keys[u, l0:l1], buf)  # [c, D]
            torch.linalg.vector_norm(kf, dim=1, out=key_norms[u, l0:l1])
            dots[rows, l0:l1] = q_u @ kf.t()
    return finish_cosine(dots, key_norms.index_select(0, index), q_norm.unsqueeze(1))


def grouped_dot(query: torch.Tensor, keys: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``out[b, l] = query[b] . keys[index[b], l]``: ``[B, H]`` x ``[U, L, H]`` -> ``[B, L]``.

    One GEMM per distinct sequence (see `grouped_cosine`); differentiable.
    """
    B, U = query.shape[0], keys.shape[0]
    out = query.new_empty(B, keys.shape[1])
    order = torch.argsort(index, stable=True)
    start = 0
    for u, n in enumerate(torch.bincount(index, minlength=U).tolist()):
        if n:
            rows = order[start : start + n]
            start += n
            out[rows] = query.index_select(0, rows) @ keys[u].t()
    return out


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

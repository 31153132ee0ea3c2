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

* fp32 GEMM on int8 values converted to fp32 is exact, and so is ``torch._int_mm`` (int8 in,
  int32 out: every dot of 128 int8 products is an integer below 2^24, the same numbers). Which is
  faster depends on the CPU and its load: for ``[1000, 128] x [128, 4096]``, one thread, a first
  measurement on this Xeon found ``_int_mm`` no faster and oneDNN's int8 linear
  (``onednn.qlinear_pointwise``, u8 x s8 -> fp32) only ~2x; a later one on a Xeon of the same flags
  (2026-12-05, load 2.6) 3.0-3.4 ms against 6.3-7.5 ms for fp32 (~2x); an AMD EPYC with AVX-512
  VNNI (session 39) 1.2 ms against 10.0 ms. The bf16 GEMM (AMX) is ~5-8x faster but rounds, so
  only the serving shortlist uses it. fp32 stays the one path: measure before choosing another.
* Training (`grouped_cosine`): one padded batched GEMM ``[U, P, D] x [U, D, C]`` in fp32
  (exact), queries grouped by history row (`group_members`), positions in chunks.
* Serving (one user's history against ~1,000 candidates): `muse_rec.modules.shared_keys_cosine`,
  which builds on the exact arithmetic here.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from muse_rec.modules.native_kernels import native_library
from muse_rec.modules.running_topk import RunningTopK, torch_running_topk
from muse_rec.modules.selection import cosine_selection_scores

# Default number of key rows converted to fp32 at once: 2048 x 128 x 4 B = 1 MiB (an L2).
DEFAULT_CHUNK_ROWS: int = 2048
# Key rows per step of the padded grouped GEMM: U histories x C positions (fp32 buffer of
# 4 MiB at D = 128: large enough that each per-history GEMM has a few hundred columns).
GROUPED_CHUNK_ROWS: int = 8192

F32_UNIT_ROUNDOFF: float = 2.0 ** -24
# |cos_fast - cos_exact| / |cos| for int8 (or fp16) inputs: see the module docstring.
INT8_COSINE_BOUND: float = 4 * F32_UNIT_ROUNDOFF


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


def rows_as_fp32(src: torch.Tensor, buf: Optional[torch.Tensor]) -> torch.Tensor:
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
            kf = rows_as_fp32(keys[b0:b1, l0:l1], buf)  # [b, c, D]
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

    Same contract as `muse_rec.modules.shared_keys_cosine.shared_keys_cosine_topk` (values are `cosine_selection_scores`,
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

    def chunks():  # (selection scores [B, C], first position) per chunk of positions
        for l0 in range(0, L, chunk_positions):
            l1 = min(L, l0 + chunk_positions)
            dots, key_norms, q_norm = _grouped_dots(query, keys, index, DEFAULT_CHUNK_ROWS, members, l0, l1)
            cos, has_vec = finish_cosine(dots, key_norms.index_select(0, index), q_norm.unsqueeze(1))
            yield cosine_selection_scores(cos, has_vec, mask[:, l0:l1].index_select(0, index), l0, L), l0

    if k > 0 and eager_cpu(query) and native_library() is not None:
        sel = RunningTopK(B, k)
        for scores, l0 in chunks():
            sel.update(scores, l0)
        return sel.result()
    return torch_running_topk(chunks(), B, k, device=query.device)  # k <= L columns: never padded


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


def cosine_of_rows(query: torch.Tensor, keys: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cosine of each fp32 query ``[B, D]`` with its own fp32 rows ``keys [B, K, D]``: ``cos [B, K]`` and
    ``has_vector [B, K]`` (`finish_cosine`: clamped to [-1, 1], 0 where a vector is zero)."""
    dots = torch.bmm(keys, query.unsqueeze(2)).squeeze(2)
    return finish_cosine(dots, torch.linalg.vector_norm(keys, dim=2),
                         torch.linalg.vector_norm(query, dim=1, keepdim=True))


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
    return cosine_of_rows(query.to(torch.float32), picked)

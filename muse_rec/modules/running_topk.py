"""Running per-row top-K over score chunks: a fused native filter and its plain-PyTorch twin.

The serving GSU scores ~1,000 candidates against up to 100K behaviours: 10^8 scores per
request, produced chunk by chunk by a GEMM. ``torch.topk`` costs ~25x the GEMM per score on
CPU (it sorts index/value pairs per row), and no torch or FBGEMM op fuses "keep the K best of
a stream". `RunningTopK` keeps, per row, a threshold (the K-th best so far) and a small
buffer: a chunk row is scanned in blocks of 32 with one vectorised max; only blocks whose max
beats the threshold are looked at element by element, and once the threshold has settled
(after ~K log(L / K) hits per row) almost every block is skipped. Cost: one streaming read of
the chunk, ~0.05 ns per score, instead of a sort.

The native kernel is ~100 lines of C compiled on first use with the system C compiler into a
per-user cache (the way TorchInductor builds its CPU kernels) and called through ctypes; where
no compiler is available, or while torch is tracing (``torch.compile`` / ``torch.export``),
callers use `torch_running_topk` (same contract, pure PyTorch), which also serves as the
reference in the tests.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Optional, Tuple

import torch

log = logging.getLogger(__name__)

# Buffer slots per row, as a multiple of K: a full buffer is cut back to the K best with one
# quickselect, so a larger factor means fewer cuts but a larger working set per row.
BUFFER_FACTOR: int = 4

_C_SOURCE = r"""
#include <stdint.h>
#include <string.h>
#include <stdlib.h>
#include <float.h>
#include <math.h>

typedef struct { float v; int64_t i; } pair_t;

static inline float bf16_to_f32(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }

/* The selection order: higher value first, equal values lowest position first. A total order
   (positions are distinct in a row), so WHICH of several equal values at the K-th place are kept
   is defined, and every top-K path (this kernel, `torch_running_topk`) keeps the same ones. */
static inline int better(pair_t a, pair_t b) { return a.v > b.v || (a.v == b.v && a.i < b.i); }

/* Reorder a[0..n) so that its k best pairs (`better`) come first (any order): quickselect. */
static void select_largest(pair_t* a, int64_t n, int64_t k) {
  int64_t lo = 0, hi = n - 1;
  while (lo < hi) {  /* Hoare partition: a[lo..j] >= pivot >= a[i..hi], a(j..i) == pivot */
    pair_t pivot = a[lo + (hi - lo) / 2];
    int64_t i = lo, j = hi;
    while (i <= j) {
      while (better(a[i], pivot)) i++;
      while (better(pivot, a[j])) j--;
      if (i <= j) { pair_t t = a[i]; a[i] = a[j]; a[j] = t; i++; j--; }
    }
    if (k - 1 <= j) hi = j; else if (k - 1 >= i) lo = i; else return;
  }
}

static float min_value(const pair_t* a, int64_t n) {
  float m = FLT_MAX;
  for (int64_t t = 0; t < n; t++) m = a[t].v < m ? a[t].v : m;
  return m;
}

/* A block is 32 scores. BEATS(s, t): bit l set where s[l] > t. With AVX-512: two 16-lane
   compares (bf16 is widened by a 16-bit shift); else a scalar loop. Only set bits are
   visited, so a hit costs a few ns and a block without hits one vector compare. */
#define BLOCK 32
#ifdef __AVX512F__
#include <immintrin.h>
static inline uint32_t beats_f32(const float* s, float t) {
  __m512 tt = _mm512_set1_ps(t);
  return (uint32_t)_mm512_cmp_ps_mask(_mm512_loadu_ps(s), tt, _CMP_GT_OQ)
       | ((uint32_t)_mm512_cmp_ps_mask(_mm512_loadu_ps(s + 16), tt, _CMP_GT_OQ) << 16);
}
static inline __m512 widen_bf16(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }
static inline uint32_t beats_bf16(const uint16_t* s, float t) {
  __m512 tt = _mm512_set1_ps(t);
  return (uint32_t)_mm512_cmp_ps_mask(widen_bf16(_mm256_loadu_si256((const __m256i*)s)), tt, _CMP_GT_OQ)
       | ((uint32_t)_mm512_cmp_ps_mask(widen_bf16(_mm256_loadu_si256((const __m256i*)(s + 16))), tt, _CMP_GT_OQ) << 16);
}
#else
static inline uint32_t beats_f32(const float* s, float t) {
  uint32_t m = 0; for (int l = 0; l < BLOCK; l++) m |= (uint32_t)(s[l] > t) << l; return m;
}
static inline uint32_t beats_bf16(const uint16_t* s, float t) {
  uint32_t m = 0; for (int l = 0; l < BLOCK; l++) m |= (uint32_t)(bf16_to_f32(s[l]) > t) << l; return m;
}
#endif

/* Strictly above the threshold (the K-th kept value): positions arrive in increasing order
   (`RunningTopK.update`'s contract), so a later value equal to it loses the tie to every kept one. */
#define OFFER(v, pos)                                                                    \
  if ((v) > t) {                                                                         \
    b[n].v = (v); b[n].i = (pos); n++;                                                   \
    if (n == cap) { select_largest(b, n, k); n = k; t = min_value(b, k); }               \
  }

#define SCAN(LOAD, BEATS)                                                                \
  for (int64_t r = 0; r < rows; r++) {                                                   \
    const TYPE* s = scores + r * ld;                                                     \
    pair_t* b = buf + r * cap;                                                           \
    float t = thr[r];                                                                    \
    int64_t n = count[r];                                                                \
    int64_t c = 0;                                                                       \
    for (; c + BLOCK <= cols; c += BLOCK) {                                              \
      if (t == -FLT_MAX && n + BLOCK <= cap) {  /* filling: take the block as it is */   \
        for (int j = 0; j < BLOCK; j++) { b[n + j].v = LOAD(s[c + j]); b[n + j].i = col0 + c + j; } \
        n += BLOCK;                                                                      \
        if (n == cap) { select_largest(b, n, k); n = k; t = min_value(b, k); }           \
        continue;                                                                        \
      }                                                                                  \
      uint32_t mask = BEATS(s + c, t);                                                   \
      while (mask) {                                                                     \
        int j = __builtin_ctz(mask); mask &= mask - 1;                                   \
        float v = LOAD(s[c + j]);                                                        \
        OFFER(v, col0 + c + j)                                                           \
      }                                                                                  \
    }                                                                                    \
    for (; c < cols; c++) { float v = LOAD(s[c]); OFFER(v, col0 + c) }                   \
    thr[r] = t;                                                                          \
    count[r] = n;                                                                        \
  }

#define IDENT(x) (x)

void topk_update_f32(const float* scores, int64_t rows, int64_t cols, int64_t ld, int64_t col0,
                     pair_t* buf, int64_t* count, float* thr, int64_t k, int64_t cap) {
#define TYPE float
  SCAN(IDENT, beats_f32)
#undef TYPE
}

void topk_update_bf16(const uint16_t* scores, int64_t rows, int64_t cols, int64_t ld, int64_t col0,
                      pair_t* buf, int64_t* count, float* thr, int64_t k, int64_t cap) {
#define TYPE uint16_t
  SCAN(bf16_to_f32, beats_bf16)
#undef TYPE
}

/* out[b, j] = q[b] . keys[idx[b, j]] for int8 vectors of length d: exact (int32 sums of
   int8 products; |sum| < 2^24 for d <= 1040, so the float result is exact too). idx < 0
   gives 0. The serving GSU's exact re-scoring of its shortlist, without a gathered copy. */
void int8_gathered_dots(const int8_t* q, int64_t rows, const int8_t* keys, const int64_t* idx, int64_t kk,
                        int64_t d, float* out) {
  for (int64_t b = 0; b < rows; b++) {
    const int8_t* qb = q + b * d;
    for (int64_t j = 0; j < kk; j++) {
      int64_t p = idx[b * kk + j];
      if (j + 4 < kk && idx[b * kk + j + 4] >= 0) {  /* rows are scattered: fetch ahead */
        __builtin_prefetch(keys + idx[b * kk + j + 4] * d);
        __builtin_prefetch(keys + idx[b * kk + j + 4] * d + 64);
      }
      int32_t acc = 0;
      if (p >= 0) {
        const int8_t* kp = keys + p * d;
        for (int64_t t = 0; t < d; t++) acc += (int16_t)qb[t] * (int16_t)kp[t];
      }
      out[b * kk + j] = (float)acc;
    }
  }
}

/* For each listed row p = pos[j] of int8 keys [*, d]: norm[j] = |k_p| (exact sum of squares,
   one sqrt) and out[j] = bf16(k_p / |k_p|) (round to nearest even): the serving shortlist's
   unit keys in one pass instead of four tensor ops. Rows must be non-zero. */
void int8_unit_rows_bf16(const int8_t* keys, const int64_t* pos, int64_t n, int64_t d, uint16_t* out, float* norm) {
  for (int64_t j = 0; j < n; j++) {
    const int8_t* k = keys + pos[j] * d;
    int32_t ss = 0;
    for (int64_t t = 0; t < d; t++) ss += (int16_t)k[t] * (int16_t)k[t];
    float nrm = sqrtf((float)ss), inv = 1.0f / nrm;
    norm[j] = nrm;
    uint16_t* o = out + j * d;
    for (int64_t t = 0; t < d; t++) {
      float x = (float)k[t] * inv; uint32_t u; memcpy(&u, &x, 4);
      o[t] = (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
    }
  }
}

static int by_value_desc(const void* x, const void* y) {
  const pair_t* a = (const pair_t*)x; const pair_t* b = (const pair_t*)y;
  if (a->v != b->v) return a->v < b->v ? 1 : -1;
  return (a->i > b->i) - (a->i < b->i);
}

/* Best k of each row: descending (ties: lower position first) when sorted, else in any
   order; rows with fewer hits are padded with (-FLT_MAX, -1). */
void topk_finish(pair_t* buf, const int64_t* count, int64_t rows, int64_t k, int64_t cap, int sorted,
                 float* out_v, int64_t* out_i) {
  for (int64_t r = 0; r < rows; r++) {
    pair_t* b = buf + r * cap;
    int64_t n = count[r];
    if (n > k) { select_largest(b, n, k); n = k; }
    if (sorted) qsort(b, (size_t)n, sizeof(pair_t), by_value_desc);
    for (int64_t x = 0; x < k; x++) {
      out_v[r * k + x] = x < n ? b[x].v : -FLT_MAX;
      out_i[r * k + x] = x < n ? b[x].i : -1;
    }
  }
}
"""

# Value of empty result slots (rows with fewer than K scores above -FLT_MAX).
EMPTY_VALUE: float = -torch.finfo(torch.float32).max

_LIB: Optional[ctypes.CDLL] = None
_LOAD_FAILED = False


def _cache_dir() -> Path:
    root = os.environ.get("MUSE_REC_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "muse_rec")
    return Path(root) / "kernels"


def _cpu_signature() -> str:
    """What `-march=native` depends on: the CPU model and flags (a cached .so must match them)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in text.splitlines() if ln.startswith(("flags", "model name"))][:2]
        return "|".join(lines)
    except OSError:
        return platform.processor() or platform.machine()


def native_library() -> Optional[ctypes.CDLL]:
    """The compiled kernel, built once per source/CPU into the cache; None if it cannot be built."""
    global _LIB, _LOAD_FAILED
    if _LIB is not None or _LOAD_FAILED:
        return _LIB
    if os.environ.get("MUSE_REC_NATIVE_TOPK", "1") == "0":
        _LOAD_FAILED = True
        return None
    cc = os.environ.get("CC", "cc")
    flags = ["-O3", "-march=native", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math"]
    key = hashlib.sha256("\n".join([_C_SOURCE, cc, " ".join(flags), _cpu_signature()]).encode()).hexdigest()[:16]
    so = _cache_dir() / f"running_topk_{key}.so"
    try:
        if not so.exists():
            so.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=so.parent) as tmp:
                src = Path(tmp) / "running_topk.c"
                src.write_text(_C_SOURCE)
                out = Path(tmp) / so.name
                subprocess.run([cc, *flags, str(src), "-o", str(out), "-lm"], check=True, capture_output=True, timeout=120)
                os.replace(out, so)  # atomic: concurrent processes never load a half-written file
        lib = ctypes.CDLL(str(so))
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("native running top-K unavailable (%s); using torch.topk merges", e)
        _LOAD_FAILED = True
        return None
    i64, ptr, f32p = ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p
    for name in ("topk_update_f32", "topk_update_bf16"):
        getattr(lib, name).argtypes = [ptr, i64, i64, i64, i64, ptr, ptr, f32p, i64, i64]
        getattr(lib, name).restype = None
    lib.topk_finish.argtypes = [ptr, ptr, i64, i64, i64, ctypes.c_int, ptr, ptr]
    lib.topk_finish.restype = None
    lib.int8_gathered_dots.argtypes = [ptr, i64, ptr, ptr, i64, i64, ptr]
    lib.int8_gathered_dots.restype = None
    lib.int8_unit_rows_bf16.argtypes = [ptr, ptr, i64, i64, ptr, ptr]
    lib.int8_unit_rows_bf16.restype = None
    _LIB = lib
    return lib


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


def int8_gathered_dots(query: torch.Tensor, keys: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``out[b, j] = query[b] . keys[idx[b, j]]`` exactly, ``[B, D]`` int8 x ``[L, D]`` int8 at
    ``[B, J]`` positions -> ``[B, J]`` fp32 (0 where ``idx < 0``); native kernel, CPU only."""
    lib = native_library()
    if lib is None:
        raise RuntimeError("the native kernels are not available (see the log)")
    if query.dtype != torch.int8 or keys.dtype != torch.int8 or query.shape[1] != keys.shape[1]:
        raise ValueError(f"int8 [B, D] and [L, D] expected, got {query.dtype} {tuple(query.shape)}, "
                         f"{keys.dtype} {tuple(keys.shape)}")
    if query.shape[1] > 1040:
        raise ValueError(f"D = {query.shape[1]} > 1040: int8 dot products may exceed fp32's exact range")
    q, k, i = query.contiguous(), keys.contiguous(), idx.to(torch.int64).contiguous()
    out = torch.empty(i.shape, dtype=torch.float32)
    lib.int8_gathered_dots(q.data_ptr(), i.shape[0], k.data_ptr(), i.data_ptr(), i.shape[1], q.shape[1], out.data_ptr())
    return out


def int8_unit_rows_bf16(keys: torch.Tensor, pos: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rows ``pos [n]`` of int8 ``keys [L, D]`` (non-zero) -> their unit vectors ``[n, D]``
    bf16 (round to nearest even) and exact norms ``[n]`` fp32; native kernel, CPU only."""
    lib = native_library()
    if lib is None:
        raise RuntimeError("the native kernels are not available (see the log)")
    if keys.dtype != torch.int8 or keys.dim() != 2:
        raise ValueError(f"int8 keys [L, D] expected, got {keys.dtype} {tuple(keys.shape)}")
    k, p = keys.contiguous(), pos.to(torch.int64).contiguous()
    out = torch.empty(p.shape[0], k.shape[1], dtype=torch.bfloat16)
    norms = torch.empty(p.shape[0], dtype=torch.float32)
    lib.int8_unit_rows_bf16(k.data_ptr(), p.data_ptr(), p.shape[0], k.shape[1], out.data_ptr(), norms.data_ptr())
    return out, norms


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

"""The serving GSU's native C kernels (running top-K, int8 dot products, int8 unit rows), built on first use.

The native kernel is ~100 lines of C compiled on first use with the system C compiler into a
per-user cache (the way TorchInductor builds its CPU kernels) and called through ctypes; where
no compiler is available `native_library` is None and callers take their plain-PyTorch paths.
Their Python entry points are `running_topk.RunningTopK` and `int8_kernels`.
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
from typing import Optional

log = logging.getLogger(__name__)

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

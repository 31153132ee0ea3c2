"""Vocabularies: raw hashed int64 ids -> contiguous int32 rows, built by external partitioned sort.

A vocabulary is the sorted array of its distinct raw ids (0 excluded: 0 means missing); raw id
``keys[r - 1]`` owns row ``r`` and row 0 is padding/unknown. Lookup is a binary search in the
(memory-mapped) key array, so remapping needs no hash table in memory; bulk users (`prepare`)
narrow it first by a bucket index (`KeyRangeIndex`), which keeps the cost per id nearly flat as
the vocabulary outgrows the caches.

Building the key array never holds more than one partition in memory: ids are spilled to
`num_partitions` files by their top bits (after flipping the sign bit, so partition order is
signed-integer order), then each partition is deduplicated (`sorted_distinct`) and appended to
the output in order, which yields a globally sorted array.
"""
from __future__ import annotations

import os
import shutil
from typing import Dict, List, Optional

import numpy as np

from muse_rec.data.files import NpyStreamWriter

PADDING_ROW = 0
# Most keys per bucket of `KeyRangeIndex` on average (the bucket count is rounded up to a power of
# two): the index costs 4 B per 1-2 keys (30M items: 64 MB; the release's 243M: 512 MB) and a lookup
# takes bit_length(largest bucket) search steps. 2 rather than 4 saves one step at 30M keys
# (4 instead of 5): 63 vs 77 ns per id measured, 52 for both at 1.9M keys.
KEYS_PER_BUCKET = 2
# A bulk `Vocab` builds and uses its index only for lookups of at least this many ids: a handful
# of ids is searched faster in the whole key array than an O(vocabulary) index build pays back.
INDEX_MIN_IDS = 4_096
# Ids looked up per block (see `Vocab.rows`): a block's key and index lines (~2 x 64 B per id,
# 4 MB) stay in a 32 MB L3 across the search steps; 8k-32k measured equally fast.
LOOKUP_BLOCK = 32_768
MISSING_ID = 0  # raw id meaning "no value" in the release
_SIGN = np.uint64(1 << 63)


def sorted_distinct(ids: np.ndarray) -> np.ndarray:
    """Sorted distinct values of a 1-D int64 array.

    `np.sort` plus a neighbour mask: on int64 behaviour ids this is ~3x faster than `np.unique`
    (numpy >= 2.3 dedupes with a hash table whose cache misses grow with the number of distinct
    ids; the SIMD sort does not care).
    """
    if ids.size == 0:
        return ids.copy()
    s = np.sort(ids)
    keep = np.empty(s.size, dtype=bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


def partition_of(keys: np.ndarray, bits: int) -> np.ndarray:
    """Partition index in ``[0, 2**bits)`` of int64 `keys`, monotone in the signed key value."""
    if bits == 0:
        return np.zeros(keys.shape, dtype=np.int64)
    return ((keys.view(np.uint64) ^ _SIGN) >> np.uint64(64 - bits)).astype(np.int64)


def partition_starts(bits: int) -> np.ndarray:
    """Smallest int64 key of each partition, ``[2**bits]``, ascending."""
    p = np.arange(1 << bits, dtype=np.uint64)
    return ((p << np.uint64(64 - bits)) ^ _SIGN).view(np.int64) if bits else np.array([np.iinfo(np.int64).min])


class SortedKeyBuilder:
    """Collect int64 ids in chunks; `finish()` writes their sorted distinct values (0 dropped) to `.npy`.

    Args:
        spill_dir: scratch directory for partition files (created; removed by `finish()`).
        partition_bits: ``2**partition_bits`` spill partitions. Peak memory of `finish()` is about
            3x the largest partition's spilled bytes.
        buffer_bytes: ids buffered in memory before they are appended to the spill files.
    """

    def __init__(self, spill_dir: str, partition_bits: int = 8, buffer_bytes: int = 64 << 20) -> None:
        if not 0 <= partition_bits <= 16:
            raise ValueError(f"partition_bits must be in [0, 16], got {partition_bits}")
        self.spill_dir = spill_dir
        self.bits = partition_bits
        self.buffer_bytes = buffer_bytes
        self._starts = partition_starts(partition_bits)
        self._buffers: Dict[int, List[np.ndarray]] = {}
        self._buffered = 0
        self.ids_seen = 0
        if os.path.exists(spill_dir):
            shutil.rmtree(spill_dir)  # leftovers of a killed run: start this vocabulary over
        os.makedirs(spill_dir)

    def add(self, ids: np.ndarray) -> None:
        """Add a chunk of raw ids (any shape, int64)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        self.ids_seen += int(ids.size)
        uniq = sorted_distinct(ids)  # per-chunk dedupe: sequences repeat items, this shrinks spills a lot
        uniq = uniq[uniq != MISSING_ID]
        if uniq.size == 0:
            return
        # uniq is sorted, so each partition is one contiguous slice.
        cuts = np.searchsorted(uniq, self._starts[1:])
        lo = 0
        for p, hi in enumerate(np.append(cuts, uniq.size)):
            if hi > lo:
                self._buffers.setdefault(p, []).append(uniq[lo:hi])
            lo = hi
        self._buffered += uniq.nbytes
        if self._buffered >= self.buffer_bytes:
            self._flush()

    def _part_path(self, p: int) -> str:
        return os.path.join(self.spill_dir, f"part{p:05d}.bin")

    def _flush(self) -> None:
        for p, chunks in self._buffers.items():
            with open(self._part_path(p), "ab") as f:
                for c in chunks:
                    f.write(c.tobytes())
        self._buffers.clear()
        self._buffered = 0

    def finish(self, out_path: str) -> int:
        """Write the sorted distinct ids to `out_path` (int64 ``[n]``); return n."""
        self._flush()
        with NpyStreamWriter(out_path, np.int64) as w:
            for p in range(1 << self.bits):
                path = self._part_path(p)
                if os.path.exists(path):
                    w.append(sorted_distinct(np.fromfile(path, dtype=np.int64)))
            n = w.rows
        shutil.rmtree(self.spill_dir)
        return n


class KeyRangeIndex:
    """Bucket index over a sorted int64 key array: bucket ``b`` holds ``keys[start[b]:start[b + 1]]``.

    Buckets split ``[keys[0], keys[-1]]`` into ``2**bits`` equal ranges (``(key - keys[0]) >> shift``),
    so hashed ids (uniform over int64) and dense small ids both fill them evenly, ~KEYS_PER_BUCKET
    each. A lookup then binary-searches one bucket: ~log2(largest bucket) gathers that hit one or
    two cache lines, where `np.searchsorted` over the whole array does log2(n) gathers whose last
    ~log2(n / cache) miss. Why not a hash table: it would hold every key again in memory, while the
    key array stays memory-mapped and this index is 4 B per 1-2 keys. Skewed keys only
    make buckets larger (more search steps), never wrong.

    Args:
        keys: sorted distinct int64 keys, ``[n]``, n >= 1 (memory-mapped is fine: read in chunks).
    """

    _CHUNK = 1 << 22  # keys (and buckets) handled per pass while building

    def __init__(self, keys: np.ndarray) -> None:
        n = int(keys.shape[0])
        self.keys = keys
        self.low = np.int64(keys[0])
        self._low_bits = np.uint64(int(keys[0]) % (1 << 64))  # `low` as uint64, for wrapping offsets
        span = int(keys[-1]) - int(keys[0])  # Python int: exact over the whole int64 range
        self.bits = max(0, int(np.ceil(np.log2(max(n / KEYS_PER_BUCKET, 1.0)))))
        self.shift = np.uint64(max(0, span.bit_length() - self.bits))
        # Bucket numbers of sorted keys are sorted too, so each chunk of keys sets the starts of the
        # buckets it reaches by a search in its own bucket numbers: no per-bucket count array.
        buckets = 1 << self.bits
        self.start = np.empty(buckets + 1, dtype=np.int32 if n < np.iinfo(np.int32).max else np.int64)
        filled = 0  # buckets [0, filled) have their start
        for lo in range(0, n, self._CHUNK):
            bk = self.bucket_of(np.asarray(keys[lo:lo + self._CHUNK]))
            top = int(bk[-1]) + 1
            self.start[filled:top] = lo + np.searchsorted(bk, np.arange(filled, top))
            filled = top
        self.start[filled:] = n
        largest = max(int(np.diff(self.start[i:i + self._CHUNK + 1]).max()) for i in range(0, buckets, self._CHUNK))
        self.steps = largest.bit_length()  # halvings that shrink the largest bucket to nothing

    def bucket_of(self, ids: np.ndarray) -> np.ndarray:
        """Bucket of each int64 id, ``[m]`` int64; ids outside the key range land in the end buckets."""
        offset = (ids.view(np.uint64) - self._low_bits) >> self.shift  # wraps below `low`: see np.where
        last = np.uint64((1 << self.bits) - 1)
        return np.where(ids < self.low, np.uint64(0), np.minimum(offset, last)).astype(np.int64)

    def lower_bound(self, ids: np.ndarray) -> np.ndarray:
        """For 1-D int64 `ids`: first position p with ``keys[p] >= id`` (as `np.searchsorted`), ``[m]``."""
        b = self.bucket_of(ids)
        lo = self.start[b].astype(np.int64)
        hi = self.start[b + 1].astype(np.int64)
        last = self.keys.shape[0] - 1
        for _ in range(self.steps):
            mid = (lo + hi) >> 1
            right = np.asarray(self.keys[np.minimum(mid, last)]) < ids
            right &= lo < hi
            lo = np.where(right, mid + 1, lo)
            hi = np.where(right, hi, mid)
        return lo


class Vocab:
    """A built vocabulary: sorted raw keys; row of key ``keys[i]`` is ``i + 1``.

    Args:
        keys: sorted distinct int64 raw ids, ``[n]`` (memory-mapped is fine).
        name: used in error messages.
        bulk: build a `KeyRangeIndex` on the first lookup of >= INDEX_MIN_IDS ids and use it
            from then on (`prepare`: billions of ids). Off by default: a server or a notebook
            that looks up a few ids should not pay its memory (4 B per 1-2 keys: 512 MB for the
            release's 243M items) or its build time (~1 s per 30M keys) on some larger request.
    """

    def __init__(self, keys: np.ndarray, name: str = "vocab", bulk: bool = False) -> None:
        self.keys = keys
        self.name = name
        self.bulk = bulk
        self._index: Optional[KeyRangeIndex] = None

    @classmethod
    def load(cls, path: str, name: str = "vocab", bulk: bool = False) -> "Vocab":
        return cls(np.load(path, mmap_mode="r"), name, bulk)

    @property
    def size(self) -> int:
        """Number of rows including the padding row 0."""
        return int(self.keys.shape[0]) + 1

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """int32 rows of raw `ids` (any shape); unknown ids and 0 map to row 0."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.keys.shape[0] == 0:
            return np.zeros(ids.shape, dtype=np.int32)
        flat = ids.reshape(-1)
        if flat.size < INDEX_MIN_IDS or not self.bulk:
            return self._rows(flat, np.searchsorted(self.keys, flat)).reshape(ids.shape)
        if self._index is None:  # built once per Vocab, on the first bulk lookup
            self._index = KeyRangeIndex(self.keys)
        out = np.empty(flat.size, dtype=np.int32)
        # Block by block: the ~log2(bucket) search steps and the final check re-read the same
        # key lines, which stay cached for a block but not across a whole 2M-id batch (each pass
        # would miss again once the key array outgrows the cache: measured 1.6x slower at 30M keys).
        for lo in range(0, flat.size, LOOKUP_BLOCK):
            block = flat[lo:lo + LOOKUP_BLOCK]
            out[lo:lo + block.size] = self._rows(block, self._index.lower_bound(block))
        return out.reshape(ids.shape)

    def _rows(self, ids: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """int32 rows of 1-D `ids` given their lower-bound positions `pos` in the keys."""
        clipped = np.minimum(pos, self.keys.shape[0] - 1)
        found = np.asarray(self.keys[clipped]) == ids
        return np.where(found, clipped + 1, PADDING_ROW).astype(np.int32)

    def key_of(self, rows: np.ndarray) -> np.ndarray:
        """Raw id of each row (row 0 -> 0)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.zeros(rows.shape, dtype=np.int64)
        real = rows > 0
        out[real] = np.asarray(self.keys[rows[real] - 1])
        return out

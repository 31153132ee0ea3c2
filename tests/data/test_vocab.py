"""External partitioned sort, bucket-indexed remapping and the streamed .npy writer."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from muse_rec.data.files import NpyStreamWriter
from muse_rec.data.vocab import (INDEX_MIN_IDS, LOOKUP_BLOCK, KeyRangeIndex, SortedKeyBuilder, Vocab, partition_of,
                                 partition_starts, sorted_distinct)

I64 = np.iinfo(np.int64)


@pytest.mark.parametrize("bits", [0, 1, 4, 10])
def test_external_sort_equals_unique(tmp_path: Path, bits: int) -> None:
    rng = np.random.default_rng(bits)
    chunks = [rng.integers(I64.min, I64.max, size=rng.integers(0, 3000), dtype=np.int64, endpoint=True)
              for _ in range(12)]
    chunks.append(np.array([I64.min, I64.max, 0, -1, 1, 0, I64.min], np.int64))
    chunks.append(rng.choice(chunks[0], 500))  # repeats across chunks
    b = SortedKeyBuilder(str(tmp_path / "spill"), partition_bits=bits, buffer_bytes=2048)
    for c in chunks:
        b.add(c)
    n = b.finish(str(tmp_path / "keys.npy"))
    keys = np.load(tmp_path / "keys.npy")
    want = np.unique(np.concatenate(chunks))
    want = want[want != 0]
    np.testing.assert_array_equal(keys, want)
    assert n == want.size and not (tmp_path / "spill").exists()


def test_partitions_follow_signed_order() -> None:
    bits = 6
    starts = partition_starts(bits)
    assert starts[0] == I64.min and np.all(np.diff(starts) > 0)
    vals = np.sort(np.random.default_rng(0).integers(I64.min, I64.max, 10_000, dtype=np.int64))
    p = partition_of(vals, bits)
    assert np.all(np.diff(p) >= 0) and p.min() >= 0 and p.max() < 2**bits
    np.testing.assert_array_equal(p, np.searchsorted(starts, vals, side="right") - 1)


def test_vocab_rows_and_keys() -> None:
    keys = np.array([-7, -3, 5, 9, 2**62], np.int64)
    v = Vocab(keys, "t")
    raw = np.array([[5, 0, -7], [100, 2**62, -8]], np.int64)
    np.testing.assert_array_equal(v.rows(raw), [[3, 0, 1], [0, 5, 0]])
    assert v.rows(raw).dtype == np.int32 and v.size == 6
    np.testing.assert_array_equal(v.key_of(np.array([0, 1, 5])), [0, -7, 2**62])
    np.testing.assert_array_equal(Vocab(np.zeros(0, np.int64)).rows(raw), np.zeros((2, 3), np.int32))


@pytest.mark.parametrize("row_shape,dtype", [((), np.int64), ((128,), np.int8), ((6,), np.int32)])
def test_stream_writer_round_trip(tmp_path: Path, row_shape, dtype) -> None:
    path = str(tmp_path / "a.npy")
    rng = np.random.default_rng(1)
    parts = [rng.integers(-100, 100, size=(n, *row_shape)).astype(dtype) for n in (0, 5, 17)]
    with NpyStreamWriter(path, dtype, row_shape) as w:
        for p in parts:
            w.append(p)
    written = np.load(path, mmap_mode="r")  # the header fixed at close gives the final row count
    assert written.shape == (22, *row_shape)
    np.testing.assert_array_equal(written, np.concatenate(parts))


def test_stream_writer_publishes_nothing_on_error(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    with pytest.raises(RuntimeError):
        with NpyStreamWriter(str(path), np.int32) as w:
            w.append(np.arange(3))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="rows of shape"):
        NpyStreamWriter(str(path), np.int32, (4,)).append(np.zeros((2, 3)))


def _key_sets() -> dict:
    rng = np.random.default_rng(3)
    return {
        "hashed": np.unique(rng.integers(I64.min, I64.max, 60_000, dtype=np.int64, endpoint=True)),
        "dense": np.arange(1, 30_001, dtype=np.int64),
        "extremes": np.array([I64.min, -1, 1, I64.max], np.int64),
        "single": np.array([42], np.int64),
        # one dense cluster and one far sparse one: most buckets empty, a few full (many search steps)
        "clustered": np.unique(np.concatenate([rng.integers(1, 2_000, 20_000),
                                               rng.integers(2**60, 2**60 + 10**12, 20_000)])).astype(np.int64),
    }


@pytest.mark.parametrize("name", list(_key_sets()))
def test_key_range_index_equals_searchsorted(name: str) -> None:
    keys = _key_sets()[name]
    rng = np.random.default_rng(4)
    with np.errstate(over="ignore"):
        queries = np.concatenate([keys, keys - 1, keys + 1,  # every key and both neighbours (wrapping)
                                  rng.integers(I64.min, I64.max, 5_000, dtype=np.int64, endpoint=True),
                                  np.array([I64.min, I64.max, 0, -1, 1], np.int64)])
    idx = KeyRangeIndex(keys)
    np.testing.assert_array_equal(idx.lower_bound(queries), np.searchsorted(keys, queries))
    assert idx.start[-1] == keys.size and np.all(np.diff(idx.start) >= 0)


def test_key_range_index_needs_its_last_search_step() -> None:
    """The step count is exactly what the largest bucket needs: one step fewer misses keys."""
    keys = _key_sets()["clustered"]
    idx = KeyRangeIndex(keys)
    idx.steps -= 1
    assert not np.array_equal(idx.lower_bound(keys), np.arange(keys.size))


def test_bulk_lookups_use_the_index_with_the_same_rows() -> None:
    rng = np.random.default_rng(1)
    keys = np.unique(rng.integers(-2**62, 2**62, 50_000))
    v = Vocab(keys, bulk=True)
    # many repeats, as behaviour ids; more than two lookup blocks, the last one partial
    known = keys[rng.integers(0, keys.size, 2 * LOOKUP_BLOCK + 1000)]
    ids = np.concatenate([known, rng.integers(-2**62, 2**62, 1000), np.zeros(24, np.int64)]).reshape(-1, 8)
    assert ids.size >= INDEX_MIN_IDS and ids.size % LOOKUP_BLOCK
    got = v.rows(ids)
    assert v._index is not None  # the bulk path ran
    plain = Vocab(keys)  # not bulk: never builds an index, same rows
    np.testing.assert_array_equal(plain.rows(ids), got)
    assert plain._index is None
    assert got.shape == ids.shape and got.dtype == np.int32
    small = np.array_split(ids.reshape(-1), ids.size // (INDEX_MIN_IDS // 2))  # each below INDEX_MIN_IDS: no index
    per_id = np.concatenate([Vocab(keys, bulk=True).rows(c) for c in small])
    np.testing.assert_array_equal(got.reshape(-1), per_id)
    assert np.array_equal(keys[got[got > 0] - 1], ids[got > 0]) and (got[ids == 0] == 0).all()
    unknown = ~np.isin(ids, keys)
    assert (got[unknown] == 0).all() and (got[~unknown] > 0).all()


@pytest.mark.parametrize("n", [0, 1, 7, 10_000])
def test_sorted_distinct_equals_unique(n: int) -> None:
    ids = np.random.default_rng(n).integers(-50, 50, n).astype(np.int64)
    np.testing.assert_array_equal(sorted_distinct(ids), np.unique(ids))

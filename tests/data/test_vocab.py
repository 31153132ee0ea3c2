"""External partitioned sort, searchsorted remapping and the streamed .npy writer."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from muse_rec.data.files import NpyStreamWriter, read_npy_shape
from muse_rec.data.vocab import SortedKeyBuilder, Vocab, partition_of, partition_starts

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
    np.testing.assert_array_equal(np.load(path, mmap_mode="r"), np.concatenate(parts))
    assert read_npy_shape(path)[0] == (22, *row_shape)


def test_stream_writer_publishes_nothing_on_error(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    with pytest.raises(RuntimeError):
        with NpyStreamWriter(str(path), np.int32) as w:
            w.append(np.arange(3))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="rows of shape"):
        NpyStreamWriter(str(path), np.int32, (4,)).append(np.zeros((2, 3)))


def test_large_lookups_are_deduplicated_with_the_same_rows() -> None:
    from muse_rec.data.vocab import DEDUP_MIN_IDS, Vocab

    rng = np.random.default_rng(1)
    keys = np.unique(rng.integers(-2**62, 2**62, 50_000))
    v = Vocab(keys)
    known = keys[rng.integers(0, keys.size, DEDUP_MIN_IDS)]  # many repeats, as behaviour ids
    ids = np.concatenate([known, rng.integers(-2**62, 2**62, 1000), np.zeros(24, np.int64)]).reshape(-1, 8)
    assert ids.size > DEDUP_MIN_IDS
    got = v.rows(ids)
    assert got.shape == ids.shape and got.dtype == np.int32
    assert np.array_equal(got, v._rows(ids))  # the per-id search, no deduplication
    assert np.array_equal(keys[got[got > 0] - 1], ids[got > 0]) and (got[ids == 0] == 0).all()

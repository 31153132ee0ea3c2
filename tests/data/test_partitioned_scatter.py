"""`PartitionedScatterWriter` fills a .npy at random rows exactly as in-memory assignment would,
across many partitions and spill flushes, in bounded memory."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from muse_rec.data.files import PartitionedScatterWriter


@pytest.mark.parametrize("mode", ["assign", "add"])
def test_matches_in_memory_scatter(tmp_path: Path, mode: str) -> None:
    rng = np.random.default_rng(0)
    n, d = 10_007, 3
    want = np.zeros((n, d), np.int32)
    touched = np.zeros(n, bool)
    # 4 KB partitions (~341 rows each: 30 partitions) and 8 KB of buffered pairs: many flushes.
    w = PartitionedScatterWriter(str(tmp_path / "a.npy"), np.int32, (n, d), str(tmp_path / "spill"),
                                 partition_bytes=4096, buffer_bytes=8192,
                                 present_path=str(tmp_path / "p.npy"), mode=mode)
    assert w.partitions > 20
    with w:
        for _ in range(40):
            rows = rng.integers(0, n, 500)  # duplicates inside and across puts
            vals = rng.integers(-1000, 1000, (500, d)).astype(np.int32)
            w.put(rows, vals)
            if mode == "add":
                np.add.at(want, rows, vals)
            else:
                for r, v in zip(rows, vals):  # in order, so the last put of a repeated row wins
                    want[r] = v
            touched[rows] = True
    got = np.load(tmp_path / "a.npy")
    assert got.shape == (n, d) and np.array_equal(got, want)
    assert w.repeated_rows == 40 * 500 - int(touched.sum())  # what prepare reports as duplicate rows
    assert np.array_equal(np.load(tmp_path / "p.npy"), touched)
    assert not (tmp_path / "spill").exists()


def test_abort_publishes_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with PartitionedScatterWriter(str(tmp_path / "a.npy"), np.int8, (100, 4), str(tmp_path / "s"),
                                      partition_bytes=64) as w:
            w.put(np.arange(10), np.ones((10, 4), np.int8))
            raise RuntimeError("killed")
    assert not (tmp_path / "a.npy").exists() and not (tmp_path / "s").exists()

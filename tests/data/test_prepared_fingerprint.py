"""`PreparedData.fingerprint`: the identity of the prepared data's content that checkpoints and
exports record. The same arrays give the same fingerprint wherever the raw release was copied to
or whichever Parquet writer wrote it; other content gives another; a fingerprint recorded by an
earlier version (raw files' fingerprint included) still matches the same data."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from muse_rec.data.prepare import PrepareConfig, prepare
from muse_rec.data.prepared import PreparedData
from tests.data.rawgen import write_raw_release

CFG = PrepareConfig(batch_rows=50, partition_bits=3, spill_buffer_bytes=4096, progress=False)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fp") / "raw"
    write_raw_release(str(root))
    return root


def _prepare(raw: Path, out: Path) -> PreparedData:
    with pytest.warns(UserWarning, match="no row in"):
        prepare(str(raw), str(out), CFG)
    return PreparedData(str(out))


def test_a_copied_or_rewritten_release_prepares_to_the_same_fingerprint(raw, tmp_path):
    """A copy of the release (other mtimes) and the same tables rewritten by another writer (row
    groups of 7, zstd, columns reordered): byte-identical arrays, so one fingerprint. Before, it
    covered the raw files' mtimes and footers, and the copy's own checkpoints were refused."""
    first = _prepare(raw, tmp_path / "a")
    copy = tmp_path / "copy"
    shutil.copytree(raw, copy)
    for f in copy.iterdir():
        os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    rewritten = tmp_path / "rewritten"
    rewritten.mkdir()
    for f in raw.iterdir():
        t = pq.read_table(f)
        pq.write_table(t.select(list(reversed(t.column_names))), rewritten / f.name, row_group_size=7, compression="zstd")
    for other in (_prepare(copy, tmp_path / "b"), _prepare(rewritten, tmp_path / "c")):
        assert other.meta["fingerprint"] != first.meta["fingerprint"]  # the raw files' fingerprints differ
        for rel in ("train/labels.npy", "items/scl.npy", "test/seq_items.npy"):
            assert (Path(other.path) / rel).read_bytes() == (Path(first.path) / rel).read_bytes()
        assert other.fingerprint == first.fingerprint


def test_other_content_in_an_arrays_middle_gives_another_fingerprint(raw, tmp_path):
    data = _prepare(raw, tmp_path / "a")
    before = data.fingerprint
    path = Path(data.path) / "items/scl.npy"
    size = path.stat().st_size
    at = size * 4 // 9 + 17  # the start of the 4th interior block, and 17 bytes on
    assert (1 << 16) < at < size - (1 << 16)  # in neither the first nor the last 64 KiB
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([(byte[0] + 1) % 256]))
    assert PreparedData(str(tmp_path / "a")).fingerprint != before


def _fingerprint_before_session_26(d: Path) -> str:
    """The fingerprint earlier versions recorded, written out here: meta.json but its source and
    config (so with the raw files' fingerprint), and each array's size, first and last 64 KiB."""
    meta = json.loads((d / "meta.json").read_text())
    h = hashlib.sha256(json.dumps({k: v for k, v in meta.items() if k not in ("source", "config")},
                                  sort_keys=True).encode())
    for rel in sorted(meta["files"]):
        if not rel.endswith(".npy"):
            continue
        raw = (d / rel).read_bytes()
        h.update(f"{rel}:{len(raw)}".encode() + raw[:1 << 16] + raw[max(0, len(raw) - (1 << 16)):])
    return h.hexdigest()[:20]


def test_a_fingerprint_recorded_by_an_earlier_version_still_matches(raw, tmp_path):
    data = _prepare(raw, tmp_path / "a")
    legacy = _fingerprint_before_session_26(tmp_path / "a")
    assert legacy != data.fingerprint
    assert data.made_from(legacy) and data.made_from(data.fingerprint)
    assert not data.made_from("0" * 20) and not data.made_from(legacy[:-1] + ("0" if legacy[-1] != "0" else "1"))
    other = np.load(tmp_path / "a" / "train/labels.npy")
    other[0] = 1 - other[0]
    np.save(tmp_path / "a" / "train/labels.npy", other)
    assert not PreparedData(str(tmp_path / "a")).made_from(legacy)


def test_prepare_records_each_arrays_sha256_and_the_fingerprint_covers_it(raw, tmp_path):
    """The sampled blocks see only part of a large array; the SHA-256 of every array, taken once by
    prepare, makes any difference in content another fingerprint (a corrected release with the same
    counts included)."""
    data = _prepare(raw, tmp_path / "a")
    recorded = data.meta["content_sha256"]
    assert sorted(recorded) == sorted(data.meta["files"])
    for rel in ("train/labels.npy", "items/scl.npy"):
        assert recorded[rel] == hashlib.sha256((tmp_path / "a" / rel).read_bytes()).hexdigest()
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    meta["content_sha256"]["test/seq_items.npy"] = "0" * 64
    (tmp_path / "a" / "meta.json").write_text(json.dumps(meta))
    assert PreparedData(str(tmp_path / "a")).fingerprint != data.fingerprint


def test_check_finds_a_change_that_keeps_every_row_in_range(raw, tmp_path, capsys):
    """Two train labels swapped after prepare: the counts and every range check still pass; only the
    recorded SHA-256 tells."""
    from muse_rec.cli import main

    _prepare(raw, tmp_path / "a")
    labels = np.load(tmp_path / "a" / "train/labels.npy")
    i, j = int(np.flatnonzero(labels == 1)[0]), int(np.flatnonzero(labels == 0)[-1])
    labels[[i, j]] = labels[[j, i]]
    np.save(tmp_path / "a" / "train/labels.npy", labels)
    capsys.readouterr()
    assert main(["check", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "train/labels.npy: content differs from meta.json's content_sha256" in err, err

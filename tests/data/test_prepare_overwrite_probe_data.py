"""A prepared directory whose arrays changed after prepare but still open (two labels swapped) is found by
`muse-rec check`, and the `prepare ... --overwrite` it asks for prepares the release again; without
`--overwrite` the same release returns the directory unread, as documented."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from muse_rec.data.prepare import PrepareConfig, prepare
from muse_rec.data.prepared import PreparedData
from muse_rec.data.check import check_prepared
from tests.data.rawgen import write_raw_release

CFG = PrepareConfig(batch_rows=40, partition_bits=2, progress=False)


@pytest.fixture
def damaged(tmp_path: Path):
    """A raw release, its prepared directory with two train labels swapped, and the labels as prepared."""
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_raw_release(str(raw), n_train_users=30, n_test_users=10, n_items=200, seed=7)
    with pytest.warns(UserWarning):
        prepare(str(raw), str(out), CFG)
    path = out / "train" / "labels.npy"
    labels = np.load(path)
    swapped = np.load(path, mmap_mode="r+")
    neg, pos = int(np.flatnonzero(labels == 0)[0]), int(np.flatnonzero(labels == 1)[0])
    swapped[neg], swapped[pos] = 1, 0  # every value still in range: only the content hash tells
    swapped.flush()
    del swapped
    PreparedData(str(out))  # still opens
    return raw, out, labels


def test_overwrite_prepares_the_same_release_again(damaged) -> None:
    raw, out, labels = damaged
    assert any("train/labels.npy" in p for p in check_prepared(str(out)).problems)
    prepare(str(raw), str(out), CFG)  # the same release, no --overwrite: returned unread, as documented
    assert not np.array_equal(np.load(out / "train" / "labels.npy"), labels)
    with pytest.warns(UserWarning):
        prepare(str(raw), str(out), CFG, overwrite=True)
    np.testing.assert_array_equal(np.load(out / "train" / "labels.npy"), labels)
    assert check_prepared(str(out)).ok


def test_check_asks_for_what_repairs_it(damaged, capsys: pytest.CaptureFixture) -> None:
    from muse_rec.cli import main

    raw, out, labels = damaged
    assert main(["check", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err and all("--overwrite" in line for line in err), err
    with pytest.warns(UserWarning):
        assert main(["prepare", str(raw), str(out), "--overwrite", "--no-progress"]) == 0
    assert main(["check", str(out)]) == 0
    np.testing.assert_array_equal(np.load(out / "train" / "labels.npy"), labels)

"""A sample without a user id (raw 129_1 = 0: missing) joins no user-feature row, even where a row's user
id is missing too: that row is nobody's history. Prepare counts the sample among those without a row,
`check` accepts the result, and the ranker serves no history for user 0."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from muse_rec.data import schema as S
from muse_rec.data.check import check_prepared
from muse_rec.data.prepare import PrepareConfig, prepare
from muse_rec.data.prepared import PreparedData
from tests.data.rawgen import write_raw_release

CFG = PrepareConfig(batch_rows=40, partition_bits=2, progress=False)
ANONYMOUS_ROW = 3  # the train user-feature row whose user id is made missing


def _set(path: Path, row: int, column: str, value: int) -> None:
    """Rewrite the Parquet file ``path`` with ``column`` of ``row`` set to ``value``."""
    t = pq.read_table(path)
    rows = t.to_pylist()
    rows[row][column] = value
    pq.write_table(pa.Table.from_pylist(rows, schema=t.schema), path)


def test_a_sample_without_a_user_id_gets_no_users_history(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_raw_release(str(raw), n_train_users=30, n_test_users=10, n_items=200, seed=9)
    users = raw / S.TABLES["train_user_features"].file
    assert pq.read_table(users).column(S.SEQ_ITEMS)[ANONYMOUS_ROW].as_py(), "the row must have a history to leak"
    _set(users, ANONYMOUS_ROW, S.USER, 0)
    _set(raw / S.TABLES["train_samples"].file, 0, S.USER, 0)
    with pytest.warns(UserWarning):
        meta = prepare(str(raw), str(out), CFG)
    data = PreparedData(str(out))
    sample_users = data.array("train/sample_users.npy")
    keys = data.array("train/sample_user_keys.npy")
    assert int(keys[0]) == 0 and int(sample_users[0]) == -1
    # Every sample without a row is counted: the anonymous one too (the others are rawgen's own).
    assert meta["splits"]["train"]["samples_without_user_row"] == int((sample_users < 0).sum())
    assert data.user_history("train", 0) is None
    assert check_prepared(str(out)).ok

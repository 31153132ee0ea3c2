"""An SCL table whose rows are all zeros (ids matching the samples' items) is said as such: the warning that
no train item has an SCL vector blamed another id space ("its item ids match none of the samples' items")."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from muse_rec.data import schema as S
from muse_rec.data.prepare import PrepareConfig, prepare
from tests.data.rawgen import write_raw_release

CFG = PrepareConfig(batch_rows=40, partition_bits=2, progress=False)


def test_a_table_of_zero_rows_is_not_called_another_id_space(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_raw_release(str(raw), n_train_users=20, n_test_users=6, n_items=100, seed=4)
    path = raw / S.TABLES["scl"].file
    t = pq.read_table(path)
    zeros = pa.array([[0] * S.SCL_DIM] * t.num_rows, pa.list_(pa.int8()))
    pq.write_table(t.set_column(t.schema.get_field_index(S.SCL_VECTOR), S.SCL_VECTOR, zeros), path)
    with pytest.warns(UserWarning) as seen:
        meta = prepare(str(raw), str(tmp_path / "out"), CFG)
    said = [str(w.message) for w in seen
            if "not one train target or behaviour item has an SCL vector" in str(w.message)]
    assert len(said) == 1 and "every one is all zeros" in said[0] and "id space" not in said[0], said
    assert meta["items"]["items_with_scl"] == 0 and meta["items"]["scl_rows_all_zero"] == t.num_rows
    # The table's ids are the samples' items: a train target holds an SCL row.
    targets = set(pq.read_table(raw / S.TABLES["train_samples"].file).column(S.ITEM).to_pylist())
    assert targets & set(t.column(S.ITEM).to_pylist())

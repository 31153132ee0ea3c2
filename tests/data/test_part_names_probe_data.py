"""Parts whose names hold characters `str.isdigit` calls digits but `int` refuses (``²``) are read in
natural order like any other, not a ValueError traceback."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from muse_rec.data import schema as S
from muse_rec.data.reader import table_parts
from tests.data.rawgen import write_raw_release


def test_a_superscript_in_a_part_name_is_text(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_raw_release(str(raw), n_train_users=10, n_test_users=4, n_items=50, seed=1)
    spec = S.TABLES["train_samples"]
    table = pq.read_table(raw / spec.file)
    (raw / spec.file).unlink()
    parts = raw / "train_samples"
    parts.mkdir()
    # part-1² has no suffix: read because it begins as Parquet (Hive names parts without one)
    for name in ("part-10.parquet", "part-1²", "part-2.parquet"):
        pq.write_table(table, parts / name)
    where, paths, skipped = table_parts(str(raw), spec)
    assert [Path(p).name for p in paths] == ["part-1²", "part-2.parquet", "part-10.parquet"] and not skipped

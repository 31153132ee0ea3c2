"""Reading memory is bounded by the batch of rows, not by the writer's row-group size.

The same user-feature rows are written once with one huge row group and once with small ones;
a fresh process decodes each with `RawTable.iter_batches` and reports its peak anonymous RSS.
Reading whole column chunks (pyarrow's default) would hold the ~96 MB row group in memory.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from muse_rec.data import schema as S
from muse_rec.data.synth_release import release_schema
from tests.conftest import REPO, subprocess_env

ROWS, SEQ = 6000, 1000  # 12M int64 list values in two columns: ~96 MB of ids in one row group
ROW_GROUP_BYTES = ROWS * SEQ * 2 * 8

PROBE = """
import json, sys
from muse_rec.data import schema as S
from muse_rec.data.reader import RawTable
def anon_kib():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
with RawTable(sys.argv[1], S.TABLES["train_user_features"]) as t:
    base = anon_kib(); peak = base; n = 0
    for b in t.iter_batches(batch_rows=64):
        n += b.num_rows; peak = max(peak, anon_kib())
print(json.dumps({"rows": n, "growth_bytes": (peak - base) * 1024}))
"""


def _write(path: Path, row_group: int) -> None:
    rng = np.random.default_rng(0)
    offsets = pa.array(np.arange(0, ROWS * SEQ + 1, SEQ, dtype=np.int32))
    typ = release_schema("train_user_features").field(S.SEQ_ITEMS).type
    cols = {S.USER: pa.array(np.arange(1, ROWS + 1, dtype=np.int64))}
    for c in S.USER_FIELDS:
        cols[c] = pa.array(np.ones(ROWS, np.int64))
    for c in (S.SEQ_ITEMS, S.SEQ_CATS):  # random ids: incompressible, like hashed ids
        cols[c] = pa.ListArray.from_arrays(offsets, pa.array(rng.integers(1, 2**62, ROWS * SEQ)), type=typ)
    schema = release_schema("train_user_features")
    pq.write_table(pa.Table.from_arrays([cols[f.name] for f in schema], schema=schema), path,
                   row_group_size=row_group, compression="snappy")


def _growth(path: Path) -> int:
    done = subprocess.run([sys.executable, "-c", PROBE, str(path)], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    res = json.loads(done.stdout)
    assert res["rows"] == ROWS
    return res["growth_bytes"]


def test_huge_row_groups_do_not_grow_reader_memory(tmp_path: Path) -> None:
    huge, small = tmp_path / "huge.parquet", tmp_path / "small.parquet"
    _write(huge, ROWS)
    _write(small, 64)
    assert pq.ParquetFile(huge).metadata.num_row_groups == 1
    g_huge, g_small = _growth(huge), _growth(small)
    # Bounded by the batch: the one-row-group file costs less than a quarter of its row group more
    # than the small-row-group file (holding the column chunks would cost >= ROW_GROUP_BYTES).
    assert g_huge - g_small < ROW_GROUP_BYTES / 4, (g_huge, g_small, ROW_GROUP_BYTES)

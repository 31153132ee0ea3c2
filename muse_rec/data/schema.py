"""The raw Taobao-MM release: its six tables, their columns, Arrow types and value rules.

One place states what a raw table must look like; the reader checks files against it before a
single row is decoded (names and types, from the Parquet footer) and checks value rules
(list lengths, one-hot labels) on every record batch it yields.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Column names of the release (feature ids of the original Taobao logging system).
LABEL = "label_0"  # list<int8> one-hot [1-y, y]
USER = "129_1"  # int64 hashed user id
ITEM = "205"  # int64 hashed item id (sample target, item_features key, SCL key)
USER_FIELDS: List[str] = ["130_1", "130_2", "130_3", "130_4", "130_5"]
SEQ_ITEMS = "150_2_180"  # list<int64> behaviour item ids, oldest -> newest
SEQ_CATS = "151_2_180"  # list<int64> behaviour category ids, aligned with SEQ_ITEMS
ITEM_CAT = "206"
ITEM_ATTRS: List[str] = ["213", "214"]
SCL_VECTOR = "205_c"  # list<int8> of length SCL_DIM

SCL_DIM = 128
LABEL_WIDTH = 2


@dataclass(frozen=True)
class TableSpec:
    """Schema of one raw table.

    Attributes:
        name: logical name (also the key used by `RawRelease`).
        file: file name inside the release directory.
        columns: column name -> required Arrow type.
        fixed_list_len: list column -> the exact length every row must have.
        equal_len_lists: groups of list columns that must have equal lengths row by row.
        one_hot: list columns that must hold exactly one 1 and zeros elsewhere.
    """

    name: str
    file: str
    columns: Dict[str, pa.DataType]
    fixed_list_len: Dict[str, int] = field(default_factory=dict)
    equal_len_lists: Tuple[Tuple[str, ...], ...] = ()
    one_hot: Tuple[str, ...] = ()


_I64 = pa.int64()
_LIST_I8 = pa.list_(pa.int8())
_LIST_I64 = pa.list_(pa.int64())

_SAMPLES_COLUMNS = {LABEL: _LIST_I8, USER: _I64, ITEM: _I64}
_USER_COLUMNS = {USER: _I64, **{c: _I64 for c in USER_FIELDS}, SEQ_ITEMS: _LIST_I64, SEQ_CATS: _LIST_I64}

TABLES: Dict[str, TableSpec] = {
    spec.name: spec
    for spec in [
        TableSpec("train_samples", "train_samples.parquet", _SAMPLES_COLUMNS,
                  fixed_list_len={LABEL: LABEL_WIDTH}, one_hot=(LABEL,)),
        TableSpec("test_samples", "test_samples.parquet", _SAMPLES_COLUMNS,
                  fixed_list_len={LABEL: LABEL_WIDTH}, one_hot=(LABEL,)),
        TableSpec("train_user_features", "train_user_features.parquet", _USER_COLUMNS,
                  equal_len_lists=((SEQ_ITEMS, SEQ_CATS),)),
        TableSpec("test_user_features", "test_user_features.parquet", _USER_COLUMNS,
                  equal_len_lists=((SEQ_ITEMS, SEQ_CATS),)),
        TableSpec("item_features", "item_features.parquet",
                  {ITEM: _I64, ITEM_CAT: _I64, **{c: _I64 for c in ITEM_ATTRS}}),
        TableSpec("scl", "scl_embedding_int8_p90.parquet", {ITEM: _I64, SCL_VECTOR: _LIST_I8},
                  fixed_list_len={SCL_VECTOR: SCL_DIM}),
    ]
}

SPLITS: List[str] = ["train", "test"]


class RawDataError(ValueError):
    """A raw table violates the release schema. The message names file, row group and column."""


def _where(file: str, row_group: Optional[int], column: Optional[str]) -> str:
    parts = [file]
    if row_group is not None:
        parts.append(f"row group {row_group}")
    if column is not None:
        parts.append(f"column '{column}'")
    return ", ".join(parts)


def raw_error(file: str, msg: str, row_group: Optional[int] = None, column: Optional[str] = None) -> RawDataError:
    return RawDataError(f"{_where(file, row_group, column)}: {msg}")


def check_schema(spec: TableSpec, schema: pa.Schema, file: str) -> None:
    """Fail unless every required column is present with its Arrow type (extra columns are fine)."""
    for name, want in spec.columns.items():
        found = schema.get_all_field_indices(name)
        if not found:
            raise raw_error(file, f"missing column (table {spec.name} needs {sorted(spec.columns)})", column=name)
        if len(found) > 1:  # e.g. an export that repeats a column after a join: which one is meant?
            raise raw_error(file, f"appears {len(found)} times (columns {found}); keep one", column=name)
        got = schema.field(found[0]).type
        # Compare list types by value type only: the child field may be named 'item' or 'element'.
        if pa.types.is_list(want):
            ok = (pa.types.is_list(got) or pa.types.is_large_list(got)) and got.value_type == want.value_type
        else:
            ok = got == want
        if not ok:  # a list is named by its value type: its child field's name does not matter
            expected = f"a list of {want.value_type}" if pa.types.is_list(want) else str(want)
            raise raw_error(file, f"type {got}, expected {expected}", column=name)


def list_lengths(arr: pa.Array) -> pa.Array:
    """Row lengths of a (large) list array as an Arrow int array; nulls have length 0."""
    return pc.fill_null(pc.list_value_length(arr), 0)


def check_batch(spec: TableSpec, batch: pa.RecordBatch, file: str, row_group: int) -> None:
    """Check one record batch against the value rules of `spec` (vectorised, no per-row Python)."""
    for name in spec.columns:
        col = batch.column(batch.schema.get_field_index(name))
        if col.null_count:
            raise raw_error(file, f"{col.null_count} null value(s)", row_group, name)
        if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
            inner = pc.list_flatten(col).null_count
            if inner:
                raise raw_error(file, f"{inner} null list element(s)", row_group, name)
    for name, want in spec.fixed_list_len.items():
        lens = list_lengths(batch.column(batch.schema.get_field_index(name))).to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(lens != want)
        if bad.size:
            raise raw_error(file, f"{bad.size} row(s) have list length != {want} "
                            f"(first: row {int(bad[0])} has {int(lens[bad[0]])})", row_group, name)
    for group in spec.equal_len_lists:
        first = list_lengths(batch.column(batch.schema.get_field_index(group[0]))).to_numpy(zero_copy_only=False)
        for other in group[1:]:
            lens = list_lengths(batch.column(batch.schema.get_field_index(other))).to_numpy(zero_copy_only=False)
            bad = np.flatnonzero(lens != first)
            if bad.size:
                r = int(bad[0])
                raise raw_error(file, f"{bad.size} row(s) differ in length from '{group[0]}' "
                                f"(first: row {r}: {int(lens[r])} vs {int(first[r])})", row_group, other)
    for name in spec.one_hot:
        col = batch.column(batch.schema.get_field_index(name))
        flat = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.int64)
        width = spec.fixed_list_len.get(name, LABEL_WIDTH)
        mat = flat.reshape(-1, width)
        ok = ((mat == 0) | (mat == 1)).all(axis=1) & (mat.sum(axis=1) == 1)
        bad = np.flatnonzero(~ok)
        if bad.size:
            raise raw_error(file, f"{bad.size} row(s) are not one-hot (first: row {int(bad[0])} = "
                            f"{mat[bad[0]].tolist()})", row_group, name)

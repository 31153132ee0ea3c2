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

from muse_rec.wording import one_line

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
        null_is_empty: list columns where a null list means an empty one (a user table built by a
            left join writes null for a user without behaviours); nulls elsewhere are refused.
    """

    name: str
    file: str
    columns: Dict[str, pa.DataType]
    fixed_list_len: Dict[str, int] = field(default_factory=dict)
    equal_len_lists: Tuple[Tuple[str, ...], ...] = ()
    one_hot: Tuple[str, ...] = ()
    null_is_empty: Tuple[str, ...] = ()


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
                  equal_len_lists=((SEQ_ITEMS, SEQ_CATS),), null_is_empty=(SEQ_ITEMS, SEQ_CATS)),
        TableSpec("test_user_features", "test_user_features.parquet", _USER_COLUMNS,
                  equal_len_lists=((SEQ_ITEMS, SEQ_CATS),), null_is_empty=(SEQ_ITEMS, SEQ_CATS)),
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


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _is_list_view(t: pa.DataType) -> bool:
    return pa.types.is_list_view(t) or pa.types.is_large_list_view(t)


def _list_view_as_list(arr: pa.Array) -> pa.Array:
    """A (large) list_view column ``[rows]`` as a large_list of the same rows. Arrow's own cast to a list
    returned an invalid array (pyarrow 26: "Offsets buffer size ... isn't large enough"); the rows'
    values are taken in row order instead (a view's rows may lie anywhere in its values, overlap too)."""
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False)
    offsets = np.zeros(len(arr) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return pa.LargeListArray.from_arrays(pa.array(offsets), pc.list_flatten(arr),
                                         mask=arr.is_null() if arr.null_count else None)


def _is_bytes(t: pa.DataType) -> bool:
    return any(is_type(t) for is_type in (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_fixed_size_binary,
                                          pa.types.is_binary_view))


def _bytes_as_int8_lists(arr: pa.Array) -> pa.Array:
    """A binary column ``[rows]`` as the list of its bytes per row, each byte an int8 (two's complement:
    NumPy's ``int8`` vector ``.tobytes()``), zero-copy: the same validity, offsets and data buffers (a
    ``binary_view`` column, pyarrow's other layout of the same bytes, is copied once)."""
    if pa.types.is_binary_view(arr.type):  # views into several data buffers: copied into one first
        arr = arr.cast(pa.large_binary())
    bufs = arr.buffers()
    if pa.types.is_fixed_size_binary(arr.type):  # [validity, data]: row r is bytes r*w .. (r+1)*w
        width = arr.type.byte_width
        values = pa.Array.from_buffers(pa.int8(), (arr.offset + len(arr)) * width, [None, bufs[1]])
        return pa.Array.from_buffers(pa.list_(pa.int8(), width), len(arr), [bufs[0]], offset=arr.offset,
                                     children=[values])
    # [validity, offsets, data]: a (large) binary has a (large) list's offsets
    kind = pa.large_list(pa.int8()) if pa.types.is_large_binary(arr.type) else pa.list_(pa.int8())
    values = pa.Array.from_buffers(pa.int8(), bufs[2].size if bufs[2] is not None else 0, [None, bufs[2]])
    return pa.Array.from_buffers(kind, len(arr), [bufs[0], bufs[1]], offset=arr.offset, children=[values])


def check_schema(spec: TableSpec, schema: pa.Schema, file: str) -> Dict[str, pa.DataType]:
    """Fail unless every required column is present with its Arrow type, or one that holds the same
    values (extra columns are fine). Returns the columns to cast, column -> the spec's type.

    Other writers store the same integers in other types: int32 ids, ``list<int64>`` labels (pandas
    from Python lists), ``fixed_size_list<int8>[128]`` SCL rows (polars ``Array``). Any integer type,
    and any list of integers or booleans (``list``, ``large_list``, ``fixed_size_list`` or a list view; a one-hot
    ``list<bool>`` label), and for an int8 list (SCL rows, labels) binary of its bytes, is accepted and cast
    to the release's type as it is read; a value that does not fit is a `RawDataError` then. So is a column
    (or list) of type null: its values are all nulls, refused by row where the column allows none. Floats
    and strings are not: their conversion to an id is a choice this reader does not make for you.
    """
    casts: Dict[str, pa.DataType] = {}
    for name, want in spec.columns.items():
        found = schema.get_all_field_indices(name)
        if not found:
            raise raw_error(file, f"missing column (table {spec.name} needs {sorted(spec.columns)})", column=name)
        if len(found) > 1:  # e.g. an export that repeats a column after a join: which one is meant?
            raise raw_error(file, f"appears {len(found)} times (columns {found}); keep one", column=name)
        got = schema.field(found[0]).type
        if pa.types.is_null(got):
            # Every value null, and no type to read them in: pandas writes an object column so where the
            # part has no rows, or only null histories (a left join's users without behaviours).
            # `check_batch` refuses each null where the column allows none, by row.
            casts[name] = want
            continue
        if pa.types.is_list(want):
            # A list is named by its value type: its child field's name ('item', 'element') does not matter.
            # Booleans are the integers 0 and 1: a one-hot label written as list<bool> (a writer's
            # `[y == 0, y == 1]`) casts to the same int8 values, none lost.
            # A list of nulls (pandas: a column of empty lists) holds no value but nulls, refused by row.
            ok = (_is_list(got) or _is_list_view(got)) and any(is_type(got.value_type) for is_type in
                                       (pa.types.is_integer, pa.types.is_boolean, pa.types.is_null))
            # Bytes are int8 values: an SCL row stored as the 128 bytes of its int8 vector.
            ok = ok or (_is_bytes(got) and want.value_type == pa.int8())
            exact = (pa.types.is_list(got) or pa.types.is_large_list(got)) and got.value_type == want.value_type
        else:
            ok, exact = pa.types.is_integer(got), got == want
        if not ok:
            expected = (f"a list of {want.value_type} (or a list, large_list or fixed_size_list of another integer "
                        "type or of booleans" + (", or binary: its bytes" if want.value_type == pa.int8() else "") + ")"
                        if pa.types.is_list(want) else f"{want} (or another integer type)")
            raise raw_error(file, f"type {got}, expected {expected}", column=name)
        if not exact:
            casts[name] = want
    return casts


def rows_phrase(bad: np.ndarray, first_row: int, num_rows: int) -> Tuple[str, int]:
    """("3 of rows 8192-12287", the first bad row) for the batch-relative rows `bad` (ascending) of a
    batch of `num_rows` rows whose first row is the file's row `first_row`."""
    return f"{bad.size} of rows {first_row}-{first_row + num_rows - 1}", first_row + int(bad[0])


def _rows_out_of_range(arr: pa.Array, want: pa.DataType) -> Tuple[np.ndarray, List[int]]:
    """The rows of the integer (or integer list) column `arr` ``[rows]`` holding a value outside the range
    of `want`'s integer type (ascending), and the first such row's first such value."""
    target = want.value_type if _is_list(want) else want
    info = np.iinfo(target.to_pandas_dtype())
    values = pc.list_flatten(arr) if _is_list(arr.type) else arr
    # Nulls are no range error (check_batch names them); NumPy compares every integer dtype with a
    # Python int exactly (a uint64 above 2^63 - 1 too).
    flat = pc.fill_null(values, 0).to_numpy(zero_copy_only=False)
    out = np.flatnonzero((flat < info.min) | (flat > info.max))
    if not out.size:
        return out, []
    rows = pc.list_parent_indices(arr).to_numpy(zero_copy_only=False)[out] if _is_list(arr.type) else out
    return np.unique(rows), [int(flat[out[0]])]


def cast_batch(batch: pa.RecordBatch, casts: Dict[str, pa.DataType], file: str, row_group: int,
               first_row: int = 0) -> pa.RecordBatch:
    """`batch` with the columns of `casts` (from `check_schema`) cast to the release's types; a
    `RawDataError` naming the column and the first row (as the file counts it: ``first_row`` is the
    batch's first) where a value does not fit (e.g. 300 in an int8 label)."""
    todo = {n: t for n, t in casts.items() if n in batch.schema.names}
    if not todo:
        return batch
    arrays = list(batch.columns)
    for name, want in todo.items():
        i = batch.schema.get_field_index(name)
        if _is_bytes(arrays[i].type):
            arrays[i] = _bytes_as_int8_lists(arrays[i])
        elif _is_list_view(arrays[i].type):
            arrays[i] = _list_view_as_list(arrays[i])
        try:
            arrays[i] = arrays[i].cast(want)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            bad, value = _rows_out_of_range(arrays[i], want)
            if not bad.size:  # not a range error: say what Arrow said
                raise raw_error(file, f"type {arrays[i].type}: a value does not fit {want} ({one_line(e)})", row_group,
                                name) from None
            count, row = rows_phrase(bad, first_row, batch.num_rows)
            raise raw_error(file, f"type {arrays[i].type}: a value does not fit {want} in {count} "
                            f"(first: row {row} holds {value[0]})", row_group, name) from None
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


def list_lengths(arr: pa.Array) -> pa.Array:
    """Row lengths of a (large) list array as an Arrow int array; nulls have length 0."""
    return pc.fill_null(pc.list_value_length(arr), 0)


def check_batch(spec: TableSpec, batch: pa.RecordBatch, file: str, row_group: int, first_row: int = 0) -> None:
    """Check one record batch against the value rules of `spec` (vectorised, no per-row Python).

    ``first_row``: the file's row number of the batch's first row, so that a message names the
    row as the file counts it (the reader yields a row group in batches of ``batch_rows``).
    """
    def rows(bad: np.ndarray) -> Tuple[str, int]:  # ("3 of rows 8192-12287", the first bad row), the file's numbering
        return rows_phrase(bad, first_row, batch.num_rows)

    for name in spec.columns:
        col = batch.column(batch.schema.get_field_index(name))
        if col.null_count and name not in spec.null_is_empty:
            bad = np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))
            count, row = rows(bad)
            raise raw_error(file, f"{count} are null (first: row {row})", row_group, name)
        if _is_list(col.type):
            inner = pc.list_flatten(col)
            if inner.null_count:
                parents = pc.list_parent_indices(col).to_numpy(zero_copy_only=False)
                bad = np.unique(parents[inner.is_null().to_numpy(zero_copy_only=False)])
                count, row = rows(bad)
                raise raw_error(file, f"{inner.null_count} null list element(s) in {count} (first: row {row})",
                                row_group, name)
    for name, want in spec.fixed_list_len.items():
        lens = list_lengths(batch.column(batch.schema.get_field_index(name))).to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(lens != want)
        if bad.size:
            count, row = rows(bad)
            raise raw_error(file, f"{count} have list length != {want} (first: row {row} has {int(lens[bad[0]])})",
                            row_group, name)
    for group in spec.equal_len_lists:
        first = list_lengths(batch.column(batch.schema.get_field_index(group[0]))).to_numpy(zero_copy_only=False)
        for other in group[1:]:
            lens = list_lengths(batch.column(batch.schema.get_field_index(other))).to_numpy(zero_copy_only=False)
            bad = np.flatnonzero(lens != first)
            if bad.size:
                count, row = rows(bad)
                r = int(bad[0])
                raise raw_error(file, f"{count} differ in length from '{group[0]}' "
                                f"(first: row {row}: {int(lens[r])} vs {int(first[r])})", row_group, other)
    for name in spec.one_hot:
        col = batch.column(batch.schema.get_field_index(name))
        flat = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.int64)
        width = spec.fixed_list_len.get(name, LABEL_WIDTH)
        mat = flat.reshape(-1, width)
        ok = ((mat == 0) | (mat == 1)).all(axis=1) & (mat.sum(axis=1) == 1)
        bad = np.flatnonzero(~ok)
        if bad.size:
            count, row = rows(bad)
            raise raw_error(file, f"{count} are not one-hot (first: row {row} = {mat[bad[0]].tolist()})",
                            row_group, name)

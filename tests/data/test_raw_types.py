"""The raw release as other writers store it: the same integers in other Arrow types, pages with
checksums, all-zero SCL rows, and errors that name the row as the file counts it."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Dict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from muse_rec.data import schema as S
from muse_rec.data.prepare import PrepareConfig, prepare
from muse_rec.data.prepared import PreparedData
from muse_rec.data.schema import RawDataError
from tests.data.rawgen import write_raw_release

CFG = PrepareConfig(batch_rows=40, partition_bits=2, progress=False)


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = tmp_path_factory.mktemp("raw_types")
    write_raw_release(str(raw), n_train_users=60, n_test_users=20, n_items=300, seed=5)
    return raw


def _prepare(raw: Path, out: Path) -> Path:
    with pytest.warns(UserWarning):  # the release of rawgen has samples without user rows, etc.
        prepare(str(raw), str(out), CFG)
    return out


@pytest.fixture(scope="module")
def good_out(good: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _prepare(good, tmp_path_factory.mktemp("raw_types_out") / "out")


def _arrays(out: Path) -> Dict[str, bytes]:
    """Every array the prepared directory holds, by its path inside it (meta.json aside: it records
    the input files' footers, which differ by construction)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.npy"))}


def _copy_with(good: Path, tmp_path: Path, table: str, edit: Callable[[pa.Table], pa.Table]) -> Path:
    raw = tmp_path / "raw"
    shutil.copytree(good, raw)
    path = raw / S.TABLES[table].file
    pq.write_table(edit(pq.read_table(path)), path, row_group_size=37)
    return raw


def _cast(col: str, to: pa.DataType, safe: bool = True) -> Callable[[pa.Table], pa.Table]:
    def edit(t: pa.Table) -> pa.Table:
        i = t.schema.get_field_index(col)
        return t.set_column(i, col, t.column(col).cast(to, safe=safe))
    return edit


def _as_bytes(col: str, to: pa.DataType) -> Callable[[pa.Table], pa.Table]:
    """The int8 list column `col` as binary of type `to`: each row the bytes of its int8 vector."""
    def edit(t: pa.Table) -> pa.Table:
        rows = [None if v is None else np.asarray(v, np.int8).tobytes() for v in t.column(col).to_pylist()]
        return t.set_column(t.schema.get_field_index(col), col, pa.array(rows, to))
    return edit


def _as_list_view(col: str, kind: Callable[[pa.DataType], pa.DataType]) -> Callable[[pa.Table], pa.Table]:
    """The list column `col` as a (large) list view (built back to front; the file stores its rows)."""
    def edit(t: pa.Table) -> pa.Table:
        rows = t.column(col).to_pylist()
        flat, offsets, sizes = [], [], []
        for row in reversed(rows):
            offsets.insert(0, len(flat))
            sizes.insert(0, len(row or []))
            flat.extend(row or [])
        typ = t.schema.field(col).type.value_type
        view = pa.ListViewArray if kind is pa.list_view else pa.LargeListViewArray
        arr = view.from_arrays(offsets, sizes, pa.array(flat, typ), mask=pa.array([r is None for r in rows]))
        assert arr.to_pylist() == rows
        return t.set_column(t.schema.get_field_index(col), col, arr)
    return edit


SAME_VALUES = {
    # pandas writes Python lists of ints as list<int64>
    "labels as list<int64>": ("train_samples", _cast(S.LABEL, pa.list_(pa.int64()))),
    # polars' Array(Int8, 128)
    "SCL as fixed_size_list<int8>[128]": ("scl", _cast(S.SCL_VECTOR, pa.list_(pa.int8(), S.SCL_DIM))),
    "SCL as list<int16>": ("scl", _cast(S.SCL_VECTOR, pa.list_(pa.int16()))),
    # the 128 bytes of each int8 SCL vector (NumPy's tobytes()), fixed-size or not
    "SCL as fixed_size_binary[128]": ("scl", _as_bytes(S.SCL_VECTOR, pa.binary(S.SCL_DIM))),
    "SCL as binary": ("scl", _as_bytes(S.SCL_VECTOR, pa.binary())),
    "SCL as large_binary": ("scl", _as_bytes(S.SCL_VECTOR, pa.large_binary())),
    # pyarrow writes a binary_view column's type into the file, and reads it back as binary_view
    "SCL as binary_view": ("scl", _as_bytes(S.SCL_VECTOR, pa.binary_view())),
    # a one-hot label as [y == 0, y == 1]
    "labels as list<bool>": ("train_samples", _cast(S.LABEL, pa.list_(pa.bool_()))),
    "labels as fixed_size_list<bool>[2]": ("test_samples", _cast(S.LABEL, pa.list_(pa.bool_(), S.LABEL_WIDTH))),
    "history as large_list<int64>": ("test_user_features", _cast(S.SEQ_ITEMS, pa.large_list(pa.int64()))),
    # pyarrow writes a list_view column's type into the file, and reads it back as list_view
    "history as list_view<int64>": ("train_user_features", lambda t: _as_list_view(S.SEQ_CATS, pa.list_view)(
        _as_list_view(S.SEQ_ITEMS, pa.large_list_view)(t))),
    "SCL as list_view<int8>": ("scl", _as_list_view(S.SCL_VECTOR, pa.list_view)),
}


@pytest.mark.parametrize("case", sorted(SAME_VALUES))
def test_the_same_integers_in_another_type_prepare_to_the_same_arrays(good, good_out, tmp_path, case):
    table, edit = SAME_VALUES[case]
    raw = _copy_with(good, tmp_path, table, edit)
    assert _arrays(_prepare(raw, tmp_path / "out")) == _arrays(good_out)


def test_list_view_rows_that_overlap_or_lie_out_of_order_cast_to_their_values():
    """In memory a view's rows may share values and lie in any order, and a null row may have a size."""
    view = pa.ListViewArray.from_arrays(pa.array([3, 0, 1, 1], pa.int32()), pa.array([1, 2, 2, 3], pa.int32()),
                                        pa.array([1, 2, 3, 4], pa.int16()), mask=pa.array([False, True, False, False]))
    batch = pa.RecordBatch.from_arrays([view], names=[S.SEQ_ITEMS])
    out = S.cast_batch(batch, {S.SEQ_ITEMS: pa.list_(pa.int64())}, "f.parquet", 0).column(0)
    out.validate(full=True)
    assert out.type == pa.list_(pa.int64()) and out.to_pylist() == [[4], None, [2, 3], [2, 3, 4]]


def test_narrower_integer_ids_prepare_as_their_int64_values(good, tmp_path):
    """An int32 id column holds what int64 would: the prepared arrays are those of the int64 file."""
    small = lambda t: t.set_column(t.schema.get_field_index("213"), "213",  # noqa: E731
                                   pa.array(np.arange(t.num_rows) % 11 - 5, pa.int64()))
    wide = _prepare(_copy_with(good, tmp_path / "a", "item_features", small), tmp_path / "a" / "out")
    narrow_raw = _copy_with(good, tmp_path / "b", "item_features", lambda t: _cast("213", pa.int32())(small(t)))
    assert pq.read_schema(narrow_raw / S.TABLES["item_features"].file).field("213").type == pa.int32()
    assert _arrays(_prepare(narrow_raw, tmp_path / "b" / "out")) == _arrays(wide)


def _set(col: str, row: int, value: object, to: pa.DataType) -> Callable[[pa.Table], pa.Table]:
    def edit(t: pa.Table) -> pa.Table:
        values = t.column(col).to_pylist()
        values[row] = value
        return t.set_column(t.schema.get_field_index(col), col, pa.array(values, to))
    return edit


REFUSED = {
    "a label that does not fit int8": (
        "train_samples", _set(S.LABEL, 5, [0, 300], pa.list_(pa.int64())), [S.LABEL, "does not fit", "int8"]),
    "an id above int64's range": (
        "item_features", lambda t: t.set_column(t.schema.get_field_index("213"), "213",
                                                pa.array([2**63] * t.num_rows, pa.uint64())),
        ["'213'", "does not fit", "int64"]),
    "ids as floats": ("train_samples", _cast(S.USER, pa.float64(), safe=False), [S.USER, "type double", "expected int64"]),
    "SCL as a list of floats": ("scl", _cast(S.SCL_VECTOR, pa.list_(pa.float32())), [S.SCL_VECTOR, "expected a list of int8"]),
    "SCL bytes, one row 127 long": ("scl", lambda t: _as_bytes(S.SCL_VECTOR, pa.binary())(
        _set(S.SCL_VECTOR, 45, [1] * (S.SCL_DIM - 1), pa.list_(pa.int8()))(t)),
        [S.SCL_VECTOR, "row group 1", "list length != 128 (first: row 45 has 127)"]),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_values_another_type_cannot_hold_are_refused_by_column(good, tmp_path, case):
    table, edit, words = REFUSED[case]
    raw = _copy_with(good, tmp_path, table, edit)
    with pytest.raises(RawDataError) as err:
        prepare(str(raw), str(tmp_path / "out"), CFG)
    assert str(raw / S.TABLES[table].file) in str(err.value)
    for w in words:
        assert w in str(err.value), f"{w!r} not in {err.value}"


def test_a_bad_row_is_named_as_the_file_counts_it_inside_a_large_row_group(good, tmp_path):
    """One row group of 1,000 rows read in batches of 40: the message's row is the file's row 80,
    not the 0th row of its batch, and its count is of that batch's rows."""
    raw = tmp_path / "raw"
    shutil.copytree(good, raw)
    path = raw / S.TABLES["scl"].file
    t = _set(S.SCL_VECTOR, 80, [1] * 127, pa.list_(pa.int8()))(pq.read_table(path))
    pq.write_table(t, path, row_group_size=1000)
    with pytest.raises(RawDataError, match=r"row group 0, column '205_c': 1 of rows 80-119 have list length "
                                           r"!= 128 \(first: row 80 has 127\)"):
        prepare(str(raw), str(tmp_path / "out"), CFG)


def _uint64_213_with(row: int, value: int) -> Callable[[pa.Table], pa.Table]:
    """item_features' `213` as uint64 ids that fit int64, but for `value` at `row`."""
    def edit(t: pa.Table) -> pa.Table:
        ids = np.arange(1, t.num_rows + 1, dtype=np.uint64)
        ids[row] = value
        return t.set_column(t.schema.get_field_index("213"), "213", pa.array(ids, pa.uint64()))
    return edit


@pytest.mark.parametrize("table,column,edit,shown", [
    # an int16 label list: 300 does not fit int8
    ("train_samples", S.LABEL, _set(S.LABEL, 50, [0, 300], pa.list_(pa.int16())), 300),
    # a uint64 id above int64's range
    ("item_features", "213", _uint64_213_with(50, 2**63), 2**63),
])
def test_a_value_another_type_cannot_hold_is_named_by_its_row(good, tmp_path, table, column, edit, shown):
    """Row 50 of the file (row group 1 of 37-row groups, read in batches of 40) holds the one value
    that does not fit: the message names that row as the file counts it, and the value."""
    raw = _copy_with(good, tmp_path, table, edit)
    with pytest.raises(RawDataError, match=rf"row group 1, column '{column}': type .*: a value does not fit "
                                           rf".* in 1 of rows 37-73 \(first: row 50 holds {shown}\)"):
        prepare(str(raw), str(tmp_path / "out"), CFG)


def test_a_null_id_pandas_stored_as_a_float_is_named_by_its_row(good, tmp_path):
    """pandas writes an int64 column holding a null (NaN) as float64: the refusal named the type only
    ("type double, expected int64"); it names the null row, as for an integer column."""
    def edit(t: pa.Table) -> pa.Table:
        ids = t.column(S.USER).to_pylist()
        ids[50] = None
        return t.set_column(t.schema.get_field_index(S.USER), S.USER, pa.array(ids, pa.int64()).cast(pa.float64(),
                                                                                                      safe=False))
    raw = _copy_with(good, tmp_path, "train_samples", edit)
    with pytest.raises(RawDataError, match=rf"row group 1, column '{S.USER}': type double \(pandas .*\): "
                                           r"1 of rows 37-73 are null \(first: row 50\)"):
        prepare(str(raw), str(tmp_path / "out"), CFG)


def _corrupt_a_data_page(path: Path) -> None:
    """Flip 64 bytes in the middle of the first column chunk (one plain page: past its header)."""
    col = pq.ParquetFile(path).metadata.row_group(0).column(0)
    start = col.data_page_offset + col.total_compressed_size // 2
    data = bytearray(path.read_bytes())
    for i in range(start, start + 64):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def test_a_page_whose_checksum_fails_is_refused_not_read_as_other_values(good, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(good, raw)
    path = raw / S.TABLES["train_user_features"].file
    # Uncompressed and plain: the flipped bytes still decode as other ids; only the CRC tells.
    pq.write_table(pq.read_table(path), path, compression="none", use_dictionary=False,
                   write_page_checksum=True, row_group_size=10_000)
    _corrupt_a_data_page(path)
    pq.read_table(path)  # without verification the file reads "fine": the damage is silent
    with pytest.raises(RawDataError, match=r"train_user_features\.parquet, row group 0: cannot decode .*CRC"):
        prepare(str(raw), str(tmp_path / "out"), CFG)


def test_an_all_zero_scl_row_is_no_vector(good, good_out, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(good, raw)
    path = raw / S.TABLES["scl"].file
    t = pq.read_table(path)
    item = t.column(S.ITEM)[3].as_py()
    pq.write_table(_set(S.SCL_VECTOR, 3, [0] * S.SCL_DIM, pa.list_(pa.int8()))(t), path, row_group_size=37)
    with pytest.warns(UserWarning, match="1 SCL row.s. are all zeros"):
        prepare(str(raw), str(tmp_path / "out"), CFG)
    data, before = PreparedData(str(tmp_path / "out")), PreparedData(str(good_out))
    row = int(np.searchsorted(np.asarray(data.array("vocab/item.npy")), item)) + 1
    assert bool(before.scl_present()[row]) and not bool(data.scl_present()[row])
    items, items_before = data.meta["items"], before.meta["items"]
    assert items["scl_rows_all_zero"] == 1 and items["items_with_scl"] == items_before["items_with_scl"] - 1


def test_an_items_last_scl_row_wins_even_when_all_zero(good, good_out, tmp_path):
    """Duplicate SCL rows: the last row of an item is used, and an all-zero row is no vector, so an
    item whose last row is zeros has none (before: the zero row was dropped, the earlier vector kept,
    and the row missing from `duplicate_scl_rows`); an all-zero row followed by a vector has that one."""
    raw = tmp_path / "raw"
    shutil.copytree(good, raw)
    path = raw / S.TABLES["scl"].file
    t = pq.read_table(path)
    zero_last, vec_last = t.column(S.ITEM)[3].as_py(), t.column(S.ITEM)[4].as_py()
    vec = t.column(S.SCL_VECTOR)[4].as_py()
    extra = pa.table({S.ITEM: pa.array([zero_last, vec_last], pa.int64()),
                      S.SCL_VECTOR: pa.array([[0] * S.SCL_DIM, vec], pa.list_(pa.int8()))})
    first_zero = _set(S.SCL_VECTOR, 4, [0] * S.SCL_DIM, pa.list_(pa.int8()))(t)  # vec_last: zeros, then `vec`
    pq.write_table(pa.concat_tables([first_zero, extra]), path, row_group_size=37)
    with pytest.warns(UserWarning, match="2 SCL row.s. are all zeros"):
        prepare(str(raw), str(tmp_path / "out"), CFG)
    data, before = PreparedData(str(tmp_path / "out")), PreparedData(str(good_out))
    keys = np.asarray(data.array("vocab/item.npy"))
    zrow, vrow = (int(np.searchsorted(keys, k)) + 1 for k in (zero_last, vec_last))
    assert bool(before.scl_present()[zrow]) and not bool(data.scl_present()[zrow])
    assert not data.scl()[zrow].any()
    assert bool(data.scl_present()[vrow]) and data.scl()[vrow].tolist() == vec
    items, items_before = data.meta["items"], before.meta["items"]
    assert items["duplicate_scl_rows"] == items_before["duplicate_scl_rows"] + 2
    assert items["items_with_scl"] == items_before["items_with_scl"] - 1


def _histories(rows, value):
    def edit(t: pa.Table) -> pa.Table:
        for col in (S.SEQ_ITEMS, S.SEQ_CATS):
            values = t.column(col).to_pylist()
            for r in rows:
                values[r] = value
            t = t.set_column(t.schema.get_field_index(col), col, pa.array(values, pa.list_(pa.int64())))
        return t
    return edit


def test_a_null_history_is_an_empty_one(good, tmp_path):
    """A user table built by a left join writes null for a user without behaviours: it was refused
    ("1 of rows ... are null"); it now prepares exactly as the same table with empty lists."""
    empty = _prepare(_copy_with(good, tmp_path / "a", "train_user_features", _histories([3, 7], [])),
                     tmp_path / "a" / "out")
    nulls = _prepare(_copy_with(good, tmp_path / "b", "train_user_features", _histories([3, 7], None)),
                     tmp_path / "b" / "out")
    assert _arrays(nulls) == _arrays(empty)
    offsets = np.load(nulls / "train" / "seq_offsets.npy")
    assert offsets[4] == offsets[3] and offsets[8] == offsets[7]


def _every_history(value: object, to: pa.DataType) -> Callable[[pa.Table], pa.Table]:
    """Every row's two history lists set to `value`, as a column of type `to`."""
    def edit(t: pa.Table) -> pa.Table:
        for col in (S.SEQ_ITEMS, S.SEQ_CATS):
            t = t.set_column(t.schema.get_field_index(col), col, pa.array([value] * t.num_rows, to))
        return t
    return edit


@pytest.mark.parametrize("value,stored", [
    (None, pa.null()),  # pandas: an object column of None only
    ([], pa.list_(pa.null())),  # pandas: an object column of empty lists only
])
def test_histories_without_a_type_of_their_own_are_empty_ones(good, tmp_path, value, stored):
    """A user table (a part of one) whose users have no behaviours: pandas infers no value type and
    writes the column as null or list<null>; it was refused ("type null"); it prepares as empty lists."""
    typed = _prepare(_copy_with(good, tmp_path / "a", "test_user_features", _every_history([], pa.list_(pa.int64()))),
                     tmp_path / "a" / "out")
    raw = _copy_with(good, tmp_path / "b", "test_user_features", _every_history(value, stored))
    assert pq.read_schema(raw / S.TABLES["test_user_features"].file).field(S.SEQ_ITEMS).type == stored
    assert _arrays(_prepare(raw, tmp_path / "b" / "out")) == _arrays(typed)


def test_a_column_of_type_null_where_no_null_is_allowed_is_refused_by_row(good, tmp_path):
    raw = _copy_with(good, tmp_path, "item_features", lambda t: t.set_column(
        t.schema.get_field_index("213"), "213", pa.nulls(t.num_rows)))
    with pytest.raises(RawDataError, match=r"item_features\.parquet, row group 0, column '213': 37 of rows 0-36 are "
                                           r"null \(first: row 0\)"):
        prepare(str(raw), str(tmp_path / "out"), CFG)


def test_a_null_in_one_history_list_beside_behaviours_in_the_other_is_refused(good, tmp_path):
    def edit(t: pa.Table) -> pa.Table:
        values = t.column(S.SEQ_CATS).to_pylist()
        row = next(i for i, v in enumerate(t.column(S.SEQ_ITEMS).to_pylist()) if v)
        values[row] = None
        return t.set_column(t.schema.get_field_index(S.SEQ_CATS), S.SEQ_CATS, pa.array(values, pa.list_(pa.int64())))
    raw = _copy_with(good, tmp_path, "train_user_features", edit)
    with pytest.raises(RawDataError, match=f"column '{S.SEQ_CATS}': 1 of rows .* differ in length"):
        prepare(str(raw), str(tmp_path / "out"), CFG)


def test_an_scl_table_that_matches_no_item_is_named(good, tmp_path):
    # The classic id-space mix-up: every row valid, no item id in common with the samples. Before, the
    # prepared data had SCL coverage 0.0 in meta.json and nothing said so.
    raw = _copy_with(good, tmp_path, "scl", lambda t: t.set_column(
        t.schema.get_field_index(S.ITEM), S.ITEM, pc.add(t.column(S.ITEM), 10**12)))
    with pytest.warns(UserWarning) as seen:
        prepare(str(raw), str(tmp_path / "out"), CFG)
    named = [str(w.message) for w in seen if "not one train target or behaviour item has an SCL vector" in str(w.message)]
    assert len(named) == 1 and S.TABLES["scl"].file in named[0], [str(w.message) for w in seen]
    assert PreparedData(str(tmp_path / "out")).meta["splits"]["train"]["scl_coverage_behaviours"] == 0.0
    # A release where the ids do match says nothing of the kind.
    with pytest.warns(UserWarning) as seen:
        prepare(str(good), str(tmp_path / "out_good"), CFG)
    assert not [w for w in seen if "SCL vector (its item ids" in str(w.message)]


def test_zero_and_duplicate_row_counts_are_written_with_thousands_separators(tmp_path):
    """The warnings for all-zero SCL rows and for duplicate item / SCL / user rows printed their
    counts bare (`1234`) while prepare's other lines write `1,234`; now they match."""
    raw = tmp_path / "raw"
    write_raw_release(str(raw), n_train_users=200, n_test_users=20, n_items=1500, max_len=5, samples_per_user=1)
    copies = 6  # enough that each count below passes a thousand
    counts = {}
    for name in ("item_features", "scl", "train_user_features"):
        path = raw / S.TABLES[name].file
        t = pq.read_table(path)
        if name == "scl":
            t = t.set_column(t.schema.get_field_index(S.SCL_VECTOR), S.SCL_VECTOR,
                             pa.array([[0] * S.SCL_DIM] * t.num_rows, pa.list_(pa.int8())))
        pq.write_table(pa.concat_tables([t] * copies), path, row_group_size=500)
        counts[name] = t.num_rows * (copies - 1)
    all_zero = counts["scl"] // (copies - 1) * copies
    assert min(*counts.values(), all_zero) >= 1000  # else no separator shows
    with pytest.warns(UserWarning) as caught:
        prepare(str(raw), str(tmp_path / "out"), CFG)
    said = " | ".join(str(w.message) for w in caught)
    assert f"{S.TABLES['item_features'].file}: {counts['item_features']:,} duplicate item row(s)" in said, said
    assert f"{S.TABLES['scl'].file}: {counts['scl']:,} duplicate item row(s)" in said, said
    assert f"{all_zero:,} SCL row(s) are all zeros" in said, said
    assert f"train_user_features: {counts['train_user_features']:,} duplicate user row(s)" in said, said


def test_the_off_norm_warning_gives_the_off_rows_norms(good, tmp_path):
    """The warning said "2 of its N non-zero SCL rows have an int8 norm outside [100, 128] (norms
    127-200; ...)": the range of every row, 127 inside [100, 128], read as the two rows' norms."""
    def edit(t: pa.Table) -> pa.Table:
        unit = [127] + [0] * (S.SCL_DIM - 1)  # norm 127: inside the range
        vecs = [unit] * t.num_rows
        vecs[3] = [100, 100, 50] + [0] * (S.SCL_DIM - 3)  # norm 150
        vecs[5] = [120, 120, 120] + [0] * (S.SCL_DIM - 3)  # norm 207.8
        return t.set_column(t.schema.get_field_index(S.SCL_VECTOR), S.SCL_VECTOR, pa.array(vecs, pa.list_(pa.int8())))
    raw = _copy_with(good, tmp_path, "scl", edit)
    with pytest.warns(UserWarning) as caught:
        prepare(str(raw), str(tmp_path / "out"), CFG)
    message = next(str(w.message) for w in caught if "int8 norm outside" in str(w.message))
    rows = pq.read_table(raw / S.TABLES["scl"].file).num_rows
    assert f": 2 of its {rows:,} non-zero SCL rows" in message
    assert "(theirs 150-208, every non-zero row's 127-208;" in message, message

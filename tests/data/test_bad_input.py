"""Bad raw input fails with an error naming file, row group and column, and leaves earlier output intact."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from muse_rec.data import schema as S
from muse_rec.data.loader import make_loader
from muse_rec.data import prepare as P
from muse_rec.data import prepare_steps
from muse_rec.data.prepare import PrepareConfig, prepare
from muse_rec.data.prepared import PreparedData, PreparedDataError
from muse_rec.data.reader import RawTable
from muse_rec.data.schema import RawDataError
from tests.conftest import REPO, error_of_call_unblocking_fifos, subprocess_env
from tests.data.rawgen import write_raw_release

CFG = PrepareConfig(batch_rows=40, partition_bits=2, progress=False)
ROW_GROUP = 37
BAD_ROW = 80  # lands in row group 2 (rows 74..110)


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = tmp_path_factory.mktemp("good_raw")
    write_raw_release(str(raw), n_train_users=60, n_test_users=20, n_items=300, seed=3)
    return raw


@pytest.fixture
def workspace(good: Path, tmp_path: Path):
    """A copy of the good raw release and a directory already prepared from it."""
    raw = tmp_path / "raw"
    shutil.copytree(good, raw)
    out = tmp_path / "out"
    with pytest.warns(UserWarning):
        prepare(str(raw), str(out), CFG)
    return raw, out


def _rewrite(raw: Path, name: str, edit: Callable[[pa.Table], pa.Table]) -> Path:
    path = raw / S.TABLES[name].file
    table = edit(pq.read_table(path))
    pq.write_table(table, path, row_group_size=ROW_GROUP)
    return path


def _set_row(table: pa.Table, col: str, row: int, value: object) -> pa.Table:
    values = table.column(col).to_pylist()
    values[row] = value
    i = table.schema.get_field_index(col)
    return table.set_column(i, col, pa.array(values, type=table.schema.field(i).type))


def _drop_col(name: str) -> Callable[[pa.Table], pa.Table]:
    return lambda t: t.drop_columns([name])


CASES = {
    "missing column": ("item_features", _drop_col(S.ITEM_CAT), [S.ITEM_CAT, "missing column"]),
    "wrong type": ("train_samples", lambda t: t.set_column(1, S.USER, t.column(S.USER).cast(pa.string())),
                   [S.USER, "type string", "expected int64"]),
    "wrong SCL length": ("scl", lambda t: _set_row(t, S.SCL_VECTOR, BAD_ROW, [1] * 127),
                         [S.SCL_VECTOR, "row group 2", "!= 128", "1 of rows 74-110", "first: row 80 has 127"]),
    "label not one-hot": ("train_samples", lambda t: _set_row(t, S.LABEL, BAD_ROW, [1, 1]),
                          [S.LABEL, "row group 2", "not one-hot", "first: row 80 = [1, 1]"]),
    "list lengths differ": ("train_user_features", lambda t: _set_row(t, S.SEQ_CATS, 40, [5] * 71),
                            [S.SEQ_CATS, "row group 1", "differ in length", "first: row 40: 71 vs"]),
    # An export that repeats a column after a join: was "missing column", which it is not.
    "duplicated column": ("item_features", lambda t: t.append_column(S.ITEM_CAT, t.column(S.ITEM_CAT)),
                          [S.ITEM_CAT, "appears 2 times"]),
    "empty table": ("item_features", lambda t: t.slice(0, 0), ["empty table"]),
    # Refused up front like any empty table, before the samples' join with it could warn.
    "empty user table": ("test_user_features", lambda t: t.slice(0, 0), ["empty table (0 rows)"]),
    "null id": ("train_samples", lambda t: _set_row(t, S.ITEM, BAD_ROW, None), [S.ITEM, "null", "first: row 80"]),
    "null behaviour": ("train_user_features", lambda t: _set_row(t, S.SEQ_ITEMS, 50, [1, None]),
                       [S.SEQ_ITEMS, "row group 1", "null list element", "first: row 50"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_named_and_keeps_earlier_output(workspace, case: str) -> None:
    raw, out = workspace
    table, edit, words = CASES[case]
    path = _rewrite(raw, table, edit)
    before = (out / "meta.json").read_text()
    with pytest.raises(RawDataError) as err:  # edited inputs are another dataset: replacing needs overwrite
        prepare(str(raw), str(out), CFG, overwrite=True)
    msg = str(err.value)
    assert str(path) in msg
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"
    # The earlier, complete output is untouched and still loads.
    assert (out / "meta.json").read_text() == before
    assert sum(1 for _ in make_loader(str(out), "train", 16, 8)) == len(make_loader(str(out), "train", 16, 8))


def test_truncated_parquet(workspace) -> None:
    raw, out = workspace
    path = raw / S.TABLES["train_user_features"].file
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(RawDataError, match="truncated or corrupt"):
        prepare(str(raw), str(out), CFG, overwrite=True)
    PreparedData(str(out))  # still valid


def test_missing_table(workspace) -> None:
    raw, out = workspace
    os.remove(raw / S.TABLES["scl"].file)
    with pytest.raises(RawDataError, match="file not found"):
        prepare(str(raw), str(out), CFG)


def test_reader_streams_row_groups_unchanged(taobao_fixtures: Path) -> None:
    for name, spec in S.TABLES.items():
        path = taobao_fixtures / spec.file
        with RawTable(str(path), spec) as t:
            got = pa.Table.from_batches(list(t.iter_batches(batch_rows=3)))
        assert got.equals(pq.read_table(path).select(list(spec.columns)))


def test_cli_reports_bad_input(workspace, capsys: pytest.CaptureFixture) -> None:
    from muse_rec.cli import main

    raw, out = workspace
    _rewrite(raw, "train_samples", lambda t: _set_row(t, S.LABEL, 3, [0, 2]))
    assert main(["prepare", str(raw), str(out), "--no-progress", "--overwrite"]) == 2
    assert "not one-hot" in capsys.readouterr().err


def test_prepared_dir_validation(workspace, tmp_path: Path) -> None:
    raw, out = workspace
    with pytest.raises(PreparedDataError, match="no meta.json"):
        PreparedData(str(tmp_path / "nothing"))
    meta = json.loads((out / "meta.json").read_text())
    meta["splits"]["train"]["samples"] += 1
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(PreparedDataError, match="labels.npy: shape"):
        PreparedData(str(out))
    meta["format_version"] = 999
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(PreparedDataError, match="format_version"):
        PreparedData(str(out))


# What the directory holds -> what the refusal says after "no meta.json - ".
_PREPARE_WRITES = "(`muse-rec prepare RAW OUT` writes prepared data)"
_NOT_PREPARED = "not a prepared directory (`muse-rec prepare RAW OUT` writes one)"
_UNFINISHED = "`muse-rec prepare` did not finish (run it again; it resumes)"
_NO_META = {"missing": f"no such directory {_PREPARE_WRITES}", "a file": f"not a directory {_PREPARE_WRITES}",
            "a folder of other files": _NOT_PREPARED, "another command's lock": _NOT_PREPARED,
            "a started build": _UNFINISHED, "prepare's lock only": _UNFINISHED}


@pytest.mark.parametrize("command", ["check", "baselines"])
@pytest.mark.parametrize("holds", sorted(_NO_META))
def test_a_directory_without_meta_json_is_named_for_what_it_is(capsys, tmp_path: Path, command: str,
                                                                holds: str) -> None:
    """`check DIR` / `baselines DIR` of a mistyped DIR said "`muse-rec prepare` did not finish (run it again;
    it resumes)": that is said only where prepare's build directory or lock shows one started."""
    from muse_rec.cli import main
    from muse_rec.dirlock import LOCK_FILE

    target = tmp_path / "prepared"
    if holds == "a file":
        target.write_text("x")
    elif holds != "missing":
        target.mkdir()
        if holds == "a started build":
            (target / P.BUILD_DIR).mkdir()
        else:
            entries = {"a folder of other files": ["notes.txt"], "another command's lock": ["report.md", LOCK_FILE],
                       "prepare's lock only": [LOCK_FILE]}[holds]
            for name in entries:
                (target / name).write_text("")
    assert main([command, str(target)]) == 2
    assert capsys.readouterr().err == f"muse-rec {command}: {target}: no meta.json - {_NO_META[holds]}\n"


@pytest.mark.parametrize("rel", ["meta.json", "train/labels.npy"])
def test_a_prepared_file_that_is_a_fifo_is_refused_without_reading_it(workspace, rel: str) -> None:
    """`check`, `train`, `evaluate` on a prepared directory whose meta.json or an array is a FIFO blocked
    forever (the file was opened to be read, and a FIFO's reader waits for a writer)."""
    _, out = workspace
    (out / rel).unlink()
    os.mkfifo(out / rel)
    error = error_of_call_unblocking_fifos(lambda: PreparedData(str(out)), out, PreparedDataError)
    assert error == f"{out / rel}: a FIFO (named pipe), not a regular file; re-run `muse-rec prepare`"


@pytest.mark.parametrize("part", [False, True])
def test_a_raw_table_that_is_a_fifo_is_refused_without_reading_it(workspace, tmp_path: Path, part: bool) -> None:
    """`prepare RAW OUT` with a table (or a part of a table's directory without the .parquet suffix,
    probed for Parquet's magic) that is a FIFO blocked forever opening it."""
    raw, _ = workspace
    table = raw / S.TABLES["item_features"].file
    if part:  # the table as a directory of parts: the real one, and a FIFO named as Hive names its parts
        table.rename(tmp_path / "whole.parquet")
        table.mkdir()
        (tmp_path / "whole.parquet").rename(table / "part-0.parquet")
        fifo = table / "000000_0"
    else:
        table.unlink()
        fifo = table
    os.mkfifo(fifo)
    error = error_of_call_unblocking_fifos(lambda: prepare(str(raw), str(tmp_path / "new"), CFG), raw, RawDataError)
    assert error == f"{fifo}: a FIFO (named pipe), not a regular file; the raw tables must be regular Parquet files"
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("rel", ["items/scl_present.npy", "items/scl.npy"])
def test_a_build_file_that_is_a_fifo_is_refused_by_a_re_run(good: Path, tmp_path: Path, monkeypatch, rel: str) -> None:
    """A re-run of `prepare RAW OUT` whose OUT/.build held a FIFO at a built array's name blocked forever: read
    back by a later step (scl_present.npy) or hashed once published (scl.npy, which no step reads)."""
    out = tmp_path / "out"

    def killed(self: prepare_steps.Prepare, split: str) -> None:
        raise KeyboardInterrupt("killed")  # the steps before it are done and marked so

    with monkeypatch.context() as m:
        m.setattr(prepare_steps.Prepare, "step_users", killed)
        with pytest.raises(KeyboardInterrupt), pytest.warns(UserWarning):
            prepare(str(good), str(out), CFG)
    fifo = out / ".build" / rel
    fifo.unlink()
    os.mkfifo(fifo)
    # A subprocess with a timeout: the old code's blocked read ends the test (TimeoutExpired), not the session.
    done = subprocess.run([sys.executable, "-m", "muse_rec.cli", "prepare", str(good), str(out), "--no-progress"],
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1] == (f"muse-rec prepare: {fifo}: a FIFO (named pipe), not a regular file; "
                                            f"prepare writes regular files only: delete {out / '.build'} and run again")
    assert fifo.is_fifo() and not (out / "meta.json").exists() and not (out / "items").exists()  # nothing moved


def test_sample_without_user_row_gets_empty_history(workspace) -> None:
    """Documented handling (docs/data.md): kept, warned, counted; empty history, unknown user fields."""
    raw, out = workspace
    orphan = 123_456_789  # a user with a train sample but no train_user_features row
    _rewrite(raw, "train_samples", lambda t: _set_row(t, S.USER, 0, orphan))
    with pytest.warns(UserWarning) as caught:
        meta = prepare(str(raw), str(out), CFG, overwrite=True)  # edited inputs: another dataset
    assert any("no row in train_user_features" in str(w.message) for w in caught)
    before = sum(1 for r in pq.read_table(raw / S.TABLES["train_samples"].file).column(S.USER).to_pylist()
                 if r == orphan)
    assert meta["splits"]["train"]["samples_without_user_row"] >= before == 1
    first = next(iter(make_loader(str(out), "train", 4, 8)))
    pooled = first.pooled.to_dict()
    assert int(first.user_keys[0]) == orphan and int(first.seq_lengths[0]) == 0 and not first.seq_items[0].any()
    assert all(int(pooled[f"user_f{k}"].values()[0]) == 0 for k in range(1, 6))
    assert int(pooled["user_id"].values()[0]) > 0  # still a known train user (from train_samples)


def test_samples_without_user_row_are_counted_with_thousands_separators(workspace) -> None:
    """The warning printed "1000 of 1203 samples", where the project's other counts read "1,000 of 1,203"."""
    raw, out = workspace
    orphans = 1_000  # samples whose user has no train_user_features row: enough for a separator

    def edit(t: pa.Table) -> pa.Table:
        t = pa.concat_tables([t] * (orphans // t.num_rows + 2))
        users = t.column(S.USER).to_pylist()
        users[:orphans] = [123_456_789] * orphans
        return t.set_column(t.schema.get_field_index(S.USER), S.USER, pa.array(users, pa.int64()))

    total = pq.read_table(_rewrite(raw, "train_samples", edit)).num_rows
    with pytest.warns(UserWarning) as caught:
        meta = prepare(str(raw), str(out), CFG, overwrite=True)  # edited inputs: another dataset
    missing = meta["splits"]["train"]["samples_without_user_row"]  # the release's own orphans too
    assert missing >= orphans
    said = [str(w.message) for w in caught if "no row in train_user_features" in str(w.message)]
    assert said == [f"train_samples: {missing:,} of {total:,} samples have no row in train_user_features; "
                    "they get an empty history and unknown user fields"], said


@pytest.mark.parametrize("rows,orphans", [(1, 1), (6, 1)])
def test_the_no_user_row_warning_counts_one_sample_in_the_singular(workspace, rows: int, orphans: int) -> None:
    """A split of one sample whose user has no row read "all 1 samples have no row", and one orphan among
    several "1 of 6 samples have no row"."""
    raw, out = workspace

    def edit(t: pa.Table) -> pa.Table:
        t = t.slice(0, rows)
        users = t.column(S.USER).to_pylist()
        users[:orphans] = [123_456_789] * orphans
        return t.set_column(t.schema.get_field_index(S.USER), S.USER, pa.array(users, pa.int64()))

    samples = _rewrite(raw, "test_samples", edit)
    with pytest.warns(UserWarning) as caught:
        prepare(str(raw), str(out), CFG, overwrite=True)
    said = [str(w.message) for w in caught if str(w.message).startswith("test_samples: ")]
    users = raw / S.TABLES["test_user_features"].file
    whole = (f"the only sample has no row in test_user_features: not one {S.USER} id of {samples} is in {users}"
             if rows == 1 else f"1 of {rows} samples has no row in test_user_features")
    assert said == [f"test_samples: {whole}" + ("" if rows > 1 else " (another id space, or ids truncated by a "
                                                 "narrower integer column?)")
                    + "; they get an empty history and unknown user fields"], said


@pytest.mark.parametrize("zeroed", ["all", "one"])
def test_samples_without_a_target_item_id_are_said(workspace, zeroed: str) -> None:
    """Samples whose target item id is 0 are scored as the padding item (row 0): a train split of them all was
    prepared with exit 0 and not a word (meta.json alone counted them in samples_unknown_target)."""
    raw, out = workspace

    def edit(t: pa.Table) -> pa.Table:
        items = t.column(S.ITEM).to_pylist()
        items[: len(items) if zeroed == "all" else 1] = [0] * (len(items) if zeroed == "all" else 1)
        return t.set_column(t.schema.get_field_index(S.ITEM), S.ITEM, pa.array(items, pa.int64()))

    samples = _rewrite(raw, "train_samples", edit)
    with pytest.warns(UserWarning) as caught:
        meta = prepare(str(raw), str(out), CFG, overwrite=True)
    train = meta["splits"]["train"]
    n = train["samples"]
    assert train["samples_unknown_target"] == (n if zeroed == "all" else 1)
    every = f"all {n:,} samples have" if zeroed == "all" else f"1 of {n:,} samples has"
    said = [str(w.message) for w in caught if "no target item id" in str(w.message)]
    assert said == [f"train_samples: {every} no target item id ({S.ITEM} is 0 in {samples}); they are scored as the "
                    "padding item, with no item embedding, category or SCL vector"], said


def test_samples_joining_no_user_row_name_both_files_and_the_column(workspace) -> None:
    """A writer that stored the samples' 129_1 as int32 truncated every id: no sample joined its user
    table, and the warning read like the usual few orphans ("N of N samples have no row"), naming
    neither file nor the column."""
    raw, out = workspace

    def truncate(t: pa.Table) -> pa.Table:
        ids = t.column(S.USER).to_numpy().astype(np.int32)  # wraps, as such a writer's cast does
        return t.set_column(t.schema.get_field_index(S.USER), S.USER, pa.array(ids, pa.int32()))

    samples = _rewrite(raw, "train_samples", truncate)
    with pytest.warns(UserWarning) as caught:
        meta = prepare(str(raw), str(out), CFG, overwrite=True)  # still prepared: see docs/data.md
    train = meta["splits"]["train"]
    assert train["samples_without_user_row"] == train["samples"] > 0
    said = [str(w.message) for w in caught if "no row in train_user_features" in str(w.message)]
    users = raw / S.TABLES["train_user_features"].file
    assert said == [f"train_samples: all {train['samples']:,} samples have no row in train_user_features: not one "
                    f"{S.USER} id of {samples} is in {users} (another id space, or ids truncated by a narrower "
                    "integer column?); they get an empty history and unknown user fields"], said
    # The test split still joins as before: its usual few orphans keep their count-only warning.
    assert any(str(w.message).startswith("test_samples: ") and " of " in str(w.message) for w in caught)

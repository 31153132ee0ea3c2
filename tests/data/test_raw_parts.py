"""A raw table in several Parquet parts (a Spark/Hive directory or a split download) prepares to the
same bytes as the one-file table; ambiguous or malformed layouts are one-line errors naming the path."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable, Dict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from muse_rec.data import schema as S
from muse_rec.data.prepare import PrepareConfig, prepare
from tests.data.rawgen import write_raw_release

CFG = PrepareConfig(batch_rows=50, partition_bits=3, spill_buffer_bytes=4096, progress=False)
SPLIT = ("train_samples", "train_user_features", "test_samples", "scl")  # tables written in parts
N_PARTS = 11  # unpadded names part-0 .. part-10: a name sort would read part-10 third


LAYOUTS: Dict[str, Callable[[Path, str, int], Path]] = {
    "directory": lambda raw, stem, i: raw / stem / f"part-{i}.parquet",
    "spark_directory": lambda raw, stem, i: raw / f"{stem}.parquet" / f"part-{i}-c000.snappy.parquet",
    "shards_beside": lambda raw, stem, i: raw / f"{stem}-{i}.parquet",
    # Hive names its parts 000000_0 and some writers part-00001-c000: no suffix, read by their
    # magic bytes (skipped before: their rows were silently left out)
    "hive_directory": lambda raw, stem, i: raw / stem / (f"part-{i}.PARQUET" if i % 2 else f"part-{i}-c000"),
}


def _split_into_parts(raw: Path, layout: str, n_parts: int = N_PARTS) -> None:
    """Rewrite the SPLIT tables of `raw` as `n_parts` parts in `layout` (part 1 empty), plus the side
    files writers leave (they must be ignored)."""
    for name in SPLIT:
        file = raw / S.TABLES[name].file
        stem = S.TABLES[name].file[: -len(".parquet")]
        table = pq.read_table(file)
        os.remove(file)
        cuts = np.linspace(0, table.num_rows, n_parts, dtype=int).tolist()
        cuts.insert(1, cuts[0])  # part 1 is empty: Spark writes such parts
        for i in range(n_parts):
            path = LAYOUTS[layout](raw, stem, i)
            path.parent.mkdir(exist_ok=True)
            pq.write_table(table.slice(cuts[i], cuts[i + 1] - cuts[i]), path, row_group_size=7)
        if layout != "shards_beside":
            for side in ("_SUCCESS", ".part-0.parquet.crc", "metadata.json"):
                (path.parent / side).write_text("{}")


@pytest.fixture(scope="module")
def one_file(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    raw = tmp_path_factory.mktemp("raw")
    write_raw_release(str(raw))
    out = raw.parent / "prepared_one_file"
    with pytest.warns(UserWarning, match="no row in"):
        prepare(str(raw), str(out), CFG)
    return {"raw": raw, "out": out}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_a_table_in_parts_prepares_to_the_same_arrays(one_file: Dict[str, Path], tmp_path: Path, layout: str) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(one_file["raw"], raw)
    _split_into_parts(raw, layout)
    assert not (raw / "train_samples.parquet").is_file()
    out = tmp_path / "prepared"
    with pytest.warns(UserWarning, match="no row in"):
        meta = prepare(str(raw), str(out), CFG)
    want = sorted(p.relative_to(one_file["out"]) for p in one_file["out"].rglob("*.npy"))
    assert want and want == sorted(p.relative_to(out) for p in out.rglob("*.npy"))
    for rel in want:  # the same rows in the same order: labels.npy would differ under a name sort
        assert (out / rel).read_bytes() == (one_file["out"] / rel).read_bytes(), rel
    assert meta["splits"] == json.loads((one_file["out"] / "meta.json").read_text())["splits"]


def test_more_parts_than_the_open_file_limit(one_file: Dict[str, Path], tmp_path: Path) -> None:
    """4 tables x 60 parts under a limit of 64 open files (a one-file prepare needs < 24): a part
    is open only while it is read (holding them all open failed with 'Too many open files')."""
    import resource
    import subprocess

    from tests.conftest import subprocess_env, venv_bin

    raw = tmp_path / "raw"
    shutil.copytree(one_file["raw"], raw)
    _split_into_parts(raw, "directory", n_parts=60)
    out = tmp_path / "prepared"
    limit = lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))  # noqa: E731
    r = subprocess.run([venv_bin("muse-rec"), "prepare", str(raw), str(out), "--no-progress"], env=subprocess_env(),
                       capture_output=True, text=True, timeout=300, preexec_fn=limit)
    assert r.returncode == 0, r.stderr
    for rel in ("train/labels.npy", "train/seq_items.npy", "test/sample_items.npy"):
        assert (out / rel).read_bytes() == (one_file["out"] / rel).read_bytes(), rel


def _prepare_cli(raw: Path, out: Path, capsys: pytest.CaptureFixture) -> str:
    from muse_rec.cli import main

    assert main(["prepare", str(raw), str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def raw(one_file: Dict[str, Path], tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    shutil.copytree(one_file["raw"], raw)
    return raw


def test_a_table_there_twice_is_refused(raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (raw / "train_samples").mkdir()
    shutil.copy(raw / "train_samples.parquet", raw / "train_samples" / "part-0.parquet")
    err = _prepare_cli(raw, tmp_path / "out", capsys)
    assert "table train_samples is there more than once" in err and "train_samples/" in err, err
    assert not (tmp_path / "out" / "meta.json").exists()


def test_a_table_directory_without_parts_is_refused(raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    os.remove(raw / "item_features.parquet")
    (raw / "item_features").mkdir()
    (raw / "item_features" / "_SUCCESS").write_text("")
    err = _prepare_cli(raw, tmp_path / "out", capsys)
    assert "item_features: directory of table item_features holds no Parquet part file" in err, err


def test_a_table_directory_with_a_sub_directory_is_refused(raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _split_into_parts(raw, "directory")
    (raw / "train_samples" / "date=2025-01-02").mkdir()
    err = _prepare_cli(raw, tmp_path / "out", capsys)
    assert "holds the sub-directory 'date=2025-01-02'" in err, err


def test_a_bad_part_is_named(raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _split_into_parts(raw, "directory")
    part = raw / "train_samples" / "part-7.parquet"
    part.write_bytes(part.read_bytes()[:100])
    err = _prepare_cli(raw, tmp_path / "out", capsys)
    assert f"{part}: not a readable Parquet file (truncated or corrupt?)" in err, err


def test_parts_that_are_all_empty_are_an_empty_table(raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    file = raw / "test_samples.parquet"
    empty = pq.read_table(file).slice(0, 0)
    os.remove(file)
    for i in range(2):
        pq.write_table(empty, raw / f"test_samples-{i}.parquet")
    err = _prepare_cli(raw, tmp_path / "out", capsys)
    assert "test_samples-*.parquet (2 parts): empty table (0 rows)" in err, err


@pytest.mark.parametrize("what", ["missing", "a_file"])
def test_a_raw_that_is_not_a_directory_is_named(raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                what: str) -> None:
    path = tmp_path / "nothing" if what == "missing" else raw / "item_features.parquet"
    err = _prepare_cli(path, tmp_path / "out", capsys)
    assert f"{path}: " + ("no such directory" if what == "missing" else "is not a directory") in err, err


def test_files_of_a_table_directory_that_are_not_parquet_are_named(raw: Path, tmp_path: Path) -> None:
    """Side files without Parquet's magic bytes are skipped, and prepare says which, so that a part
    lost for its name never goes unseen."""
    _split_into_parts(raw, "directory", n_parts=3)
    scl_dir = raw / S.TABLES["scl"].file[: -len(".parquet")]
    (scl_dir / "notes.txt").write_text("rows 0-99 from the March export")
    (scl_dir / "000007_0").write_bytes(b"")  # Hive's empty bucket: no rows, no warning
    with pytest.warns(UserWarning) as seen:
        prepare(str(raw), str(tmp_path / "prepared"), CFG)
    lines = [str(w.message) for w in seen if "not Parquet" in str(w.message)]
    assert len(lines) == len(SPLIT), lines  # one line per table written in parts
    scl = next(line for line in lines if "table scl" in line)
    assert str(scl_dir) in scl and "skipped 2 file(s)" in scl and "metadata.json, notes.txt" in scl


def _as_overwritten_delta_table(raw: Path, name: str) -> Path:
    """Table `name` of `raw` as Delta Lake leaves it after ``mode("overwrite")``: the first version's
    part (its first 10 rows) still beside the live one, and the log that removed it. Returns the log."""
    file = raw / S.TABLES[name].file
    table = pq.read_table(file)
    os.remove(file)
    where = raw / S.TABLES[name].file[: -len(".parquet")]
    where.mkdir()
    old, new = "part-00000-0a-c000.snappy.parquet", "part-00000-1b-c000.snappy.parquet"
    pq.write_table(table.slice(0, 10), where / old)
    pq.write_table(table, where / new)
    log = where / "_delta_log"
    log.mkdir()
    (log / f"{0:020d}.json").write_text(json.dumps({"add": {"path": old, "dataChange": True}}) + "\n")
    (log / f"{1:020d}.json").write_text(json.dumps({"remove": {"path": old, "dataChange": True}}) + "\n"
                                        + json.dumps({"add": {"path": new, "dataChange": True}}) + "\n")
    return log


def test_a_delta_lake_table_is_refused_not_read_with_its_removed_parts(raw: Path, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    """Every Parquet file of the directory read, the removed version's 10 rows were samples twice, silently."""
    log = _as_overwritten_delta_table(raw, "train_samples")
    err = _prepare_cli(raw, tmp_path / "out", capsys)
    assert f"{log}: table train_samples is a Delta Lake table" in err and "export the table as plain Parquet" in err, err
    assert not (tmp_path / "out" / "meta.json").exists()


def test_an_empty_part_whose_lists_have_no_type_is_an_empty_part(one_file: Dict[str, Path], tmp_path: Path) -> None:
    """pandas writes an empty chunk's list columns as type null (an object column with no value to
    infer from): such a part was refused ("type null, expected a list of int8"); it holds no rows."""
    raw = tmp_path / "raw"
    shutil.copytree(one_file["raw"], raw)
    _split_into_parts(raw, "directory", n_parts=3)
    for name in SPLIT:
        stem = S.TABLES[name].file[: -len(".parquet")]
        empty = pq.read_table(raw / stem / "part-0.parquet")  # _split_into_parts's empty part
        assert empty.num_rows == 0
        untyped = pa.table({f.name: pa.nulls(0) if pa.types.is_list(f.type) else empty.column(f.name)
                            for f in empty.schema})
        pq.write_table(untyped, raw / stem / "part-0.parquet")
    out = tmp_path / "prepared"
    with pytest.warns(UserWarning, match="no row in"):
        prepare(str(raw), str(out), CFG)
    for rel in sorted(p.relative_to(one_file["out"]) for p in one_file["out"].rglob("*.npy")):
        assert (out / rel).read_bytes() == (one_file["out"] / rel).read_bytes(), rel

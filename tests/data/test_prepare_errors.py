"""`muse-rec prepare` on a bad OUT, a full disk, a directory in a table's place, bad knobs, or an OUT
holding another dataset: one line naming the path, exit 2, nothing previously written lost."""
from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest

from muse_rec.cli import prepare as prepare_cli
from muse_rec.data import files
from muse_rec.data import schema as S
from muse_rec.data.synth import SynthConfig, write_synthetic_release


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("raw")
    write_synthetic_release(str(out), SynthConfig.preset("tiny").replace(users=60, items=400, clusters=20,
                                                                        categories=5))
    return out


def _run(capsys, *argv: str) -> tuple:
    import argparse

    p = argparse.ArgumentParser()
    prepare_cli.add_arguments(p)
    rc = prepare_cli.run(p.parse_args([*argv, "--no-progress"]))
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


def _one_line(err: list) -> str:
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_batch_rows_zero_is_refused(raw: Path, tmp_path: Path, capsys) -> None:
    rc, err = _run(capsys, str(raw), str(tmp_path / "o"), "--batch-rows", "0")
    assert rc == 2 and "--batch-rows 0" in _one_line(err)
    assert not (tmp_path / "o").exists()


def test_out_is_a_file(raw: Path, tmp_path: Path, capsys) -> None:
    f = tmp_path / "afile"
    f.write_text("keep me")
    rc, err = _run(capsys, str(raw), str(f))
    assert rc == 2 and str(f) in _one_line(err)
    assert f.read_text() == "keep me"


def test_unwritable_out(raw: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    # Tests run as root, which ignores permission bits: make os.access report a read-only OUT.
    out = tmp_path / "ro"
    out.mkdir()
    monkeypatch.setattr("muse_rec.data.prepare.os.access", lambda p, m: False)
    rc, err = _run(capsys, str(raw), str(out))
    line = _one_line(err)
    assert rc == 2 and str(out) in line and "cannot write" in line


def test_directory_where_a_table_should_be(raw: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "raw"
    shutil.copytree(raw, bad)
    table = bad / S.TABLES["scl"].file
    table.unlink()
    table.mkdir()
    rc, err = _run(capsys, str(bad), str(tmp_path / "o"))
    line = _one_line(err)
    # A directory is read as the table's parts (tests/data/test_raw_parts.py); an empty one is named.
    assert rc == 2 and str(table) in line and "directory of table scl holds no Parquet part file" in line


def test_full_disk_keeps_the_previous_output(raw: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    out = tmp_path / "o"
    assert _run(capsys, str(raw), str(out))[0] == 0
    before = (out / "meta.json").read_text()
    other = tmp_path / "raw2"
    write_synthetic_release(str(other), SynthConfig.preset("tiny").replace(users=50, items=300, clusters=20,
                                                                          categories=5, seed=4))
    calls = {"n": 0}
    real_append = files.NpyStreamWriter.append

    def append_until_full(self, rows):
        calls["n"] += 1
        if calls["n"] > 5:
            self._f.close()  # the real write fails with ENOSPC; simulate it at the OS boundary
            raise OSError(errno.ENOSPC, "No space left on device", self._tmp)
        return real_append(self, rows)

    monkeypatch.setattr(files.NpyStreamWriter, "append", append_until_full)
    rc, err = _run(capsys, str(other), str(out), "--overwrite")
    line = _one_line(err)
    assert rc == 2 and "no space left" in line and str(out) in line
    assert (out / "meta.json").read_text() == before  # the earlier result is still the published one


def test_out_with_a_different_dataset_needs_overwrite(raw: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "o"
    assert _run(capsys, str(raw), str(out))[0] == 0
    meta = json.loads((out / "meta.json").read_text())
    rc, err = _run(capsys, str(raw), str(out), "--vocab", "p90")  # another dataset: other vocabulary
    line = _one_line(err)
    assert rc == 2 and "different prepared dataset" in line and "--overwrite" in line
    assert json.loads((out / "meta.json").read_text()) == meta
    assert _run(capsys, str(raw), str(out))[0] == 0  # the same dataset: returns the finished result
    assert _run(capsys, str(raw), str(out), "--vocab", "p90", "--overwrite")[0] == 0
    assert json.loads((out / "meta.json").read_text())["vocab_mode"] == "p90"


def test_a_second_prepare_into_the_same_out_is_refused(raw: Path, tmp_path: Path, capsys) -> None:
    """Two prepares into one OUT appended to the same spill files; the second now waits its turn
    (one line naming the holder) and writes nothing."""
    from muse_rec.dirlock import LOCK_FILE, DirLock

    out = tmp_path / "o"
    lock = DirLock.acquire(out, command="muse-rec prepare held-by-the-test")
    try:
        rc, err = _run(capsys, str(raw), str(out))
        line = _one_line(err)
        assert rc == 2 and f"{out}: in use by another prepare" in line and "held-by-the-test" in line, line
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]
    finally:
        lock.release()
    rc, err = _run(capsys, str(raw), str(out))  # the lock is gone with its holder
    assert rc == 0 and (out / "meta.json").exists(), err


def test_out_of_memory_while_decoding_is_not_called_a_corrupt_file(raw: Path, tmp_path: Path, capsys,
                                                                   monkeypatch) -> None:
    """Under a memory limit, pyarrow's failed allocation was reported as the raw file's damage:
    "bad input: ...parquet, row group 0: cannot decode (truncated or corrupt?): realloc of size ... failed"."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def no_memory(self, *args, **kwargs):
        raise pa.lib.ArrowMemoryError("realloc of size 16777216 failed")
        yield  # a generator, as the real one

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", no_memory)
    rc, err = _run(capsys, str(raw), str(tmp_path / "o"), "--batch-rows", "4096")
    line = _one_line(err)
    assert rc == 2 and "out of memory" in line and "realloc of size 16777216 failed" in line, line
    assert "corrupt" not in line and "--batch-rows (now 4,096)" in line

"""A damaged raw Parquet file (a page header or the footer overwritten) is refused in one printable line
naming the file, by the reader and by `muse-rec prepare` (exit 2), whatever text Arrow gives."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from muse_rec.data import schema as S
from muse_rec.data.prepare import PrepareConfig, prepare
from muse_rec.data.schema import RawDataError
from tests.data.rawgen import write_raw_release

CFG = PrepareConfig(batch_rows=40, partition_bits=2, progress=False)
# Bytes written over the damaged place: 0x0f is no thrift type, and Arrow's message quotes the byte it
# choked on and adds a line of its own ("...don't know what type: \x0f\nDeserializing page header failed.\n").
DAMAGE = b"\x0f" * 16


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = tmp_path_factory.mktemp("damaged_raw")
    write_raw_release(str(raw), n_train_users=30, n_test_users=10, n_items=200, seed=11)
    return raw


def _damaged(good: Path, tmp_path: Path, where: str) -> Path:
    """A copy of `good` whose test_samples file has DAMAGE over its first page header or inside its footer."""
    raw = tmp_path / "raw"
    shutil.copytree(good, raw)
    path = raw / S.TABLES["test_samples"].file
    meta = pq.ParquetFile(path).metadata
    col = meta.row_group(0).column(0)
    if where == "page":
        at = col.dictionary_page_offset or col.data_page_offset
    else:  # the footer's thrift: it ends 8 bytes before the file does (length + magic)
        at = os.path.getsize(path) - 8 - meta.serialized_size + 10
    data = bytearray(path.read_bytes())
    data[at:at + len(DAMAGE)] = DAMAGE
    path.write_bytes(bytes(data))
    return raw


@pytest.mark.parametrize("where, said", [("page", "row group 0: cannot decode"),
                                         ("footer", "not a readable Parquet file")])
def test_a_damaged_file_is_refused_in_one_printable_line(good: Path, tmp_path: Path, where: str, said: str) -> None:
    raw = _damaged(good, tmp_path, where)
    with pytest.raises(RawDataError) as caught:
        prepare(str(raw), str(tmp_path / "out"), CFG)
    text = str(caught.value)
    assert said in text and "test_samples.parquet" in text and "thrift" in text
    assert text.isprintable(), f"not one printable line: {text!r}"


def test_the_cli_says_it_in_one_line(good: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from muse_rec.cli import main

    raw = _damaged(good, tmp_path, "page")
    assert main(["prepare", str(raw), str(tmp_path / "out"), "--no-progress"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if ": warning: " not in line]
    assert len(err) == 1 and "test_samples.parquet, row group 0: cannot decode" in err[0], err
    assert err[0].isprintable() and "Traceback" not in err[0]

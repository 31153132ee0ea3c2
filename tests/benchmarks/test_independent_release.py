"""benchmarks/independent_release.py: a release the project's reader takes as the real one, made
without muse_rec, with the world its docstring describes (non-unit SCL rows, missing rows)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from muse_rec.data import schema as S
from muse_rec.data.prepare import PrepareConfig, prepare
from muse_rec.data.prepared import PreparedData
from muse_rec.data.reader import RawRelease
from muse_rec.data.synth_release import release_schema
from tests.conftest import REPO, subprocess_env

SCRIPT = REPO / "benchmarks" / "independent_release.py"


def test_writes_the_release_layout_without_muse_rec_and_prepares(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    # muse_rec made unimportable (None in sys.modules: any import of it raises), then the script as __main__.
    run = ("import runpy, sys; sys.modules['muse_rec'] = None; "
           f"sys.argv = [{str(SCRIPT)!r}, {str(raw)!r}, '--users', '200', '--seed', '3']; "
           f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", run], capture_output=True, text=True, cwd=tmp_path,
                         env=subprocess_env(), timeout=300)
    assert out.returncode == 0, out.stderr
    with RawRelease(str(raw)) as release:  # the reader's schema and value checks
        for name, table in release.tables.items():
            assert [p.schema for p in table.parts] == [release_schema(name)], name
    scl = pq.read_table(raw / S.TABLES["scl"].file)
    rows = np.stack(scl.column(scl.schema.names[-1]).to_numpy(zero_copy_only=False)).astype(np.float64)
    norms = np.linalg.norm(rows, axis=1)
    assert norms.min() < 60 and norms.max() > 200  # per-item norms, not 127 x a unit vector

    prepare(str(raw), str(tmp_path / "prepared"), PrepareConfig(progress=False))
    data = PreparedData(str(tmp_path / "prepared"))
    assert data.num_samples("train") > 1000 and 0.05 < data.num_positives("train") / data.num_samples("train") < 0.25
    present = np.asarray(data.scl_present())[data.item_rows("test", slice(None))]
    assert 0.5 < present.mean() < 0.95  # a share of the targets has no SCL row


def test_prepare_names_scl_rows_that_are_not_unit_vectors(tmp_path: Path) -> None:
    """The independent world's rows have per-item norms (14-377): prepare says so once, with the range;
    the fixtures' release rows (norms ~122) and `muse-rec synth`'s give no such warning."""
    import pytest

    raw = tmp_path / "raw"
    subprocess.run([sys.executable, str(SCRIPT), str(raw), "--users", "60"], check=True, capture_output=True,
                   env=subprocess_env(), timeout=300)
    with pytest.warns(UserWarning, match=r"non-zero SCL rows \([\d.]+%\) have an int8 norm outside \[100, 128\]") as caught:
        prepare(str(raw), str(tmp_path / "prepared"), PrepareConfig(progress=False))
    scl = pq.read_table(raw / S.TABLES["scl"].file)
    norms = np.linalg.norm(np.stack(scl.column(scl.schema.names[-1]).to_numpy(zero_copy_only=False)).astype(np.float64), axis=1)
    norms = norms[norms > 0]
    off = int(np.count_nonzero((norms < 100) | (norms > 128)))
    message = next(str(w.message) for w in caught if "int8 norm outside" in str(w.message))
    assert f": {off:,} of its {norms.size:,} non-zero SCL rows ({100 * off / norms.size:.1f}%)" in message
    assert f"every non-zero row's {norms.min():.0f}-{norms.max():.0f};" in message


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          env=subprocess_env(), timeout=300)


def test_bad_input_is_refused_and_nothing_is_overwritten(tmp_path: Path) -> None:
    """A negative --seed was a numpy traceback; OUT a file, or under one, a FileExistsError or NotADirectoryError
    traceback; and OUT a folder holding a release (the download, `muse-rec synth`'s) was overwritten table by
    table, without a word."""
    release = tmp_path / "release"
    release.mkdir()
    (release / "train_samples.parquet").write_text("mine")
    (release / "item_features.parquet").write_text("mine too")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("notes")
    for args, said in (([str(tmp_path / "new"), "--seed", "-1"], "--seed must be >= 0, got -1"),
                       ([str(a_file)], f"OUT {a_file}: exists and is not a directory"),
                       ([str(a_file / "raw")], f"OUT {a_file / 'raw'}: cannot write (Not a directory"),
                       ([str(release)], "holds release tables this script did not write (train_samples.parquet, "
                                        "item_features.parquet): refusing to overwrite them")):
        out = _run(*args, "--users", "3")
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert said in out.stderr.strip().splitlines()[-1], out.stderr
    assert not (tmp_path / "new").exists()
    assert a_file.read_text() == "notes"
    assert sorted(p.name for p in release.iterdir()) == ["item_features.parquet", "train_samples.parquet"]
    assert (release / "train_samples.parquet").read_text() == "mine"
    assert (release / "item_features.parquet").read_text() == "mine too"


def test_its_own_release_is_replaced(tmp_path: Path) -> None:
    """A folder this script wrote (its marker file) is written again: another seed, another world."""
    raw = tmp_path / "raw"
    assert _run(str(raw), "--users", "3", "--seed", "1").returncode == 0
    first = pq.read_table(raw / "train_samples.parquet")
    again = _run(str(raw), "--users", "3", "--seed", "2")
    assert again.returncode == 0, again.stderr
    assert not pq.read_table(raw / "train_samples.parquet").equals(first)
    assert (raw / "_independent_release.json").read_text().strip() == '{"seed": 2, "users": 3}'
    # The tables it refuses to overwrite in another's folder are the release's, and the ones it writes.
    from benchmarks import independent_release

    assert sorted(independent_release.RELEASE_TABLES) == sorted(t.file for t in S.TABLES.values())
    assert sorted(p.name for p in raw.iterdir()) == sorted([*independent_release.RELEASE_TABLES,
                                                            independent_release.MARKER])

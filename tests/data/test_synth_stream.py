"""The streaming synth writer (`--preset scale` shape at a tiny size): release schema, row groups,
the planted click model, and no readable half-written table after a kill or a full disk."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from muse_rec.data import schema as S
from muse_rec.data import synth_stream
from muse_rec.data.reader import RawRelease
from muse_rec.data.synth import MANIFEST_NAME, SynthConfig, write_synthetic_release
from muse_rec.data.synth_release import STAGING_DIR, release_schema
from tests.conftest import REPO, subprocess_env

TINY = dict(users=300, items=3000, clusters=60, categories=12, max_seq_len=200, row_group_rows=1000,
            user_row_group_rows=100)


def _cfg(**kw) -> SynthConfig:
    return SynthConfig.preset("scale").replace(**{**TINY, **kw})


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stream")
    write_synthetic_release(str(out), _cfg())
    return out


def test_release_schema_and_sizes(release: Path) -> None:
    with RawRelease(str(release)) as raw:  # the reader's own schema and value checks pass
        for name, t in raw.tables.items():
            assert [p.schema for p in t.parts] == [release_schema(name)], name  # one file per table
            for _ in t.iter_batches():
                pass
    scl = pq.ParquetFile(release / S.TABLES["scl"].file)
    assert scl.metadata.num_rows == TINY["items"]  # every catalogue item has an SCL row
    feats = pq.read_table(release / S.TABLES["item_features"].file)
    assert 0.9 * TINY["items"] < feats.num_rows <= TINY["items"]
    users = pq.ParquetFile(release / S.TABLES["train_user_features"].file)
    assert users.metadata.num_rows == TINY["users"]
    # Row groups hold user_row_group_rows users (the last one fewer), as the preset asks.
    sizes = [users.metadata.row_group(i).num_rows for i in range(users.metadata.num_row_groups)]
    assert all(s >= TINY["user_row_group_rows"] for s in sizes[:-1])
    lens = np.diff(users.read(columns=[S.SEQ_ITEMS]).column(0).chunk(0).offsets.to_numpy())
    assert lens.max() == TINY["max_seq_len"] and lens.min() >= 1


def test_same_seed_same_bytes_and_clicks_follow_the_world(release: Path, tmp_path: Path) -> None:
    import json

    m = write_synthetic_release(str(tmp_path), _cfg())
    for name in S.TABLES:
        f = S.TABLES[name].file
        assert (tmp_path / f).read_bytes() == (release / f).read_bytes(), name
    # The planted model is learnable: the true click probability ranks clicks far above chance.
    assert m["truth"]["test"]["gauc"] > 0.7
    assert json.loads((tmp_path / MANIFEST_NAME).read_text())["stats"] == m["stats"]


def test_full_disk_publishes_nothing(tmp_path: Path, monkeypatch) -> None:
    real = synth_stream.StagedTable.write
    calls = {"n": 0}

    def write_until_full(self, table):
        calls["n"] += 1
        if calls["n"] > 4:
            raise OSError(errno.ENOSPC, "No space left on device", self.path)
        return real(self, table)

    monkeypatch.setattr(synth_stream.StagedTable, "write", write_until_full)
    with pytest.raises(OSError):
        write_synthetic_release(str(tmp_path), _cfg())
    assert sorted(os.listdir(tmp_path)) == [".lock"]  # no table, no manifest, no staging left behind


def test_full_disk_cli_one_line(tmp_path: Path) -> None:
    code = ("import errno, sys\nfrom muse_rec.data import synth_stream\n"
            "def boom(self, t): raise OSError(errno.ENOSPC, 'No space left on device', self.path)\n"
            "synth_stream.StagedTable.write = boom\nfrom muse_rec.cli import main\n"
            f"sys.exit(main(['synth', {str(tmp_path / 'o')!r}, '--preset', 'scale', '--items', '3000', "
            "'--users', '300', '--clusters', '60', '--categories', '12', '--quiet']))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=subprocess_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "No space left" in lines[0] and "nothing was published" in lines[0]


def test_kill_mid_write_leaves_no_readable_table(tmp_path: Path) -> None:
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "muse_rec.cli", "synth", str(out), "--preset", "scale", "--items", "150000",
           "--users", "8000", "--clusters", "1000", "--categories", "50", "--quiet"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    staging = out / STAGING_DIR
    deadline = time.time() + 240
    try:  # kill once a table is being written (a staged file has data)
        while time.time() < deadline and proc.poll() is None:
            if staging.exists() and any(p.stat().st_size > 0 for p in staging.iterdir()):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the generator finished before it could be killed: make it bigger"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert staging.exists() and any(staging.iterdir())  # the kill really hit a write in progress
    published = [S.TABLES[n].file for n in S.TABLES if (out / S.TABLES[n].file).exists()]
    assert published == [] and not (out / MANIFEST_NAME).exists()
    with pytest.raises(S.RawDataError):
        RawRelease(str(out))
    write_synthetic_release(str(out), _cfg())  # a rerun clears the staging dir and publishes
    assert not staging.exists()
    RawRelease(str(out)).close()


def test_target_vectors_are_gathered_a_chunk_at_a_time(tmp_path: Path, tmp_path_factory, monkeypatch) -> None:
    """The streaming writer's affinities gather [n, D] target vectors at most `_CHUNK` samples at a
    time: it gathered a whole item block's impressions at once (~1.2 KB per impression: 5.1 GB at
    288k users), against the module's bounded memory. The release is the same bytes either way."""
    from muse_rec.data import synth_world

    monkeypatch.setattr(synth_world, "_CHUNK", 512)
    gathered = []
    real = synth_world.affinities_of

    def recording(cat, users, u, v):
        gathered.append(v.shape[0])
        return real(cat, users, u, v)

    monkeypatch.setattr(synth_world, "affinities_of", recording)
    write_synthetic_release(str(tmp_path), _cfg())
    assert gathered and max(gathered) <= 512 and sum(gathered) > 4 * 512
    monkeypatch.undo()
    again = tmp_path_factory.mktemp("again")
    write_synthetic_release(str(again), _cfg())
    for name in S.TABLES:
        f = S.TABLES[name].file
        assert (tmp_path / f).read_bytes() == (again / f).read_bytes(), name

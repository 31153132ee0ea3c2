"""The floor cache trusts only its user's own files (`muse_rec.metrics.floors.foreign_cache`).

A run's cache is ``<run dir's parent>/.floors``: /tmp/.floors for a run in /tmp, where any user can leave a
well-formed file. Before, such a file was read as this run's floors, and the run reported its GAUC against
whatever it held."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from muse_rec.data.prepared import PreparedData
from muse_rec.metrics.floors import FloorOptions, cached_floors, floors_of_run

SEQ_LEN = 60
OPTS = FloorOptions(seq_len=SEQ_LEN)  # what a run's check asks (`floors_of_run`)


def _planted(tiny: Path, own: Path, where: Path) -> tuple:
    """The true floors (cached in ``own``) and a copy of that cache in ``where`` whose every GAUC is 0.99: a
    file that passes every check of a cache entry but the owner's."""
    data = PreparedData(str(tiny))
    want = cached_floors(data, "test", OPTS, str(own))
    where.mkdir()
    for f in own.iterdir():
        shutil.copy(f, where / f.name)
    (path,) = where.glob("floors-test-*.json")
    doc = json.loads(path.read_text())
    for floor in doc["floors"].values():
        floor["gauc"] = 0.99
    doc["best"] = {"name": doc["best"]["name"], **doc["floors"][doc["best"]["name"]]}
    path.write_text(json.dumps(doc))
    return data, want, path


def test_our_own_planted_copy_is_read_so_the_next_tests_can_fail(tiny, tmp_path):
    """The control: with the owner this process's, the doctored file is a valid cache entry and is what the
    floors come back as. So the tests below, which only change the owner, fail if the owner is not checked."""
    data, want, path = _planted(tiny, tmp_path / "own", tmp_path / "shared")
    got = cached_floors(data, "test", OPTS, str(path.parent))
    assert got["best"]["gauc"] == 0.99 != want["best"]["gauc"]


@pytest.mark.parametrize("with_users", [False, True])
def test_a_cache_of_another_user_is_neither_read_nor_written(tiny, tmp_path, monkeypatch, caplog, with_users):
    data, want, path = _planted(tiny, tmp_path / "own", tmp_path / "shared")
    before = {f.name: f.read_bytes() for f in path.parent.iterdir()}
    other = os.geteuid() + 1  # the files are this process's: seen from another user id, they are that user's
    monkeypatch.setattr(os, "geteuid", lambda: other)
    with caplog.at_level("WARNING", logger="muse_rec"):
        if with_users:  # the trainer's route: the floors and their per-user AUCs
            got = floors_of_run(data, "test", SEQ_LEN, str(path.parent), with_users=True)
        else:
            got = cached_floors(data, "test", OPTS, str(path.parent))
    assert got == want
    assert (f"not reading or writing the floors cached in {path.parent}: {path.parent} belongs to user id "
            f"{os.stat(path.parent).st_uid}, not to this process's {other}; computing them") in caplog.text
    assert {f.name: f.read_bytes() for f in path.parent.iterdir()} == before  # left as it was


def test_a_cache_file_of_another_user_in_our_directory_is_not_read(tiny, tmp_path, monkeypatch, caplog):
    data, want, path = _planted(tiny, tmp_path / "own", tmp_path / "shared")
    real = os.stat
    me = os.geteuid()

    def stat_as_if_planted(p, *args, **kwargs):  # the file alone belongs to another user
        st = real(p, *args, **kwargs)
        if os.fspath(p) == str(path):
            return os.stat_result((st.st_mode, st.st_ino, st.st_dev, st.st_nlink, me + 1, *st[5:]))
        return st

    monkeypatch.setattr(os, "stat", stat_as_if_planted)
    with caplog.at_level("WARNING", logger="muse_rec"):
        assert cached_floors(data, "test", OPTS, str(path.parent)) == want
    assert f"{path} belongs to user id {me + 1}" in caplog.text


def test_a_directory_every_user_may_write_is_not_trusted(tiny, tmp_path, caplog):
    data, want, path = _planted(tiny, tmp_path / "own", tmp_path / "shared")
    path.parent.chmod(0o777)
    with caplog.at_level("WARNING", logger="muse_rec"):
        assert cached_floors(data, "test", OPTS, str(path.parent)) == want
    assert f"every user may write {path.parent} (mode 777)" in caplog.text
    assert json.loads(path.read_text())["best"]["gauc"] == 0.99  # not overwritten either

"""A failed run exposes nothing a loader would read; a re-run skips finished steps; changed input redoes them."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from muse_rec.data import prepare as P
from muse_rec.data import prepare_steps
from muse_rec.data.prepared import PreparedData, PreparedDataError
from muse_rec.data.reader import RawTable
from tests.data.rawgen import write_raw_release

CFG = P.PrepareConfig(batch_rows=64, partition_bits=2, progress=False)


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    root = tmp_path / "raw"
    write_raw_release(str(root), n_train_users=40, n_test_users=10, n_items=150, seed=11)
    return root


def _crash_on_test_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    real = prepare_steps.Prepare.step_samples

    def step(self: prepare_steps.Prepare, split: str):
        if split == "test":
            raise KeyboardInterrupt("killed")  # what Ctrl-C / a dying job looks like mid-run
        return real(self, split)

    monkeypatch.setattr(prepare_steps.Prepare, "step_samples", step)


def test_interrupted_run_resumes_without_redoing_steps(raw: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        _crash_on_test_samples(m)
        with pytest.raises(KeyboardInterrupt), pytest.warns(UserWarning):
            P.prepare(str(raw), str(out), CFG)
    assert not (out / "meta.json").exists()
    with pytest.raises(PreparedDataError, match="no meta.json - `muse-rec prepare` did not finish"):
        PreparedData(str(out))
    done = sorted(os.listdir(out / P.BUILD_DIR / "done"))
    assert done == ["items.json", "samples_train.json", "users_test.json", "users_train.json", "vocab.json"]

    calls = []
    for step in ("step_vocab", "step_items", "step_users"):
        monkeypatch.setattr(prepare_steps.Prepare, step, lambda self, *a, _s=step: calls.append(_s))
    with pytest.warns(UserWarning):
        meta = P.prepare(str(raw), str(out), CFG)
    assert calls == [], f"finished steps were redone: {calls}"
    assert not (out / P.BUILD_DIR).exists()
    monkeypatch.undo()

    fresh = tmp_path / "fresh"
    with pytest.warns(UserWarning):
        P.prepare(str(raw), str(fresh), CFG)
    assert meta["files"] == PreparedData(str(fresh)).meta["files"]
    for rel in meta["files"]:
        np.testing.assert_array_equal(np.load(out / rel), np.load(fresh / rel), err_msg=rel)


def test_complete_output_is_not_recomputed_until_input_changes(raw: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    with pytest.warns(UserWarning):
        first = P.prepare(str(raw), str(out), CFG)

    def no_reading(*a, **k):
        raise AssertionError("a finished, unchanged preparation must not read data again")

    with monkeypatch.context() as m:
        m.setattr(RawTable, "iter_batches", no_reading)
        assert P.prepare(str(raw), str(out), CFG) == first
    # Another vocabulary mode is another output: refused without overwrite, then recomputed.
    p90_cfg = P.PrepareConfig(**{**CFG.__dict__, "vocab": "p90"})
    with pytest.raises(P.DifferentDatasetError, match="--overwrite"):
        P.prepare(str(raw), str(out), p90_cfg)
    with pytest.warns(UserWarning):
        p90 = P.prepare(str(raw), str(out), p90_cfg, overwrite=True)
    assert p90["fingerprint"] != first["fingerprint"]
    assert p90["vocab_sizes"]["item"] < first["vocab_sizes"]["item"]
    # Touching an input (new mtime) changes the fingerprint, so it is recomputed: an edit in place
    # may leave the footer as it was (one label of a row group).
    path = raw / "item_features.parquet"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.warns(UserWarning):
        again = P.prepare(str(raw), str(out), CFG, overwrite=True)
    assert again["fingerprint"] != first["fingerprint"]


def test_the_same_release_under_another_path_is_the_same_input(raw: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The fingerprint held the raw paths as spelled: `prepare raw OUT` after `prepare /abs/raw OUT`,
    or the release moved, was "a different prepared dataset" (exit 2), and its prepared data refused
    the checkpoints of the first. It now holds each file's place inside the release (with its size,
    mtime and footer). What earlier versions recorded (the legacy fingerprint) still matches, so
    their outputs are not prepared again."""
    out = tmp_path / "out"
    with pytest.warns(UserWarning):
        first = P.prepare(str(raw), str(out), CFG)

    def no_reading(*a, **k):
        raise AssertionError("the same input must not be read again")

    moved = tmp_path / "elsewhere" / "raw moved"
    moved.parent.mkdir()
    os.symlink(raw, tmp_path / "link")
    monkeypatch.chdir(tmp_path)
    with monkeypatch.context() as m:
        m.setattr(RawTable, "iter_batches", no_reading)
        for spelling in ("raw", "./raw/", str(tmp_path / "link"), f"file://{raw}"):
            assert P.prepare(spelling, str(out), CFG) == first, spelling
        shutil.move(str(raw), str(moved))  # mtimes kept
        assert P.prepare(str(moved), str(out), CFG) == first

    # An output of an earlier version, which recorded the legacy fingerprint, is this dataset.
    meta = json.loads((out / "meta.json").read_text())
    with P.RawRelease(str(moved)) as release:
        meta["fingerprint"] = prepare_steps.Prepare(release, str(out), CFG).legacy_fingerprint
    assert meta["fingerprint"] != first["fingerprint"]
    (out / "meta.json").write_text(json.dumps(meta))
    with monkeypatch.context() as m:
        m.setattr(RawTable, "iter_batches", no_reading)
        assert P.prepare(str(moved), str(out), CFG) == meta


def test_bad_vocab_mode(raw: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vocab mode"):
        P.prepare(str(raw), str(tmp_path / "o"), P.PrepareConfig(vocab="p50"))


def test_interrupted_publish_is_finished_by_the_next_run(raw: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    real_replace = os.replace
    moved = []

    def flaky_replace(src, dst):
        if f"/{P.BUILD_DIR}/" in str(src) and f"/{P.BUILD_DIR}/" not in str(dst):
            if len(moved) == 7:
                raise KeyboardInterrupt("killed while publishing")
            moved.append(dst)
        return real_replace(src, dst)

    with monkeypatch.context() as m:
        m.setattr(os, "replace", flaky_replace)
        with pytest.raises(KeyboardInterrupt), pytest.warns(UserWarning):
            P.prepare(str(raw), str(out), CFG)
    assert len(moved) == 7 and not (out / "meta.json").exists()
    meta = P.prepare(str(raw), str(out), CFG)
    data = PreparedData(str(out))  # validates every file's shape against meta.json
    assert data.meta == meta and sorted(meta["files"]) == P.output_files()


# A child that prepares and SIGKILLs itself inside `PartitionedScatterWriter.close` of the step whose
# spill directory is argv[3], after that step's pairs reached its spill files: what an OOM kill or a
# `kill -9` leaves (no `abort`, so the spill files stay).
_KILLED_IN_SCATTER = """
import os, signal, sys
from muse_rec.data import files as F
from muse_rec.data import prepare as P
raw, out, which = sys.argv[1:4]
real = F.PartitionedScatterWriter.close
def close(self):
    self._flush()
    if os.path.basename(self.spill_dir) == which:
        os.kill(os.getpid(), signal.SIGKILL)
    real(self)
F.PartitionedScatterWriter.close = close
P.prepare(raw, out, P.PrepareConfig(batch_rows=64, partition_bits=2, progress=False))
"""


@pytest.mark.parametrize("step", ["popularity", "scl"])
def test_a_run_killed_while_scattering_item_arrays_resumes_to_the_same_data(raw: Path, tmp_path: Path,
                                                                           step: str) -> None:
    """The per-item writers appended to a killed run's spill files: the resumed run added every
    popularity count twice and counted every SCL row as a duplicate. Now it starts them over."""
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    child = subprocess.run([sys.executable, "-c", _KILLED_IN_SCATTER, str(raw), str(out), step],
                           capture_output=True, text=True)
    assert child.returncode == -9, child.stderr
    assert (out / P.BUILD_DIR / "spill" / step).is_dir()  # the killed run's pairs are still there
    with warnings.catch_warnings():  # which steps warn depends on where the child died
        warnings.simplefilter("ignore")
        meta = P.prepare(str(raw), str(out), CFG)
        want = P.prepare(str(raw), str(fresh), CFG)
    assert meta["items"] == want["items"] and meta["popularity"] == want["popularity"]
    for rel in ("items/popularity.npy", "items/scl.npy", "items/scl_present.npy", "items/attrs.npy"):
        np.testing.assert_array_equal(np.load(out / rel), np.load(fresh / rel), err_msg=rel)


def test_a_run_killed_while_writing_meta_json_is_resumed(raw: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A prepare killed while it wrote meta.json (its temporary `meta.json.tmp.<pid>` left in OUT)
    made the next run refuse OUT as holding "files this command did not write". Now the next run
    removes that leftover and finishes, with the arrays of a run never killed."""
    out = tmp_path / "out"
    real_write_json = prepare_steps.write_json

    def killed_in_meta(path: str, obj) -> None:
        if os.path.basename(path) == "meta.json":
            Path(f"{path}.tmp.99999999").write_text('{"format_vers')  # what a SIGKILL mid-write leaves
            raise KeyboardInterrupt("killed while writing meta.json")
        real_write_json(path, obj)

    with monkeypatch.context() as m:
        m.setattr(prepare_steps, "write_json", killed_in_meta)
        with pytest.raises(KeyboardInterrupt), pytest.warns(UserWarning):
            P.prepare(str(raw), str(out), CFG)
    assert (out / "meta.json.tmp.99999999").exists() and not (out / "meta.json").exists()
    meta = P.prepare(str(raw), str(out), CFG)
    assert sorted(p.name for p in out.iterdir() if ".tmp." in p.name) == []
    fresh = tmp_path / "fresh"
    with pytest.warns(UserWarning):
        P.prepare(str(raw), str(fresh), CFG)
    assert PreparedData(str(out)).meta == meta
    for rel in meta["files"]:
        np.testing.assert_array_equal(np.load(out / rel), np.load(fresh / rel), err_msg=rel)


@pytest.mark.parametrize("damage", ["not json", "a list", "no stats", "stats null"])
def test_a_damaged_step_record_is_a_step_to_do_again(raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     damage: str) -> None:
    """A step's record in OUT/.build/done/ that is not prepare's JSON object (a copied or damaged OUT) was
    a JSONDecodeError / AttributeError / KeyError traceback on the re-run, or (stats null) a meta.json
    with ``"items": null``; the step is done again and the output is a fresh run's."""
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        _crash_on_test_samples(m)
        with pytest.raises(KeyboardInterrupt), pytest.warns(UserWarning):
            P.prepare(str(raw), str(out), CFG)
    marker = out / P.BUILD_DIR / "done" / "items.json"
    fingerprint = json.loads(marker.read_text())["fingerprint"]
    marker.write_text({"not json": "{x", "a list": "[]", "no stats": json.dumps({"fingerprint": fingerprint}),
                       "stats null": json.dumps({"fingerprint": fingerprint, "stats": None})}[damage])
    with pytest.warns(UserWarning) as said:
        meta = P.prepare(str(raw), str(out), CFG)
    if damage in ("not json", "a list"):
        assert any(f"{marker}: " in str(w.message) and "doing step 'items' again" in str(w.message)
                   for w in said), [str(w.message) for w in said]
    fresh = tmp_path / "fresh"
    with pytest.warns(UserWarning):
        want = P.prepare(str(raw), str(fresh), CFG)
    assert meta["items"] == want["items"] and meta["content_sha256"] == want["content_sha256"]


@pytest.mark.parametrize("damage", ["a list", "a string", "files not a list", "files of numbers", "files empty",
                                    "only the fingerprint"])
def test_a_damaged_meta_json_in_out_is_never_taken_for_a_finished_preparation(raw: Path, tmp_path: Path,
                                                                               damage: str) -> None:
    """OUT's meta.json is read back to tell a finished preparation: a JSON list or string was an
    AttributeError traceback, a ``files`` entry not a list of names a TypeError; with the right
    fingerprint but the counts gone, the run returned it as finished and the summary raised KeyError."""
    out = tmp_path / "out"
    with pytest.warns(UserWarning):
        want = P.prepare(str(raw), str(out), CFG)
    fp = want["fingerprint"]
    text = {"a list": "[]", "a string": '"x"', "files not a list": json.dumps({"fingerprint": fp, "files": 5}),
            "files of numbers": json.dumps({"fingerprint": fp, "files": [5]}),
            "files empty": json.dumps({"fingerprint": fp, "files": []}),
            "only the fingerprint": json.dumps({"fingerprint": fp})}[damage]
    (out / "meta.json").write_text(text)
    if damage in ("a list", "a string"):  # no record of any dataset: refused as another one's OUT
        with pytest.raises(P.DifferentDatasetError, match=r"meta\.json: expected a JSON object, got (list|str); "
                                                          r"it is no prepared dataset's record"):
            P.prepare(str(raw), str(out), CFG)
        return
    with pytest.warns(UserWarning):  # this dataset's, not finished: prepared again
        meta = P.prepare(str(raw), str(out), CFG)
    assert meta["splits"] == want["splits"] and meta["content_sha256"] == want["content_sha256"]
    assert PreparedData(str(out)).meta["splits"] == want["splits"]


@pytest.mark.parametrize("damage", ["a FIFO", "broken JSON"])
def test_an_unreadable_meta_json_in_out_is_named_with_what_is_wrong(raw: Path, tmp_path: Path, capsys,
                                                                    damage: str) -> None:
    """OUT/meta.json a FIFO or broken JSON was refused as "OUT already holds a different prepared dataset
    (from ?, vocab ?, fingerprint ?)": no dataset was there to name. Still refused (exit 2, nothing in OUT
    touched, the FIFO never opened), the line now names the file, what is wrong with it and the ways on;
    --overwrite then prepares OUT."""
    from muse_rec.cli import main as cli_main

    out = tmp_path / "out"
    out.mkdir()
    meta = out / "meta.json"
    if damage == "a FIFO":
        os.mkfifo(meta)
    else:
        meta.write_text('{"fingerprint": ')
    assert cli_main(["prepare", str(raw), str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    what = "a FIFO (named pipe), not a regular file" if damage == "a FIFO" else "not valid JSON"
    assert err.count("\n") == 0 and err.startswith(f"muse-rec prepare: {meta}: {what}"), err
    assert "?" not in err and "different prepared dataset" not in err, err
    assert "--overwrite" in err and f"delete {meta}" in err, err
    assert set(os.listdir(out)) - {".lock"} == {"meta.json"}  # the lock of the refused run, nothing else
    assert damage == "a FIFO" or meta.read_text() == '{"fingerprint": '
    with pytest.warns(UserWarning):
        assert cli_main(["prepare", str(raw), str(out), "--no-progress", "--overwrite"]) == 0
    assert PreparedData(str(out)).meta["fingerprint"]

"""Items 4 and 6 of issue 13: prepared data is checked on open, scanned by `muse-rec check`, and
a checkpoint trained on other data is refused unless --allow-data-mismatch."""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from muse_rec.data.prepared import PreparedData, PreparedDataError
from tests.robustness.conftest import SPEC, assert_bad_input, cli, sets, snapshot


@pytest.fixture
def prep_copy(prepared_tiny, tmp_path):
    dest = tmp_path / "prepared"
    shutil.copytree(prepared_tiny, dest)
    return dest


def _header_len(path) -> int:
    with open(path, "rb") as f:
        np.lib.format.read_magic(f)
        np.lib.format.read_array_header_1_0(f)
        return f.tell()


def test_truncated_array_is_named_on_open(prep_copy, tmp_path):
    target = prep_copy / "train" / "seq_items.npy"
    with open(target, "r+b") as f:
        f.truncate(target.stat().st_size - 4)
    with pytest.raises(PreparedDataError, match=r"train/seq_items.npy: .* bytes on disk.*truncated"):
        PreparedData(str(prep_copy))
    out = cli("train", "--spec", SPEC, *sets(prep_copy, tmp_path / "runs", ["train.max_steps=1"]), "--device", "cpu")
    assert_bad_input(out, "train/seq_items.npy", "truncated")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.yaml"))
    assert_bad_input(cli("check", str(prep_copy)), "train/seq_items.npy", "truncated")


def test_wrong_dtype_is_named_on_open(prep_copy):
    target = prep_copy / "test" / "labels.npy"
    np.save(target, np.load(target).astype(np.int64))
    with pytest.raises(PreparedDataError, match=r"test/labels.npy: dtype int64, prepare writes int8"):
        PreparedData(str(prep_copy))


def test_column_major_array_is_named_on_open(prep_copy):
    """A 2-D array whose header says Fortran order: NumPy maps the same bytes transposed, every value still
    in range (SCL vectors, item attributes), and training read them so without a word."""
    target = prep_copy / "items" / "scl.npy"
    arr = np.load(target)
    np.save(target, np.asfortranarray(arr.T.copy().reshape(arr.shape)))  # same shape, column-major header
    with pytest.raises(PreparedDataError, match=r"items/scl.npy: header says Fortran \(column-major\) order"):
        PreparedData(str(prep_copy))


def _edit_meta(root, edit) -> None:
    meta = json.loads((root / "meta.json").read_text())
    edit(meta)
    (root / "meta.json").write_text(json.dumps(meta))


# meta.json from elsewhere: each edit reached a bare `int('x')` ValueError traceback, a
# "missing or wrong entry list indices must be integers" message, or silently other arrays.
META_DAMAGE = {
    "vocab size a string": (lambda m: m["vocab_sizes"].update(item="x"),
                            "vocab_sizes.item must be an integer in [1, 8796093022207], got 'x'"),
    # 10^20 rows: an overflow traceback describing the tables, before.
    "vocab size past int64 bytes": (lambda m: m["vocab_sizes"].update(item=10**20),
                                    "vocab_sizes.item must be an integer in [1, 8796093022207], got 100000000000000000000"),
    "vocab size a bool": (lambda m: m["vocab_sizes"].update(category=True), "vocab_sizes.category must be an integer"),
    "vocab size missing": (lambda m: m["vocab_sizes"].pop("user_f3"), "no vocab_sizes.user_f3"),
    "samples negative": (lambda m: m["splits"]["train"].update(samples=-4), "splits.train.samples must be an integer >= 0, got -4"),
    "splits a list": (lambda m: m.update(splits=[]), "no splits.train.user_rows"),
    "split entry null": (lambda m: m["splits"].update(test=None), "no splits.test.user_rows"),
    "an extra split": (lambda m: m["splits"].update(valid=m["splits"]["test"]), "splits.valid: `muse-rec prepare` writes only"),
    # The version was shown as str() does: "format_version 1, this code reads 1".
    "format version a string": (lambda m: m.update(format_version="1"), "format_version '1', this code reads 1"),
}


@pytest.mark.parametrize("case", sorted(META_DAMAGE))
def test_damaged_meta_json_is_named_on_open(prep_copy, case):
    edit, needle = META_DAMAGE[case]
    _edit_meta(prep_copy, edit)
    with pytest.raises(PreparedDataError, match=re.escape(needle)):
        PreparedData(str(prep_copy))
    assert_bad_input(cli("check", str(prep_copy)), "meta.json", needle)


@pytest.mark.parametrize("key, value, needle", [
    ("positives", 7, "clicks, meta.json's splits.train.positives says 7"),
    ("positive_rate", 0.5, "meta.json's splits.train.positive_rate says 0.5"),
])
def test_check_compares_meta_clicks_with_the_labels(prep_copy, key, value, needle):
    """The train prior and the start line read these; `check` used to pass them unread."""
    _edit_meta(prep_copy, lambda m: m["splits"]["train"].update({key: value}))
    PreparedData(str(prep_copy))  # in range: opening cannot tell
    assert_bad_input(cli("check", str(prep_copy)), "train/labels.npy", needle)


def test_check_passes_on_clean_data(prepared_tiny):
    out = cli("check", str(prepared_tiny))
    assert out.returncode == 0, out.stderr
    assert ": ok (" in out.stdout
    # The fingerprint runs record (run.json's data_fingerprint), not meta.json's of the raw files.
    fp = PreparedData(str(prepared_tiny)).fingerprint
    assert f"data fingerprint {fp} (run.json's data_fingerprint)" in out.stdout
    assert fp != json.loads((prepared_tiny / "meta.json").read_text())["fingerprint"]
    assert "contents not compared" not in out.stderr


def test_check_says_when_it_could_not_compare_contents(prep_copy):
    # Without meta.json's content_sha256, swapped labels pass every range check: `check` said "ok" as if
    # it had verified them.
    _edit_meta(prep_copy, lambda m: m.pop("content_sha256"))
    out = cli("check", str(prep_copy))
    assert out.returncode == 0 and ": ok (" in out.stdout, out.stderr
    assert "WARNING" in out.stderr and "contents not compared with meta.json's content_sha256" in out.stderr


# content_sha256 present but emptied, cut short or of another type: `check` hashed only the entries
# listed (none, or not the labels) and said "ok" without the WARNING, two swapped labels unseen.
SHA_DAMAGE = {
    "an empty object": (lambda m: m.update(content_sha256={}), "content_sha256 has no entry for 'items/attrs.npy'"),
    "the labels' entry removed": (lambda m: m["content_sha256"].pop("train/labels.npy"),
                                  "content_sha256 has no entry for 'train/labels.npy'"),
    "a list": (lambda m: m.update(content_sha256=["train/labels.npy"]), "content_sha256 must be an object"),
    "null": (lambda m: m.update(content_sha256=None), "content_sha256 must be an object"),
}


@pytest.mark.parametrize("case", sorted(SHA_DAMAGE))
def test_check_names_a_damaged_content_sha256(prep_copy, case):
    labels = np.load(prep_copy / "train" / "labels.npy")
    i, j = int(np.flatnonzero(labels == 1)[0]), int(np.flatnonzero(labels == 0)[-1])
    labels[[i, j]] = labels[[j, i]]  # every count and range check still passes
    np.save(prep_copy / "train" / "labels.npy", labels)
    edit, needle = SHA_DAMAGE[case]
    _edit_meta(prep_copy, edit)
    out = cli("check", str(prep_copy))
    assert_bad_input(out, "meta.json", needle)
    assert ": ok (" not in out.stdout


def test_check_names_an_scl_row_marked_present_but_all_zero(prep_copy):
    # prepare's rule: an all-zero vector is no vector; a present flag on one went unseen.
    present = np.load(prep_copy / "items" / "scl_present.npy")
    row = int(np.flatnonzero(present)[0])
    for col in range(128):
        _poke(prep_copy / "items" / "scl.npy", row * 128 + col, 0)
    assert_bad_input(cli("check", str(prep_copy)), "items/scl_present.npy",
                     f"row {row} is marked as having an SCL vector but its items/scl.npy row is all zeros")


def test_check_accepts_sorted_keys_more_than_2_to_the_63_apart(prep_copy):
    """Vocabularies hold hashed int64 keys. A small one (a user field with 8 values) has
    neighbours more than 2**63 apart, whose difference wraps around in int64: the check used
    np.diff and flagged freshly prepared data as "not strictly increasing" (seen on a synthetic
    release with 3,000 users). Sortedness is a comparison, not a subtraction."""
    from muse_rec.data.check import check_prepared

    path = prep_copy / "vocab" / "user_f1.npy"
    keys = np.load(path, mmap_mode="r+")
    n = keys.shape[0]
    assert n >= 3
    wide = np.array([-(2**63) + 5] + [2**62 + i for i in range(n - 1)], dtype=keys.dtype)
    assert int(wide[1]) - int(wide[0]) > 2**63 and np.diff(wide)[0] < 0  # the wrap the old check tripped on
    keys[:] = wide
    keys.flush()
    del keys
    _as_prepared(path)
    report = check_prepared(str(prep_copy))
    assert report.ok, report.problems
    _poke(path, 2, 2**62)  # a real repeat is still one
    problems = check_prepared(str(prep_copy)).problems
    assert len(problems) == 1 and problems[0].endswith("vocab/user_f1.npy: not strictly increasing at [2]"), problems


def _poke(path, index, value) -> None:
    """Overwrite element ``index`` (flat) of a .npy in place, header untouched, as if prepare had
    written it so (its SHA-256 in meta.json follows: these tests are about what the range and key
    checks find; `tests/data/test_prepared_fingerprint.py` covers a change after prepare)."""
    arr = np.load(path, mmap_mode="r+")
    arr.reshape(-1)[index] = value
    arr.flush()
    del arr
    _as_prepared(path)


def _as_prepared(path) -> None:
    """Record the array's current SHA-256 in its prepared directory's meta.json (``content_sha256``)."""
    import hashlib

    root = path.parent.parent
    meta = json.loads((root / "meta.json").read_text())
    rel = path.relative_to(root).as_posix()
    meta["content_sha256"][rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    (root / "meta.json").write_text(json.dumps(meta))


def test_check_names_every_out_of_range_unsorted_or_inconsistent_array(prep_copy):
    """One damaged copy, one scan: each problem is reported on its own line naming file and index."""
    off = np.load(prep_copy / "train" / "seq_offsets.npy")
    present = np.load(prep_copy / "items" / "scl_present.npy")
    absent = int(np.flatnonzero(~present)[1])  # [0] is row 0
    damage = [
        ("train/seq_items.npy", 3, 10**6, "item row 1000000 at [3] is outside"),
        ("test/sample_items.npy", 0, -1, "item row -1 at [0] is outside"),
        ("train/user_fields.npy", 7, 10**6, "user_f1 row 1000000 at [1, 1] is outside"),
        ("train/labels.npy", 2, 3, "label 3 at [2] is outside [0, 2)"),
        ("vocab/item.npy", 2, -(2**63), "not strictly increasing at [2]"),
        ("train/seq_offsets.npy", 2, int(off[1]) - 1, "not non-decreasing at [2]"),
        ("items/scl.npy", absent * 128, 5, f"row {absent} has an SCL vector"),
    ]
    assert off[1] > 0
    for rel, index, value, _ in damage:
        _poke(prep_copy / rel, index, value)
    out = cli("check", str(prep_copy))
    for rel, _, _, needle in damage:
        assert_bad_input(out, rel, needle)
    assert f"{len(damage)} problem(s)" in out.stderr


def test_resume_on_other_data_with_same_vocabularies_is_refused(trained, prep_copy, tmp_path):
    """Same shapes and vocabularies, other labels: only the fingerprint tells them apart."""
    labels = np.load(prep_copy / "train" / "labels.npy")
    _poke(prep_copy / "train" / "labels.npy", 0, 1 - int(labels[0]))
    runs = trained.copy_run(tmp_path / "runs")
    before = snapshot(runs / "din")
    args = ["train", "--spec", SPEC, *sets(prep_copy, runs, ["train.max_steps=3"]), "--device", "cpu", "--resume"]
    assert_bad_input(cli(*args), "step-00000002", "other prepared data", "--allow-data-mismatch")
    assert snapshot(runs / "din") == before
    for command, extra in (("evaluate", ["--out", str(tmp_path / "ev")]), ("export", ["--out", str(tmp_path / "ex")])):
        out = cli(command, "--spec", SPEC, *sets(prep_copy, runs), *extra)
        assert_bad_input(out, "other prepared data", "--allow-data-mismatch")
    out = cli(*args, "--allow-data-mismatch")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "--allow-data-mismatch" in out.stderr  # the warning says what was overridden


def _newest_behaviour_of_first_sample(prep: PreparedData, split: str) -> int:
    """Position in ``seq_items`` of the newest behaviour of the user of the split's sample 0."""
    u = int(prep.array(f"{split}/sample_users.npy")[0])
    off = prep.array(f"{split}/seq_offsets.npy")
    assert u >= 0 and off[u + 1] > off[u]
    return int(off[u + 1]) - 1


def _damage_cases(prep: PreparedData):
    """(file, flat index, value, what the message says) for each array a batch reads row ids from."""
    pos = _newest_behaviour_of_first_sample(prep, "train")
    u = int(prep.array("train/sample_users.npy")[0])
    item = int(prep.array("train/sample_items.npy")[0])
    off = prep.array("train/seq_offsets.npy")
    return [
        ("train/seq_items.npy", pos, 10**6, "item row 1000000 is outside"),
        ("train/seq_cats.npy", pos, -3, "category row -3 is outside"),
        ("train/sample_items.npy", 0, -1, "item row -1 is outside"),
        ("train/sample_users.npy", 0, 10**6, "user-feature row 1000000 is outside"),
        ("train/user_fields.npy", u * 6 + 2, 10**6, "user_f2 row 1000000 is outside"),
        ("items/attrs.npy", item * 3 + 1, 10**6, "item_f213 row 1000000 is outside"),
        ("train/seq_offsets.npy", u + 1, int(off[u]) - 1, "history length -1 is outside"),
        ("train/sample_user_rows.npy", 0, 10**6, "user_id row 1000000 is outside"),
        ("train/labels.npy", 0, 7, "label 7 is outside [0, 2)"),  # trained as a BCE target of 7
    ]


@pytest.mark.parametrize("case", range(9))
def test_a_batch_refuses_out_of_range_rows_naming_the_file(prepared_tiny, tmp_path, case):
    """Row ids are checked where a batch reads them: FBGEMM would clamp a bad one to row 0 and a
    NumPy gather would wrap a negative one, silently. In a DataLoader worker too, as one line."""
    from muse_rec.data.loader import make_loader

    dest = tmp_path / "prepared"
    shutil.copytree(prepared_tiny, dest)
    rel, index, value, needle = _damage_cases(PreparedData(str(dest)))[case]
    first = next(iter(make_loader(str(dest), "train", 64, 50)))  # undamaged: reads fine
    assert first.seq_lengths[0] > 0
    _poke(dest / rel, index, value)
    for workers in (0, 1):
        with pytest.raises(PreparedDataError) as e:
            next(iter(make_loader(str(dest), "train", 64, 50, num_workers=workers)))
        assert f"{rel}: {needle}" in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_out_of_range_rows_stop_train_and_baselines_in_one_line(prep_copy, tmp_path):
    prep = PreparedData(str(prep_copy))
    _poke(prep_copy / "train/seq_items.npy", _newest_behaviour_of_first_sample(prep, "train"), 10**6)
    out = cli("train", "--spec", SPEC, *sets(prep_copy, tmp_path / "runs", ["train.max_steps=1"]), "--device", "cpu")
    assert_bad_input(out, "train/seq_items.npy: item row 1000000 is outside", "muse-rec check")
    _poke(prep_copy / "test/sample_items.npy", 0, -1)  # NumPy would have read the last SCL row
    assert_bad_input(cli("baselines", str(prep_copy)), "test/sample_items.npy: item row -1 is outside")


@pytest.mark.parametrize("rel, index, value, needle", [
    ("test/user_fields.npy", 7, 10**6, "user_f1 row 1000000 is outside"),
    ("test/sample_items.npy", 0, -1, "item row -1 is outside"),
    ("test/labels.npy", 0, 5, "label 5 is outside [0, 2)"),
])
def test_damage_in_the_split_evaluated_at_the_end_stops_the_run_before_it_trains(prep_copy, tmp_path, rel, index,
                                                                                 value, needle):
    # It trained the whole run and wrote its checkpoints, then failed at the evaluation.
    _poke(prep_copy / rel, index, value)
    out = cli("train", "--spec", SPEC, *sets(prep_copy, tmp_path / "runs", ["train.max_steps=1", "train.eval_at_end=true"]),
              "--device", "cpu")
    assert_bad_input(out, f"{rel}: {needle}", "muse-rec check")
    assert "step 1/" not in out.stderr and not (tmp_path / "runs").exists()


def test_labels_outside_0_1_stop_train_and_baselines_in_one_line(prep_copy, tmp_path):
    """A label of 7 trained as a BCE target and wrote a checkpoint; the metrics then refused it with
    a traceback (exit 1), and so did `baselines`. Labels are now checked where they are read."""
    _poke(prep_copy / "train/labels.npy", 3, 7)
    out = cli("train", "--spec", SPEC, *sets(prep_copy, tmp_path / "runs", ["train.max_steps=1"]), "--device", "cpu")
    assert_bad_input(out, "train/labels.npy: label 7 is outside [0, 2)", "muse-rec check")
    assert not list((tmp_path / "runs").rglob("step-*"))  # no checkpoint of a model trained on it
    _poke(prep_copy / "test/labels.npy", 0, 5)
    assert_bad_input(cli("baselines", str(prep_copy)), "test/labels.npy: label 5 is outside [0, 2)")


def test_a_nonzero_scl_padding_row_stops_train_and_baselines_in_one_line(prep_copy, tmp_path):
    """Row 0 of items/scl.npy (padding, unknown items) not zero: the frozen SCL table refused it with
    a ValueError traceback (exit 1) naming no file."""
    _poke(prep_copy / "items/scl.npy", 3, 9)
    out = cli("train", "--spec", SPEC, *sets(prep_copy, tmp_path / "runs", ["train.max_steps=1"]), "--device", "cpu")
    assert_bad_input(out, "items/scl.npy: row 0 (padding, unknown items) is not all zeros", "muse-rec check")
    assert_bad_input(cli("baselines", str(prep_copy)), "items/scl.npy: row 0 (padding, unknown items) is not all zeros")
    out = cli("check", str(prep_copy))  # the scan still lists it among every problem
    assert out.returncode == 2 and "items/scl.npy: row 0 has an SCL vector but scl_present says" in out.stdout + out.stderr


def test_a_negative_item_popularity_stops_train_before_it_trains_and_evaluate_in_one_line(trained, prep_copy, tmp_path):
    """A negative count in items/popularity.npy: the run trained and wrote its checkpoints, then its
    evaluation failed in the popularity groups with a ValueError traceback (exit 1)."""
    _poke(prep_copy / "items/popularity.npy", 5, -5)
    needle = "items/popularity.npy: count -5 is outside [0, "
    out = cli("train", "--spec", SPEC, *sets(prep_copy, tmp_path / "runs", ["train.max_steps=1", "train.eval_at_end=true"]),
              "--device", "cpu")
    assert_bad_input(out, needle, "muse-rec check")
    assert "step 1/" not in out.stderr and not (tmp_path / "runs").exists()
    runs = trained.copy_run(tmp_path / "trained")
    out = cli("evaluate", "--spec", SPEC, *sets(prep_copy, runs), "--allow-data-mismatch", "--out", str(tmp_path / "ev"))
    assert_bad_input(out, needle)


def test_serving_histories_refuse_out_of_range_rows(prep_copy):
    """The ranker reads a user's history through `PreparedData.user_history`: same check."""
    prep = PreparedData(str(prep_copy))
    raw_user = int(prep.array("test/user_keys.npy")[0])
    items, cats, fields = prep.user_history("test", raw_user)
    assert items.size > 0 and fields.shape == (5,)
    u = int(prep.user_row_index("test", np.array([raw_user]))[0])
    _poke(prep_copy / "test/seq_cats.npy", int(prep.array("test/seq_offsets.npy")[u]), 10**6)
    with pytest.raises(PreparedDataError, match=r"test/seq_cats.npy: category row 1000000 is outside"):
        PreparedData(str(prep_copy)).user_history("test", raw_user)
    _poke(prep_copy / "test/user_sorted_index.npy", 0, -7)
    with pytest.raises(PreparedDataError, match=r"test/user_sorted_index.npy: user row -7 is outside \[-1, "):
        PreparedData(str(prep_copy)).user_row_index("test", np.array(prep.array("test/user_sorted_keys.npy")[:1]))


def test_check_compares_each_samples_keys_with_its_rows(prep_copy):
    """GAUC groups samples by their raw user key and the model reads their rows: `check` read the
    rows only, so keys rewritten to another user's (GAUC on other groups: the regression floor
    moved 0.7807 -> 0.7885 on a damaged copy) or a reordered user table scanned "ok"."""
    from muse_rec.data.check import check_prepared

    def load(rel):
        return np.load(prep_copy / rel)

    su, uk = load("train/sample_users.npy"), load("train/user_keys.npy")
    a = int(np.flatnonzero(su >= 0)[5])
    b = int(np.flatnonzero((su >= 0) & (su != su[a]))[0])
    tsu, tuk = load("test/sample_users.npy"), load("test/user_keys.npy")
    d = int(np.flatnonzero(tsu >= 0)[2])
    items, vocab = load("test/sample_items.npy"), load("vocab/item.npy")
    c = int(np.flatnonzero(items > 1)[3])
    damage = [  # one per file: a file's scan names its first offender
        ("train/sample_user_keys.npy", a, int(uk[su[b]]),
         f"train/sample_user_keys.npy: [{a}] is user key {int(uk[su[b]])}, but its row {int(su[a])} "
         f"(train/sample_users.npy) holds key {int(uk[su[a]])}"),
        ("test/sample_users.npy", d, -1,
         f"test/sample_user_keys.npy: [{d}] is user key {int(tuk[tsu[d]])}, which has a row, but "
         "test/sample_users.npy says it has none (-1)"),
        ("test/sample_item_keys.npy", c, int(vocab[0]),
         f"test/sample_item_keys.npy: [{c}] is item key {int(vocab[0])}, but its row {int(items[c])} "
         f"(test/sample_items.npy) holds key {int(vocab[items[c] - 1])}"),
    ]
    needles = [needle for *_, needle in damage]
    # The rewritten train key is not that of the sample's user_id row either (the model's id embedding).
    sur, uid = load("train/sample_user_rows.npy"), load("vocab/user_id.npy")
    needles.insert(1, f"train/sample_user_keys.npy: [{a}] is user key {int(uk[su[b]])}, but its row {int(sur[a])} "
                      f"(train/sample_user_rows.npy) holds key {int(uid[sur[a] - 1])}")
    for rel, index, value, _ in damage:
        _poke(prep_copy / rel, index, value)
    problems = check_prepared(str(prep_copy)).problems
    assert len(problems) == len(needles), problems
    for needle, line in zip(needles, problems):
        assert line.endswith(needle) or needle in line, (needle, line)

    # The user table reordered (keys no longer those the sorted index points at): named once per split file.
    keys = np.load(prep_copy / "test/user_keys.npy")
    np.save(prep_copy / "test/user_keys.npy", keys[::-1].copy())
    problems = check_prepared(str(prep_copy)).problems
    assert any("test/user_sorted_keys.npy: is not test/user_keys.npy ordered by user_sorted_index.npy" in p
               for p in problems), problems
    assert any("test/sample_user_keys.npy: [" in p for p in problems), problems


def test_check_names_a_sorted_index_past_the_user_table_instead_of_crashing(prep_copy):
    # The key checks index the user table by user_sorted_index.npy: run before its range was known
    # good, an index past the table was an IndexError traceback (a negative one wraps silently).
    rows = int(np.load(prep_copy / "test/user_keys.npy").shape[0])
    _poke(prep_copy / "test/user_sorted_index.npy", 0, rows + 5)
    out = cli("check", str(prep_copy))
    assert_bad_input(out, "test/user_sorted_index.npy", f"user row {rows + 5} at [0] is outside [0, {rows})")


def test_check_compares_contents_through_a_file_uri(prep_copy):
    """A file:// URI names the local directory (the readers' rule), but `check` took it for a remote
    path: it hashed nothing, warned "contents not compared" and passed two swapped labels (exit 0)."""
    uri = f"file://{prep_copy.resolve()}"
    out = cli("check", uri)
    assert out.returncode == 0 and "contents not compared" not in out.stderr, out.stderr
    labels = np.load(prep_copy / "train" / "labels.npy")
    i, j = int(np.flatnonzero(labels == 1)[0]), int(np.flatnonzero(labels == 0)[-1])
    labels[[i, j]] = labels[[j, i]]
    np.save(prep_copy / "train" / "labels.npy", labels)
    assert_bad_input(cli("check", uri), "train/labels.npy", "content differs from meta.json's content_sha256")


def test_check_names_a_sample_given_another_users_id_row(prep_copy):
    """sample_user_rows is the model's user_id embedding row of each sample; `check` compared the keys with
    the item rows and the user-feature rows, not with it: another user's row there (in range, its SHA-256
    recorded as prepare's) said ok."""
    path = prep_copy / "train" / "sample_user_rows.npy"
    rows = np.load(path)
    other = int(np.flatnonzero(rows != rows[0])[0])
    _poke(path, 0, int(rows[other]))
    assert_bad_input(cli("check", str(prep_copy)), "train/sample_user_keys.npy",
                     "[0] is user key", f"its row {int(rows[other])} (train/sample_user_rows.npy) holds key")

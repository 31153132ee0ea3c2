"""`check_prepared`: the full scan of a prepared directory's values (`muse-rec check PREPARED`).

Opening `PreparedData` already checks every array's header and size against meta.json. This
scan reads every value, in chunks (memory stays ~`CHUNK` elements whatever the data size),
and checks what the model would otherwise trust silently: an out-of-range row id is replaced
by row 0 inside FBGEMM's lookups, an unsorted vocabulary maps ids to the wrong rows, a
non-monotone offset gives a user another user's behaviours.

Checked:

* vocabularies: raw keys strictly increasing (binary search needs it);
* item / category / user / attribute rows everywhere: ``0 <= row < vocab_sizes[table]``;
* ``seq_offsets``: starts at 0, non-decreasing, ends at the behaviour count;
* user tables: sorted keys sorted, sorted index a permutation target in range;
* samples: labels in {0, 1}, as many clicks (and the click rate) as meta.json says;
  ``sample_users`` in ``[-1, user_rows)``; each sample's raw user and item keys are those of its
  user-feature row, ``user_id`` row and item row (GAUC groups by the keys, the model reads the
  rows), and a sample without a row has a key that has none;
* SCL: ``scl_present[0]`` is False and items without an SCL vector have an all-zero row;
* popularity: non-negative.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Set

import numpy as np

from muse_rec.data.prepare_config import ITEM_ATTR_COLUMNS, USER_FIELD_COLUMNS, VOCAB_NAMES, output_files
from muse_rec.data.prepared import POPULARITY_LIMIT, PreparedData, PreparedDataError
from muse_rec.data.reader import join_path
from muse_rec.data.schema import SPLITS
from muse_rec.integrity import hash_files
from muse_rec.output_paths import strip_file_uri

CHUNK = 1 << 24  # elements per read (~128 MB of int64 at most)


@dataclass
class CheckReport:
    """Result of a scan: ``problems`` (one line each, naming the file) and how much was read."""

    path: str
    problems: List[str] = field(default_factory=list)
    files: Set[str] = field(default_factory=set)
    values: int = 0
    fingerprint: str = ""  # `PreparedData.fingerprint`: the one run.json and checkpoints record
    # Whether the arrays were compared with meta.json's content_sha256 (absent: earlier versions, or removed).
    content_verified: bool = False

    @property
    def arrays(self) -> int:
        """Distinct array files read."""
        return len(self.files)

    @property
    def ok(self) -> bool:
        return not self.problems


def _chunks(arr: np.ndarray, rows: int = CHUNK):
    step = max(1, rows // max(1, int(np.prod(arr.shape[1:], dtype=np.int64))))
    for lo in range(0, arr.shape[0], step):
        yield lo, np.asarray(arr[lo:lo + step])


class _Scan:
    def __init__(self, data: PreparedData, report: CheckReport) -> None:
        self.data, self.report = data, report

    def problem(self, rel: str, msg: str) -> None:
        self.report.problems.append(f"{join_path(self.data.path, rel)}: {msg}")

    def rows(self, rel: str, limit: int, column: Optional[int] = None, what: str = "", low: int = 0) -> None:
        """Every value (of ``column``) in ``[low, limit)``; reports the first offender."""
        arr = self.data.array(rel)
        self.report.files.add(rel)
        for lo, block in _chunks(arr):
            vals = block if column is None else block[:, column]
            self.report.values += int(vals.size)
            bad = np.flatnonzero((vals < low) | (vals >= limit))
            if bad.size:
                i = lo + int(bad[0])
                where = f"[{i}]" if column is None else f"[{i}, {column}]"
                self.problem(rel, f"{what or 'value'} {int(vals[bad[0]])} at {where} is outside [{low}, {limit}) "
                                  f"({bad.size} such value(s) in this chunk alone)")
                return

    def ordered(self, rel: str, strict: bool) -> None:
        arr = self.data.array(rel)
        self.report.files.add(rel)
        prev = None
        for lo, block in _chunks(arr):
            self.report.values += int(block.size)
            if prev is not None and block.size:
                block_with_prev = np.concatenate([[prev], block])
                base = lo - 1
            else:
                block_with_prev, base = block, lo
            # Compared, not subtracted: the vocabularies hold hashed int64 keys, and np.diff of two
            # keys more than 2**63 apart wraps around to a negative step.
            later, earlier = block_with_prev[1:], block_with_prev[:-1]
            bad = np.flatnonzero(later <= earlier if strict else later < earlier)
            if bad.size:
                i = base + int(bad[0]) + 1
                self.problem(rel, f"not {'strictly increasing' if strict else 'non-decreasing'} at [{i}]")
                return
            if block.size:
                prev = block[-1]

    def check(self, rel: str, cond: Callable[[], bool], msg: str) -> None:
        if not cond():
            self.problem(rel, msg)


def _check_clicks(s: _Scan, split: str) -> None:
    """meta.json's click count and rate of ``split`` are its labels': the trainer starts the
    output logit at that rate (`output_bias: train_prior`) and logs the count."""
    rel = f"{split}/labels.npy"
    clicks = sum(int(np.count_nonzero(block == 1)) for _, block in _chunks(s.data.array(rel)))
    try:
        told, rate = s.data.num_positives(split), s.data.positive_rate(split)
    except PreparedDataError as e:
        s.report.problems.append(str(e))
        return
    samples = s.data.num_samples(split)
    if told != clicks:
        s.problem(rel, f"{clicks:,} clicks, meta.json's splits.{split}.positives says {told:,}")
    elif samples and abs(rate - clicks / samples) > 1e-12:
        s.problem(rel, f"click rate {clicks / samples!r}, meta.json's splits.{split}.positive_rate says {rate!r}")


def _same_keys(s: _Scan, rel_keys: str, rel_rows: str, key_of: Callable[[np.ndarray], np.ndarray],
               row_of: Callable[[np.ndarray], np.ndarray], what: str, unknown: int) -> None:
    """Each sample's raw key (``rel_keys``) is the key of the row it was given (``rel_rows``,
    ``key_of``); a sample given ``unknown`` must have a key without a row (``row_of``, the lookup
    `PreparedData` serves requests with).

    The rows are what the model reads and the keys what GAUC groups users by and `rank` returns:
    two arrays that must tell the same story (checked after the rows were found in range)."""
    keys, rows = s.data.array(rel_keys), s.data.array(rel_rows)
    s.report.files.add(rel_keys)
    for lo, block in _chunks(keys):
        s.report.values += int(block.size)
        r = np.asarray(rows[lo:lo + block.size])
        known = r != unknown
        want = key_of(r[known])
        bad = np.flatnonzero(block[known] != want)
        if bad.size:
            i = int(np.flatnonzero(known)[bad[0]])
            s.problem(rel_keys, f"[{lo + i}] is {what} key {int(block[i])}, but its row {int(r[i])} ({rel_rows}) "
                                f"holds key {int(want[bad[0]])} ({bad.size} such sample(s) in this chunk alone)")
            return
        found = np.flatnonzero(row_of(block[~known]) != unknown)
        if found.size:
            i = int(np.flatnonzero(~known)[found[0]])
            s.problem(rel_keys, f"[{lo + i}] is {what} key {int(block[i])}, which has a row, but {rel_rows} "
                                f"says it has none ({unknown})")
            return


def check_prepared(path: str) -> CheckReport:
    """Scan every array of the prepared directory ``path``; `PreparedDataError` if it does not open."""
    data = PreparedData(path)
    report = CheckReport(path=path, fingerprint=data.fingerprint)
    s = _Scan(data, report)
    vs = data.vocab_sizes
    for name in VOCAB_NAMES:
        s.ordered(f"vocab/{name}.npy", strict=True)
    for col, name in enumerate(ITEM_ATTR_COLUMNS):
        s.rows("items/attrs.npy", vs[name], column=col, what=f"{name} row")
    s.rows("items/popularity.npy", POPULARITY_LIMIT, what="count")
    present = data.scl_present()
    report.files.add("items/scl_present.npy")
    s.check("items/scl_present.npy", lambda: present.shape[0] == 0 or not bool(present[0]),
            "row 0 (unknown item) is marked as having an SCL vector")
    scl = data.array("items/scl.npy")  # not `scl()`, which stops at a non-zero row 0: the scan below lists it
    report.files.add("items/scl.npy")
    for lo, block in _chunks(scl):
        report.values += int(block.size)
        absent = ~np.asarray(present[lo:lo + block.shape[0]])
        has_values = block.any(axis=1)
        nonzero = np.flatnonzero(absent & has_values)
        if nonzero.size:
            s.problem("items/scl.npy", f"row {lo + int(nonzero[0])} has an SCL vector but scl_present says it "
                                       "has none (the GSU would use it)")
            break
        zero = np.flatnonzero(~absent & ~has_values)
        if zero.size:  # prepare's rule: an all-zero vector is no vector (the floors and coverage count it absent)
            s.problem("items/scl_present.npy", f"row {lo + int(zero[0])} is marked as having an SCL vector but its "
                                               "items/scl.npy row is all zeros")
            break
    for split in SPLITS:
        meta = data.require_split(split)  # its counts were checked when `data` opened
        u, b = int(meta["user_rows"]), int(meta["behaviours"])
        off = data.array(f"{split}/seq_offsets.npy")
        s.check(f"{split}/seq_offsets.npy", lambda: int(off[0]) == 0 and int(off[-1]) == b,
                f"must start at 0 and end at the behaviour count {b}, got {int(off[0])} .. {int(off[-1])}")
        s.ordered(f"{split}/seq_offsets.npy", strict=False)
        s.rows(f"{split}/seq_items.npy", vs["item"], what="item row")
        s.rows(f"{split}/seq_cats.npy", vs["category"], what="category row")
        for col, name in enumerate(USER_FIELD_COLUMNS):
            s.rows(f"{split}/user_fields.npy", vs[name], column=col, what=f"{name} row")
        before = len(report.problems)  # the key checks below index by these rows: only once all are in range
        s.ordered(f"{split}/user_sorted_keys.npy", strict=False)
        s.rows(f"{split}/user_sorted_index.npy", u, what="user row")
        s.rows(f"{split}/labels.npy", 2, what="label")
        _check_clicks(s, split)
        s.rows(f"{split}/sample_items.npy", vs["item"], what="item row")
        s.rows(f"{split}/sample_user_rows.npy", vs["user_id"], what="user_id row")
        s.rows(f"{split}/sample_users.npy", u, low=-1, what="user-feature row")
        if len(report.problems) == before:  # rows in range: the keys can be looked up by them
            user_keys = np.asarray(data.array(f"{split}/user_keys.npy"))
            report.files.add(f"{split}/user_keys.npy")
            s.check(f"{split}/user_sorted_keys.npy",
                    lambda: np.array_equal(data.array(f"{split}/user_sorted_keys.npy"),
                                           user_keys[np.asarray(data.array(f"{split}/user_sorted_index.npy"))]),
                    f"is not {split}/user_keys.npy ordered by user_sorted_index.npy (a sample's key would find "
                    "another user's row)")
            _same_keys(s, f"{split}/sample_user_keys.npy", f"{split}/sample_users.npy", lambda r: user_keys[r],
                       functools.partial(data.user_row_index, split), "user", unknown=-1)
            items = data.vocab("item")
            _same_keys(s, f"{split}/sample_item_keys.npy", f"{split}/sample_items.npy", items.key_of, items.rows,
                       "item", unknown=0)
            # The model's user_id embedding row, a third row per sample: another user's row there trains
            # and scores the sample with that user's id embedding.
            user_ids = data.vocab("user_id")
            _same_keys(s, f"{split}/sample_user_keys.npy", f"{split}/sample_user_rows.npy", user_ids.key_of,
                       user_ids.rows, "user", unknown=0)
    _check_content(s)
    return report


def _check_content(s: _Scan) -> None:
    """Every array against the SHA-256 prepare recorded in meta.json (``content_sha256``; prepared data
    of earlier versions has none): a change after prepare that keeps every row in range, e.g. two
    labels swapped, is found here and nowhere else."""
    # A file:// URI is the local directory it names (the readers' rule): only another scheme is remote.
    local = strip_file_uri(s.data.path)
    if "content_sha256" not in s.data.meta or "://" in local:  # the caller warns: not compared
        return
    recorded = s.data.meta["content_sha256"]
    if not isinstance(recorded, dict):  # present but malformed is damage, not an earlier version's meta.json
        s.problem("meta.json", f"content_sha256 must be an object of array path -> SHA-256, got {recorded!r:.60}")
        return
    s.report.content_verified = True
    root, expected = Path(local), set(output_files())
    for rel in sorted(set(recorded) - expected):  # meta.json is input too: never hash a path it makes up
        s.problem("meta.json", f"content_sha256 lists {rel!r}, which is not a prepared array")
    # prepare records every array: one left out (or an empty object) would pass unhashed, its
    # content unverified while `check` says ok.
    for rel in sorted(expected - set(recorded)):
        s.problem("meta.json", f"content_sha256 has no entry for {rel!r} (prepare records every array)")
    recorded = {rel: sha for rel, sha in recorded.items() if rel in expected}
    present = sorted(rel for rel in recorded if (root / rel).is_file())
    actual = hash_files(root, present)
    for rel in sorted(recorded):
        if rel not in actual:
            s.problem(rel, "missing (meta.json's content_sha256 lists it)")
        elif actual[rel] != recorded[rel]:
            s.problem(rel, "content differs from meta.json's content_sha256 (changed after prepare): prepare the "
                           "release again with --overwrite")

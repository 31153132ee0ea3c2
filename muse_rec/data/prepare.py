"""`prepare`: raw Taobao-MM tables -> compact, memory-mappable training data, in one streaming pass per step.

Steps (each resumable: a finished step leaves a done-marker holding the input fingerprint):
  vocab     distinct raw ids of every field -> sorted key arrays (external partitioned sort)
  items     per item row: category/attribute rows (from item_features), SCL int8 vectors + presence
  users_*   per split: one row per user-feature row, behaviour sequence stored ONCE (CSR)
  samples_* per split: label, raw keys, remapped target item / user rows, index of the user's row
  popularity  count of each item as a train target
Work happens in ``OUT/.build``; only when every step succeeded are files moved into ``OUT`` with
`os.replace`, `meta.json` last. A loader requires `meta.json`, so a failed or killed run never
exposes partial data, and the output of an earlier successful run stays intact until then.
See docs/data.md for the layout and the memory bound.

This module is the entry point (`prepare`: the order of the steps) and OUT's rules (what OUT may
hold; when an earlier preparation is kept, resumed or refused). The steps are prepare_steps.py's;
the format's names, `PrepareConfig` and the errors, prepare_config.py's.
"""
from __future__ import annotations

import errno
import os
import warnings
from pathlib import Path
from typing import Dict

from muse_rec.data import schema as S
from muse_rec.data.files import remove_killed_tmps, tmp_of
# Defined in prepare_config.py; the CLI, the tests and the benchmarks import them from here (`__all__`).
from muse_rec.data.prepare_config import (BUILD_DIR, VOCAB_MODES, VOCAB_NAMES, DifferentDatasetError, PrepareConfig,
                                          PrepareFileError, output_files)
from muse_rec.data.prepare_steps import Prepare
from muse_rec.data.reader import RawRelease
from muse_rec.dirlock import LOCK_FILE, DirLock
from muse_rec.json_files import read_json_object
from muse_rec.output_paths import check_output_path, local_output

__all__ = ["BUILD_DIR", "VOCAB_MODES", "VOCAB_NAMES", "DifferentDatasetError", "PrepareConfig", "PrepareFileError",
           "output_files", "prepare", "written_by_prepare"]


def written_by_prepare(name: str) -> bool:
    """Whether ``name``, an entry of OUT, is one `prepare` writes: its arrays' folders, meta.json, its
    build directory and lock, and the temporary file a run killed while publishing meta.json leaves (`tmp_of`)."""
    own = {"meta.json", BUILD_DIR, LOCK_FILE} | {f.split("/")[0] for f in output_files()}
    return name in own or tmp_of(name) == "meta.json"


def _check_out(out: str) -> None:
    """OUT must be a writable directory (created if missing) holding nothing but an earlier
    preparation's files; raises OSError or `OutputPathError` naming the path."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a directory", out)
    if os.path.exists(out) and not os.access(out, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, "permission denied", out)
    # Anything else would end up beside the arrays (a run's or an export's directory: the export
    # then fails its integrity check), and `--overwrite` replaces a dataset, not those.
    # Before OUT is created: one inside another command's output is refused leaving nothing there.
    check_output_path(out, "OUT", replaces=written_by_prepare, own_marker="meta.json")
    os.makedirs(out, exist_ok=True)


def prepare(raw: str, out: str, cfg: PrepareConfig = PrepareConfig(), overwrite: bool = False) -> Dict[str, object]:
    """Prepare the raw release at `raw` (any iopath path) into local directory `out` (a path or a
    ``file://`` URI, as the readers take it); return meta.json.

    An `out` holding a prepared dataset of other inputs is refused (DifferentDatasetError) unless
    `overwrite`; the same inputs resume or return the finished result, and with `overwrite` are prepared
    again: an array changed after prepare that still opens (`muse-rec check` finds it) is otherwise kept.
    """
    cfg.validate()
    out = local_output(out, "OUT")  # before `out` names any file: "file:///x" is no relative directory
    with RawRelease(raw) as release:  # opens and schema-checks all six tables before any work
        job = Prepare(release, out, cfg)
        _check_out(out)
        for name, table in release.tables.items():
            if len(table.parts) > 1:
                job.say(f"{name}: {len(table.parts)} Parquet parts ({table.path}), read in name order")
            if name in release.skipped:  # said, so that a part a writer named oddly is never lost unseen
                skipped = release.skipped[name]
                warnings.warn(f"{table.path}: skipped {len(skipped)} file(s) that are not Parquet (table {name}): "
                              + ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else ""))
        # One prepare per OUT at a time: two would append to the same spill files.
        with DirLock.acquire(Path(out), holder="another prepare", hint="wait for it to end or choose another OUT"):
            return _prepare_into(job, out, overwrite)


def _opens(out: str) -> bool:
    """Whether ``out`` opens as prepared data (meta.json's entries, every array's header and size) and
    its meta.json holds what `prepare` returns it for (the CLI's summary line prints them): a finished
    preparation. meta.json's own file list is no proof: it may be cut short, or the counts the summary
    prints be missing or no numbers (a KeyError or TypeError traceback once the fingerprint matched)."""
    from muse_rec.data.prepared import PreparedData, PreparedDataError  # it imports this module

    try:
        data = PreparedData(out)
        for split in S.SPLITS:
            data.positive_rate(split)
            unknown = data.meta_number(f"splits.{split}.behaviours_unknown_item", 0,
                                       data.meta_number(f"splits.{split}.behaviours", 0))
            if "behaviours_without_item_id" in data.meta["splits"][split]:  # absent from earlier versions' meta
                data.meta_number(f"splits.{split}.behaviours_without_item_id", 0, unknown)
        data.meta_number("test_users_unseen_in_train", 0, data.meta_number("splits.test.user_rows", 0))
    except PreparedDataError:
        return False
    return data.meta.get("vocab_mode") in VOCAB_MODES


def _prepare_into(job: "Prepare", out: str, overwrite: bool) -> Dict[str, object]:
    """`prepare`'s work, with OUT checked and locked."""
    meta_path = os.path.join(out, "meta.json")
    remove_killed_tmps(out, "meta.json")  # of a run killed while publishing it
    if os.path.exists(meta_path):
        unreadable = ""  # what is wrong with meta.json, where it is no JSON object (read_json_object's line)
        try:  # any other JSON value is as unreadable as broken JSON: not this dataset's record
            old = read_json_object(meta_path)  # a FIFO is refused before it is opened, not waited on
        except ValueError as e:
            old, unreadable = {}, str(e)
        same = old.get("fingerprint") in (job.fingerprint, job.legacy_fingerprint)
        # Returned unread: its arrays are not hashed again (minutes at the release's size). `--overwrite` is
        # how a damaged copy is replaced: `check` sends the user here when an array no longer matches.
        if same and _opens(out) and not overwrite:
            return old
        if unreadable and not overwrite:
            # Still refused (it may be another command's output), but said as it is: no dataset's
            # source, vocabulary and fingerprint to show, only the file and what is wrong with it.
            raise DifferentDatasetError(
                f"{unreadable}; it is no prepared dataset's record, so {out} is not taken for this one: pass "
                f"--overwrite to replace what {out} holds, delete {meta_path}, or choose another OUT")
        if not same and not overwrite:
            raise DifferentDatasetError(
                f"{out} already holds a different prepared dataset (from {old.get('source', '?')}, "
                f"vocab {old.get('vocab_mode', '?')}, fingerprint {old.get('fingerprint', '?')}); "
                "pass --overwrite to replace it or choose another OUT")
    os.makedirs(job.build, exist_ok=True)
    stats: Dict[str, Dict[str, object]] = {}
    stats["vocab"] = job.run_step("vocab", job.step_vocab)
    stats["items"] = job.run_step("items", job.step_items)
    for split in S.SPLITS:
        stats[f"users_{split}"] = job.run_step(f"users_{split}", lambda s=split: job.step_users(s))
        stats[f"samples_{split}"] = job.run_step(f"samples_{split}", lambda s=split: job.step_samples(s))
    stats["popularity"] = job.run_step("popularity", job.step_popularity)
    meta = job.meta(stats)
    job.publish(meta)
    return meta

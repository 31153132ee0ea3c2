"""`prepare`'s build steps: `Prepare`, whose resumable `step_*` methods (with their done-markers) write
the arrays in ``OUT/.build``, then meta.json and the move into OUT (`publish`); and the helpers that read
Arrow record batches as numpy. Apart from prepare.py, which orders the steps and guards OUT.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Dict, Iterator, List

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from muse_rec.data import schema as S
from muse_rec.data.files import NpyStreamWriter, PartitionedScatterWriter, save_npy, write_json
from muse_rec.data.prepare_config import (BUILD_DIR, FORMAT_VERSION, ITEM_ATTR_COLUMNS, ITEM_ATTR_VOCABS,
                                          POPULARITY_SPLIT, SCL_ROW_NORM_RANGE, USER_FIELD_COLUMNS, USER_FIELD_VOCABS,
                                          VOCAB_NAMES, PrepareConfig, PrepareFileError, output_files,
                                          user_feature_rows)
from muse_rec.data.reader import RawRelease, RawTable
from muse_rec.data.vocab import MISSING_ID, SortedKeyBuilder, Vocab
from muse_rec.integrity import hash_files
from muse_rec.json_files import read_json_object, refuse_special_file
# In a log (no terminal bars), a line at most every PROGRESS_EVERY_S while a step reads a table: at the
# release's size one step reads billions of behaviours for minutes.
from muse_rec.terminal import PROGRESS_EVERY_S, Throttle, shows_bars


def _flat(batch: pa.RecordBatch, col: str) -> np.ndarray:
    """Values of a list column (all rows concatenated) or of a scalar column, as numpy."""
    arr = batch.column(batch.schema.get_field_index(col))
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        arr = pc.list_flatten(arr)
    return arr.to_numpy(zero_copy_only=False)


def _flag_bits(path: str) -> np.ndarray:
    """The bool array at `path` (e.g. items/scl_present.npy, ``[n_items]``) packed 8 flags per byte.

    Counting flags of 800M behaviour rows gathers from this array at random; packed it is 8x
    smaller and stays in the cache (30M items: 3.75 MB) where the bool array (30 MB) does not.
    """
    return np.packbits(np.load(path, mmap_mode="r"), bitorder="little")


def _count_flagged(bits: np.ndarray, rows: np.ndarray) -> int:
    """How many of `rows` (int row numbers) have their flag set in `_flag_bits` output."""
    return int(np.count_nonzero((bits[rows >> 3] >> (rows & 7).astype(np.uint8)) & 1))


def _lengths(batch: pa.RecordBatch, col: str) -> np.ndarray:
    return S.list_lengths(batch.column(batch.schema.get_field_index(col))).to_numpy(zero_copy_only=False)


class Prepare:
    def __init__(self, raw: RawRelease, out: str, cfg: PrepareConfig) -> None:
        self.raw, self.out, self.cfg = raw, out, cfg
        self.build = os.path.join(out, BUILD_DIR)
        self._vocabs: Dict[str, Vocab] = {}
        self.bars = shows_bars(cfg.progress)  # else (progress in a log): `say`'s lines
        self.fingerprint = self._identity(raw.fingerprint())
        # What earlier versions recorded (the raw paths as given): their output is this same dataset
        # when it matches, so it is neither refused nor prepared again.
        self.legacy_fingerprint = self._identity(raw.fingerprint(legacy=True))

    def _identity(self, inputs: Dict[str, object]) -> str:
        ident = {"version": FORMAT_VERSION, "vocab": self.cfg.vocab, "inputs": inputs}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]

    # ---- step bookkeeping -------------------------------------------------------------------
    def _marker(self, step: str) -> str:
        return self.path("done", f"{step}.json")

    def run_step(self, step: str, fn: Callable[[], Dict[str, object]]) -> Dict[str, object]:
        """Run `fn` unless a marker with this input fingerprint says it already finished."""
        marker = self._marker(step)
        if os.path.exists(marker):
            # prepare's own record, but a copied or damaged OUT may hold anything there: a record
            # that cannot be read as one is a step not done (its outputs are written again).
            try:
                done = read_json_object(marker)
            except ValueError as e:
                warnings.warn(f"{e}; doing step {step!r} again")
                done = {}
            if done.get("fingerprint") == self.fingerprint and isinstance(done.get("stats"), dict):
                self.say(f"{step}: already done, kept")
                return done["stats"]
        t0 = time.perf_counter()
        self.say(f"{step}: started")
        stats = fn()
        write_json(marker, {"fingerprint": self.fingerprint, "stats": stats})
        self.say(f"{step}: done in {time.perf_counter() - t0:.1f} s")
        return stats

    def say(self, line: str) -> None:
        """One progress line for a non-interactive log (a terminal has the bars instead)."""
        if self.cfg.progress and not self.bars:
            print(f"[prepare] {line}", file=sys.stderr, flush=True)

    def path(self, *parts: str) -> str:
        p = os.path.join(self.build, *parts)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        return p

    def built(self, *parts: str) -> str:
        """`path` of a file an earlier step wrote, to be read back (`refuse_not_built`)."""
        p = self.path(*parts)
        self.refuse_not_built(p)
        return p

    def refuse_not_built(self, path: str) -> None:
        """`PrepareFileError` where ``path`` (a file a step writes) is a FIFO, device or socket: reading one
        blocked a re-run forever (its step's done-marker says it is built). Removing that file alone leaves
        the step marked done, its output missing: the build directory goes, the steps run again."""
        refuse_special_file(path, PrepareFileError, f"; prepare writes regular files only: delete {self.build} "
                            "and run again")

    def batches(self, table: str, cols: List[str]) -> Iterator[pa.RecordBatch]:
        t: RawTable = self.raw[table]
        bar = tqdm(total=t.num_rows, unit="row", desc=f"{table}", disable=not self.bars, leave=False)
        clock = Throttle(PROGRESS_EVERY_S)
        done = 0
        for b in t.iter_batches(cols, self.cfg.batch_rows):
            yield b
            bar.update(b.num_rows)
            done += b.num_rows
            if clock.due():  # bars or not: say prints only without them
                self.say(f"  {table}: {done:,} of {t.num_rows:,} rows ({100 * done / max(t.num_rows, 1):.0f}%), "
                          f"{clock.elapsed:.0f} s")
        bar.close()

    def vocab(self, name: str) -> Vocab:
        """The built vocabulary `name`, loaded once: its lookup index is then built once per run."""
        if name not in self._vocabs:
            self._vocabs[name] = Vocab.load(self.built("vocab", f"{name}.npy"), name, bulk=True)
        return self._vocabs[name]

    # ---- steps ------------------------------------------------------------------------------
    def step_vocab(self) -> Dict[str, object]:
        full = self.cfg.vocab == "full"
        b = {n: SortedKeyBuilder(self.path("spill", n), self.cfg.partition_bits, self.cfg.spill_buffer_bytes)
             for n in VOCAB_NAMES}
        cols = [S.USER, *S.USER_FIELDS, S.SEQ_CATS] + ([S.SEQ_ITEMS] if full else [])
        for batch in self.batches("train_user_features", cols):
            b["user_id"].add(_flat(batch, S.USER))
            for col, name in USER_FIELD_VOCABS.items():
                b[name].add(_flat(batch, col))
            b["category"].add(_flat(batch, S.SEQ_CATS))
            if full:
                b["item"].add(_flat(batch, S.SEQ_ITEMS))
        for batch in self.batches("item_features", [S.ITEM, S.ITEM_CAT, *S.ITEM_ATTRS]):
            b["category"].add(_flat(batch, S.ITEM_CAT))
            for col, name in ITEM_ATTR_VOCABS.items():
                b[name].add(_flat(batch, col))
            if full:
                b["item"].add(_flat(batch, S.ITEM))
        for batch in self.batches("train_samples", [S.USER, S.ITEM]):
            b["user_id"].add(_flat(batch, S.USER))
            b["item"].add(_flat(batch, S.ITEM))
        # Test targets and SCL items join the item vocabulary (never their labels): their frozen
        # SCL vectors then reach the GSU at evaluation time instead of collapsing to row 0.
        for batch in self.batches("test_samples", [S.ITEM]):
            b["item"].add(_flat(batch, S.ITEM))
        for batch in self.batches("scl", [S.ITEM]):
            b["item"].add(_flat(batch, S.ITEM))
        return {n: b[n].finish(self.path("vocab", f"{n}.npy")) + 1 for n in VOCAB_NAMES}

    def step_items(self) -> Dict[str, object]:
        items = self.vocab("item")
        n = items.size
        vocabs = [self.vocab("category")] + [self.vocab(v) for v in ITEM_ATTR_VOCABS.values()]
        part = self.cfg.partition_bytes
        with PartitionedScatterWriter(self.path("items", "attrs.npy"), np.int32, (n, len(ITEM_ATTR_COLUMNS)),
                                      self.path("spill", "attrs"), part) as attrs_writer:
            for batch in self.batches("item_features", [S.ITEM, S.ITEM_CAT, *S.ITEM_ATTRS]):
                rows = items.rows(_flat(batch, S.ITEM))
                keep = rows > 0
                cols = [S.ITEM_CAT, *S.ITEM_ATTRS]
                vals = np.stack([v.rows(_flat(batch, c)) for v, c in zip(vocabs, cols)], axis=1)
                attrs_writer.put(rows[keep], vals[keep])
        # Row 0 (padding / unknown) is never put: it stays a zero vector and "not present".
        with PartitionedScatterWriter(self.path("items", "scl.npy"), np.int8, (n, S.SCL_DIM),
                                      self.path("spill", "scl"), part,
                                      present_path=self.path("items", "scl_present.npy")) as scl_writer:
            off_norm, all_zero, nonzero, norm_lo, norm_hi = 0, 0, 0, np.inf, 0.0
            off_lo, off_hi = np.inf, 0.0  # the norms of the rows outside the range
            for batch in self.batches("scl", [S.ITEM, S.SCL_VECTOR]):
                rows = items.rows(_flat(batch, S.ITEM))
                vecs = _flat(batch, S.SCL_VECTOR).astype(np.int8).reshape(-1, S.SCL_DIM)
                norms = np.sqrt(np.einsum("ij,ij->i", vecs, vecs, dtype=np.int64).astype(np.float64))
                # An all-zero row has no direction: the cosines (GSU, SimTier, SA-TA) read it as "no SCL
                # vector", and the writer marks only non-zero rows present. It is still put: as an item's
                # last row it must win over an earlier one (the last row is used) and count as a duplicate.
                keep = rows > 0
                all_zero += int(np.count_nonzero(norms == 0))
                scl_writer.put(rows[keep], vecs[keep])
                norms = norms[norms > 0]
                nonzero += int(norms.size)
                off = norms[(norms < SCL_ROW_NORM_RANGE[0]) | (norms > SCL_ROW_NORM_RANGE[1])]
                off_norm += int(off.size)
                if norms.size:
                    norm_lo, norm_hi = min(norm_lo, float(norms.min())), max(norm_hi, float(norms.max()))
                if off.size:
                    off_lo, off_hi = min(off_lo, float(off.min())), max(off_hi, float(off.max()))
        if off_norm:
            lo, hi = SCL_ROW_NORM_RANGE
            warnings.warn(f"{self.raw['scl'].path}: {off_norm:,} of its {nonzero:,} non-zero SCL rows "
                          f"({100.0 * off_norm / nonzero:.1f}%) have an int8 norm outside [{lo:g}, {hi:g}] "
                          f"(theirs {off_lo:.0f}-{off_hi:.0f}, every non-zero row's {norm_lo:.0f}-{norm_hi:.0f}; "
                          "the release's rows are trunc(127 x a unit vector), ~122): "
                          "cosines (the GSU, SimTier, SA-TA) do not see a row's norm, but the baselines' mean history "
                          "vector weights each row by it")
        if all_zero:
            warnings.warn(f"{self.raw['scl'].path}: {all_zero:,} SCL row(s) are all zeros; their items count as "
                          "having no SCL vector (the model's rule for a zero vector)")
        present = np.load(self.path("items", "scl_present.npy"), mmap_mode="r")
        covered = sum(int(np.count_nonzero(present[lo:lo + (1 << 24)])) for lo in range(0, n, 1 << 24))
        # A release from elsewhere may list an item twice (possibly with other values): the last
        # row wins, as for a user's duplicate rows the first does; either way it is counted.
        for table, writer in (("item_features", attrs_writer), ("scl", scl_writer)):
            if writer.repeated_rows:
                warnings.warn(f"{self.raw[table].path}: {writer.repeated_rows:,} duplicate item row(s); "
                              "the last row of each item is used")
        return {"items": n - 1, "items_with_scl": covered, "duplicate_item_rows": attrs_writer.repeated_rows,
                "duplicate_scl_rows": scl_writer.repeated_rows, "scl_rows_off_norm": off_norm,
                "scl_rows_all_zero": all_zero}

    def step_users(self, split: str) -> Dict[str, object]:
        table = f"{split}_user_features"
        users, items, cats = self.vocab("user_id"), self.vocab("item"), self.vocab("category")
        fields = [self.vocab(v) for v in USER_FIELD_VOCABS.values()]
        present = _flag_bits(self.built("items", "scl_present.npy"))
        behaviours = with_scl = unknown = without_id = 0
        d = lambda name: self.path(split, name)  # noqa: E731
        with NpyStreamWriter(d("user_keys.npy"), np.int64) as wk, \
                NpyStreamWriter(d("user_fields.npy"), np.int32, (len(USER_FIELD_COLUMNS),)) as wf, \
                NpyStreamWriter(d("seq_offsets.npy"), np.int64) as wo, \
                NpyStreamWriter(d("seq_items.npy"), np.int32) as wi, \
                NpyStreamWriter(d("seq_cats.npy"), np.int32) as wc:
            wo.append(np.zeros(1, np.int64))
            end = 0
            for batch in self.batches(table, [S.USER, *S.USER_FIELDS, S.SEQ_ITEMS, S.SEQ_CATS]):
                keys = _flat(batch, S.USER)
                wk.append(keys)
                wf.append(np.stack([users.rows(keys)] + [v.rows(_flat(batch, c))
                                                         for v, c in zip(fields, S.USER_FIELDS)], axis=1))
                lens = _lengths(batch, S.SEQ_ITEMS)
                wo.append(end + np.cumsum(lens))
                end += int(lens.sum())
                ids = _flat(batch, S.SEQ_ITEMS)
                irows = items.rows(ids)
                wi.append(irows)
                wc.append(cats.rows(_flat(batch, S.SEQ_CATS)))
                behaviours += int(irows.size)
                with_scl += _count_flagged(present, irows)
                unknown += int((irows == 0).sum())  # row 0: ids outside the vocabulary and missing ids
                without_id += int((ids == MISSING_ID).sum())  # of those, the missing ones (raw id 0)
        # Sorted index for sample -> user lookup; a stable sort keeps the FIRST row of a duplicated user.
        keys = np.load(d("user_keys.npy"))
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        duplicates = int((sorted_keys[1:] == sorted_keys[:-1]).sum())
        save_npy(d("user_sorted_keys.npy"), sorted_keys)
        save_npy(d("user_sorted_index.npy"), order.astype(np.int64))
        unseen = int((users.rows(keys) == 0).sum())
        del keys, order, sorted_keys
        if duplicates:
            warnings.warn(f"{table}: {duplicates:,} duplicate user row(s); samples use the first row of each user")
        return {"user_rows": int(wk.rows), "duplicate_user_rows": duplicates, "behaviours": behaviours,
                "behaviours_with_scl": with_scl, "behaviours_unknown_item": unknown,
                "behaviours_without_item_id": without_id,
                "user_rows_unseen_in_train": unseen}

    def step_samples(self, split: str) -> Dict[str, object]:
        table = f"{split}_samples"
        users, items = self.vocab("user_id"), self.vocab("item")
        sorted_keys = np.load(self.built(split, "user_sorted_keys.npy"), mmap_mode="r")
        sorted_index = np.load(self.built(split, "user_sorted_index.npy"), mmap_mode="r")
        present = _flag_bits(self.built("items", "scl_present.npy"))
        stats = {"samples": 0, "positives": 0, "samples_without_user_row": 0, "samples_unseen_user": 0,
                 "samples_unknown_target": 0, "targets_with_scl": 0}
        d = lambda name: self.path(split, name)  # noqa: E731
        with NpyStreamWriter(d("labels.npy"), np.int8) as wl, \
                NpyStreamWriter(d("sample_user_keys.npy"), np.int64) as wuk, \
                NpyStreamWriter(d("sample_item_keys.npy"), np.int64) as wik, \
                NpyStreamWriter(d("sample_user_rows.npy"), np.int32) as wur, \
                NpyStreamWriter(d("sample_items.npy"), np.int32) as wir, \
                NpyStreamWriter(d("sample_users.npy"), np.int64) as wu:
            for batch in self.batches(table, [S.LABEL, S.USER, S.ITEM]):
                labels = _flat(batch, S.LABEL).reshape(-1, S.LABEL_WIDTH)[:, 1].astype(np.int8)
                ukeys, ikeys = _flat(batch, S.USER), _flat(batch, S.ITEM)
                urows, irows = users.rows(ukeys), items.rows(ikeys)
                uidx = user_feature_rows(sorted_keys, sorted_index, ukeys)
                for w, a in ((wl, labels), (wuk, ukeys), (wik, ikeys), (wur, urows), (wir, irows), (wu, uidx)):
                    w.append(a)
                stats["samples"] += int(labels.size)
                stats["positives"] += int(labels.sum())
                stats["samples_without_user_row"] += int((uidx < 0).sum())
                stats["samples_unseen_user"] += int((urows == 0).sum())
                stats["samples_unknown_target"] += int((irows == 0).sum())
                stats["targets_with_scl"] += _count_flagged(present, irows)
        missing, samples = stats["samples_without_user_row"], stats["samples"]
        if missing:
            users_table = f"{split}_user_features"
            if missing == samples:
                # Not one sample joins: both files are named, the likely cause with them. A warning, not an
                # error: the release's published 10-row demo tables (taobao_mm_demo) join no sample either.
                every = "the only sample has" if samples == 1 else f"all {samples:,} samples have"
                which = (f"{every} no row in {users_table}: not one {S.USER} id of "
                         f"{self.raw[table].path} is in {self.raw[users_table].path} (another id space, or ids "
                         "truncated by a narrower integer column?)")
            else:
                which = f"{missing:,} of {samples:,} samples {'has' if missing == 1 else 'have'} no row in {users_table}"
            warnings.warn(f"{table}: {which}; they get an empty history and unknown user fields")
        # Every target joins the item vocabulary (`step_vocab`): row 0 is a target with no item id (raw id 0; nulls are
        # refused). All of a split's on row 0 trained and scored one padding item in silence (exit 0).
        no_id = stats["samples_unknown_target"]
        if no_id:
            every = ("the only sample has" if samples == 1 else f"all {samples:,} samples have") if no_id == samples \
                else f"{no_id:,} of {samples:,} samples {'has' if no_id == 1 else 'have'}"
            warnings.warn(f"{table}: {every} no target item id ({S.ITEM} is 0 in {self.raw[table].path}); "
                          "they are scored as the padding item, with no item embedding, category or SCL vector")
        return stats

    def step_popularity(self) -> Dict[str, object]:
        n = self.vocab("item").size
        targets = np.load(self.built(POPULARITY_SPLIT, "sample_items.npy"), mmap_mode="r")
        chunk = self.cfg.batch_rows * 64
        with PartitionedScatterWriter(self.path("items", "popularity.npy"), np.int64, (n,),
                                      self.path("spill", "popularity"), self.cfg.partition_bytes, mode="add") as w:
            for lo in range(0, targets.shape[0], chunk):
                rows, counts = np.unique(np.asarray(targets[lo:lo + chunk]), return_counts=True)
                w.put(rows, counts)
        pop = np.load(self.path("items", "popularity.npy"), mmap_mode="r")
        distinct = sum(int(np.count_nonzero(pop[max(lo, 1):lo + (1 << 24)])) for lo in range(0, n, 1 << 24))
        return {"distinct_train_targets": distinct}

    # ---- publish ----------------------------------------------------------------------------
    def meta(self, stats: Dict[str, Dict[str, object]]) -> Dict[str, object]:
        splits = {}
        for split in S.SPLITS:
            u, s = stats[f"users_{split}"], stats[f"samples_{split}"]
            splits[split] = {
                **u, **s,
                "positive_rate": s["positives"] / max(s["samples"], 1),
                "scl_coverage_targets": s["targets_with_scl"] / max(s["samples"], 1),
                "scl_coverage_behaviours": u["behaviours_with_scl"] / max(u["behaviours"], 1),
            }
        train = splits["train"]
        if train["samples"] and not train["targets_with_scl"] and not train["behaviours_with_scl"]:
            # Every id valid, every table well formed, and still no match: the classic id-space mix-up, unless no
            # row is a vector at all (a table of zeros: its items have no SCL vector, whatever their ids).
            why = ("no row of it is a vector: every one is all zeros" if not stats["items"]["items_with_scl"] else
                   "its item ids match none of the samples' items: another id space, or another release's table?")
            warnings.warn(f"{self.raw['scl'].path}: not one train target or behaviour item has an SCL vector ({why}); "
                          "the methods that read SCL vectors (MUSE, SIM-soft, DIN-ref...) would see only zero vectors")
        if (self.cfg.vocab == "p90" and train["behaviours"] > train["behaviours_without_item_id"]
                and train["behaviours_unknown_item"] == train["behaviours_without_item_id"]):
            # p90 is the SCL table's items plus the targets: no frequency is counted. The release's SCL
            # table is its p90 cut (~10% of behaviours fall outside); a table with a row for every item
            # (`synth --preset scale`, a user's own embeddings) makes "p90" the full vocabulary, silently.
            warnings.warn(f"--vocab p90: every train behaviour item is in the vocabulary "
                          f"({stats['vocab']['item'] - 1:,} items): {self.raw['scl'].path} has a row for each, so this "
                          "p90 vocabulary cuts nothing "
                          "(p90 = the SCL table's items + every target, as the release's p90 SCL table defines it; "
                          "no frequency is counted: docs/data.md)")
        return {
            "format_version": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "vocab_mode": self.cfg.vocab,
            "vocab_sizes": stats["vocab"],
            "items": stats["items"],
            "splits": splits,
            "test_users_unseen_in_train": splits["test"]["user_rows_unseen_in_train"],
            "popularity": stats["popularity"],
            "config": asdict(self.cfg),
            "source": self.raw.root,
            "files": output_files(),
        }

    def publish(self, meta: Dict[str, object]) -> None:
        final_meta = os.path.join(self.out, "meta.json")
        files: List[str] = meta["files"]  # type: ignore[assignment]
        moves = [(os.path.join(self.build, rel), os.path.join(self.out, rel)) for rel in files]
        for src, dst in moves:  # what is hashed below, refused before anything moves: hashing a FIFO never ended
            self.refuse_not_built(src if os.path.exists(src) else dst)
        if os.path.exists(final_meta):
            os.remove(final_meta)  # from here until the new meta.json lands, OUT is "not prepared"
        for src, dst in moves:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            if os.path.exists(src):
                os.replace(src, dst)
            elif not os.path.exists(dst):  # absent in both: only an interrupted publish moves files out
                raise FileNotFoundError(f"{src}: step output missing; delete {self.build} and run again")
        # The arrays' content, read in full once, where they now lie (one thread a file, ~1.5 GB/s
        # each): the prepared data's identity (`PreparedData.fingerprint`), whatever raw files it came
        # from, and what `muse-rec check` verifies them against.
        meta["content_sha256"] = hash_files(Path(self.out), list(files))
        write_json(final_meta, meta)
        shutil.rmtree(self.build)

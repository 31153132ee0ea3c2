"""`PreparedData`: read-only, memory-mapped view of a directory written by `muse-rec prepare`.

Opening validates `meta.json` (present, known format version, every listed array present with
the shape and dtype the counts imply, and as many bytes on disk as its header promises) so a
half-prepared, truncated or mismatched directory fails here with a message naming the file
instead of deep inside training. Opening reads only headers; `muse-rec check` scans the values.
Arrays are mapped lazily and never pickled, so the object can be sent to DataLoader workers
cheaply.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tokenize
import warnings
from typing import Dict, Optional, Tuple, Union

import numpy as np
from iopath.common.file_io import g_pathmgr

from muse_rec.data.prepare import written_by_prepare
from muse_rec.data.prepare_config import (BUILD_DIR, FORMAT_VERSION, ITEM_ATTR_COLUMNS, POPULARITY_SPLIT,
                                          SAMPLE_ARRAYS, USER_FIELD_COLUMNS, VOCAB_NAMES, output_files,
                                          user_feature_rows)
from muse_rec.data.reader import join_path
from muse_rec.data.schema import SCL_DIM, SPLITS
from muse_rec.dirlock import LOCK_FILE
from muse_rec.data.vocab import Vocab
from muse_rec.json_files import INT64_MAX, read_json_object, refuse_special_file
from muse_rec.spec.schema import MAX_TABLE_ROWS
from muse_rec.wording import one_line


# Bound of items/popularity.npy's counts (>= 0; `muse-rec check` scans the same).
POPULARITY_LIMIT = INT64_MAX
# The table whose rows each per-behaviour array holds (seq_items.npy -> item, ...).
_SEQ_TABLES: Dict[str, str] = {"items": "item", "cats": "category"}


class PreparedDataError(ValueError):
    """The directory is not (or not completely, or not compatibly) prepared."""


# The dtype `muse-rec prepare` writes each array with, by file name (the split directory omitted).
_DTYPES: Dict[str, str] = {
    "items/attrs.npy": "int32", "items/scl.npy": "int8", "items/scl_present.npy": "bool",
    "items/popularity.npy": "int64", "vocab": "int64",
    "user_keys.npy": "int64", "user_fields.npy": "int32", "user_sorted_keys.npy": "int64",
    "user_sorted_index.npy": "int64", "seq_offsets.npy": "int64", "seq_items.npy": "int32",
    "seq_cats.npy": "int32", "labels.npy": "int8", "sample_user_keys.npy": "int64",
    "sample_item_keys.npy": "int64", "sample_user_rows.npy": "int32", "sample_items.npy": "int32",
    "sample_users.npy": "int64",
}
# Bytes of each array's head, tail and evenly spaced interior blocks hashed into the fingerprint
# (cheap: ~0.6 MiB an array, no full read).
_FINGERPRINT_SAMPLE = 1 << 16
_FINGERPRINT_INTERIOR_BLOCKS = 8
# meta.json keys the fingerprint leaves out: where the data came from and how prepare ran, not
# what it holds ("fingerprint" is the raw files' own: their paths, mtimes and Parquet footers).
_NOT_CONTENT = ("source", "config", "fingerprint")
_RE_PREPARE = "; re-run `muse-rec prepare`"  # what to do about a damaged file of the directory


def expected_dtype(rel: str) -> np.dtype:
    """The dtype prepare writes ``rel`` (e.g. "train/seq_items.npy") with."""
    key = rel if rel.startswith("items/") else "vocab" if rel.startswith("vocab/") else rel.split("/", 1)[1]
    return np.dtype(_DTYPES[key])


def _npy_layout(path: str) -> Tuple[Tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran order, dtype, data offset in bytes) from a `.npy` header; ValueError if it is not one."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        try:
            # A header that is no Python literal is retried as one written on Python 2 (with a warning of
            # that, and Python's SyntaxWarnings): the result decides, not those lines.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                shape, fortran_order, dtype = read(f)
        except (tokenize.TokenError, SyntaxError, TypeError) as e:
            # NumPy says ValueError for most damage, but lets these out: a bracket left open ("EOF in
            # multi-line statement"), a descr that is no literal, a bytes key beside the str ones.
            raise ValueError(f"cannot parse the header: {type(e).__name__}: {one_line(e)}") from None
        return tuple(shape), bool(fortran_order), dtype, f.tell()


def _expected_shapes(meta: dict) -> Dict[str, Tuple[int, ...]]:
    n_items = meta["vocab_sizes"]["item"]
    shapes: Dict[str, Tuple[int, ...]] = {
        "items/attrs.npy": (n_items, len(ITEM_ATTR_COLUMNS)),
        "items/scl.npy": (n_items, SCL_DIM),
        "items/scl_present.npy": (n_items,),
        "items/popularity.npy": (n_items,),
    }
    for name in VOCAB_NAMES:
        shapes[f"vocab/{name}.npy"] = (meta["vocab_sizes"][name] - 1,)
    for split in SPLITS:
        s = meta["splits"][split]
        u, n, b = s["user_rows"], s["samples"], s["behaviours"]
        shapes.update({
            f"{split}/user_keys.npy": (u,), f"{split}/user_fields.npy": (u, len(USER_FIELD_COLUMNS)),
            f"{split}/user_sorted_keys.npy": (u,), f"{split}/user_sorted_index.npy": (u,),
            f"{split}/seq_offsets.npy": (u + 1,), f"{split}/seq_items.npy": (b,), f"{split}/seq_cats.npy": (b,),
        })
        for name in SAMPLE_ARRAYS:
            shapes[f"{split}/{name}.npy"] = (n,)
    if sorted(shapes) != output_files():  # one layout, stated twice: keep them in step
        raise RuntimeError("prepared.py and prepare.py disagree on the prepared layout")
    return shapes


def _why_no_meta(path: str) -> str:
    """Why the directory ``path`` (any iopath path) has no meta.json, in words: it does not exist, is a
    file, holds a preparation that started (its build directory, or its lock among only prepare's files)
    and did not finish, or is something else. A mistyped path was told "prepare did not finish"."""
    try:
        if not g_pathmgr.exists(path):
            return "no such directory (`muse-rec prepare RAW OUT` writes prepared data)"
        if not g_pathmgr.isdir(path):
            return "not a directory (`muse-rec prepare RAW OUT` writes prepared data)"
        names = g_pathmgr.ls(path)
    except Exception:  # iopath handlers raise their own types: say only what is certain
        return "not a prepared directory (`muse-rec prepare RAW OUT` writes one)"
    if BUILD_DIR in names or (LOCK_FILE in names and all(written_by_prepare(n) for n in names)):
        return "`muse-rec prepare` did not finish (run it again; it resumes)"
    return "not a prepared directory (`muse-rec prepare RAW OUT` writes one)"


class PreparedData:
    """A prepared directory.

    Args:
        path: local directory or any iopath path (files are fetched with ``get_local_path``
            because memory-mapping needs a local file).

    Attributes:
        meta: the parsed meta.json.
        vocab_sizes: rows per vocabulary including row 0; keys "item", "category", "user_id",
            "user_f1".."user_f5", "item_f213", "item_f214".
    """

    def __init__(self, path: str) -> None:
        self.path = path
        meta_path = self._local("meta.json", must_exist=False)
        if meta_path is None or not os.path.exists(meta_path):
            raise PreparedDataError(f"{path}: no meta.json - {_why_no_meta(path)}")
        # A FIFO there blocked every command that reads the data (check, train, evaluate) forever.
        self.meta: dict = read_json_object(meta_path, PreparedDataError, advice=_RE_PREPARE)
        version = self.meta.get("format_version")
        if version != FORMAT_VERSION:
            # repr: a string "1" read "format_version 1, this code reads 1", which contradicts itself.
            raise PreparedDataError(f"{meta_path}: format_version {version!r}, this code reads {FORMAT_VERSION}; "
                                    "re-run `muse-rec prepare`")
        self._meta_shown = join_path(path, "meta.json")
        # Every count the layout is computed from, checked before it sizes anything.
        for name in VOCAB_NAMES:
            self.meta_number(f"vocab_sizes.{name}", 1, MAX_TABLE_ROWS)  # row 0 (padding) included
        splits = self.meta.get("splits")
        extra = sorted(set(splits) - set(SPLITS)) if isinstance(splits, dict) else []
        if extra:  # only these have arrays checked against meta.json below
            raise PreparedDataError(f"{self._meta_shown}: splits.{extra[0]}: `muse-rec prepare` writes only {SPLITS}")
        for split in SPLITS:
            for key in ("user_rows", "samples", "behaviours"):
                self.meta_number(f"splits.{split}.{key}", 0)
        self.vocab_sizes: Dict[str, int] = {k: self.meta["vocab_sizes"][k] for k in VOCAB_NAMES}
        expected = _expected_shapes(self.meta)
        for rel, want in expected.items():
            local = self._local(rel, must_exist=False)
            if local is None or not os.path.exists(local):
                raise PreparedDataError(f"{join_path(path, rel)}: missing (listed by meta.json)")
            self._check_array(local, join_path(path, rel), want, expected_dtype(rel))
        self._arrays: Dict[str, np.ndarray] = {}
        self._fingerprint: Optional[str] = None

    def meta_number(self, dotted: str, low: float, high: Optional[float] = None, integer: bool = True) -> float:
        """The number at ``dotted`` (e.g. "splits.train.samples") of meta.json, in [low, high].

        meta.json is read from disk and may come from elsewhere: a missing entry, a string, a bool
        or a value out of range is a `PreparedDataError` naming the file and the entry, not a
        ``KeyError`` or a wrong shape further on.
        """
        node = self.meta
        for key in dotted.split("."):
            if not isinstance(node, dict) or key not in node:
                raise PreparedDataError(f"{self._meta_shown}: no {dotted}; re-run `muse-rec prepare`")
            node = node[key]
        kinds = (int,) if integer else (int, float)
        if isinstance(node, bool) or not isinstance(node, kinds) or not low <= node <= (math.inf if high is None else high):
            what = "an integer" if integer else "a number"
            where = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise PreparedDataError(f"{self._meta_shown}: {dotted} must be {what} {where}, got {node!r}; "
                                    "re-run `muse-rec prepare`")
        return node

    @staticmethod
    def _check_array(local: str, shown: str, want: Tuple[int, ...], dtype: np.dtype) -> None:
        """Header shape, dtype and (C) order as prepare writes them, and the file holds every byte of the data."""
        refuse_special_file(local, PreparedDataError, _RE_PREPARE)  # reading a FIFO's header blocked forever
        try:
            shape, fortran_order, got_dtype, offset = _npy_layout(local)
        except (ValueError, OSError, EOFError) as e:
            raise PreparedDataError(f"{shown}: not a readable .npy file ({e}); re-run `muse-rec prepare`") from None
        if shape != want:
            raise PreparedDataError(f"{shown}: shape {shape}, meta.json implies {want}")
        if got_dtype != dtype:
            raise PreparedDataError(f"{shown}: dtype {got_dtype}, prepare writes {dtype}")
        # The same bytes read column-major are another table (SCL vectors, item attributes, user fields
        # transposed), every value still in range: nothing downstream would notice.
        if fortran_order and len(shape) > 1:
            raise PreparedDataError(f"{shown}: header says Fortran (column-major) order, prepare writes C order")
        need = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        size = os.path.getsize(local)
        if size != need:
            raise PreparedDataError(f"{shown}: {size} bytes on disk, its header needs {need} "
                                    f"({'truncated' if size < need else 'trailing data'}); re-run `muse-rec prepare`")

    def positive_rate(self, split: str) -> float:
        """The split's click rate, from meta.json (``splits.<split>.positive_rate``), in [0, 1]."""
        self.require_split(split)  # an unknown split is its own error, not a missing rate
        return float(self.meta_number(f"splits.{split}.positive_rate", 0.0, 1.0, integer=False))

    @property
    def fingerprint(self) -> str:
        """Identity of the prepared data's content (hex, 20 chars), recorded in checkpoints and exports.

        Covers meta.json's counts, vocabulary sizes and rates, and per array its header, size and
        ten 64 KiB blocks (head, tail and 8 evenly spaced). Not the raw files' fingerprint: a copy
        of the release (other mtimes) or the same tables from another Parquet writer prepare to the
        same arrays, and are the same data. Cheap (~20 MB read), so it tells datasets apart without
        reading them in full.
        """
        if self._fingerprint is None:
            self._fingerprint = self._content_hash(_NOT_CONTENT, _FINGERPRINT_INTERIOR_BLOCKS)
        return self._fingerprint

    def made_from(self, recorded: str) -> bool:
        """Whether a checkpoint's or export's recorded fingerprint is this data's: `fingerprint`, or
        the one versions before session 26 recorded (it also covered the raw files' fingerprint and
        only each array's head and tail), so that their runs resume and serve on the same data."""
        return recorded == self.fingerprint or recorded == self._content_hash(("source", "config"), 0)

    def _content_hash(self, skip_meta: Tuple[str, ...], interior_blocks: int) -> str:
        """20 hex chars of SHA-256 over meta.json without ``skip_meta`` and, per array, its name, size,
        head, tail and ``interior_blocks`` evenly spaced 64 KiB blocks."""
        h = hashlib.sha256()
        ident = {k: v for k, v in self.meta.items() if k not in skip_meta}
        h.update(json.dumps(ident, sort_keys=True).encode())
        for rel in sorted(_expected_shapes(self.meta)):
            local = self._local(rel)
            size = os.path.getsize(local)  # type: ignore[arg-type]
            h.update(f"{rel}:{size}".encode())
            starts = [0, *(size * (i + 1) // (interior_blocks + 1) for i in range(interior_blocks)),
                      max(0, size - _FINGERPRINT_SAMPLE)]
            with open(local, "rb") as f:  # type: ignore[arg-type]
                for start in starts:
                    f.seek(start)
                    h.update(f.read(_FINGERPRINT_SAMPLE))
        return h.hexdigest()[:20]

    # Memory maps are per process: drop them when pickled (DataLoader workers re-map).
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_arrays"] = {}
        return state

    def _local(self, rel: str, must_exist: bool = True) -> Optional[str]:
        full = join_path(self.path, rel)
        if "://" not in self.path:
            return full
        try:
            return g_pathmgr.get_local_path(full)
        except Exception as e:  # iopath handlers raise their own types for a missing file
            if must_exist:
                raise PreparedDataError(f"{full}: cannot fetch: {e}") from e
            return None

    def array(self, rel: str) -> np.ndarray:
        """Memory-mapped array ``rel`` (e.g. "train/seq_items.npy")."""
        arr = self._arrays.get(rel)
        if arr is None:
            arr = np.load(self._local(rel), mmap_mode="r")  # type: ignore[arg-type]
            self._arrays[rel] = arr
        return arr

    def in_range(self, rel: str, values: np.ndarray, limit: int, what: str, low: int = 0) -> np.ndarray:
        """``values`` read from ``rel``, after checking that each lies in ``[low, limit)``.

        Every row id that indexes a table (an embedding table in the model, the SCL table in the
        floors) passes through here where it is read: an out-of-range row would otherwise be
        clamped to row 0 inside FBGEMM's lookup, or wrap around in a NumPy gather, silently.
        Opening reads only headers (the full scan is `muse-rec check`); this costs one min and
        one max per gather.
        """
        if values.size and (values.min() < low or values.max() >= limit):
            bad = values[(values < low) | (values >= limit)].flat[0]
            raise self._damaged(rel, f"{what} {int(bad)} is outside [{low}, {limit})")
        return values

    def _damaged(self, rel: str, what: str) -> PreparedDataError:
        """The error for array ``rel`` holding what prepare never writes (``what``), naming the file."""
        return PreparedDataError(f"{join_path(self.path, rel)}: {what}; the data is damaged or was not written by "
                                 f"`muse-rec prepare` (`muse-rec check {self.path}` lists every problem)")

    def labels(self, split: str, idx: Union[np.ndarray, slice] = slice(None)) -> np.ndarray:
        """int8 labels of the split's samples ``idx``, checked to be 0 or 1 (a BCE target of 7 would
        train silently, and the metrics would refuse it only after the run)."""
        rel = f"{split}/labels.npy"
        return self.in_range(rel, np.asarray(self.array(rel)[idx]), 2, "label")

    def item_rows(self, split: str, idx: np.ndarray) -> np.ndarray:
        """int32 item rows of the split's samples ``idx`` (targets), range-checked."""
        rel = f"{split}/sample_items.npy"
        return self.in_range(rel, np.asarray(self.array(rel)[idx]), self.vocab_sizes["item"], "item row")

    def target_attrs(self, items: np.ndarray) -> np.ndarray:
        """int32 ``[n, 3]`` (category, item_f213, item_f214) rows of item rows ``items``, range-checked."""
        attrs = np.asarray(self.item_attrs()[items])
        for col, name in enumerate(ITEM_ATTR_COLUMNS):
            self.in_range("items/attrs.npy", attrs[:, col], self.vocab_sizes[name], f"{name} row")
        return attrs

    def user_id_rows(self, split: str, idx) -> np.ndarray:
        """int32 ``user_id`` table rows of the split's samples ``idx`` (0 = unknown user), range-checked."""
        rel = f"{split}/sample_user_rows.npy"
        return self.in_range(rel, np.asarray(self.array(rel)[idx]), self.vocab_sizes["user_id"], "user_id row")

    def user_rows(self, split: str, idx: np.ndarray) -> np.ndarray:
        """int64 user-feature rows of the split's samples ``idx``; -1 = no feature row. Range-checked."""
        rel = f"{split}/sample_users.npy"
        return self.in_range(rel, np.asarray(self.array(rel)[idx]).astype(np.int64),
                             int(self.require_split(split)["user_rows"]), "user-feature row", low=-1)

    def history_bounds(self, split: str, user_rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """int64 (start, end) of each user-feature row's behaviours in ``seq_items`` (rows >= 0),
        checked: ``0 <= start <= end <= behaviours``; a bad offset would give another user's history."""
        rel, b = f"{split}/seq_offsets.npy", int(self.require_split(split)["behaviours"])
        off = self.array(rel)
        start, end = np.asarray(off[user_rows]).astype(np.int64), np.asarray(off[user_rows + 1]).astype(np.int64)
        self.in_range(rel, start, b + 1, "offset")
        self.in_range(rel, end - start, b + 1, "history length")
        self.in_range(rel, end, b + 1, "offset")
        return start, end

    def seq_rows(self, split: str, which: str, positions: np.ndarray) -> np.ndarray:
        """int32 rows of the split's behaviours at ``positions``: ``which`` = "items" (item rows)
        or "cats" (category rows), range-checked."""
        rel, table = f"{split}/seq_{which}.npy", _SEQ_TABLES[which]
        return self.in_range(rel, np.asarray(self.array(rel)[positions]), self.vocab_sizes[table], f"{table} row")

    def check_sample_rows(self, split: str, chunk: int = 1 << 22) -> None:
        """Range-check every per-sample and per-user row of ``split`` (labels, target item, user_id and
        user-feature rows, user fields), as its batches would one by one; the histories (the bulk of a
        split, billions of rows on the release) are left to the batches and `muse-rec check`.
        `PreparedDataError` naming the file. A trainer calls it for the split it evaluates at the end,
        so damage there stops the run before its training, not after."""
        n, u = self.num_samples(split), int(self.require_split(split)["user_rows"])
        for lo in range(0, n, chunk):
            idx = slice(lo, min(n, lo + chunk))
            self.labels(split, idx)
            self.item_rows(split, idx)
            self.user_id_rows(split, idx)
            self.user_rows(split, idx)
        for lo in range(0, u, chunk):
            self.user_fields(split, slice(lo, min(u, lo + chunk)))

    def user_fields(self, split: str, user_rows: np.ndarray) -> np.ndarray:
        """int32 ``[n, 6]`` (user_id, user_f1..f5) rows of user-feature rows ``user_rows``, range-checked."""
        rel = f"{split}/user_fields.npy"
        fields = np.asarray(self.array(rel)[user_rows])
        for col, name in enumerate(USER_FIELD_COLUMNS):
            self.in_range(rel, fields[..., col], self.vocab_sizes[name], f"{name} row")
        return fields

    def require_split(self, split: str, key: str = "split") -> dict:
        """meta.json's entry for ``split``. An unknown split raises `PreparedDataError` naming
        ``key``, the spec key or flag that chose it (e.g. ``data.eval_split``, ``--split``)."""
        if split not in self.meta["splits"]:
            raise PreparedDataError(f"{key} = {split!r}: {self.path} has no such split "
                                    f"(it has {sorted(self.meta['splits'])})")
        return self.meta["splits"][split]

    def vocab(self, name: str) -> Vocab:
        if name not in self.vocab_sizes:
            raise KeyError(f"unknown vocabulary {name!r}; have {sorted(self.vocab_sizes)}")
        return Vocab(self.array(f"vocab/{name}.npy"), name)

    def scl(self) -> np.ndarray:
        """int8 ``[vocab_sizes["item"], 128]`` SCL vectors by item row; zero rows where absent.

        Row 0 (padding, unknown items) is checked to be zero here, where every reader gets the
        table: the frozen SCL table refused it with a ValueError traceback, and the floors would
        have scored padding as a vector."""
        rel = "items/scl.npy"
        arr = self.array(rel)
        if np.any(np.asarray(arr[0]) != 0):
            raise self._damaged(rel, "row 0 (padding, unknown items) is not all zeros")
        return arr

    def scl_present(self) -> np.ndarray:
        """bool ``[vocab_sizes["item"]]``: the item has an SCL vector (row 0 is False)."""
        return self.array("items/scl_present.npy")

    def item_attrs(self) -> np.ndarray:
        """int32 ``[n_items, 3]`` rows of (category, item_f213, item_f214) per item row; 0 = unknown."""
        return self.array("items/attrs.npy")

    def item_popularity(self) -> np.ndarray:
        """int64 ``[n_items]``: how often each item is a target of split `POPULARITY_SPLIT`, range-checked
        (one pass over the mapped array): a negative count failed the evaluation's popularity groups with
        a ValueError traceback after the whole run had trained."""
        rel = "items/popularity.npy"
        return self.in_range(rel, self.array(rel), POPULARITY_LIMIT, "count")

    def num_samples(self, split: str) -> int:
        return int(self.require_split(split)["samples"])

    def num_positives(self, split: str) -> int:
        """The split's clicks (``splits.<split>.positives`` of meta.json), in [0, samples]."""
        self.require_split(split)
        return int(self.meta_number(f"splits.{split}.positives", 0, self.num_samples(split)))

    def user_row_index(self, split: str, raw_user_ids: np.ndarray) -> np.ndarray:
        """int64 index into the split's user-feature rows for each raw user id; -1 where absent."""
        rel = f"{split}/user_sorted_index.npy"
        rows = user_feature_rows(self.array(f"{split}/user_sorted_keys.npy"), self.array(rel), raw_user_ids)
        return self.in_range(rel, rows, int(self.require_split(split)["user_rows"]), "user row", low=-1)

    def user_history(self, split: str, raw_user_id: int) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(item rows int32 ``[n]``, category rows int32 ``[n]``, user_f1..f5 rows int32 ``[5]``) of a
        user, behaviours oldest -> newest; None if the split has no feature row for the user."""
        u = int(self.user_row_index(split, np.array([raw_user_id]))[0])
        if u < 0:
            return None
        start, end = self.history_bounds(split, np.array([u]))
        positions = np.arange(start[0], end[0])
        return (self.seq_rows(split, "items", positions), self.seq_rows(split, "cats", positions),
                self.user_fields(split, np.array([u]))[0, 1:])

"""What `prepare` writes and the knobs it is written with: the format's names (its version, the
vocabularies, the arrays of items and of each split, `output_files`, the SCL rows' norms), how a
split's user index is read (`user_feature_rows`), `PrepareConfig`, and the errors `prepare` raises.

Separate from the build steps (prepare_steps.py) and the entry point (prepare.py) because both share
it, and because the readers of prepared data (prepared.py, check.py) and the CLI need these names
without the code that builds the arrays.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import numpy as np

from muse_rec.data import schema as S
from muse_rec.data.vocab import MISSING_ID

FORMAT_VERSION = 1
POPULARITY_SPLIT = "train"  # the split whose targets items/popularity.npy counts
VOCAB_MODES = ("full", "p90")
# Vocabulary name -> where its ids come from is decided in `_vocab_sources`.
VOCAB_NAMES: List[str] = ["item", "category", "user_id", "user_f1", "user_f2", "user_f3", "user_f4",
                          "user_f5", "item_f213", "item_f214"]
USER_FIELD_VOCABS = dict(zip(S.USER_FIELDS, ["user_f1", "user_f2", "user_f3", "user_f4", "user_f5"]))
ITEM_ATTR_VOCABS = dict(zip(S.ITEM_ATTRS, ["item_f213", "item_f214"]))
# Columns of items/attrs.npy and <split>/user_fields.npy.
ITEM_ATTR_COLUMNS = ["category", "item_f213", "item_f214"]
USER_FIELD_COLUMNS = ["user_id", "user_f1", "user_f2", "user_f3", "user_f4", "user_f5"]
BUILD_DIR = ".build"
# The release's SCL rows are int8 = trunc(127 x clip(v)) of unit vectors: norms ~122 (121.7-122.9 on the
# fixtures' rows). Rows outside this range are vectors of another kind; prepare says so.
SCL_ROW_NORM_RANGE = (100.0, 128.0)
SAMPLE_ARRAYS = ["labels", "sample_user_keys", "sample_item_keys", "sample_user_rows", "sample_items", "sample_users"]
USER_ARRAYS = ["user_keys", "user_fields", "user_sorted_keys", "user_sorted_index", "seq_offsets", "seq_items",
               "seq_cats"]


def output_files() -> List[str]:
    """Relative paths of every array a finished preparation holds (meta.json aside)."""
    files = [f"vocab/{n}.npy" for n in VOCAB_NAMES]
    files += [f"items/{n}.npy" for n in ("attrs", "scl", "scl_present", "popularity")]
    files += [f"{s}/{n}.npy" for s in S.SPLITS for n in USER_ARRAYS + SAMPLE_ARRAYS]
    return sorted(files)


@dataclass
class PrepareConfig:
    """Knobs of `prepare`.

    Attributes:
        vocab: "full" (SCL items, every target, item_features items and train-history items) or "p90"
            (SCL items and every target: the reference's item vocabulary; docs/data.md).
        batch_rows: rows per decoded record batch (memory per batch ~ batch_rows x 1000 ids x 8 B
            for user-feature tables).
        partition_bits: external-sort partitions = 2**partition_bits.
        spill_buffer_bytes: per vocabulary, ids buffered before appending to spill files.
        partition_bytes: output bytes per partition of the per-item arrays (SCL, attributes,
            popularity), which are filled by external partitioning, not a memory map (files.py).
        progress: report progress: tqdm bars on a terminal, else one line per finished step
            (logs and CI get no carriage-return bars).
    """

    vocab: str = "full"
    batch_rows: int = 4_096
    partition_bits: int = 8
    spill_buffer_bytes: int = 16 << 20
    partition_bytes: int = 32 << 20
    progress: bool = True

    def validate(self) -> None:
        """Raise ValueError naming the first knob out of range (CLI flag names)."""
        if self.vocab not in VOCAB_MODES:
            raise ValueError(f"--vocab {self.vocab!r}: vocab mode must be one of {VOCAB_MODES}")
        if self.batch_rows < 1:
            raise ValueError(f"--batch-rows {self.batch_rows}: must be >= 1")
        if not 0 <= self.partition_bits <= 16:
            raise ValueError(f"--partition-bits {self.partition_bits}: must be in [0, 16]")
        if self.partition_bytes < 1 or self.spill_buffer_bytes < 1:
            raise ValueError("partition_bytes and spill_buffer_bytes must be >= 1")


class DifferentDatasetError(ValueError):
    """OUT already holds a prepared dataset of other inputs (or another vocabulary mode)."""


class PrepareFileError(ValueError):
    """A file at a name prepare writes in OUT (its build directory, an array) is a FIFO, a device or a
    socket: something else put it there, and reading it (a FIFO: until a writer comes) never ends."""


def user_feature_rows(sorted_keys: np.ndarray, sorted_index: np.ndarray, user_ids: np.ndarray) -> np.ndarray:
    """int64 row in a split's user-feature table of each raw user id ``[N]``; -1 where it has none.

    `sorted_keys` / `sorted_index` are the split's ``user_sorted_keys.npy`` (raw ids, ascending) and
    ``user_sorted_index.npy`` (their rows), written by `step_users`; `PreparedData` reads the same.
    Raw id 0 is a missing id and has no row, even where a user-feature row's id is missing too: that
    row is nobody's, and a sample without a user id took its history as its own.
    """
    ids = np.asarray(user_ids, dtype=np.int64)
    if sorted_keys.shape[0] == 0:
        return np.full(ids.shape, -1, np.int64)
    pos = np.minimum(np.searchsorted(sorted_keys, ids), sorted_keys.shape[0] - 1)
    found = (np.asarray(sorted_keys[pos]) == ids) & (ids != MISSING_ID)
    return np.where(found, np.asarray(sorted_index[pos]), -1).astype(np.int64, copy=False)

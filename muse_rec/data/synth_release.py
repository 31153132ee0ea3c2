"""Turn a latent `synth_world` into the six raw Taobao-MM tables, byte for byte reproducible.

Layout: exactly the release's file names, column names, column order and Arrow types
(`muse_rec.data.schema.TABLES`; list children are named ``element`` as in the release).
Raw ids are a keyed bijection of the dense indices (SplitMix64's finaliser, one key per id
namespace), so they spread over the whole signed int64 range, never collide inside a namespace,
and are 0 only where a value is missing. All six tables are written to a hidden staging directory
first and renamed into place together (`publish_release`), so a killed run never leaves a
half-written table, or a release mixing two runs, under a release name.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from typing import Dict, Iterator, List, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from muse_rec.data import schema as S
from muse_rec.data.files import local_parquet_file
from muse_rec.data.synth_config import SynthConfig
from muse_rec.data.synth_world import Catalogue, Impressions, Users, ranges, stage_rng

STAGING_DIR = ".synth-staging"  # hidden: readers open the six tables by name
INT8_SCALE = 127.0  # the release stores trunc(127 * clip(v, -1, 1))
NAMESPACES = ("user", "item", "category", "130_1", "130_2", "130_3", "130_4", "213", "214")
# 130_5 shares 130_1's value vocabulary in the release, so it shares its hash key too.
USER_FIELD_NAMESPACE = {"130_1": "130_1", "130_2": "130_2", "130_3": "130_3", "130_4": "130_4", "130_5": "130_1"}

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def release_schema(table: str) -> pa.Schema:
    """Arrow schema of a release table as the release writes it (``element`` list children)."""
    fields = []
    for name, typ in S.TABLES[table].columns.items():
        if pa.types.is_list(typ):
            typ = pa.list_(pa.field("element", typ.value_type))
        fields.append(pa.field(name, typ))
    return pa.schema(fields)


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a bijection of uint64 (odd multiplies and xor-shifts are invertible)."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


class IdHasher:
    """Dense index -> raw int64 id per namespace; index -1 (missing) -> 0."""

    def __init__(self, cfg: SynthConfig) -> None:
        keys = stage_rng(cfg, 9).integers(0, 2**64, size=len(NAMESPACES), dtype=np.uint64)
        self._keys = dict(zip(NAMESPACES, keys))

    def __call__(self, namespace: str, index: np.ndarray) -> np.ndarray:
        index = np.asarray(index, dtype=np.int64)
        ids = _mix64(index.astype(np.uint64) ^ self._keys[namespace]).view(np.int64)
        missing = index < 0
        if np.any((ids == 0) & ~missing):
            # One uint64 of 2^64 maps to 0; reaching it is astronomically unlikely but must not pass.
            raise RuntimeError(f"a real {namespace} id hashed to 0 (the missing value); use another --seed")
        return np.where(missing, 0, ids)


def _unit_noise(cfg: SynthConfig, items: np.ndarray, dim: int) -> np.ndarray:
    """``[N, dim]`` float64 unit vectors, independent of the clusters, a pure function of
    (seed, item index): counter-based (hash + Box-Muller), so every writer of the SCL table,
    whatever blocks it writes in, gets the same noise for an item."""
    key = stage_rng(cfg, 13).integers(0, 2**64, dtype=np.uint64)
    counter = (items.astype(np.uint64)[:, None] * np.uint64(2 * dim) + np.arange(2 * dim, dtype=np.uint64)) ^ key
    u = ((_mix64(counter) >> np.uint64(11)).astype(np.float64) + 0.5) / float(2**53)  # (0, 1)
    g = np.sqrt(-2.0 * np.log(u[:, :dim])) * np.cos(2.0 * np.pi * u[:, dim:])
    return g / np.linalg.norm(g, axis=1, keepdims=True)


def written_scl_int8(cfg: SynthConfig, items: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """The SCL table's int8 rows ``[N, D]`` of ``items [N]`` (dense indices) whose true unit
    vectors are ``vectors [N, D]``: at ``cfg.scl_quality`` Q < 1 the written vector is
    ``normalise(sqrt(Q) v + sqrt(1 - Q) n)`` with item-fixed unit noise n (`_unit_noise`), so
    only a share Q of it is cluster signal. Q = 1 writes the true vectors (byte-identical to a
    release made without the knob). Only the table on disk changes; the click model keeps v."""
    v = vectors
    Q = float(cfg.scl_quality)
    if Q < 1.0:
        mixed = np.sqrt(Q) * v.astype(np.float64) + np.sqrt(1.0 - Q) * _unit_noise(cfg, items, v.shape[1])
        v = mixed / np.linalg.norm(mixed, axis=1, keepdims=True)
    return np.trunc(INT8_SCALE * np.clip(v, -1.0, 1.0)).astype(np.int8)


def _list_array(offsets: np.ndarray, values: pa.Array, typ: pa.DataType) -> pa.Array:
    if offsets[-1] > np.iinfo(np.int32).max:
        # The release uses 32-bit list offsets; one table this large would need chunked writing.
        raise ValueError(f"{int(offsets[-1]):,} list values in one column exceed the 32-bit list offsets "
                         "of the release layout; lower --users or --max-seq-len")
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32), pa.int32()), values, type=typ)


def _table(name: str, columns: Dict[str, pa.Array]) -> pa.Table:
    schema = release_schema(name)
    return pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)


@dataclass
class History:
    """Behaviour sequences of one snapshot: row r's items are ``items[offsets[r]:offsets[r+1]]``."""

    users: np.ndarray  # [R] dense user index per row
    offsets: np.ndarray  # [R + 1]
    items: np.ndarray  # [sum len] dense item index, oldest -> newest


def snapshot_window(cfg: SynthConfig, users: Users, tl_offsets: np.ndarray, split: str
                    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rows, start, lengths)`` of a split's snapshot in the timelines: the users in it, and
    where each one's kept history (at most the newest `max_seq_len` behaviours) starts and how
    long it is. Shared by `snapshot` and the streaming writer."""
    if split == "train":
        rows = np.arange(users.n_train, dtype=np.int64)
        end = tl_offsets[rows] + users.train_len[rows]
    else:
        rows = np.flatnonzero(users.in_test).astype(np.int64)
        end = tl_offsets[rows + 1]
    start = np.maximum(tl_offsets[rows], end - cfg.max_seq_len)
    return rows, start, end - start


def snapshot(cfg: SynthConfig, users: Users, tl_offsets: np.ndarray, tl_items: np.ndarray, split: str) -> History:
    """Train snapshot: train users' first `train_len` behaviours. Test snapshot: test users'
    whole timelines. Both keep at most the newest `max_seq_len`."""
    rows, start, lengths = snapshot_window(cfg, users, tl_offsets, split)
    rows_perm = stage_rng(cfg, 5 if split == "train" else 6).permutation(rows.shape[0])
    rows, start, lengths = rows[rows_perm], start[rows_perm], lengths[rows_perm]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return History(users=rows, offsets=offsets, items=tl_items[ranges(start, lengths)])


def samples_table(imp: Impressions, ids: IdHasher) -> pa.Table:
    y = imp.label.astype(np.int8)
    onehot = np.stack([1 - y, y], axis=1).reshape(-1)
    offsets = np.arange(0, 2 * y.shape[0] + 1, 2)
    return _table("train_samples", {
        S.LABEL: _list_array(offsets, pa.array(onehot, pa.int8()), release_schema("train_samples").field(S.LABEL).type),
        S.USER: pa.array(ids("user", imp.user)),
        S.ITEM: pa.array(ids("item", imp.item)),
    })


def user_table(hist: History, users: Users, cat: Catalogue, ids: IdHasher) -> pa.Table:
    list_type = release_schema("train_user_features").field(S.SEQ_ITEMS).type
    cols: Dict[str, pa.Array] = {S.USER: pa.array(ids("user", hist.users))}
    for j, name in enumerate(S.USER_FIELDS):
        cols[name] = pa.array(ids(USER_FIELD_NAMESPACE[name], users.fields[hist.users, j]))
    cols[S.SEQ_ITEMS] = _list_array(hist.offsets, pa.array(ids("item", hist.items)), list_type)
    cols[S.SEQ_CATS] = _list_array(hist.offsets, pa.array(ids("category", cat.item_category[hist.items])), list_type)
    return _table("train_user_features", cols)


def item_tables(cfg: SynthConfig, cat: Catalogue, histories: List[History], imps: List[Impressions],
                ids: IdHasher) -> Dict[str, object]:
    """item_features and the "p90" SCL table, both sorted by raw item id.

    SCL rows: the most frequent behaviour items until `scl_behaviour_coverage` of all behaviours
    is covered, plus every target item (the release's p90 vocabulary has all targets).
    """
    rng = stage_rng(cfg, 7)
    I = cat.item_cluster.shape[0]
    freq = np.zeros(I, dtype=np.int64)
    for h in histories:
        freq += np.bincount(h.items, minlength=I)
    is_target = np.zeros(I, dtype=bool)
    for imp in imps:
        is_target[imp.item] = True
    occurs = (freq > 0) | is_target
    order = np.lexsort((np.arange(I), -freq))  # most frequent first, ties by index: deterministic
    covered = np.cumsum(freq[order]) / max(1, int(freq.sum()))
    n_head = int(np.searchsorted(covered, cfg.scl_behaviour_coverage, side="left")) + 1
    has_scl = is_target.copy()
    has_scl[order[:n_head]] = True
    has_scl &= occurs

    feat_items = np.flatnonzero(occurs & (rng.random(I) >= cfg.item_features_missing))
    feat_ids = ids("item", feat_items)
    o = np.argsort(feat_ids, kind="stable")
    feat_items, feat_ids = feat_items[o], feat_ids[o]
    shop = np.where(rng.random(feat_items.shape[0]) < cfg.item_attr_missing, -1, cat.item_shop[feat_items])
    a214 = np.where(rng.random(feat_items.shape[0]) < cfg.item_attr_missing, -1, cat.item_attr214[feat_items])
    features = _table("item_features", {
        S.ITEM: pa.array(feat_ids),
        S.ITEM_CAT: pa.array(ids("category", cat.item_category[feat_items])),
        "213": pa.array(ids("213", shop)),
        "214": pa.array(ids("214", a214)),
    })

    scl_items = np.flatnonzero(has_scl)
    scl_ids = ids("item", scl_items)
    o = np.argsort(scl_ids, kind="stable")
    scl_items, scl_ids = scl_items[o], scl_ids[o]
    q = written_scl_int8(cfg, scl_items, cat.item_vec[scl_items])
    D = q.shape[1]
    offsets = np.arange(0, D * scl_items.shape[0] + 1, D)
    scl = _table("scl", {
        S.ITEM: pa.array(scl_ids),
        S.SCL_VECTOR: _list_array(offsets, pa.array(q.reshape(-1), pa.int8()), release_schema("scl").field(S.SCL_VECTOR).type),
    })
    behaviours = int(freq.sum())
    stats = {
        "items_occurring": int(occurs.sum()),
        "item_features_rows": int(feat_items.shape[0]),
        "scl_rows": int(scl_items.shape[0]),
        "scl_item_coverage": float(has_scl.sum() / max(1, occurs.sum())),
        "scl_behaviour_coverage": float(freq[has_scl].sum() / max(1, behaviours)),
        "target_items": int(is_target.sum()),
        "behaviour_items_seen_once": int((freq == 1).sum()),
    }
    return {"item_features": features, "scl": scl, "stats": stats}


def write_table(table: pa.Table, staging: str, name: str, row_group_rows: int) -> str:
    """Write one release table into the staging directory (`staged_release`); returns its path there."""
    path = os.path.join(staging, S.TABLES[name].file)
    with local_parquet_file(path, "wb") as sink:
        pq.write_table(table, sink, row_group_size=row_group_rows, compression="snappy")
    return path


@contextlib.contextmanager
def staged_release(out_dir: str) -> Iterator[str]:
    """A fresh ``OUT/.synth-staging/`` to write the six tables into; removed if the body raises.

    Readers open the six tables by name, so nothing staged is ever read as part of the release.
    A staging directory left by a killed run was never published and is dropped.
    """
    staging = os.path.join(out_dir, STAGING_DIR)
    if os.path.exists(staging):
        shutil.rmtree(staging)
    os.makedirs(staging)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def publish_release(staging: str, out_dir: str, manifest_name: str) -> None:
    """Replace the release in `out_dir` by the six complete tables in `staging`.

    Every old copy of a table goes first: the old manifest, then the one file, a directory of parts
    (``<stem>.parquet/`` or ``<stem>/``) or ``<stem>-*.parquet`` files (a release the user asked synth
    to ``--overwrite``). A part left beside the new file would make the table ambiguous, and an old
    directory would refuse the rename half way, leaving a release of mixed runs. Only then are the
    staged files renamed in (same file system: cheap, and none can fail on a directory in the way).
    """
    from muse_rec.data.reader import locate_table

    old_manifest = os.path.join(out_dir, manifest_name)
    if os.path.exists(old_manifest):
        os.remove(old_manifest)
    for spec in S.TABLES.values():
        found, shards = locate_table(out_dir, spec)  # the places the reader would take the table from
        for part in shards:
            os.remove(part)
        for where in found:
            if os.path.isdir(where):
                shutil.rmtree(where)
    for spec in S.TABLES.values():
        os.replace(os.path.join(staging, spec.file), os.path.join(out_dir, spec.file))
    shutil.rmtree(staging)

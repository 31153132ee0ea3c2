"""Streaming writer of the synthetic release: the same planted world at release scale, bounded memory.

`write_streamed_release(out_dir, cfg)` writes the six raw tables one Parquet row group at a time.
What stays in memory is per item or per user, never per behaviour: the catalogue without its
[I, D] SCL vectors (~45 B per item), the users (~100 B), and the impressions (~40 B each).
SCL vectors are regenerated block by block (`synth_world.item_vector_block`), behaviour
histories user chunk by user chunk (`build_timelines` with one stream per chunk). Every catalogue
item gets an item_features row (less the missing share) and an SCL row, so item_features and the
SCL table hold all `items` rows, as the full release's item table does.

Crash safety: tables go to ``OUT/.synth-staging/`` (`synth_release.staged_release`: hidden;
readers open the six tables by name), each file is fsync-ed when complete; only when all six are
complete do they replace the release in ``OUT`` (`synth_release.publish_release`) and the manifest
is written last. A kill or a full disk therefore leaves no table under a release name that a
reader would take; a failed run removes its staging directory.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from muse_rec.data import schema as S
from muse_rec.data.files import local_parquet_file
from muse_rec.data.synth_config import SynthConfig
from muse_rec.data.synth_diagnostics import group_auc
from muse_rec.data.synth_release import (IdHasher, USER_FIELD_NAMESPACE, publish_release,
                                         release_schema, samples_table, snapshot_window, staged_release,
                                         written_scl_int8)
from muse_rec.data.synth_world import (VECTOR_BLOCK, Catalogue, Impressions, Users, affinities_in_chunks, build_catalogue,
                                       build_impressions, build_timelines, build_users, item_vector_block, ranges)
# A stage's progress line at most every PROGRESS_EVERY_S (as prepare's): a chunk takes ~0.5 s, so a line per chunk
# was ~600 lines at the scale preset, none of them saying how far the stage had got.
from muse_rec.terminal import PROGRESS_EVERY_S, Throttle

USER_CHUNK = 2048  # users per generated history chunk (~1.2M behaviours, ~200 MB of temporaries)
_ITEM_STAGE = 11  # stream of the item_features missing-value draws, one per item block


class StagedTable:
    """One release table written row group by row group to the staging directory."""

    def __init__(self, staging: str, name: str) -> None:
        self.name = name
        self.path = os.path.join(staging, S.TABLES[name].file)
        self.rows = 0
        self._sink = local_parquet_file(self.path, "wb")
        self._w = pq.ParquetWriter(self._sink, release_schema(name), compression="snappy")

    def write(self, table: pa.Table) -> None:
        """Write `table` as ONE row group (however many chunks it holds)."""
        self._w.write_table(table, row_group_size=max(1, table.num_rows))
        self.rows += table.num_rows

    def close(self) -> None:
        self._w.close()
        self._sink.close()  # the writer leaves a file it was given open
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)  # the data is on disk before the rename can publish it
        finally:
            os.close(fd)


def _list(offsets: np.ndarray, values: np.ndarray, typ: pa.DataType) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32), pa.int32()), pa.array(values), type=typ)


class StageProgress:
    """Progress of the streamed stages for a log: `tick` says ``[synth] <stage>: k of n (p%), t s`` on
    stderr at most every `PROGRESS_EVERY_S` per stage, and for nothing when ``enabled`` is False."""

    def __init__(self, enabled: bool, t0: float) -> None:
        self.enabled, self.t0 = enabled, t0
        self._done: Dict[str, int] = {}
        self._clock: Dict[str, Throttle] = {}

    def tick(self, stage: str, n: int, total: int) -> None:
        """``n`` more of the ``total`` rows (users, items, impressions) of ``stage`` are done."""
        done = self._done[stage] = self._done.get(stage, 0) + n
        # A stage's clock starts at its first tick: its first line comes an interval into it.
        clock = self._clock.setdefault(stage, Throttle(PROGRESS_EVERY_S))
        if not self.enabled or not clock.due():
            return
        print(f"[synth] {stage}: {done:,} of {total:,} ({100 * done / max(total, 1):.0f}%), "
              f"{time.perf_counter() - self.t0:.0f} s", file=sys.stderr, flush=True)


def _blocked_affinities(cfg: SynthConfig, progress: StageProgress) -> Callable:
    """`affinities` for `build_impressions` that regenerates target vectors one item block at a time
    (one `progress` tick per block, in impressions of the split it was called for)."""
    calls = 0

    def affinities(cat: Catalogue, users: Users, sample_user: np.ndarray, item: np.ndarray):
        nonlocal calls
        calls += 1  # build_impressions calls it once per split
        stage = f"impressions, split {calls} of {len(S.SPLITS)}"
        aff_long = np.empty(item.shape[0], np.float32)
        aff_recent = np.empty(item.shape[0], np.float32)
        order = np.argsort(item // VECTOR_BLOCK, kind="stable")
        blocks = item[order] // VECTOR_BLOCK
        bounds = np.flatnonzero(np.diff(blocks)) + 1
        for idx in np.split(order, bounds):
            if idx.size == 0:
                continue
            block = int(item[idx[0]] // VECTOR_BLOCK)
            vecs, base = item_vector_block(cfg, cat, block), block * VECTOR_BLOCK
            aff_long[idx], aff_recent[idx] = affinities_in_chunks(cat, users, sample_user[idx], item[idx],
                                                                  lambda rows: vecs[rows - base])
            progress.tick(stage, idx.size, item.shape[0])
        return aff_long, aff_recent

    return affinities


def _write_samples(table: StagedTable, imp: Impressions, ids: IdHasher, rows_per_group: int) -> None:
    for lo in range(0, imp.label.shape[0], rows_per_group):
        sl = slice(lo, lo + rows_per_group)
        table.write(samples_table(Impressions(imp.user[sl], imp.item[sl], imp.prob[sl], imp.label[sl]), ids))


def _user_batch(cfg: SynthConfig, cat: Catalogue, users: Users, lo: int, tl: Tuple[np.ndarray, np.ndarray],
                split: str, ids: IdHasher) -> Tuple[Optional[pa.Table], np.ndarray]:
    """One chunk's rows of `<split>_user_features` (None when the chunk has none) and their lengths."""
    tl_offsets, tl_items = tl
    rows, start, lengths = snapshot_window(cfg, users, tl_offsets, split)
    if rows.size == 0:
        return None, lengths
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    items = tl_items[ranges(start, lengths)]
    typ = release_schema("train_user_features").field(S.SEQ_ITEMS).type
    cols: Dict[str, pa.Array] = {S.USER: pa.array(ids("user", rows + lo))}
    for j, name in enumerate(S.USER_FIELDS):
        cols[name] = pa.array(ids(USER_FIELD_NAMESPACE[name], users.fields[rows, j]))
    cols[S.SEQ_ITEMS] = _list(offsets, ids("item", items), typ)
    cols[S.SEQ_CATS] = _list(offsets, ids("category", cat.item_category[items]), typ)
    schema = release_schema("train_user_features")
    return pa.Table.from_arrays([cols[f.name] for f in schema], schema=schema), lengths


def _write_users(staging: str, cfg: SynthConfig, cat: Catalogue, users: Users, ids: IdHasher,
                 progress: StageProgress) -> Dict[str, int]:
    """Both user-feature tables, `user_row_group_rows` users per row group, histories by chunk."""
    tables = {split: StagedTable(staging, f"{split}_user_features") for split in S.SPLITS}
    pending: Dict[str, List[pa.Table]] = {split: [] for split in S.SPLITS}
    pending_rows = dict.fromkeys(S.SPLITS, 0)
    behaviours = dict.fromkeys(S.SPLITS, 0)
    max_len = 0

    def flush(split: str) -> None:
        if pending[split]:
            tables[split].write(pa.concat_tables(pending[split]))
            pending[split], pending_rows[split] = [], 0

    U = users.n_users
    for chunk, lo in enumerate(range(0, U, USER_CHUNK)):
        hi = min(U, lo + USER_CHUNK)
        part = users.slice(lo, hi)
        tl = build_timelines(cfg, cat, part, rng=np.random.default_rng([cfg.seed, 3, chunk]))
        for split in S.SPLITS:
            t, lengths = _user_batch(cfg, cat, part, lo, tl, split, ids)
            if t is None:
                continue
            behaviours[split] += int(lengths.sum())
            max_len = max(max_len, int(lengths.max()))
            pending[split].append(t)
            pending_rows[split] += t.num_rows
            if pending_rows[split] >= cfg.user_row_group_rows:
                flush(split)
        progress.tick("histories (users)", hi - lo, U)
    for split in S.SPLITS:
        flush(split)
        tables[split].close()
    return {"train_behaviours": behaviours["train"], "test_behaviours": behaviours["test"],
            "train_user_rows": tables["train"].rows, "test_user_rows": tables["test"].rows,
            "max_seq_len_written": max_len}


def _write_items(staging: str, cfg: SynthConfig, cat: Catalogue, ids: IdHasher,
                 progress: StageProgress) -> Dict[str, int]:
    """item_features and SCL for every catalogue item, `row_group_rows` items per row group."""
    feats, scl = StagedTable(staging, "item_features"), StagedTable(staging, "scl")
    I, D = cat.item_cluster.shape[0], S.SCL_DIM
    group = max(1, cfg.row_group_rows // VECTOR_BLOCK) * VECTOR_BLOCK  # whole vector blocks per row group
    scl_type = release_schema("scl").field(S.SCL_VECTOR).type
    for lo in range(0, I, group):
        hi = min(I, lo + group)
        parts = []
        for block in range(lo // VECTOR_BLOCK, (hi + VECTOR_BLOCK - 1) // VECTOR_BLOCK):
            b_lo = block * VECTOR_BLOCK
            vectors = item_vector_block(cfg, cat, block)
            q = written_scl_int8(cfg, np.arange(b_lo, b_lo + vectors.shape[0]), vectors)
            offsets = np.arange(0, D * q.shape[0] + 1, D)
            parts.append(pa.Table.from_arrays(
                [pa.array(ids("item", np.arange(b_lo, b_lo + q.shape[0]))), _list(offsets, q.reshape(-1), scl_type)],
                schema=release_schema("scl")))
        scl.write(pa.concat_tables(parts))
        rng = np.random.default_rng([cfg.seed, _ITEM_STAGE, lo // group])
        it = np.arange(lo, hi, dtype=np.int64)
        it = it[rng.random(it.shape[0]) >= cfg.item_features_missing]
        shop = np.where(rng.random(it.shape[0]) < cfg.item_attr_missing, -1, cat.item_shop[it])
        a214 = np.where(rng.random(it.shape[0]) < cfg.item_attr_missing, -1, cat.item_attr214[it])
        feats.write(pa.Table.from_arrays(
            [pa.array(ids("item", it)), pa.array(ids("category", cat.item_category[it])),
             pa.array(ids("213", shop)), pa.array(ids("214", a214))], schema=release_schema("item_features")))
        progress.tick("items", hi - lo, I)
    feats.close()
    scl.close()
    return {"item_features_rows": feats.rows, "scl_rows": scl.rows}


def write_streamed_release(out_dir: str, cfg: SynthConfig, progress: bool = False,
                           manifest_extra: Optional[Dict[str, object]] = None) -> Dict[str, object]:
    """Generate the release with bounded memory; returns the manifest (also written to `out_dir`).

    Args:
        out_dir: local directory (created); the release tables there are replaced only once all
            six new ones are complete.
        cfg: generator knobs (``writer="stream"``).
        progress: say on stderr when each stage is done, and how far a long one has got every
            `PROGRESS_EVERY_S`.
    """
    from muse_rec.data.synth import MANIFEST_NAME, MANIFEST_VERSION, write_manifest

    cfg.validate()
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise NotADirectoryError(f"synth output {out_dir!r} exists and is not a directory")
    t0 = time.perf_counter()
    marks: Dict[str, float] = {}

    # Progress goes to stderr: stdout carries the summary, or the manifest under `synth --json`.
    stage_progress = StageProgress(progress, t0)

    def done(stage: str) -> None:
        marks[stage] = round(time.perf_counter() - t0, 1)
        if progress:
            print(f"[synth] {stage} done at {marks[stage]:.0f} s", file=sys.stderr, flush=True)

    with staged_release(out_dir) as staging:
        cat = build_catalogue(cfg, with_vectors=False)
        users = build_users(cfg, cat)
        done("catalogue and users")
        ids = IdHasher(cfg)
        imps = build_impressions(cfg, cat, users, affinities=_blocked_affinities(cfg, stage_progress))
        truth = {split: group_auc(imps[split].label, imps[split].prob, imps[split].user) for split in S.SPLITS}
        for split in S.SPLITS:
            t = StagedTable(staging, f"{split}_samples")
            _write_samples(t, imps[split], ids, cfg.row_group_rows)
            t.close()
        stats: Dict[str, object] = {
            "users_total": users.n_users,
            "train_samples": int(imps["train"].label.shape[0]),
            "test_samples": int(imps["test"].label.shape[0]),
            "train_positive_rate": float(imps["train"].label.mean()),
            "test_positive_rate": float(imps["test"].label.mean()),
        }
        del imps
        done("impressions")
        stats.update(_write_items(staging, cfg, cat, ids, stage_progress))
        done("item tables")
        stats.update(_write_users(staging, cfg, cat, users, ids, stage_progress))
        done("user tables")
        publish_release(staging, out_dir, MANIFEST_NAME)
    manifest: Dict[str, object] = {
        "format": "taobao-mm-raw (synthetic, streamed)",
        "generator": "muse_rec.data.synth_stream",
        "version": MANIFEST_VERSION,
        "config": cfg.to_dict(),
        "files": {name: S.TABLES[name].file for name in S.TABLES},
        "stats": stats,
        "truth": truth,
        "diagnostics": None,
        "stage_seconds": marks,
        **(manifest_extra or {}),
    }
    manifest["seconds"] = round(time.perf_counter() - t0, 2)
    write_manifest(out_dir, manifest)
    return manifest

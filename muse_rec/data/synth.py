"""Synthetic Taobao-MM: a release in the exact raw layout with planted, checkable semantics.

`write_synthetic_release(out_dir, cfg)` writes the six raw tables (same file names, columns,
Arrow types and order as the real release) plus ``_synth_manifest.json`` (config, sizes, the
ceiling GAUC of the true click model and oracle diagnostics). Readers of the release open the
six tables by name and ignore files starting with ``_``.

The planted structure (see `synth_world`) makes the MUSE paper's claims testable on a laptop:
clicks follow the target's semantic affinity to the user's *long-term* interests, which are
spread over the whole history, while the newest behaviours are dominated by a recent interest.
A model that searches the whole history by SCL cosine (MUSE) should therefore beat one that sees
only the newest 50 behaviours (DIN), and category match (SIM-hard) is a weaker proxy because
categories are coarser than the semantic clusters.

Example::

    cfg = SynthConfig.preset("tiny").replace(seed=3)
    manifest = write_synthetic_release("/tmp/synth", cfg)
    manifest["stats"]["train_samples"]
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from muse_rec.data import schema as S
from muse_rec.data.synth_config import SynthConfig
from muse_rec.data.synth_diagnostics import group_auc, release_diagnostics
from muse_rec.data.synth_release import (IdHasher, History, item_tables, publish_release, samples_table, snapshot,
                                         staged_release, user_table, write_table)
from muse_rec.data.synth_world import build_catalogue, build_impressions, build_timelines, build_users
from muse_rec.dirlock import DirLock
from muse_rec.output_paths import (check_not_dangling, check_not_inside_another_output, local_output,
                                   output_of_another_command)
from muse_rec.terminal import shows_bars

MANIFEST_NAME = "_synth_manifest.json"  # leading "_": not a release table, readers skip it
MANIFEST_VERSION = 1

_INT64, _FLOAT32, _INT8, _BOOL, _OFFSET = (np.dtype(t).itemsize for t in (np.int64, np.float32, np.int8, np.bool_,
                                                                         np.int32))
# The memory writer's peak is `build_timelines`: eight int64 arrays (owner, position, session, cluster,
# previous cluster, items, their source, the kept items) and four bool arrays (session starts, recent
# zone, recent picks, repeats) as long as every user's timeline are alive at once. Measured peak resident
# memory: 56-65 bytes per behaviour (tiny and demo sizes, max_seq_len 200 to 3,000).
BYTES_PER_BEHAVIOUR = 8 * _INT64 + 4 * _BOOL
# An impression: its record (user and item int64, probability float32, label int8) and its row of the
# samples table (user and item ids int64, the one-hot label's two int8 and its list offset).
BYTES_PER_IMPRESSION = (2 * _INT64 + _FLOAT32 + _INT8) + (2 * _INT64 + 2 * _INT8 + _OFFSET)

__all__ = ["SynthConfig", "write_synthetic_release", "MANIFEST_NAME"]


def _lengths(h: History) -> Dict[str, float]:
    n = np.diff(h.offsets)
    return {"min": int(n.min()) if n.size else 0, "mean": float(n.mean()) if n.size else 0.0,
            "median": float(np.median(n)) if n.size else 0.0, "max": int(n.max(initial=0))}


def foreign_tables(out_dir: str) -> List[str]:
    """Release tables in ``out_dir`` that `muse-rec synth` did not write (no synth manifest there),
    as one file or in parts: a real download, which overwriting would destroy (or, for parts,
    leave beside the synthetic tables as a release that is there twice)."""
    from muse_rec.data.reader import table_locations

    if not os.path.isdir(out_dir) or os.path.exists(os.path.join(out_dir, MANIFEST_NAME)):
        return []
    return [os.path.relpath(loc, out_dir) + ("/" if os.path.isdir(loc) else "")
            for t in S.TABLES.values() for loc in table_locations(out_dir, t)]


def memory_writer_bytes(cfg: SynthConfig) -> int:
    """About the most memory the memory writer holds for ``cfg``'s users: their timelines
    (`SynthConfig.expected_behaviours`) and impressions, by what each one costs at the writer's peak
    (~45 KB per user of the demo preset). The catalogue and the interpreter come on top."""
    return int(cfg.expected_behaviours() * BYTES_PER_BEHAVIOUR + cfg.expected_impressions() * BYTES_PER_IMPRESSION)


def check_memory_writer_fits(cfg: SynthConfig) -> None:
    """MemoryError, before anything is generated or written, where the memory writer would hold more
    (`memory_writer_bytes`) than this process can allocate: a ``--users`` too large was left to the
    kernel's OOM killer, which says nothing and may kill another process instead."""
    from muse_rec.memory import available_memory_bytes, format_gib  # looked up here: tests patch it

    need, available = memory_writer_bytes(cfg), available_memory_bytes()
    if need > available:
        raise MemoryError(f"the memory writer would hold about {format_gib(need)} for {cfg.users:,} users' "
                          f"histories of up to {cfg.max_seq_len:,} behaviours; {format_gib(available)} available")


def write_synthetic_release(out_dir: str, cfg: SynthConfig, progress: bool = False,
                            diagnostics: Optional[bool] = None, overwrite: bool = False) -> Dict[str, object]:
    """Generate and write a synthetic release; returns the manifest (also written to `out_dir`).

    Args:
        out_dir: local directory or ``file://`` URI (created if missing); a synthetic release there is
            replaced. Refused (OutputPathError) inside another command's output.
            Release tables that synth did not write raise FileExistsError unless ``overwrite``.
            MemoryError before any work where the memory writer would not fit (`check_memory_writer_fits`).
        cfg: generator knobs.
        progress: report progress: a tqdm bar on a terminal, else one line per stage.
        diagnostics: score the oracle diagnostics on the test split; default: when
            ``cfg.diagnostics_max_users > 0``.
    Returns:
        ``{"format", "version", "config", "files", "stats", "truth", "diagnostics", "seconds"}``.
    """
    cfg.validate()
    given, out_dir = out_dir, local_output(out_dir, "OUT")
    check_not_inside_another_output(Path(out_dir), f"OUT {given}")
    check_not_dangling(Path(out_dir), f"OUT {given}")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise NotADirectoryError(f"synth output {out_dir!r} exists and is not a directory")
    # Another command's output (prepared data, a run, an export) is never a release directory,
    # --overwrite or not: the tables would land beside its files. Checked before the lock, as below.
    other = output_of_another_command(Path(out_dir), own=MANIFEST_NAME) if os.path.isdir(out_dir) else None
    if other:
        raise FileExistsError(f"{out_dir} holds {other}, not a release: choose another OUT for the synthetic release")
    found = foreign_tables(out_dir)  # before the lock: a refused OUT is left exactly as it was
    if found and not overwrite:
        raise FileExistsError(f"{out_dir} holds release tables that `muse-rec synth` did not write ({', '.join(found)}): "
                              "refusing to overwrite them; choose another OUT (or pass --overwrite)")
    if cfg.writer == "memory":  # before the lock: a refused OUT is left exactly as it was
        check_memory_writer_fits(cfg)
    # One synth per OUT at a time: two would leave a release mixing both runs' tables.
    with DirLock.acquire(Path(out_dir), holder="another synth", hint="wait for it to end or choose another OUT"):
        if cfg.writer == "stream":
            from muse_rec.data.synth_stream import write_streamed_release

            return write_streamed_release(out_dir, cfg, progress=progress)
        return _write_in_memory(out_dir, cfg, progress, diagnostics)


def _write_in_memory(out_dir: str, cfg: SynthConfig, progress: bool, diagnostics: Optional[bool]) -> Dict[str, object]:
    """`write_synthetic_release` with the whole release built in memory (presets up to medium)."""
    run_diag = cfg.diagnostics_max_users > 0 if diagnostics is None else diagnostics
    t0 = time.perf_counter()
    from tqdm import tqdm

    # A bar on a terminal; in a log (no terminal) one line per stage instead of carriage returns.
    bars = shows_bars(progress)
    bar = tqdm(total=8 + int(run_diag), desc="synth", unit="stage", disable=not bars)

    def step(what: str) -> None:
        bar.set_postfix_str(what)
        bar.update(1)
        if progress and not bars:
            print(f"[synth] {what} done at {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)

    cat = build_catalogue(cfg)
    step("catalogue")
    users = build_users(cfg, cat)
    tl_offsets, tl_items = build_timelines(cfg, cat, users)
    step("histories")
    imps = build_impressions(cfg, cat, users)
    step("impressions")
    hists = {split: snapshot(cfg, users, tl_offsets, tl_items, split) for split in S.SPLITS}
    ids = IdHasher(cfg)
    items = item_tables(cfg, cat, list(hists.values()), list(imps.values()), ids)
    step("item tables")

    train_users = set(hists["train"].users.tolist())
    stats: Dict[str, object] = {
        "users_total": users.n_users,
        "train_users": int(hists["train"].users.shape[0]),
        "test_users": int(hists["test"].users.shape[0]),
        "test_users_unseen_in_train": int(sum(u not in train_users for u in hists["test"].users.tolist())),
        "train_samples": int(imps["train"].label.shape[0]),
        "test_samples": int(imps["test"].label.shape[0]),
        "train_positive_rate": float(imps["train"].label.mean()),
        "test_positive_rate": float(imps["test"].label.mean()),
        "train_seq_len": _lengths(hists["train"]),
        "test_seq_len": _lengths(hists["test"]),
        "categories_used": int(np.unique(cat.item_category).shape[0]),
        **items["stats"],
    }
    # The ceiling: the generator's own click probability without the per-impression noise.
    truth = {split: group_auc(imps[split].label, imps[split].prob, imps[split].user) for split in S.SPLITS}

    files, diag = {}, None
    with staged_release(out_dir) as staging:
        for split in S.SPLITS:
            files[f"{split}_samples"] = write_table(samples_table(imps[split], ids), staging, f"{split}_samples",
                                                    cfg.row_group_rows)
            step(f"{split} samples")
            files[f"{split}_user_features"] = write_table(user_table(hists[split], users, cat, ids), staging,
                                                          f"{split}_user_features", cfg.user_row_group_rows)
        step("user features")
        files["item_features"] = write_table(items["item_features"], staging, "item_features", cfg.row_group_rows)
        files["scl"] = write_table(items["scl"], staging, "scl", cfg.row_group_rows)
        step("item features + SCL")
        if run_diag:
            diag = release_diagnostics(staging, "test", max_users=cfg.diagnostics_max_users or None, progress=bars)
            step("diagnostics")
        publish_release(staging, out_dir, MANIFEST_NAME)
    manifest: Dict[str, object] = {
        "format": "taobao-mm-raw (synthetic)",
        "generator": "muse_rec.data.synth",
        "version": MANIFEST_VERSION,
        "config": cfg.to_dict(),
        "files": {k: os.path.basename(v) for k, v in files.items()},
        "stats": stats,
        "truth": truth,
        "diagnostics": diag,
    }
    bar.close()
    manifest["seconds"] = round(time.perf_counter() - t0, 2)
    write_manifest(out_dir, manifest)
    return manifest


def write_manifest(out_dir: str, manifest: Dict[str, object]) -> None:
    """Write ``_synth_manifest.json`` last, atomically: its presence marks a complete synthetic release."""
    tmp = os.path.join(out_dir, f".{MANIFEST_NAME}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
    os.replace(tmp, os.path.join(out_dir, MANIFEST_NAME))

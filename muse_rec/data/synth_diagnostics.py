"""Oracle diagnostics of a raw release: how much signal whole-history semantic search can find.

Hand-made (untrained) scores per impression, each ranked per user with GAUC:

* ``scl_topk_whole`` / ``scl_topk_recent``: mean of the top-k SCL cosines between the target
  and the behaviours of the whole history / of only the newest `recent` ones (MUSE's GSU +
  a crude ESU versus what DIN's window can see).
* ``scl_max_whole`` / ``scl_max_recent``: the single best cosine.
* ``scl_count_whole`` / ``scl_count_recent``: how many behaviours have cosine >= `similar`
  (a one-tier SimTier histogram: frequency of the target's semantic neighbourhood).
* ``category_whole``: how many behaviours share the target's category (SIM-hard's signal).

Works on any directory in the release layout (synthetic or the real Taobao-MM) because it reads
only the Parquet tables by raw id. Behaviours without an SCL vector score -1.1 and are never in a
top-k, as in MUSE's GSU.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from muse_rec.data import schema as S
from muse_rec.data.files import local_parquet_file

NO_SCL_SCORE = -1.1  # below every real cosine
DEFAULT_TOP_K = 20
DEFAULT_RECENT = 50  # DIN's window in the paper
DEFAULT_SIMILAR = 0.5  # cosine above which two behaviours count as the same interest


def group_auc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> Dict[str, float]:
    """GAUC over ``groups`` and global AUC, by the project's one exact implementation
    (`muse_rec.metrics`: ties count 0.5, groups with one label value skipped).

    Returns ``{"gauc": ..., "auc": ..., "groups": groups that count}``.
    """
    from muse_rec.metrics import auc, user_auc

    labels = np.asarray(labels, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    groups = np.asarray(groups)
    if not (labels.shape == scores.shape == groups.shape):
        raise ValueError(f"labels {labels.shape}, scores {scores.shape} and groups {groups.shape} differ in shape")
    g_codes = np.unique(groups, return_inverse=True)[1].astype(np.int64)
    per_group = user_auc(g_codes, scores, labels)
    return {"gauc": per_group.gauc(), "auc": auc(scores, labels), "groups": int(per_group.valid.sum())}


def _topk_mean(sim: np.ndarray, k: int) -> np.ndarray:
    """[n, L] -> [n] mean of the k largest valid entries (entries at NO_SCL_SCORE are invalid)."""
    if sim.shape[1] == 0:
        return np.full(sim.shape[0], NO_SCL_SCORE)
    kk = min(k, sim.shape[1])
    top = -np.partition(-sim, kk - 1, axis=1)[:, :kk]
    valid = top > NO_SCL_SCORE
    cnt = valid.sum(1)
    total = np.where(valid, top, 0.0).sum(1)
    return np.where(cnt > 0, total / np.maximum(cnt, 1), NO_SCL_SCORE)


def release_diagnostics(release_dir: str, split: str = "test", top_k: int = DEFAULT_TOP_K,
                        recent: int = DEFAULT_RECENT, similar: float = DEFAULT_SIMILAR, max_users: Optional[int] = None,
                        progress: bool = False) -> Dict[str, object]:
    """GAUC of the oracle scores on `split` of the release in `release_dir`.

    Args:
        release_dir: directory with the six release tables.
        split: "train" or "test" (samples and user features of that split).
        top_k: behaviours averaged by the top-k scores.
        recent: size of the newest-behaviours window.
        similar: cosine threshold of the count scores.
        max_users: score only the first `max_users` users of the user table (None = all).
    Returns:
        ``{"split", "samples", "users", "positive_rate", "<score>": {"gauc", "auc", "groups"}, ...}``.
    """
    if split not in S.SPLITS:
        raise ValueError(f"split must be one of {S.SPLITS}, got {split!r}")
    def read(name: str, cols: List[str]) -> pa.Table:
        with local_parquet_file(os.path.join(release_dir, S.TABLES[name].file)) as source:
            return pq.read_table(source, columns=cols)

    scl = read("scl", [S.ITEM, S.SCL_VECTOR])
    scl_ids = scl.column(S.ITEM).to_numpy()
    vec = scl.column(S.SCL_VECTOR).combine_chunks().flatten().to_numpy().astype(np.float32)
    vec = vec.reshape(scl_ids.shape[0], -1)
    vec /= np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12)
    o = np.argsort(scl_ids)
    scl_ids, vec = scl_ids[o], vec[o]
    feats = read("item_features", [S.ITEM, S.ITEM_CAT])
    f_ids, f_cat = feats.column(S.ITEM).to_numpy(), feats.column(S.ITEM_CAT).to_numpy()
    o = np.argsort(f_ids)
    f_ids, f_cat = f_ids[o], f_cat[o]

    def lookup(keys: np.ndarray, table_ids: np.ndarray) -> np.ndarray:
        pos = np.minimum(np.searchsorted(table_ids, keys), max(0, table_ids.shape[0] - 1))
        return np.where((table_ids.shape[0] > 0) & (table_ids[pos] == keys), pos, -1)

    uf = read(f"{split}_user_features", [S.USER, S.SEQ_ITEMS, S.SEQ_CATS])
    samples = read(f"{split}_samples", [S.LABEL, S.USER, S.ITEM])
    s_user = samples.column(S.USER).to_numpy()
    s_item = samples.column(S.ITEM).to_numpy()
    s_label = samples.column(S.LABEL).combine_chunks().flatten().to_numpy().reshape(-1, S.LABEL_WIDTH)[:, 1]
    u_ids = uf.column(S.USER).to_numpy()
    if max_users is not None:
        u_ids = u_ids[:max_users]
    seq_items = uf.column(S.SEQ_ITEMS).combine_chunks()
    seq_cats = uf.column(S.SEQ_CATS).combine_chunks()
    seq_off = seq_items.offsets.to_numpy()
    flat_items = seq_items.flatten().to_numpy()
    flat_cats = seq_cats.flatten().to_numpy()

    order = np.argsort(s_user, kind="stable")
    sorted_users = s_user[order]
    names = ["scl_topk_whole", "scl_topk_recent", "scl_max_whole", "scl_max_recent",
             "scl_count_whole", "scl_count_recent", "category_whole"]
    scores = {k: [] for k in names}
    keep = []
    it = range(u_ids.shape[0])
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"diagnostics ({split})", unit="user", leave=False)
    for r in it:
        lo, hi = np.searchsorted(sorted_users, u_ids[r], "left"), np.searchsorted(sorted_users, u_ids[r], "right")
        if lo == hi:
            continue
        idx = order[lo:hi]
        h_items = flat_items[seq_off[r]:seq_off[r + 1]]
        h_cats = flat_cats[seq_off[r]:seq_off[r + 1]]
        h_row = lookup(h_items, scl_ids)
        t_row = lookup(s_item[idx], scl_ids)
        h_vec = np.where((h_row >= 0)[:, None], vec[np.maximum(h_row, 0)], 0.0)
        t_vec = np.where((t_row >= 0)[:, None], vec[np.maximum(t_row, 0)], 0.0)
        # [n, L]. einsum, not `@`: per-user products are tiny and a multi-threaded BLAS spends
        # most of its time synchronising threads on a shared machine (measured 5x slower).
        sim = np.einsum("nd,ld->nl", t_vec, h_vec)
        sim[:, h_row < 0] = NO_SCL_SCORE
        win = sim[:, -recent:] if recent > 0 else sim[:, :0]
        scores["scl_topk_whole"].append(_topk_mean(sim, top_k))
        scores["scl_topk_recent"].append(_topk_mean(win, top_k))
        scores["scl_max_whole"].append(sim.max(1, initial=NO_SCL_SCORE))
        scores["scl_max_recent"].append(win.max(1, initial=NO_SCL_SCORE))
        scores["scl_count_whole"].append((sim >= similar).sum(1))
        scores["scl_count_recent"].append((win >= similar).sum(1))
        t_frow = lookup(s_item[idx], f_ids)
        t_cat = np.where(t_frow >= 0, f_cat[np.maximum(t_frow, 0)], 0)
        scores["category_whole"].append(((t_cat[:, None] == h_cats[None, :]) & (t_cat[:, None] != 0)).sum(1))
        keep.append(idx)
    if not keep:
        raise ValueError(f"{release_dir}: no {split} sample belongs to a user of {split}_user_features")
    idx = np.concatenate(keep)
    out: Dict[str, object] = {"split": split, "samples": int(idx.shape[0]),
                              "users": int(len(keep)), "positive_rate": float(s_label[idx].mean()),
                              "top_k": top_k, "recent": recent, "similar": similar}
    for k in names:
        out[k] = group_auc(s_label[idx], np.concatenate(scores[k]).astype(np.float64), s_user[idx])
    return out

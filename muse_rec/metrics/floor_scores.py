"""Per-sample scores of the model-free floors (see `muse_rec.metrics.floors` for the floors).

- `ItemCtr`: train impressions and clicks per item, the smoothed CTR (leave-one-out on train).
- `category_scores`: the share of the history in the target's category (SIM-hard's GSU rule).
- `scl_scores` / `split_scores`: the SCL cosine floors and the category floor, streamed over a split.

Missing vectors follow the GSU's rule (`NO_VECTOR_SCORE`): a sample whose target has no SCL
vector, or whose history window has none, has no cosine and scores -1.1, below every real cosine.
The category floor follows `CategoryGSU`'s rule (`NO_CATEGORY_SCORE`): a target of unknown category
(row 0) matches nothing, and neither does a behaviour of unknown category; a sample whose target's
category is unknown, or whose history window is empty, has no share and scores -1, below every real one.

Memory: the split is read in chunks of whole users (samples sorted by user, so each history
is gathered once; a user too large for one chunk is split into pieces); a chunk holds at most
``chunk_slots`` (sample, history position) pairs, i.e. at most ``chunk_slots x 128`` B of int8
vectors and ``chunk_slots x 4`` B of fp32 cosines (default 2^20: ~130 MB + 4 MB), however long
the histories (plus 16 MB a thread for the exact cosines of the top-K, `PICKED_PAIRS`, and, before
them, ``chunk_slots x 9`` B for the category floor's gathered categories and matches, 9 MB); the chunks scored at
once on several threads share that bound. Without SCL vectors only the category floor is streamed.
Only the per-sample scores (5 x 8 B per sample) and the metric inputs stay for the whole split: the
metrics need them all.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Deque, Dict, Iterator, Optional, Tuple, Union

import numpy as np
import torch

from muse_rec.data.prepared import POPULARITY_SPLIT, PreparedData
from muse_rec.data.vocab import PADDING_ROW
from muse_rec.metrics.floor_options import FloorOptions, FloorsError
from muse_rec.modules.cosine import grouped_cosine_topk
from muse_rec.modules.selection import NO_VECTOR_SCORE, decode_cosine_selection

SCL_FLOORS = ("cos_mean_history", "cos_mean_recent", "mean_topk_similarity")
# The streamed floor that reads no SCL vector (it reads the behaviours' categories).
CATEGORY_FLOOR = "category_share"
# `category_share` of a sample without one (unknown target category, empty history window): below every share.
NO_CATEGORY_SCORE = -1.0
# The category row meaning "unknown" (`CategoryGSU`'s ``unknown_category``): it matches nothing.
UNKNOWN_CATEGORY = PADDING_ROW
# (sample, top-K slot) pairs whose vectors `_picked_cosines` gathers at once: 2^14 x 128 x 8 B = 16 MB.
PICKED_PAIRS = 1 << 14


# ----------------------------------------------------------------------------------------------
# Popularity: smoothed train CTR per item.
# ----------------------------------------------------------------------------------------------


@dataclass
class SparseCounts:
    """Counts of a few item rows out of a vocabulary too large for an ``[n_items]`` array (243M rows)."""

    rows: np.ndarray  # [C] int64 sorted distinct item rows
    counts: np.ndarray  # [C] int64 their counts

    @classmethod
    def of(cls, chunks: Iterator[np.ndarray]) -> "SparseCounts":
        """Occurrences of each row over ``chunks`` of item rows: one ``np.unique`` per chunk, then one merge."""
        rows, counts = [], []
        for c in chunks:
            r, n = np.unique(c, return_counts=True)
            rows.append(r.astype(np.int64))
            counts.append(n.astype(np.int64))
        if not rows:
            return cls(np.zeros(0, np.int64), np.zeros(0, np.int64))
        merged, inverse = np.unique(np.concatenate(rows), return_inverse=True)
        return cls(merged, np.bincount(inverse, weights=np.concatenate(counts)).astype(np.int64))

    def __getitem__(self, items: np.ndarray) -> np.ndarray:
        """``[n]`` int64 counts of item rows ``items [n]`` (0 for rows never counted)."""
        items = np.asarray(items)
        if self.rows.size == 0:
            return np.zeros(items.shape, np.int64)
        pos = np.minimum(np.searchsorted(self.rows, items), self.rows.size - 1)
        return np.where(self.rows[pos] == items, self.counts[pos], 0)


@dataclass
class ItemCtr:
    """Impressions and clicks per item row on the split the popularity floor is fitted on, and the
    smoothing that turns them into a CTR."""

    impressions: Union[np.ndarray, SparseCounts]  # indexable by item rows: [n] -> [n] counts
    clicks: SparseCounts  # clicks of the items with >= 1 click
    prior: float  # the split's CTR
    strength: float  # a

    @classmethod
    def from_train(cls, data: PreparedData, split: str, strength: float, chunk: int = 1 << 22) -> "ItemCtr":
        """Count clicks (and impressions) per target item over ``split``, ``chunk`` samples at a time.

        Impressions of the split ``prepare`` counts them on (`POPULARITY_SPLIT`) are its
        ``items/popularity.npy``, memory-mapped; on any other split they are counted here, as the
        clicks are, so both come from the same samples (a CTR above 1 otherwise).
        """
        n = data.num_samples(split)
        if n == 0:
            raise FloorsError(f"{data.path}: split {split!r} has no samples; the popularity floor needs train clicks")
        items = data.array(f"{split}/sample_items.npy")

        def targets(clicked_only: bool) -> Iterator[np.ndarray]:
            for lo in range(0, n, chunk):
                rows = np.asarray(items[lo:lo + chunk])
                yield rows[data.labels(split, slice(lo, lo + chunk)) == 1] if clicked_only else rows

        clicks = SparseCounts.of(targets(clicked_only=True))
        impressions = data.item_popularity() if split == POPULARITY_SPLIT else SparseCounts.of(targets(False))
        return cls(impressions, clicks, float(clicks.counts.sum()) / n, strength)

    def ctr(self, items: np.ndarray, own_labels: Optional[np.ndarray] = None) -> np.ndarray:
        """``[n]`` float64 smoothed CTR of item rows ``items [n]``; with ``own_labels`` (train samples)
        leave-one-out, so a train sample's feature does not contain its own label. A target on
        `PADDING_ROW` (no item id: raw id 0, which gets no vocabulary row) gets the prior: the
        counts there pool every such impression, whatever its item, and made the "item's CTR" of an
        unknown target the click rate of all of them."""
        clicks = self.clicks[items].astype(np.float64)
        imps = np.asarray(self.impressions[items]).astype(np.float64)
        if own_labels is not None:
            clicks, imps = clicks - own_labels, imps - 1.0
        unknown = np.asarray(items) == PADDING_ROW
        clicks, imps = np.where(unknown, 0.0, clicks), np.where(unknown, 0.0, imps)
        a = self.strength
        return (clicks + a * self.prior) / (imps + a)


# ----------------------------------------------------------------------------------------------
# SCL floors: one chunk of samples at a time, histories gathered once per user.
# ----------------------------------------------------------------------------------------------


def tie_exact_cosine(dot: np.ndarray, sq_a: np.ndarray, sq_b: np.ndarray) -> np.ndarray:
    """Cosine ``dot / sqrt(sq_a * sq_b)`` of integer vectors from their exact dot product and squared
    norms (float64 holding integers), as one monotone function of one correctly rounded value, so
    equal cosines give equal floats; the sentinel
    (`NO_VECTOR_SCORE`) where either vector is zero. Shapes broadcast.

    Why not ``dot / (|a| |b|)`` (or fp32, as the GSU selects): the two square roots round apart, so
    cosines that are equal, e.g. a target that is also in the history (exactly 1), come out as 1.0
    or 0.99999994 depending on the vector. GAUC counts a tie as half a pair; rounding noise would
    order those pairs instead (it moved ``mean_topk_similarity`` by 0.0004-0.0012 GAUC on a set with
    repeated items). Here ``s = dot |dot| / (sq_a sq_b)`` is the correctly rounded value of an exact
    rational while ``sq_a sq_b < 2^53`` (two SCL rows: < (128 x 128^2)^2 = 4.4e12), and
    ``sign(s) sqrt(|s|)`` is one monotone function of it: equal cosines give equal floats. Past
    2^53 (sums of thousands of rows) it is still within an ulp or two.
    """
    product = sq_a * sq_b
    ok = product > 0
    s = np.clip(dot * np.abs(dot) / np.where(ok, product, 1.0), -1.0, 1.0)
    return np.where(ok, np.sign(s) * np.sqrt(np.abs(s)), NO_VECTOR_SCORE)


def _cos_with_sum(target: np.ndarray, summed: np.ndarray) -> np.ndarray:
    """``[n]`` float64 cosine of int8 ``target [n, D]`` with summed vectors ``[n, D]``; the
    sentinel where either is zero. A sum of vectors points where their mean points."""
    t, s = target.astype(np.float64), summed.astype(np.float64)  # integers: exact sums below
    return tie_exact_cosine(np.einsum("nd,nd->n", t, s), np.einsum("nd,nd->n", t, t), np.einsum("nd,nd->n", s, s))


def _picked_cosines(target: np.ndarray, keys: np.ndarray, index: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """``[n, k]`` float64 `tie_exact_cosine` of each target ``[n, D]`` int8 with the history positions
    ``positions [n, k]`` of its user ``index [n]`` in ``keys [U, L, D]`` int8 (the sentinel where a
    vector is zero). Gathered ``PICKED_PAIRS`` (sample, slot) pairs at a time: 16 MB of float64."""
    n, k = positions.shape
    out = np.empty((n, k), np.float64)
    t = target.astype(np.float64)
    sq_t = np.einsum("nd,nd->n", t, t)
    step = max(1, PICKED_PAIRS // max(k, 1))
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        v = keys[index[lo:hi, None], positions[lo:hi]].astype(np.float64)  # [s, k, D]
        out[lo:hi] = tie_exact_cosine(np.einsum("skd,sd->sk", v, t[lo:hi]), sq_t[lo:hi, None],
                                      np.einsum("skd,skd->sk", v, v))
    return out


def _histories(data: PreparedData, split: str, user_rows: np.ndarray, seq_len: int,
               which: str = "items") -> Tuple[np.ndarray, np.ndarray]:
    """Right-aligned histories of ``user_rows [U]``: item rows (``which`` "items") or category rows ("cats")
    ``[U, Lmax]`` int64 (0 = padding) and ``mask [U, Lmax]`` bool, newest behaviour last, the newest
    ``seq_len`` kept (0 = all)."""
    start, end = data.history_bounds(split, user_rows)
    length = end - start
    if seq_len:
        length = np.minimum(length, seq_len)
    width = int(length.max()) if length.size else 0
    pos = np.arange(width, dtype=np.int64)
    mask = pos[None, :] >= (width - length)[:, None]
    items = np.zeros((user_rows.size, width), np.int64)
    items[mask] = data.seq_rows(split, which, ((end - width)[:, None] + pos[None, :])[mask])
    return items, mask


def category_scores(data: PreparedData, split: str, idx: np.ndarray, opts: FloorOptions) -> np.ndarray:
    """``[n]`` float64 ``category_share`` of samples ``idx [n]`` (positions in ``split``): the share of the
    user's history window (the newest ``opts.seq_len`` behaviours, 0 = all, as the SCL floors) whose category
    is the target's (``items/attrs.npy``'s category, as the models read it). SIM-hard's rule (`CategoryGSU`):
    a target of unknown category (`UNKNOWN_CATEGORY`) matches nothing, nor does a behaviour of unknown
    category; such a target, a sample without a user row and an empty window score `NO_CATEGORY_SCORE`.
    Every behaviour of the window counts in the denominator, matched or not. Within one user the history
    is the same, so the share orders the user's samples as the count of matches does."""
    n = idx.size
    out = np.full(n, NO_CATEGORY_SCORE)
    target = data.target_attrs(data.item_rows(split, idx))[:, 0].astype(np.int64)  # [n]
    users = data.user_rows(split, idx)
    known = (users >= 0) & (target != UNKNOWN_CATEGORY)
    if not known.any():
        return out
    rows, index = np.unique(users[known], return_inverse=True)
    cats, mask = _histories(data, split, rows, opts.seq_len, "cats")  # [U, Lmax]
    length = mask.sum(axis=1)[index]  # [m]
    # Padding is row 0 and a known target is not: only the window's behaviours can match.
    hits = (cats[index] == target[known][:, None]).sum(axis=1)  # [m]; [m, Lmax] <= chunk_slots pairs
    out[known] = np.where(length > 0, hits / np.maximum(length, 1), NO_CATEGORY_SCORE)
    return out


def scl_scores(data: PreparedData, split: str, idx: np.ndarray, opts: FloorOptions) -> Dict[str, np.ndarray]:
    """The three SCL floors of samples ``idx [n]`` (positions in ``split``): name -> ``[n]`` float64."""
    scl = data.scl()
    n = idx.size
    target = np.asarray(scl[data.item_rows(split, idx)])  # [n, D] int8
    users = data.user_rows(split, idx)
    has_user = users >= 0
    out = {name: np.full(n, NO_VECTOR_SCORE) for name in SCL_FLOORS}
    if not has_user.any():
        return out
    rows, index = np.unique(users[has_user], return_inverse=True)
    items, mask = _histories(data, split, rows, opts.seq_len)
    if items.shape[1] == 0:
        return out
    keys = np.asarray(scl[items])  # [U, Lmax, D] int8; padding is row 0, the zero vector
    # int32 is exact up to 2^31 / 127 = 16.9M behaviours per user and sums ~2.5x faster than int64.
    summed = keys.sum(axis=1, dtype=np.int32)  # [U, D]
    recent = keys[:, -opts.recent:].sum(axis=1, dtype=np.int32)
    out["cos_mean_history"][has_user] = _cos_with_sum(target[has_user], summed[index])
    out["cos_mean_recent"][has_user] = _cos_with_sum(target[has_user], recent[index])
    # Top-K as the cosine GSU selects over a user's history (`grouped_cosine_topk`, what `CosineGSU` runs
    # on the grouped training shape): its kernel, its sentinels, its order among equal fp32 cosines (lowest
    # position first; `torch.topk` kept any of them, so the floor could average other picks than the GSU's).
    index_t = torch.from_numpy(index.astype(np.int64))
    values, positions = grouped_cosine_topk(torch.from_numpy(target[has_user]), torch.from_numpy(keys),
                                            torch.from_numpy(mask), index_t, opts.top_k)
    # Decoded at the width returned (min(K, width)), not padded to K: padding slots hold no score and do
    # not change the mean, and a K far beyond every history would allocate [chunk, K].
    picked = decode_cosine_selection(values, positions, values.shape[1])
    has_score = picked.has_score.numpy()
    # The GSU's fp32 cosines chose the K; their values are averaged exactly (`tie_exact_cosine`),
    # summed one after another in descending order (cumsum is sequential; sum is pairwise, so its
    # rounding would depend on the chunk's width): float addition is not associative, and equal
    # multisets of cosines must give equal means wherever their samples are.
    exact = np.where(has_score, _picked_cosines(target[has_user], keys, index, picked.indices.numpy()), -np.inf)
    ordered = -np.sort(-exact, axis=1)
    count = has_score.sum(1)
    running = np.cumsum(np.where(np.isfinite(ordered), ordered, 0.0), axis=1)
    total = running[np.arange(count.size), np.maximum(count - 1, 0)]
    out["mean_topk_similarity"][has_user] = np.where(count > 0, total / np.maximum(count, 1), NO_VECTOR_SCORE)
    return out


def _user_chunks(users_sorted: np.ndarray, lengths: np.ndarray, max_samples: int, max_slots: int) -> Iterator[slice]:
    """Slices of ``users_sorted [n]`` (ascending user rows), each with at most ``max_samples``
    samples and ``samples x longest history <= max_slots``, holding whole users (a history is
    gathered once per chunk), as many as fit.

    A user who alone breaks a bound (many impressions over a long history, e.g. ``--seq-len 0``
    on data without the release's cap of 1,000) is split into pieces that keep both, so the memory
    stays bounded; its history is then gathered once per piece. A piece holds one sample at least,
    so a single history longer than ``max_slots`` is still one chunk.

    Args:
        lengths: ``[n]`` history length each sample's floors see.
    """
    n = users_sorted.size
    if n == 0:
        return
    starts = np.flatnonzero(np.concatenate(([True], users_sorted[1:] != users_sorted[:-1])))
    ends = np.append(starts[1:], n)
    group_len = lengths[starts]
    g = 0
    while g < starts.size:
        h = min(starts.size, g + max_samples)  # a user has >= 1 sample: never more groups than samples
        samples = ends[g:h] - starts[g]
        ok = (samples <= max_samples) & (samples * np.maximum.accumulate(group_len[g:h]) <= max_slots)
        if not ok[0]:  # this user alone breaks a bound: pieces of its samples
            per = max(1, min(max_samples, max_slots // max(int(group_len[g]), 1)))
            for lo in range(int(starts[g]), int(ends[g]), per):
                yield slice(lo, min(lo + per, int(ends[g])))
            g += 1
            continue
        take = ok.size if ok.all() else int(np.argmin(ok))  # ok is monotone: leading Trues
        yield slice(int(starts[g]), int(ends[g + take - 1]))
        g += take


def _history_lengths(data: PreparedData, split: str, users: np.ndarray, seq_len: int) -> np.ndarray:
    """``[n]`` int64 behaviours the floors see per sample (0 without a user row)."""
    start, end = data.history_bounds(split, np.where(users >= 0, users, 0))
    length = np.where(users >= 0, end - start, 0)
    return np.minimum(length, seq_len) if seq_len else length


def popularity_scores(data: PreparedData, split: str, idx: np.ndarray, ctr: ItemCtr,
                      leave_one_out: bool = False) -> np.ndarray:
    """``[n]`` float64 popularity floor of samples ``idx [n]`` of ``split`` (`ItemCtr.ctr`); with
    ``leave_one_out`` each sample's own label is taken out of its item's counts (samples of the fit split)."""
    labels = data.labels(split, idx).astype(np.float64)
    return ctr.ctr(data.item_rows(split, idx).astype(np.int64), labels if leave_one_out else None)


def split_scores(data: PreparedData, split: str, idx: np.ndarray, opts: FloorOptions, ctr: ItemCtr,
                 with_scl: bool, leave_one_out: bool = False,
                 on_chunk: Optional[Callable[[int], None]] = None) -> Dict[str, np.ndarray]:
    """Floor scores of samples ``idx`` (any order, streamed in user order): name -> ``[n]``: popularity,
    the category floor and, ``with_scl``, the SCL floors. ``on_chunk(done)`` is called after each chunk of
    users with the samples scored so far."""
    n = idx.size
    out = {"popularity": popularity_scores(data, split, idx, ctr, leave_one_out)}
    for name in (CATEGORY_FLOOR, *(SCL_FLOORS if with_scl else ())):
        out[name] = np.empty(n, np.float64)
    users = data.user_rows(split, idx)
    by_user = np.argsort(users, kind="stable")  # one user's samples share a chunk (history read once)
    users_sorted = users[by_user]
    lengths = _history_lengths(data, split, users_sorted, opts.seq_len)

    def score(cut: slice) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
        part = np.sort(by_user[cut])  # ascending positions read the memory maps forward
        scores = {CATEGORY_FLOOR: category_scores(data, split, idx[part], opts)}
        if with_scl:
            scores.update(scl_scores(data, split, idx[part], opts))
        return part, scores

    done = 0
    with _chunks_in_parallel() as workers, \
            ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        # The chunks in flight share the memory bound: ``chunk_slots`` pairs in all, not per thread.
        cuts = _user_chunks(users_sorted, lengths, opts.chunk_samples, max(1, opts.chunk_slots // workers))
        for part, scores in _bounded_map(pool, score, cuts, workers):
            for name, v in scores.items():
                out[name][part] = v
            done += part.size
            if on_chunk is not None:
                on_chunk(done)
    return out


@contextmanager
def _chunks_in_parallel() -> Iterator[int]:
    """Score chunks on as many threads as torch may use (`torch.get_num_threads()`), each chunk on one
    (the pool's threads start at one intra-op thread; the caller's count is given back at the end).

    Why not torch's intra-op threads: a chunk is some twenty small ops (a GEMM per few hundred
    history positions, norms, a top-K), each an OpenMP region that ends at a barrier. When
    another job holds one of the cores, every barrier waits for a thread the kernel has not
    scheduled: on 2 shared cores 2 intra-op threads scored a split 3-10x slower than one (measured:
    68 s vs 20 s with a busy loop on the other core, 17 s this way; 3:26 vs 0:19 beside another
    job). Whole chunks on separate threads never wait for each other (the ops release the GIL), so a
    busy core only slows its own chunk. The results are the same: each chunk is scored exactly as
    before (int8 dot products are exact in fp32, `muse_rec.modules.cosine`).
    """
    workers = max(1, torch.get_num_threads())
    torch.set_num_threads(1)
    try:
        yield workers
    finally:
        torch.set_num_threads(workers)


def _bounded_map(pool: ThreadPoolExecutor, fn: Callable, items: Iterator, ahead: int) -> Iterator:
    """``fn`` over ``items`` on ``pool``, results in order, at most ``ahead`` chunks in flight (the
    caller sizes them so that together they hold at most ``chunk_slots`` pairs)."""
    pending: Deque[Future] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()

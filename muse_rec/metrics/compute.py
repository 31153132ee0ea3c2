"""All evaluation metrics of one complete prediction set: the dict `PredictionAccumulator` returns.

Input is the whole evaluation set in one process (the accumulator gathers ranks first). The
samples are sorted once in `canonical_order`; every metric (and every float sum) is then taken
in that order, so the result is bit-identical for any split of the same samples across ranks
and batches.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from muse_rec.metrics.kernels import (
    DEFAULT_LOGLOSS_EPS,
    UserAuc,
    auc_from_score_ranks,
    canonical_order,
    check_scores_labels,
    dense_rank,
    logloss,
    user_auc_sorted,
)
from muse_rec.metrics.grouped import (
    DEFAULT_POPULARITY_EDGES,
    DEFAULT_SEQ_LEN_EDGES,
    as_bins,
    grouped_metrics_sorted,
)


def real_sample_mask(weights: np.ndarray, where: str = "weights") -> np.ndarray:
    """``[N]`` bool, True for real samples (weight 1); weight 0 marks padding rows.

    Metrics count impressions, so any other weight is rejected rather than guessed at.
    """
    w = np.asarray(weights)
    if w.size and not np.all((w == 0) | (w == 1)):
        bad = w[(w != 0) & (w != 1)][0]
        raise ValueError(f"{where}: weights must be 0 (padding) or 1 (real sample), found {bad}")
    return w == 1


def check_integer_keys(keys: np.ndarray, name: str, where: str = "predictions") -> None:
    """ValueError unless ``keys`` ``[N]`` (user or item ids) have an integer dtype. Float ids are cut to int64
    further on: 1.5 and 1.7 became one user, and ids past 2^53 (hashed ids, a pandas column holding a NaN) are
    merged by the float already, so GAUC pooled different users' impressions without a word."""
    if not np.issubdtype(keys.dtype, np.integer):
        raise ValueError(f"{where}: {name} must be integer ids, got dtype {keys.dtype}; pass them as int64")


def compute_metrics_and_users(
    user_keys: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    weights: Optional[np.ndarray] = None,
    seq_lengths: Optional[np.ndarray] = None,
    item_popularity: Optional[np.ndarray] = None,
    seq_len_edges: Sequence[float] | int = DEFAULT_SEQ_LEN_EDGES,
    popularity_edges: Sequence[float] | int = DEFAULT_POPULARITY_EDGES,
    logloss_eps: float = DEFAULT_LOGLOSS_EPS,
    no_user_key: Optional[int] = None,
) -> Tuple[Dict[str, Any], UserAuc]:
    """GAUC, AUC, logloss and grouped GAUC of a complete evaluation set, and the per-user AUCs its GAUC averages.

    Args:
        user_keys: ``[N]`` int64 user keys (raw ids; any int64 works).
        labels: ``[N]`` 0/1 clicks.
        scores: ``[N]`` predicted click probabilities in ``[0, 1]``.
        weights: optional ``[N]`` 0/1; weight-0 rows (padding) are dropped first.
        seq_lengths: optional ``[N]`` behaviour-sequence length of each sample's user.
        item_popularity: optional ``[N]`` train-target frequency of each sample's target item.
        seq_len_edges: bin edges for ``by_seq_length`` (or an int: that many quantile bins).
        popularity_edges: bin edges for ``by_popularity`` (or an int: quantile bins).
        logloss_eps: probabilities are clipped to ``[eps, 1 - eps]`` for logloss.
        no_user_key: a user key that marks samples of no user (None: every key is a user). Such samples
            count in AUC, logloss and ``samples`` but form no GAUC user, in the groups too.

    Returns:
        ``samples``, ``users``, ``positives``, ``ctr``, ``mean_score``, ``gauc``, ``gauc_users``,
        ``gauc_samples``, ``auc``, ``logloss``, ``logloss_eps``, and, when the optional column
        was given, ``by_seq_length`` / ``by_popularity`` (lists of per-group dicts, see
        `grouped_metrics_sorted`), and with ``no_user_key`` ``samples_without_user`` (how many samples
        GAUC left out for it). Undefined values (e.g. no positives) are NaN. Beside it, the `UserAuc` of
        every user (less ``no_user_key``): what a floor check weighs a gap against (`floor_noise`), kept
        out of the dict, which is broadcast to every rank and written as metrics.json.
    """
    user_keys = np.asarray(user_keys)
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    n = scores.shape[0]
    optional = {"seq_lengths": seq_lengths, "item_popularity": item_popularity, "weights": weights}
    for name, col in [("user_keys", user_keys), ("labels", labels)] + list(optional.items()):
        if col is not None and np.shape(col) != (n,):
            raise ValueError(f"{name} has shape {np.shape(col)}, expected ({n},) like scores")
    if weights is not None:  # first: a padding row holds no real score or label to check
        keep = real_sample_mask(weights)
        user_keys, labels, scores = user_keys[keep], labels[keep], scores[keep]
        seq_lengths = None if seq_lengths is None else np.asarray(seq_lengths)[keep]
        item_popularity = None if item_popularity is None else np.asarray(item_popularity)[keep]
    check_scores_labels(scores, labels)
    check_integer_keys(user_keys, "user_keys")
    if scores.size and (scores.min() < 0.0 or scores.max() > 1.0):
        raise ValueError(
            f"scores must be probabilities in [0, 1], found range [{scores.min()}, {scores.max()}]; "
            "pass sigmoid(logits)"
        )

    score_rank, n_scores = dense_rank(scores)
    order = canonical_order(user_keys, scores, labels, score_rank)
    u, s, y = user_keys[order].astype(np.int64), scores[order], labels[order].astype(np.int8)
    r = score_rank[order]
    del score_rank
    positives = int(np.count_nonzero(y))
    per_user = user_auc_sorted(u, s, y).without(no_user_key)
    count = int(s.shape[0])
    out: Dict[str, Any] = {
        "samples": count,
        "users": int(per_user.user_keys.size),
        **({} if no_user_key is None else {"samples_without_user": count - int(per_user.n_samples.sum())}),
        "positives": positives,
        "ctr": positives / count if count else float("nan"),
        "mean_score": float(np.mean(s)) if count else float("nan"),
        "gauc": per_user.gauc(),
        "gauc_users": int(per_user.valid.sum()),
        "gauc_samples": per_user.gauc_samples,
        "auc": auc_from_score_ranks(r, y, n_scores),
        "logloss": logloss(s, y, logloss_eps),
        "logloss_eps": float(logloss_eps),
    }
    if seq_lengths is not None:
        v = np.asarray(seq_lengths)[order]
        bins = as_bins(seq_len_edges, v, "seq_length")
        out["by_seq_length"] = grouped_metrics_sorted(bins.assign(v), bins, u, s, y, r, n_scores,
                                                      no_user_key)
    if item_popularity is not None:
        v = np.asarray(item_popularity)[order]
        bins = as_bins(popularity_edges, v, "item_popularity")
        out["by_popularity"] = grouped_metrics_sorted(bins.assign(v), bins, u, s, y, r, n_scores,
                                                     no_user_key)
    return out, per_user


def compute_metrics(
    user_keys: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    weights: Optional[np.ndarray] = None,
    seq_lengths: Optional[np.ndarray] = None,
    item_popularity: Optional[np.ndarray] = None,
    seq_len_edges: Sequence[float] | int = DEFAULT_SEQ_LEN_EDGES,
    popularity_edges: Sequence[float] | int = DEFAULT_POPULARITY_EDGES,
    logloss_eps: float = DEFAULT_LOGLOSS_EPS,
    no_user_key: Optional[int] = None,
) -> Dict[str, Any]:
    """The metrics dict of `compute_metrics_and_users` (the same arguments), without the per-user AUCs."""
    return compute_metrics_and_users(user_keys, labels, scores, weights, seq_lengths, item_popularity, seq_len_edges,
                                     popularity_edges, logloss_eps, no_user_key)[0]

"""GAUC and AUC per group of samples: by user sequence length and by target-item popularity.

The paper (Fig. 5, 6) reports that MUSE's gains grow with the length of the user's behaviour
sequence and are largest on unpopular target items. These breakdowns reproduce that analysis.

Groups are half-open bins ``[lo, hi)`` over a per-sample value. Within a group, GAUC follows
the project's definition restricted to the group's samples: a user's impressions inside the
group form that user's set (a user can fall into several popularity groups, one per target).

Default bins (all overridable):

- sequence length: ``[0, 50) [50, 200) [200, 500) [500, inf)``; Taobao-MM caps sequences at
  1000, so the last bin is the paper's ``[500, 1000]``.
- popularity = number of times the target item is a TRAIN target: fixed decades
  ``[0, 1) [1, 10) [10, 100) [100, 1000) [1000, inf)``. Fixed edges (rather than quantiles) keep
  groups comparable across runs and datasets, and do not collapse on the heavy ties of integer
  counts (many test targets never occur in train: popularity 0). `quantile_edges` gives
  equal-sample quantile edges when those are wanted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from muse_rec.metrics.kernels import auc_from_score_ranks, user_auc_sorted

DEFAULT_SEQ_LEN_EDGES: Tuple[float, ...] = (0, 50, 200, 500, math.inf)
DEFAULT_POPULARITY_EDGES: Tuple[float, ...] = (0, 1, 10, 100, 1000, math.inf)


def _fmt_edge(x: float) -> str:
    if math.isinf(x):
        return "inf"
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


@dataclass(frozen=True)
class Bins:
    """Half-open bins ``[edges[i], edges[i+1])``; values outside every bin are an error.

    Args:
        edges: strictly increasing bin edges, at least two; the last may be ``math.inf``.
        name: what is binned (used in error messages), e.g. ``"seq_length"``.
    """

    edges: Tuple[float, ...]
    name: str = "value"

    def __post_init__(self) -> None:
        e = np.asarray(self.edges, dtype=np.float64)
        if e.ndim != 1 or e.size < 2 or np.any(np.isnan(e)) or np.any(np.diff(e) <= 0):
            raise ValueError(f"{self.name} bin edges must be >= 2 strictly increasing numbers, got {self.edges}")
        object.__setattr__(self, "edges", tuple(float(x) for x in e))

    def __len__(self) -> int:
        return len(self.edges) - 1

    def labels(self) -> List[str]:
        """``"[lo,hi)"`` per bin."""
        return [f"[{_fmt_edge(lo)},{_fmt_edge(hi)})" for lo, hi in zip(self.edges[:-1], self.edges[1:])]

    def assign(self, values: np.ndarray) -> np.ndarray:
        """``[N]`` int64 bin index of each of ``values`` ``[N]``; ValueError if any lies outside."""
        v = np.asarray(values, dtype=np.float64)
        idx = np.searchsorted(np.asarray(self.edges), v, side="right") - 1
        outside = (idx < 0) | (idx >= len(self)) | np.isnan(v)
        if np.any(outside):
            bad = v[outside][0]
            raise ValueError(
                f"{self.name} value {bad} lies outside the bins [{_fmt_edge(self.edges[0])}, "
                f"{_fmt_edge(self.edges[-1])}); widen the {self.name} edges"
            )
        return idx.astype(np.int64)


def quantile_edges(values: np.ndarray, n_groups: int) -> Tuple[float, ...]:
    """Edges splitting ``values`` ``[N]`` into about ``n_groups`` equal-count bins.

    Duplicate quantiles (heavy ties) are merged, so fewer bins may come back. The last edge is
    ``inf`` so the maximum falls inside.
    """
    v = np.asarray(values, dtype=np.float64)
    if n_groups < 1:
        raise ValueError(f"n_groups must be >= 1, got {n_groups}")
    if v.size == 0:
        raise ValueError("quantile_edges needs at least one value")
    inner = np.quantile(v, np.linspace(0.0, 1.0, n_groups + 1)[1:-1]) if n_groups > 1 else np.zeros(0)
    edges = np.unique(np.concatenate(([v.min()], inner)))
    return tuple(float(x) for x in edges) + (math.inf,)


def grouped_metrics_sorted(
    group_of_sample: np.ndarray,
    bins: Bins,
    user_sorted: np.ndarray,
    scores_sorted: np.ndarray,
    labels_sorted: np.ndarray,
    score_rank_sorted: np.ndarray,
    n_scores: int,
    no_user_key: Optional[int] = None,
) -> List[Dict[str, Any]]:
    """Metrics per bin for samples already sorted by (user, score) (`canonical_order`).

    Selecting a subset keeps the (user, score) order, so no group is sorted again: O(N) per group.

    Args:
        group_of_sample: ``[N]`` int64 bin index (from `Bins.assign`), aligned with the sorted arrays.
        bins: the bins, for labels and edges.
        user_sorted, scores_sorted, labels_sorted: ``[N]`` samples in (user, score) order.
        score_rank_sorted: ``[N]`` dense rank of each score among all N (`dense_rank`), so
            group AUCs are counted without sorting again.
        n_scores: number of distinct scores (ranks are ``< n_scores``).
        no_user_key: a user key whose samples belong to no user (`compute_metrics`): in a group's
            ``samples``, ``positives`` and AUC, in no GAUC user; None: every key is a user.

    Returns:
        One dict per bin, in bin order: ``group`` (label), ``lo``, ``hi``, ``samples``,
        ``users``, ``positives``, ``gauc_users``, ``gauc_samples``, ``gauc``, ``auc`` (NaN where
        undefined, e.g. an empty group), and with ``no_user_key`` ``samples_without_user``.
    """
    out: List[Dict[str, Any]] = []
    for g, label in enumerate(bins.labels()):
        mask = group_of_sample == g
        u, s, y = user_sorted[mask], scores_sorted[mask], labels_sorted[mask]
        per_user = user_auc_sorted(u, s, y).without(no_user_key)
        samples = int(mask.sum())
        out.append(
            {
                "group": label,
                "lo": bins.edges[g],
                "hi": bins.edges[g + 1],
                "samples": samples,
                "users": int(per_user.user_keys.size),
                **({} if no_user_key is None else {"samples_without_user": samples - int(per_user.n_samples.sum())}),
                "positives": int(np.count_nonzero(y)),
                "gauc_users": int(per_user.valid.sum()),
                "gauc_samples": per_user.gauc_samples,
                "gauc": per_user.gauc(),
                "auc": auc_from_score_ranks(score_rank_sorted[mask], y, n_scores),
            }
        )
    return out


def as_bins(edges: Sequence[float] | int, values: np.ndarray, name: str) -> Bins:
    """Bins from explicit ``edges``, or from ``edges`` quantiles of ``values`` when it is an int."""
    if isinstance(edges, (int, np.integer)) and not isinstance(edges, bool):
        return Bins(quantile_edges(values, int(edges)), name=name)
    return Bins(tuple(edges), name=name)

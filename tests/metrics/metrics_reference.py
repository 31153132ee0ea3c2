"""Slow, obviously correct metric references and a tie-heavy random prediction generator.

Shared by the metric tests; deliberately written as plain loops over (positive, negative)
pairs so they share no logic with the rank-based implementation under test.
"""
from __future__ import annotations

import math
from typing import Dict, List

import numpy as np


def pairwise_auc(scores: List[float], labels: List[int]) -> float:
    """AUC by counting every (positive, negative) pair: 1 if ordered right, 0.5 if tied."""
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    if not pos or not neg:
        return float("nan")
    wins = 0.0
    for p in pos:
        for n in neg:
            wins += 1.0 if p > n else 0.5 if p == n else 0.0
    return wins / (len(pos) * len(neg))


def pairwise_gauc(users: List[int], scores: List[float], labels: List[int]) -> float:
    """sum_u n_u AUC_u / sum_u n_u over users with both labels, AUC_u by pair counting."""
    by_user: Dict[int, List[int]] = {}
    for i, u in enumerate(users):
        by_user.setdefault(u, []).append(i)
    num = den = 0.0
    for idx in by_user.values():
        a = pairwise_auc([scores[i] for i in idx], [labels[i] for i in idx])
        if not math.isnan(a):
            num += len(idx) * a
            den += len(idx)
    return num / den if den else float("nan")


def reference_logloss(scores: List[float], labels: List[int], eps: float) -> float:
    total = 0.0
    for s, y in zip(scores, labels):
        p = min(max(s, eps), 1.0 - eps)
        total += -math.log(p) if y == 1 else -math.log(1.0 - p)
    return total / len(scores)


def random_predictions(seed: int, n_users: int = 150) -> Dict[str, np.ndarray]:
    """Tie-heavy predictions: users of size 1, all-positive and all-negative users, 10% padding.

    Returns columns user_keys (full-range int64), item_keys, labels (float32 0/1), scores
    (float32, many exact ties), weights (float32 0/1), seq_lengths, item_popularity, in a
    shuffled order.
    """
    rng = np.random.default_rng(seed)
    keys = rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, size=n_users, dtype=np.int64)
    users, labels = [], []
    for k, key in enumerate(keys):
        kind = k % 5
        size = 1 if kind == 0 else int(rng.integers(2, 25))
        if kind == 1:
            y = np.ones(size)
        elif kind == 2:
            y = np.zeros(size)
        else:
            y = (rng.random(size) < 0.3).astype(np.float64)
        users.append(np.full(size, key))
        labels.append(y)
    u = np.concatenate(users)
    y = np.concatenate(labels).astype(np.float32)
    n = u.size
    # Half of the scores from 5 values (massive ties, including exactly 0 and 1), half continuous.
    coarse = rng.integers(0, 5, n) / 4.0
    fine = rng.random(n)
    s = np.where(rng.random(n) < 0.5, coarse, fine).astype(np.float32)
    w = (rng.random(n) >= 0.1).astype(np.float32)
    order = rng.permutation(n)
    # Every sample of one user shares the user's sequence length.
    user_seq = dict(zip(keys.tolist(), rng.integers(0, 1001, n_users).tolist()))
    seq = np.array([user_seq[x] for x in u.tolist()], dtype=np.int64)
    return {
        "user_keys": u[order],
        "item_keys": rng.integers(1, 10**12, n)[order],
        "labels": y[order],
        "scores": s[order],
        "weights": w[order],
        "seq_lengths": seq[order],
        "item_popularity": rng.choice([0, 0, 1, 3, 7, 20, 150, 999, 5000], n)[order],
    }

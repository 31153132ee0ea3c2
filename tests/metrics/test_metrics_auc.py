"""Exact AUC / GAUC / logloss kernels against hand-computed values and a pairwise reference."""
from __future__ import annotations

import math

import numpy as np
import pytest
from tests.metrics.metrics_reference import pairwise_auc, pairwise_gauc, random_predictions, reference_logloss

from muse_rec.metrics import DEFAULT_LOGLOSS_EPS, auc, compute_metrics, gauc, logloss, user_auc


def _hand_example():
    # user 1: AUC 0.875 (one tied pos/neg pair); user 2: AUC 0; user 3 all positive (skipped);
    # user 4 a single impression (skipped).
    users = np.array([1, 1, 1, 1, 2, 2, 2, 3, 3, 4], dtype=np.int64)
    scores = np.array([0.1, 0.4, 0.4, 0.8, 0.2, 0.9, 0.5, 0.3, 0.7, 0.6])
    labels = np.array([0, 1, 0, 1, 1, 0, 0, 1, 1, 0])
    return users, scores, labels


def test_hand_computed_example():
    users, scores, labels = _hand_example()
    per_user = user_auc(users, scores, labels)
    assert per_user.user_keys.tolist() == [1, 2, 3, 4]
    assert per_user.n_samples.tolist() == [4, 3, 2, 1]
    assert per_user.auc[0] == 0.875 and per_user.auc[1] == 0.0
    assert math.isnan(per_user.auc[2]) and math.isnan(per_user.auc[3])
    # (4 * 0.875 + 3 * 0) / (4 + 3)
    assert gauc(users, scores, labels) == pytest.approx(0.5, abs=1e-15)
    # 5 positives x 5 negatives; wins: 0.4 -> 1.5, 0.8 -> 4, 0.2 -> 1, 0.3 -> 1, 0.7 -> 4
    assert auc(scores, labels) == pytest.approx(11.5 / 25, abs=1e-15)
    m = compute_metrics(users, labels, scores)
    assert (m["samples"], m["users"], m["positives"], m["gauc_users"], m["gauc_samples"]) == (10, 4, 5, 2, 7)


def test_ties_count_half_regardless_of_order():
    assert auc(np.array([0.5, 0.5]), np.array([1, 0])) == 0.5
    assert auc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5
    # One million identical scores: every pair is a tie, AUC exactly 0.5 (integer arithmetic).
    n = 1_000_000
    y = np.zeros(n, dtype=np.int8)
    y[::7] = 1
    assert auc(np.full(n, 0.25, dtype=np.float32), y) == 0.5
    assert gauc(np.arange(n) % 1000, np.full(n, 0.25), y) == 0.5


def test_undefined_cases_are_nan():
    assert math.isnan(auc(np.array([0.1, 0.2]), np.array([1, 1])))
    assert math.isnan(auc(np.zeros(0), np.zeros(0)))
    assert math.isnan(gauc(np.array([1, 2]), np.array([0.1, 0.2]), np.array([1, 0])))
    m = compute_metrics(np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0))
    assert m["samples"] == 0 and math.isnan(m["gauc"]) and math.isnan(m["logloss"])


def test_logloss_clips_with_eps():
    scores = np.array([0.0, 1.0, 0.5, 0.9])
    labels = np.array([1, 1, 0, 1])
    eps = DEFAULT_LOGLOSS_EPS
    expected = -(math.log(eps) + math.log(1 - eps) + math.log(0.5) + math.log(0.9)) / 4
    assert logloss(scores, labels) == pytest.approx(expected, rel=1e-12)
    assert logloss(scores, labels, eps=1e-3) == pytest.approx(
        -(math.log(1e-3) + math.log(1 - 1e-3) + math.log(0.5) + math.log(0.9)) / 4, rel=1e-12
    )
    with pytest.raises(ValueError, match="eps"):
        logloss(scores, labels, eps=0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_pairwise_reference(seed):
    d = random_predictions(seed)
    keep = d["weights"] == 1
    u = d["user_keys"][keep].tolist()
    s = d["scores"][keep].astype(np.float64).tolist()
    y = d["labels"][keep].astype(int).tolist()
    m = compute_metrics(d["user_keys"], d["labels"], d["scores"], weights=d["weights"])
    assert m["samples"] == len(u) and m["positives"] == sum(y)
    assert m["gauc"] == pytest.approx(pairwise_gauc(u, s, y), abs=1e-12)
    assert m["auc"] == pytest.approx(pairwise_auc(s, y), abs=1e-12)
    assert m["logloss"] == pytest.approx(reference_logloss(s, y, DEFAULT_LOGLOSS_EPS), rel=1e-12)
    # The data really exercise the edge cases.
    assert m["users"] > m["gauc_users"] > 0
    assert len(set(s)) < 0.6 * len(s)  # about half the scores take one of 5 values


def test_bit_identical_under_permutation():
    d = random_predictions(3)
    cols = ("user_keys", "labels", "scores", "weights", "seq_lengths", "item_popularity")
    a = compute_metrics(*(d[c] for c in cols[:3]), **{c: d[c] for c in cols[3:]})
    perm = np.random.default_rng(9).permutation(d["scores"].size)
    b = compute_metrics(*(d[c][perm] for c in cols[:3]), **{c: d[c][perm] for c in cols[3:]})
    assert repr(a) == repr(b)  # exact, NaNs included


def test_full_range_int64_user_keys():
    big = np.iinfo(np.int64)
    users = np.array([big.min, big.min, big.max, big.max, 0, 0])
    scores = np.array([0.2, 0.8, 0.9, 0.1, 0.3, 0.3])
    labels = np.array([0, 1, 0, 1, 1, 0])
    per_user = user_auc(users, scores, labels)
    assert per_user.user_keys.tolist() == [big.min, 0, big.max]
    assert per_user.auc.tolist() == [1.0, 0.5, 0.0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"scores": np.array([0.1, np.nan])}, "finite"),
        ({"labels": np.array([0, 2])}, "labels must be 0 or 1"),
        ({"weights": np.array([1.0, 0.5])}, "weights must be 0"),
        ({"scores": np.array([0.1, 1.5])}, r"probabilities in \[0, 1\]"),
        ({"user_keys": np.array([1, 2, 3])}, "user_keys has shape"),
        ({"seq_lengths": np.array([1])}, "seq_lengths has shape"),
    ],
)
def test_bad_input_is_a_clear_error(kwargs, message):
    args = {"user_keys": np.array([1, 2]), "labels": np.array([0, 1]), "scores": np.array([0.1, 0.2])}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        compute_metrics(**args)


@pytest.mark.parametrize("pad_score,pad_label", [(np.nan, 0), (0.5, -1), (7.0, 1)])
def test_padding_rows_are_dropped_before_they_are_checked(pad_score, pad_label):
    """The docstring says weight-0 rows are dropped first; they were checked first (a NaN, a label -1
    or a score of 7 in a padding row was a ValueError), unlike `PredictionAccumulator.update`."""
    out = compute_metrics(np.array([1, 1, 1]), np.array([1, 0, pad_label]), np.array([0.9, 0.5, pad_score]),
                          weights=np.array([1, 1, 0]))
    assert out["gauc"] == out["auc"] == 1.0 and out["samples"] == 2


def test_canonical_order_packed_key_equals_lexsort(monkeypatch):
    import muse_rec.metrics.kernels as kernels

    d = random_predictions(6)
    u, s, y = d["user_keys"], d["scores"].astype(np.float64), d["labels"]
    packed = kernels.canonical_order(u, s, y)
    reference = np.lexsort((y, s, u))
    for col in (u, s, y):
        np.testing.assert_array_equal(col[packed], col[reference])
    # Too many users/scores for one int64 key: the lexsort fallback gives the same metrics.
    fast = compute_metrics(u, y, s, seq_lengths=d["seq_lengths"])
    monkeypatch.setattr(kernels, "PACKED_KEY_BITS", 2)
    np.testing.assert_array_equal(kernels.canonical_order(u, s, y), reference)
    assert repr(compute_metrics(u, y, s, seq_lengths=d["seq_lengths"])) == repr(fast)


def test_equal_floats_of_different_bits_tie_and_large_sets_are_exact():
    """-0.0 and 0.0 are one score (a sigmoid of -inf gives either): a tie, 1/2 a pair, for AUC, per-user AUC,
    grouped AUC and the canonical order; a key built from the float's bits would order them. Then 2M float32
    scores on 1,001 values against the exact rational Mann-Whitney count: ranks, sums and pair counts are
    integers, so only the last division rounds (|error| <= 1 ulp of the result, far below 1e-15)."""
    from fractions import Fraction

    users = np.array([7, 7, 7, 7])
    labels = np.array([1, 0, 0, 1])
    scores = np.array([0.0, -0.0, 0.0, 0.5])
    m = compute_metrics(users, labels, scores, seq_lengths=np.array([3, 3, 3, 3]))
    # positives 0.0 and 0.5 against negatives -0.0 and 0.0: (0.5 + 0.5 + 1 + 1) / 4
    assert m["auc"] == m["gauc"] == m["by_seq_length"][0]["gauc"] == m["by_seq_length"][0]["auc"] == 0.75

    rng = np.random.default_rng(0)
    n = 2_000_000
    s = (rng.integers(0, 1001, n) / 1000).astype(np.float32)  # heavy ties
    y = (rng.random(n) < 0.3 * s).astype(np.int8)
    values, inverse = np.unique(s, return_inverse=True)
    pos = np.bincount(inverse.reshape(-1), weights=y, minlength=values.size).astype(np.int64)
    neg = np.bincount(inverse.reshape(-1), weights=1 - y, minlength=values.size).astype(np.int64)
    below = np.concatenate(([0], np.cumsum(neg)[:-1]))
    wins = sum(int(p) * (2 * int(b) + int(q)) for p, q, b in zip(pos, neg, below))  # twice the won pairs
    exact = Fraction(wins, 2 * int(pos.sum()) * int(neg.sum()))
    assert auc(s, y) == float(exact)
    assert compute_metrics(np.zeros(n, dtype=np.int64), y, s)["gauc"] == float(exact)  # one user: GAUC = AUC

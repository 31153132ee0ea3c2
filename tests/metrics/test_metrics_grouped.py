"""Grouped GAUC/AUC by sequence length and target popularity."""
from __future__ import annotations

import math

import numpy as np
import pytest
from tests.metrics.metrics_reference import pairwise_auc, pairwise_gauc, random_predictions

from muse_rec.metrics import DEFAULT_POPULARITY_EDGES, DEFAULT_SEQ_LEN_EDGES, Bins, compute_metrics, quantile_edges


def test_bins_assign_and_labels():
    bins = Bins(DEFAULT_SEQ_LEN_EDGES, name="seq_length")
    assert bins.labels() == ["[0,50)", "[50,200)", "[200,500)", "[500,inf)"]
    assert bins.assign(np.array([0, 49, 50, 199, 200, 500, 1000])).tolist() == [0, 0, 1, 1, 2, 3, 3]
    with pytest.raises(ValueError, match="seq_length value -1.0 lies outside"):
        bins.assign(np.array([3, -1]))
    with pytest.raises(ValueError, match="strictly increasing"):
        Bins((0, 10, 10), name="seq_length")
    assert Bins(DEFAULT_POPULARITY_EDGES).labels()[0] == "[0,1)"


def test_quantile_edges_merge_ties():
    values = np.array([0] * 60 + list(range(1, 41)))
    edges = quantile_edges(values, 5)
    assert edges[0] == 0 and math.isinf(edges[-1])
    assert list(edges) == sorted(set(edges))  # duplicated quantiles (the zeros) merged
    assert len(edges) - 1 < 5
    counts = np.bincount(Bins(edges).assign(values))
    assert counts.sum() == values.size and counts[0] == 60


def _check_groups(groups, key, d, keep, bins):
    u = d["user_keys"][keep]
    s = d["scores"][keep].astype(np.float64)
    y = d["labels"][keep].astype(int)
    g = bins.assign(d[key][keep])
    assert [x["group"] for x in groups] == bins.labels()
    assert sum(x["samples"] for x in groups) == u.size
    for i, row in enumerate(groups):
        m = g == i
        assert row["samples"] == int(m.sum())
        assert row["users"] == len(set(u[m].tolist()))
        assert row["positives"] == int(y[m].sum())
        ref_gauc = pairwise_gauc(u[m].tolist(), s[m].tolist(), y[m].tolist())
        ref_auc = pairwise_auc(s[m].tolist(), y[m].tolist())
        for got, want in ((row["gauc"], ref_gauc), (row["auc"], ref_auc)):
            assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 4])
def test_groups_match_pairwise_reference(seed):
    d = random_predictions(seed, n_users=200)
    keep = d["weights"] == 1
    m = compute_metrics(
        d["user_keys"],
        d["labels"],
        d["scores"],
        weights=d["weights"],
        seq_lengths=d["seq_lengths"],
        item_popularity=d["item_popularity"],
    )
    _check_groups(m["by_seq_length"], "seq_lengths", d, keep, Bins(DEFAULT_SEQ_LEN_EDGES))
    _check_groups(m["by_popularity"], "item_popularity", d, keep, Bins(DEFAULT_POPULARITY_EDGES))
    # Sequence length is per user: the per-group user counts add up to all users.
    assert sum(r["users"] for r in m["by_seq_length"]) == m["users"]


def test_custom_and_quantile_edges():
    d = random_predictions(5)
    m = compute_metrics(
        d["user_keys"],
        d["labels"],
        d["scores"],
        seq_lengths=d["seq_lengths"],
        item_popularity=d["item_popularity"],
        seq_len_edges=(0, 500, 1001),
        popularity_edges=3,
    )
    assert [r["group"] for r in m["by_seq_length"]] == ["[0,500)", "[500,1001)"]
    pop_edges = quantile_edges(d["item_popularity"], 3)
    assert [r["lo"] for r in m["by_popularity"]] == list(pop_edges[:-1])
    assert sum(r["samples"] for r in m["by_popularity"]) == d["scores"].size


def test_empty_group_is_nan_not_error():
    users = np.array([1, 1, 2, 2])
    m = compute_metrics(
        users, np.array([0, 1, 1, 0]), np.array([0.2, 0.6, 0.6, 0.1]), seq_lengths=np.array([10, 10, 20, 20])
    )
    first, *rest = m["by_seq_length"]
    assert first["samples"] == 4 and first["gauc"] == 1.0
    assert all(r["samples"] == 0 and math.isnan(r["gauc"]) and math.isnan(r["auc"]) for r in rest)

"""User and item keys must be integer ids. Float keys were cut to int64 after the samples were grouped: users
1.5 and 1.7 became one user of GAUC (``users`` 1), and ids past 2^53 (hashed ids, a pandas column of ids
holding a NaN) are merged by the float itself; both pooled different users' impressions without a word."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from muse_rec.metrics import PredictionAccumulator, compute_metrics

LABELS, SCORES = np.array([1, 0, 1, 0]), np.array([0.9, 0.1, 0.1, 0.9])


def test_integer_keys_of_any_width_are_users() -> None:
    for dtype in (np.int32, np.int64, np.uint64):
        m = compute_metrics(np.array([1, 1, 2, 2], dtype=dtype), LABELS, SCORES)
        assert (m["users"], m["gauc"]) == (2, 0.5)  # AUC 1 and AUC 0, two samples each


def test_float_user_keys_are_refused_naming_them() -> None:
    with pytest.raises(ValueError, match="user_keys must be integer ids, got dtype float64"):
        compute_metrics(np.array([1.5, 1.5, 1.7, 1.7]), LABELS, SCORES)


@pytest.mark.parametrize("column", ["user_keys", "item_keys"])
def test_the_accumulator_refuses_float_keys_at_update(column: str) -> None:
    keys = {"user_keys": torch.tensor([1, 1, 2, 2]), "item_keys": torch.tensor([5, 6, 7, 8])}
    keys[column] = keys[column].double() + 0.5
    with pytest.raises(ValueError, match=f"update\\(\\): {column} must be integer ids"):
        PredictionAccumulator().update(**keys, labels=torch.tensor(LABELS), scores=torch.tensor(SCORES),
                                       weights=torch.ones(4))

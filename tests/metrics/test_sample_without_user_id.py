"""A sample without a user id (raw 129_1 = 0: missing) is nobody's impression: the evaluation of a prepared
split (a model's, `predict`, and the floors') counts it in AUC and logloss but forms no GAUC user of it, and
says how many samples it left out. Before, every such sample of the split was pooled into one "user 0",
whose AUC over many people's impressions entered GAUC. Checked against a brute force over the raw table
(pairs counted one by one, no code shared with the metrics)."""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from muse_rec.data import schema as S
from muse_rec.data.prepare import PrepareConfig, prepare
from muse_rec.data.prepared import PreparedData
from muse_rec.distributed.env import DistEnv
from muse_rec.metrics import compute_metrics
from muse_rec.metrics.floors import FloorOptions, compute_floors
from muse_rec.training.evaluate import predict
from tests.data.rawgen import write_raw_release

NO_ID_EVERY = 4  # every 4th test sample loses its user id
LEVELS = 5  # the test model's scores: item key mod 5, so scores tie within and across users


def _score(item: int) -> int:
    """The rank of the test model's score of a target ``item`` (raw id): Python's mod, as torch's ``%``."""
    return item % LEVELS


class _ByItem(torch.nn.Module):
    """Scores a sample by its target's raw id (``sigmoid(item % 5 - 2)``): ties, and no model to train."""

    def forward(self, batch):
        return None, (None, (batch.item_keys % LEVELS - 2).float(), batch.labels)


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("no_user_id")
    write_raw_release(str(root / "raw"), n_train_users=60, n_test_users=40, n_items=50, max_len=8, seed=21)
    path = root / "raw" / S.TABLES["test_samples"].file
    t = pq.read_table(path)
    rows = t.to_pylist()
    for r in rows[::NO_ID_EVERY]:
        r[S.USER] = 0
    pq.write_table(pa.Table.from_pylist(rows, schema=t.schema), path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the samples without a user row are warned about: not under test
        prepare(str(root / "raw"), str(root / "prepared"), PrepareConfig(progress=False))
    return root


def _raw_test(raw: Path) -> Tuple[List[int], List[int], List[int]]:
    rows = pq.read_table(os.path.join(raw, S.TABLES["test_samples"].file)).to_pylist()
    return [r[S.USER] for r in rows], [_score(r[S.ITEM]) for r in rows], [r[S.LABEL][1] for r in rows]


def _auc(scores: List[int], labels: List[int]) -> float:
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))


def _brute(raw: Path) -> Dict[str, float]:
    """GAUC over the users with an id and both labels, AUC over every sample."""
    users, scores, labels = _raw_test(raw)
    by_user: Dict[int, List[int]] = {}
    for i, u in enumerate(users):
        if u != 0:
            by_user.setdefault(u, []).append(i)
    num = den = 0.0
    n_valid = 0
    for idx in by_user.values():
        ys = [labels[i] for i in idx]
        if 0 < sum(ys) < len(ys):
            num += len(idx) * _auc([scores[i] for i in idx], ys)
            den += len(idx)
            n_valid += 1
    return {"gauc": num / den, "gauc_users": n_valid, "users": len(by_user), "auc": _auc(scores, labels),
            "samples_without_user": users.count(0)}


def test_premise(release: Path) -> None:
    users, _, labels = _raw_test(release / "raw")
    nobody = [y for u, y in zip(users, labels) if u == 0]
    assert 0 < sum(nobody) < len(nobody), "the samples without a user id must hold both labels to enter old GAUC"


def test_a_models_evaluation_forms_no_user_of_samples_without_a_user_id(release: Path) -> None:
    data = PreparedData(str(release / "prepared"))
    env = DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1, device=torch.device("cpu"), backend="gloo")
    m = predict(_ByItem(), data, "test", 16, 8, env, progress=False).compute()
    want = _brute(release / "raw")
    # Both sides sum a few hundred exact pair counts and divide: a few ulps of values <= 1, inside 1e-12.
    assert m["gauc"] == pytest.approx(want["gauc"], abs=1e-12)
    assert m["auc"] == pytest.approx(want["auc"], abs=1e-12)
    for k in ("gauc_users", "users", "samples_without_user"):
        assert m[k] == want[k], k
    assert m["samples"] == len(_raw_test(release / "raw")[0])
    assert sum(g.get("samples_without_user", 0) for g in m["by_seq_length"]) == want["samples_without_user"]


def test_the_floors_form_no_user_of_samples_without_a_user_id(release: Path) -> None:
    result = compute_floors(PreparedData(str(release / "prepared")), "test", FloorOptions(seq_len=8))
    want = _brute(release / "raw")
    assert result["gauc_users"] == want["gauc_users"]
    assert result["samples_without_user"] == want["samples_without_user"]
    assert {f["gauc_users"] for f in result["floors"].values()} <= {want["gauc_users"]}


def test_the_python_api_keeps_key_0_a_user_unless_told() -> None:
    keys, labels, scores = np.array([0, 0, 7, 7]), np.array([1, 0, 1, 0]), np.array([0.9, 0.1, 0.2, 0.8])
    assert compute_metrics(keys, labels, scores)["gauc"] == 0.5  # user 0 (AUC 1) and user 7 (AUC 0)
    m = compute_metrics(keys, labels, scores, no_user_key=0)
    assert (m["gauc"], m["gauc_users"], m["users"], m["samples_without_user"]) == (0.0, 1, 1, 2)
    assert m["auc"] == 0.75  # every sample still counts: 3 of the 4 pairs ordered

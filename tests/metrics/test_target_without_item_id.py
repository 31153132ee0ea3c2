"""A target without an item id (raw id 0, vocabulary row 0) is no item: the popularity floor gives it
the prior, and the evaluation groups it as never a train target.

Row 0 of the counts pools every train impression without an item id, whatever its item: the floor
scored such a target with the smoothed click rate of all of them, as if they were one item, and the
evaluation's popularity groups (Fig. 6) put it with items shown that many times. Checked against brute
forces over the raw tables (dicts keyed by raw id, no code shared with the floors or the metrics)."""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from muse_rec.data import schema as S
from muse_rec.data.prepare import PrepareConfig, prepare
from muse_rec.data.prepared import PreparedData
from muse_rec.distributed.env import DistEnv
from muse_rec.metrics.grouped import DEFAULT_POPULARITY_EDGES
from muse_rec.metrics.floors import FloorOptions, ItemCtr, split_scores
from muse_rec.training.evaluate import predict
from tests.data.rawgen import table_of, write_raw_release, write_table

STRENGTH = 5.0
NO_ID_SHARE = 0.15  # of the samples of each split whose target loses its item id


def _drop_item_ids(raw: Path, split: str, rng: random.Random) -> None:
    rows = pq.read_table(os.path.join(raw, S.TABLES[f"{split}_samples"].file)).to_pylist()
    cols = {c: [r[c] for r in rows] for c in S.TABLES[f"{split}_samples"].columns}
    cols[S.ITEM] = [0 if rng.random() < NO_ID_SHARE else i for i in cols[S.ITEM]]
    write_table(str(raw), f"{split}_samples", table_of(f"{split}_samples", cols))


def _raw_samples(raw: Path, split: str) -> Tuple[List[int], List[int]]:
    rows = pq.read_table(os.path.join(raw, S.TABLES[f"{split}_samples"].file)).to_pylist()
    return [r[S.ITEM] for r in rows], [r[S.LABEL][1] for r in rows]


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("no_item_id")
    write_raw_release(str(root / "raw"), n_train_users=80, n_test_users=30, n_items=60, max_len=8, seed=5)
    rng = random.Random(11)
    for split in ("train", "test"):
        _drop_item_ids(root / "raw", split, rng)
    prepare(str(root / "raw"), str(root / "prepared"), PrepareConfig(progress=False))
    return root


def _brute_force(raw: Path, split: str, leave_one_out: bool) -> np.ndarray:
    """Per sample of ``split`` in file order: (clicks + a prior) / (impressions + a) of its raw item id over the
    train samples (without the sample's own impression on train), the prior for raw id 0."""
    items, labels = _raw_samples(raw, "train")
    prior = sum(labels) / len(labels)
    imps: Dict[int, int] = {}
    clicks: Dict[int, int] = {}
    for i, y in zip(items, labels):
        imps[i] = imps.get(i, 0) + 1
        clicks[i] = clicks.get(i, 0) + y
    out = []
    for i, y in zip(*_raw_samples(raw, split)):
        if i == 0:
            out.append(prior)
            continue
        c, n = clicks.get(i, 0) - (y if leave_one_out else 0), imps.get(i, 0) - (1 if leave_one_out else 0)
        out.append((c + STRENGTH * prior) / (n + STRENGTH))
    return np.array(out)


@pytest.mark.parametrize("split", ["test", "train"])
def test_a_target_without_an_item_id_gets_the_prior(release: Path, split: str) -> None:
    data = PreparedData(str(release / "prepared"))
    n = data.num_samples(split)
    assert (data.item_rows(split, np.arange(n)) == 0).sum() > 0  # the premise: row-0 targets on both splits
    ctr = ItemCtr.from_train(data, "train", STRENGTH)
    opts = FloorOptions(prior_strength=STRENGTH)
    ours = split_scores(data, split, np.arange(n), opts, ctr, with_scl=False, leave_one_out=split == "train")
    # Both sides add and divide a handful of float64 values: a few ulps of values <= 1, far inside 1e-12.
    np.testing.assert_allclose(ours["popularity"], _brute_force(release / "raw", split, split == "train"),
                               rtol=0, atol=1e-12)


class _Constant(torch.nn.Module):
    """Scores every sample alike: the groups' sample counts, not the scores, are under test."""

    def forward(self, batch):
        return None, (None, torch.zeros_like(batch.labels), batch.labels)


def test_a_target_without_an_item_id_is_grouped_as_never_a_train_target(release: Path) -> None:
    data = PreparedData(str(release / "prepared"))
    env = DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1, device=torch.device("cpu"), backend="gloo")
    groups = predict(_Constant(), data, "test", 32, 8, env, progress=False).compute()["by_popularity"]
    train_items, _ = _raw_samples(release / "raw", "train")
    times = {i: train_items.count(i) for i in set(train_items) if i != 0}
    test_items, _ = _raw_samples(release / "raw", "test")
    edges = DEFAULT_POPULARITY_EDGES
    want = [sum(lo <= times.get(i, 0) < hi for i in test_items) for lo, hi in zip(edges, edges[1:])]
    assert 0 in test_items and max(want) < len(test_items)  # the premise: id-less targets, several groups
    assert [g["samples"] for g in groups] == want, groups

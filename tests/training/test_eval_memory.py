"""An evaluation holds no ``[n_items]`` array: the item popularities its groups need are read per batch.

`predict` copied the whole ``items/popularity.npy`` (int64, one row per item) into memory to zero
row 0: 1.9 GB on every evaluating rank at the release's 243M items, outside the plan's reservation
(`muse_rec.distributed.rank_memory`), where the floors read the same array through its memory map.
"""
from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import List

import numpy as np
import torch

from muse_rec.data.prepared import PreparedData
from muse_rec.data.vocab import PADDING_ROW
from muse_rec.distributed.env import DistEnv
from muse_rec.training import evaluate as evaluate_module
from muse_rec.training.evaluate import predict

BATCH = 8  # far fewer rows than the vocabulary has items


class _LargestLiveBlock(torch.nn.Module):
    """Scores every sample alike and records, at each forward, the largest block that evaluate.py
    allocated and still holds (tracemalloc sees NumPy's buffers): what the evaluation keeps while it runs."""

    def __init__(self) -> None:
        super().__init__()
        self.largest: List[int] = []

    def forward(self, batch):
        snapshot = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(True, evaluate_module.__file__)])
        self.largest.append(max((t.size for t in snapshot.traces), default=0))
        return None, (None, torch.zeros_like(batch.labels, dtype=torch.float32), batch.labels)


def test_evaluation_holds_no_array_of_the_vocabulary(prepared: Path) -> None:
    data = PreparedData(str(prepared))
    vocabulary_bytes = np.asarray(data.item_popularity()).nbytes
    assert BATCH * 8 * 8 < vocabulary_bytes  # the premise: a batch's columns are far smaller than the vocabulary's
    env = DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1, device=torch.device("cpu"), backend="gloo")
    model = _LargestLiveBlock()
    tracemalloc.start()
    try:
        acc = predict(model, data, "test", BATCH, 8, env, max_batches=3, progress=False)
    finally:
        tracemalloc.stop()
    assert model.largest and max(model.largest) < vocabulary_bytes, (model.largest, vocabulary_bytes)
    # Still each target's train impressions, and none for a target without an item row.
    cols = acc.local_columns()
    rows = data.item_rows("test", np.arange(len(acc)))
    want = np.where(rows == PADDING_ROW, 0, np.asarray(data.item_popularity())[rows])
    np.testing.assert_array_equal(cols["item_popularity"], want)

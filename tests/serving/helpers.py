"""Reference predictions of the training forward and the matching one-user inputs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import numpy as np
import torch

from muse_rec.data.loader import make_loader


@dataclass
class SplitPredictions:
    """The training model's view of a split: per-sample arrays and per-user one-user inputs."""

    user_keys: np.ndarray  # [N] raw user id
    item_keys: np.ndarray  # [N] raw item id
    labels: np.ndarray  # [N]
    probs: np.ndarray  # [N] sigmoid of LifelongCTRModel.forward (eval)
    groups: List[Tuple[np.ndarray, Tuple[torch.Tensor, ...]]]  # (sample positions, InferenceModel args)


@torch.no_grad()
def training_predictions(model, data, split: str, seq_len: int, batch_size: int = 256,
                         max_batches: int = 0) -> SplitPredictions:
    """Run the training forward on loader batches; group each batch's samples by user."""
    model.eval()
    uk, ik, lab, pr, groups = [], [], [], [], []
    offset = 0
    for j, batch in enumerate(make_loader(data, split, batch_size, seq_len)):
        if max_batches and j >= max_batches:
            break
        real = batch.weights > 0
        p = torch.sigmoid(model(batch))
        ids = batch.pooled.values().view(-1, batch.batch_size).t()  # [B, 8]
        n = int(real.sum())
        uk.append(batch.user_keys[:n].numpy()); ik.append(batch.item_keys[:n].numpy())
        lab.append(batch.labels[:n].numpy()); pr.append(p[:n].numpy())
        for u in torch.unique(batch.user_keys[:n]):
            rows = (batch.user_keys[:n] == u).nonzero().squeeze(1)
            b = int(rows[0])
            args = tuple(t.clone() for t in (batch.seq_items[b:b + 1], batch.seq_cats[b:b + 1],
                                              batch.seq_lengths[b:b + 1], ids[b:b + 1, :6], batch.target_item[rows],
                                              batch.target_cat[rows], ids[rows, 6:8]))
            groups.append((rows.numpy() + offset, args))
        offset += n
    return SplitPredictions(np.concatenate(uk), np.concatenate(ik), np.concatenate(lab), np.concatenate(pr), groups)

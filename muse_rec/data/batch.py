"""`Batch`: one mini-batch of CTR samples as the model and TorchRec's train pipeline consume it.

Sequences are dense and **right-aligned**: position ``L-1`` is the newest behaviour, padding
(id 0) sits at the front. That makes "the most recent 50" the constant slice ``[:, L-50:]`` and
lets the GSU score all positions with one batched matmul. Pooled one-id-per-sample features
travel as a `KeyedJaggedTensor` so the EmbeddingBagCollection's input distribution can be
pipelined by `TrainPipelineSparseDist`.

Samples of one user share one history (one history per user and split), so the batch also
carries its *history grouping*, computed on the host by the loader (`history_groups`, NumPy,
in the DataLoader workers): the model then keeps one history row per group and never has to
discover the grouping on the device (no ``torch.unique``, no host sync in the step).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable

# Pooled features, one id per sample each, in this key order (EBC input).
USER_FEATURES: List[str] = ["user_id", "user_f1", "user_f2", "user_f3", "user_f4", "user_f5"]
ITEM_FEATURES: List[str] = ["item_f213", "item_f214"]
POOLED_FEATURES: List[str] = USER_FEATURES + ITEM_FEATURES

# Relative cost of one extra history row (its SCL lookup, key conversion and norms over L
# positions) against one extra query row of the grouped GEMM: `history_groups` splits a
# user's samples into groups of P, trading duplicated history rows for less padding.
HISTORY_ROW_COST: int = 16


def history_groups(user_keys: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Group a batch's samples by user: ``[B]`` keys -> ``index [B]``, ``members [U, P]`` (int64).

    ``members[u]`` lists the samples whose history is row u, padded with B; ``index[b]`` is
    sample b's row. A user with more than P samples gets several rows (the same history),
    with P the power of two (or the largest group) minimising
    ``rows * (P + HISTORY_ROW_COST)``: the grouped GEMM's padded work plus per-row work.
    """
    B = int(user_keys.shape[0])
    if B == 0:
        return np.zeros(0, np.int64), np.zeros((0, 1), np.int64)
    _, user, counts = np.unique(user_keys, return_inverse=True, return_counts=True)
    user = user.reshape(-1)
    largest = int(counts.max())
    options = sorted({min(1 << e, largest) for e in range(largest.bit_length() + 1)})
    P = min(options, key=lambda p: (int(np.sum(-(-counts // p))) * (p + HISTORY_ROW_COST), p))
    order = np.argsort(user, kind="stable")
    starts = np.cumsum(counts) - counts
    rank = np.arange(B) - starts[user[order]]  # position of each sample among its user's samples
    rows_per_user = -(-counts // P)
    first_row = np.cumsum(rows_per_user) - rows_per_user
    row = first_row[user[order]] + rank // P
    index = np.empty(B, np.int64)
    index[order] = row
    members = np.full((int(rows_per_user.sum()), P), B, np.int64)
    members[row, rank % P] = order
    return index, members


@dataclass
class Batch(Pipelineable):
    """A mini-batch. B = batch size, L = sequence length of the run's spec.

    Attributes:
        labels: ``[B]`` float32, 1.0 = click.
        weights: ``[B]`` float32, 1.0 for real samples, 0.0 for padding rows that keep every
            rank's batch the same size at the end of an epoch. Losses and metrics use it.
        user_keys: ``[B]`` int64 raw (hashed) user id: groups samples per user for GAUC.
        item_keys: ``[B]`` int64 raw target item id: written next to predictions.
        pooled: KJT with keys `POOLED_FEATURES`, exactly one id per sample each (0 = unknown).
        target_item: ``[B]`` int64 item row in the shared item vocabulary (0 = unknown).
        target_cat: ``[B]`` int64 category row of the target (from item_features; 0 = unknown).
        seq_items: ``[B, L]`` int64 behaviour item rows, right-aligned, 0 = padding.
        seq_cats: ``[B, L]`` int64 behaviour category rows, aligned with `seq_items`.
        seq_lengths: ``[B]`` int64 number of real behaviours (<= L); positions
            ``>= L - seq_lengths`` are real, also where their id is 0 (an out-of-vocabulary item).
        hist_index: ``[B]`` int64, the history row of each sample (see `history_groups`).
        hist_members: ``[U, P]`` int64, the samples of each history row, padded with B; its
            first column is each row's first sample (where the model reads the history).
            Both are computed from `user_keys` when not given (on the host: the loader gives them).
    """

    labels: torch.Tensor
    weights: torch.Tensor
    user_keys: torch.Tensor
    item_keys: torch.Tensor
    pooled: KeyedJaggedTensor
    target_item: torch.Tensor
    target_cat: torch.Tensor
    seq_items: torch.Tensor
    seq_cats: torch.Tensor
    seq_lengths: torch.Tensor
    hist_index: Optional[torch.Tensor] = None
    hist_members: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        if self.hist_index is None or self.hist_members is None:
            index, members = history_groups(self.user_keys.detach().cpu().numpy())
            device = self.user_keys.device
            self.hist_index = torch.from_numpy(index).to(device)
            self.hist_members = torch.from_numpy(members).to(device)

    @property
    def batch_size(self) -> int:
        return int(self.labels.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.seq_items.shape[1])

    def seq_mask(self) -> torch.Tensor:
        """``[B, L]`` bool, True where a position holds a real behaviour."""
        L = self.seq_items.shape[1]
        pos = torch.arange(L, device=self.seq_items.device)
        return pos.unsqueeze(0) >= (L - self.seq_lengths).unsqueeze(1)

    def _map(self, fn) -> "Batch":
        return Batch(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def to(self, device: torch.device, non_blocking: bool = False) -> "Batch":
        return self._map(lambda t: t.to(device=device, non_blocking=non_blocking))

    def pin_memory(self) -> "Batch":
        return self._map(lambda t: t.pin_memory())

    def record_stream(self, stream: torch.Stream) -> None:
        for f in fields(self):
            getattr(self, f.name).record_stream(stream)

    def tensors(self) -> Dict[str, torch.Tensor]:
        """Plain tensors by name (the pooled KJT as its values/lengths), for tests and export."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "pooled"}
        out["pooled_values"] = self.pooled.values()
        out["pooled_lengths"] = self.pooled.lengths()
        return out


def pooled_kjt(ids: torch.Tensor, keys: Optional[List[str]] = None) -> KeyedJaggedTensor:
    """Build the pooled KJT from ``[B, F]`` ids (column f = feature ``keys[f]``), one id each."""
    keys = keys if keys is not None else POOLED_FEATURES
    B, F = ids.shape
    if F != len(keys):
        raise ValueError(f"pooled ids have {F} columns, expected {len(keys)} ({keys})")
    # KJT layout is feature-major: all samples of feature 0, then feature 1, ...
    values = ids.t().reshape(-1).to(torch.int64)
    lengths = torch.ones(B * F, dtype=torch.int32, device=ids.device)
    return KeyedJaggedTensor(keys=list(keys), values=values, lengths=lengths)

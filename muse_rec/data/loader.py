"""Prepared directory -> `Batch` stream, split across ranks and DataLoader workers.

Partitioning (deterministic, no communication):
  * the split's N samples form G = ceil(N / B) global batches of B consecutive samples (after
    the optional shuffle, which permutes whole batches and the rows inside each batch, so it
    needs O(N / B) memory rather than an N-long permutation);
  * rank r takes global batches r, r + W, r + 2W, ... and every rank gets exactly
    ceil(G / W) batches of exactly B rows: missing samples are padding rows with weight 0;
  * with `num_workers` = K, worker k builds this rank's batches j with (j - start_batch) % K == k;
    torch's DataLoader takes from its workers round-robin, so batches still arrive in order j.
Every batch is built with NumPy gathers on memory-mapped arrays: no per-row Python.
"""
from __future__ import annotations

from typing import Iterator, Optional, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from muse_rec.data.batch import POOLED_FEATURES, Batch, pooled_kjt
from muse_rec.data.prepared import PreparedData


class PreparedBatches(IterableDataset):
    """This rank's batches of one split; an IterableDataset so DataLoader workers can share it.

    Args:
        data: prepared data (or its path).
        split: "train" or "test".
        batch_size: rows per batch B (padding included).
        seq_len: sequence length L; each history is cut to its newest L behaviours, right-aligned.
        rank, world_size: this process's place among the data-parallel ranks.
        start_batch: skip this rank's first `start_batch` batches (exact resume).
        shuffle_seed: None = file order; otherwise a seeded batch-level + in-batch shuffle.
    """

    def __init__(self, data: Union[PreparedData, str], split: str, batch_size: int, seq_len: int,
                 rank: int = 0, world_size: int = 1, start_batch: int = 0,
                 shuffle_seed: Optional[int] = None) -> None:
        super().__init__()
        self.data = data if isinstance(data, PreparedData) else PreparedData(data)
        if batch_size <= 0 or seq_len <= 0:
            raise ValueError(f"batch_size and seq_len must be positive, got {batch_size}, {seq_len}")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.split, self.batch_size, self.seq_len = split, batch_size, seq_len
        self.rank, self.world_size, self.shuffle_seed = rank, world_size, shuffle_seed
        self.num_samples = self.data.num_samples(split)
        self.global_batches = -(-self.num_samples // batch_size)
        self.batches_per_rank = -(-self.global_batches // world_size)
        if not 0 <= start_batch <= self.batches_per_rank:
            raise ValueError(f"start_batch {start_batch} not in [0, {self.batches_per_rank}]")
        self.start_batch = start_batch
        if shuffle_seed is not None:
            self._block_order = np.random.default_rng(shuffle_seed).permutation(self.global_batches)

    def __len__(self) -> int:
        return self.batches_per_rank - self.start_batch

    def sample_indices(self, j: int) -> np.ndarray:
        """Sample positions (int64, <= B of them) of this rank's j-th batch."""
        g = self.rank + j * self.world_size
        if g >= self.global_batches:
            return np.zeros(0, np.int64)
        block = int(self._block_order[g]) if self.shuffle_seed is not None else g
        lo = block * self.batch_size
        idx = np.arange(lo, min(lo + self.batch_size, self.num_samples), dtype=np.int64)
        if self.shuffle_seed is not None:
            idx = np.random.default_rng((self.shuffle_seed, block)).permutation(idx)
        return idx

    def _take(self, rel: str, idx: np.ndarray, contiguous: bool) -> np.ndarray:
        arr = self.data.array(f"{self.split}/{rel}.npy")
        if contiguous:
            return np.asarray(arr[idx[0]:idx[0] + idx.size]) if idx.size else np.asarray(arr[:0])
        return arr[idx]

    def make_batch(self, idx: np.ndarray) -> Batch:
        """Build a `Batch` of B rows from sample positions `idx` (n <= B); rows n..B-1 are padding."""
        B, L, n = self.batch_size, self.seq_len, int(idx.size)
        contiguous = n > 0 and int(idx[-1]) - int(idx[0]) + 1 == n and bool(np.all(np.diff(idx) == 1))
        labels = np.zeros(B, np.float32)
        weights = np.zeros(B, np.float32)
        user_keys = np.zeros(B, np.int64)
        item_keys = np.zeros(B, np.int64)
        pooled = np.zeros((B, len(POOLED_FEATURES)), np.int64)
        target_item = np.zeros(B, np.int64)
        target_cat = np.zeros(B, np.int64)
        seq_items = np.zeros((B, L), np.int64)
        seq_cats = np.zeros((B, L), np.int64)
        seq_lengths = np.zeros(B, np.int64)
        if n:
            labels[:n] = self._take("labels", idx, contiguous)
            weights[:n] = 1.0
            user_keys[:n] = self._take("sample_user_keys", idx, contiguous)
            item_keys[:n] = self._take("sample_item_keys", idx, contiguous)
            items = self._take("sample_items", idx, contiguous).astype(np.int64)
            target_item[:n] = items
            attrs = self.data.item_attrs()[items]  # [n, 3]: category, f213, f214
            target_cat[:n] = attrs[:, 0]
            users = self._take("sample_users", idx, contiguous)
            has_user = users >= 0
            urow = np.where(has_user, users, 0)
            fields = self.data.array(f"{self.split}/user_fields.npy")[urow]  # [n, 6]
            pooled[:n, 0] = self._take("sample_user_rows", idx, contiguous)
            pooled[:n, 1:6] = np.where(has_user[:, None], fields[:, 1:], 0)
            pooled[:n, 6:8] = attrs[:, 1:3]
            self._fill_sequences(urow, has_user, seq_items[:n], seq_cats[:n], seq_lengths[:n])
        return Batch(
            labels=torch.from_numpy(labels), weights=torch.from_numpy(weights),
            user_keys=torch.from_numpy(user_keys), item_keys=torch.from_numpy(item_keys),
            pooled=pooled_kjt(torch.from_numpy(pooled)),
            target_item=torch.from_numpy(target_item), target_cat=torch.from_numpy(target_cat),
            seq_items=torch.from_numpy(seq_items), seq_cats=torch.from_numpy(seq_cats),
            seq_lengths=torch.from_numpy(seq_lengths),
        )

    def _fill_sequences(self, urow: np.ndarray, has_user: np.ndarray, out_items: np.ndarray,
                        out_cats: np.ndarray, out_lengths: np.ndarray) -> None:
        """Write the newest <= L behaviours of each user right-aligned into ``out_*[n, L]``."""
        L = self.seq_len
        offsets = self.data.array(f"{self.split}/seq_offsets.npy")
        end = np.asarray(offsets[urow + 1])
        full_len = np.where(has_user, end - np.asarray(offsets[urow]), 0)
        take = np.minimum(full_len, L)
        out_lengths[:] = take
        if not take.any():
            return
        pos = np.arange(L, dtype=np.int64)
        first = L - take  # first real position of each row
        mask = pos[None, :] >= first[:, None]  # [n, L]
        # Source index of position p in row i: end_i - L + p (only meaningful where mask holds).
        src = (end - L)[:, None] + pos[None, :]
        src = src[mask]
        out_items[mask] = self.data.array(f"{self.split}/seq_items.npy")[src]
        out_cats[mask] = self.data.array(f"{self.split}/seq_cats.npy")[src]

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for j in range(self.start_batch + worker, self.batches_per_rank, workers):
            yield self.make_batch(self.sample_indices(j))


class PreparedLoader:
    """Iterable of `Batch` with `__len__`; uses a torch DataLoader when `num_workers` > 0."""

    def __init__(self, dataset: PreparedBatches, num_workers: int = 0, pin_memory: bool = False) -> None:
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.dataset, self.num_workers, self.pin_memory = dataset, num_workers, pin_memory

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[Batch]:
        if self.num_workers == 0:
            return iter(self.dataset)
        loader = DataLoader(self.dataset, batch_size=None, num_workers=self.num_workers,
                            pin_memory=self.pin_memory, prefetch_factor=2)
        return iter(loader)


def make_loader(data: Union[PreparedData, str], split: str, batch_size: int, seq_len: int, rank: int = 0,
                world_size: int = 1, num_workers: int = 0, start_batch: int = 0,
                shuffle_seed: Optional[int] = None, pin_memory: bool = False) -> PreparedLoader:
    """This rank's `Batch` stream over `split` (see the module docstring for the partitioning)."""
    ds = PreparedBatches(data, split, batch_size, seq_len, rank, world_size, start_batch, shuffle_seed)
    return PreparedLoader(ds, num_workers, pin_memory)

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

import functools
import logging
import os
import signal
from dataclasses import dataclass
from typing import Iterator, Optional, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from muse_rec.data.batch import POOLED_FEATURES, Batch, history_groups, pooled_kjt
# The epoch arithmetic lives apart (no TorchRec import): the resume checks use it before the
# training stack is imported.
from muse_rec.data.epochs import steps_per_epoch
from muse_rec.data.prepared import PreparedData, PreparedDataError
from muse_rec.lifetime import end_with_parent


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
        self.batches_per_rank = steps_per_epoch(self.num_samples, batch_size, world_size)
        if not 0 <= start_batch <= self.batches_per_rank:
            raise ValueError(f"start_batch {start_batch} not in [0, {self.batches_per_rank}]")
        self.start_batch = start_batch
        if shuffle_seed is not None:
            self._block_order = np.random.default_rng(shuffle_seed).permutation(self.global_batches)

    def __len__(self) -> int:
        return self.batches_per_rank - self.start_batch

    def _block(self, j: int) -> Optional[int]:
        """The block of B consecutive samples this rank's j-th batch reads (None: a padding batch)."""
        return self._global_block(self.rank + j * self.world_size)

    def _global_block(self, g: int) -> Optional[int]:
        """The block of B consecutive samples global batch ``g`` reads (None: a padding batch)."""
        if g >= self.global_batches:
            return None
        return int(self._block_order[g]) if self.shuffle_seed is not None else g

    def _block_rows(self, block: Optional[int]) -> int:
        """Real rows of ``block`` (B, or fewer for the split's last block; 0 for padding)."""
        return 0 if block is None else min(self.batch_size, self.num_samples - block * self.batch_size)

    def batch_rows(self, j: int) -> int:
        """Real (non-padding) rows of this rank's j-th batch, without building its indices."""
        return self._block_rows(self._block(j))

    def step_rows(self, j: int) -> int:
        """Real rows of step ``j`` over all ranks (global batches ``j * W .. j * W + W - 1``): what the
        step trains on. A shuffle moves the epoch's one short block to any step, so this reads the
        shuffled order: ``j * W * B`` counting from the split's start missed it (a mid-epoch
        checkpoint's ``samples_seen`` counted the short block's missing rows as trained)."""
        return sum(self._block_rows(self._global_block(j * self.world_size + r)) for r in range(self.world_size))

    def sample_indices(self, j: int) -> np.ndarray:
        """Sample positions (int64, <= B of them) of this rank's j-th batch."""
        block = self._block(j)
        if block is None:
            return np.zeros(0, np.int64)
        lo = block * self.batch_size
        idx = np.arange(lo, min(lo + self.batch_size, self.num_samples), dtype=np.int64)
        if self.shuffle_seed is not None:
            idx = np.random.default_rng((self.shuffle_seed, block)).permutation(idx)
        return idx

    @staticmethod
    def _index(idx: np.ndarray, contiguous: bool):
        """``idx`` as a slice when it is one run (a slice of a memory map reads sequentially)."""
        return slice(int(idx[0]), int(idx[0]) + idx.size) if contiguous else idx

    def _take(self, rel: str, idx: np.ndarray, contiguous: bool) -> np.ndarray:
        return np.asarray(self.data.array(f"{self.split}/{rel}.npy")[self._index(idx, contiguous)])

    def make_batch(self, idx: np.ndarray) -> Batch:
        """Build a `Batch` of B rows from sample positions `idx` (n <= B); rows n..B-1 are padding."""
        return self.make_arrays(idx).to_batch()

    def make_arrays(self, idx: np.ndarray) -> "BatchArrays":
        """The NumPy half of `make_batch`: gathers only, compact dtypes."""
        B, L, n = self.batch_size, self.seq_len, int(idx.size)
        contiguous = n > 0 and int(idx[-1]) - int(idx[0]) + 1 == n and bool(np.all(np.diff(idx) == 1))
        a = BatchArrays.zeros(B, L)
        if n:
            a.labels[:n] = self.data.labels(self.split, self._index(idx, contiguous))
            a.weights[:n] = 1.0
            a.user_keys[:n] = self._take("sample_user_keys", idx, contiguous)
            a.item_keys[:n] = self._take("sample_item_keys", idx, contiguous)
            # Every row id is range-checked as it is read (PreparedData.in_range): FBGEMM would
            # silently clamp an out-of-range one to row 0.
            items = self.data.item_rows(self.split, self._index(idx, contiguous))
            a.target_item[:n] = items
            attrs = self.data.target_attrs(items)  # [n, 3]: category, f213, f214
            a.target_cat[:n] = attrs[:, 0]
            users = self.data.user_rows(self.split, self._index(idx, contiguous))
            has_user = users >= 0
            urow = np.where(has_user, users, 0)
            fields = self.data.user_fields(self.split, urow)  # [n, 6]
            a.pooled[:n, 0] = self.data.user_id_rows(self.split, self._index(idx, contiguous))
            a.pooled[:n, 1:6] = np.where(has_user[:, None], fields[:, 1:], 0)
            a.pooled[:n, 6:8] = attrs[:, 1:3]
            self._fill_sequences(urow, has_user, a.seq_items[:n], a.seq_cats[:n], a.seq_lengths[:n])
        a.hist_index, a.hist_members = history_groups(a.user_keys)
        return a

    def _fill_sequences(self, urow: np.ndarray, has_user: np.ndarray, out_items: np.ndarray,
                        out_cats: np.ndarray, out_lengths: np.ndarray) -> None:
        """Write the newest <= L behaviours of each user right-aligned into ``out_*[n, L]``."""
        L = self.seq_len
        start, end = self.data.history_bounds(self.split, urow)
        full_len = np.where(has_user, end - start, 0)
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
        out_items[mask] = self.data.seq_rows(self.split, "items", src)
        out_cats[mask] = self.data.seq_rows(self.split, "cats", src)

    def __iter__(self) -> Iterator[Union[Batch, "BatchArrays"]]:
        info = get_worker_info()
        if info is None:
            for j in range(self.start_batch, self.batches_per_rank):
                yield self.make_batch(self.sample_indices(j))
        else:
            # In a worker: hand back plain NumPy (pickled through the pipe). Tensors would go
            # through torch's shared-memory path, whose per-batch allocation of ~16 MB costs
            # more than building the batch; the consumer converts with `to_batch()`.
            for j in range(self.start_batch + info.id, self.batches_per_rank, info.num_workers):
                try:
                    arrays = self.make_arrays(self.sample_indices(j))
                except PreparedDataError as e:
                    # Raised here, torch would hand it on with the worker's traceback folded into
                    # its message; the user needs the one line that names the file.
                    yield _DataFault(str(e))
                    return
                yield arrays


@dataclass
class BatchArrays:
    """A batch as compact NumPy arrays (int32 rows, int8/float32 where enough); see `Batch`."""

    labels: np.ndarray  # [B] float32
    weights: np.ndarray  # [B] float32
    user_keys: np.ndarray  # [B] int64
    item_keys: np.ndarray  # [B] int64
    pooled: np.ndarray  # [B, len(POOLED_FEATURES)] int32
    target_item: np.ndarray  # [B] int32
    target_cat: np.ndarray  # [B] int32
    seq_items: np.ndarray  # [B, L] int32
    seq_cats: np.ndarray  # [B, L] int32
    seq_lengths: np.ndarray  # [B] int64
    hist_index: np.ndarray  # [B] int64 history row of each sample
    hist_members: np.ndarray  # [U, P] int64 samples of each history row, padded with B

    @classmethod
    def zeros(cls, B: int, L: int) -> "BatchArrays":
        return cls(np.zeros(B, np.float32), np.zeros(B, np.float32), np.zeros(B, np.int64), np.zeros(B, np.int64),
                   np.zeros((B, len(POOLED_FEATURES)), np.int32), np.zeros(B, np.int32), np.zeros(B, np.int32),
                   np.zeros((B, L), np.int32), np.zeros((B, L), np.int32), np.zeros(B, np.int64),
                   *history_groups(np.zeros(B, np.int64)))

    def to_batch(self) -> Batch:
        """Widen ids to int64 tensors (the dtype TorchRec lookups take)."""
        def i64(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(a.astype(np.int64))  # NumPy's cast: ~10x faster than Tensor.to here

        return Batch(
            labels=torch.from_numpy(self.labels), weights=torch.from_numpy(self.weights),
            user_keys=torch.from_numpy(self.user_keys), item_keys=torch.from_numpy(self.item_keys),
            pooled=pooled_kjt(i64(self.pooled)), target_item=i64(self.target_item),
            target_cat=i64(self.target_cat), seq_items=i64(self.seq_items), seq_cats=i64(self.seq_cats),
            seq_lengths=torch.from_numpy(self.seq_lengths),
            hist_index=torch.from_numpy(self.hist_index), hist_members=torch.from_numpy(self.hist_members),
        )


@dataclass
class _DataFault:
    """A worker's `PreparedDataError`, re-raised by `PreparedLoader` in the consuming process."""

    message: str


def _arrays_or_raise(item: Union["BatchArrays", _DataFault]) -> "BatchArrays":
    if isinstance(item, _DataFault):
        raise PreparedDataError(item.message)
    return item


logger = logging.getLogger("muse_rec")


def usable_workers(requested: int) -> int:
    """The loader workers a rank starts for ``data.num_workers`` = ``requested``: at most the CPUs this
    process may run on. A worker builds whole batches on one CPU, so more cannot run at once; each
    extra one only costs a fork and ~27 MiB (`rank_memory.WORKER_BYTES`): data.num_workers 1000 forked
    1000 processes on a 2-CPU host. The batches and their order do not depend on the count."""
    return min(requested, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class PreparedLoader:
    """Iterable of `Batch` with `__len__`; uses a torch DataLoader when `num_workers` > 0."""

    def __init__(self, dataset: PreparedBatches, num_workers: int = 0, pin_memory: bool = False) -> None:
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        usable = usable_workers(num_workers)
        if usable < num_workers:
            logger.warning("data.num_workers %d: more than the %d CPUs this process may use; starting %d loader "
                           "workers (the batches are the same)", num_workers, usable, usable)
        self.dataset, self.num_workers, self.pin_memory = dataset, usable, pin_memory

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[Batch]:
        if self.num_workers == 0:
            batches: Iterator[Batch] = iter(self.dataset)  # type: ignore[assignment]
        else:
            loader = DataLoader(self.dataset, batch_size=None, num_workers=self.num_workers, prefetch_factor=2,
                                worker_init_fn=functools.partial(_die_with, os.getpid()))
            batches = (_arrays_or_raise(arrays).to_batch() for arrays in loader)
        for batch in batches:
            yield batch.pin_memory() if self.pin_memory else batch


def _die_with(parent_pid: int, _worker_id: int) -> None:
    """DataLoader worker init: the kernel kills this worker when its trainer dies (Linux).

    A worker is a fork of the trainer, so it holds the run directory's lock and the trainer's
    stdout. torch's own check (the parent's pid, every 5 s) never runs while the worker is
    blocked handing a batch larger than a pipe buffer (~64 KiB) to a trainer that was killed:
    the worker then blocks forever, the lock stays taken (a resume, or torchrun's restart, is
    refused) and a pipe reading the trainer's output never ends.
    """
    end_with_parent(parent_pid, signal.SIGKILL)


def make_loader(data: Union[PreparedData, str], split: str, batch_size: int, seq_len: int, rank: int = 0,
                world_size: int = 1, num_workers: int = 0, start_batch: int = 0,
                shuffle_seed: Optional[int] = None, pin_memory: bool = False) -> PreparedLoader:
    """This rank's `Batch` stream over `split` (see the module docstring for the partitioning)."""
    ds = PreparedBatches(data, split, batch_size, seq_len, rank, world_size, start_batch, shuffle_seed)
    return PreparedLoader(ds, num_workers, pin_memory)

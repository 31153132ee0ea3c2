"""Collect per-rank NumPy columns on one rank and share a result back (gloo or nccl).

Columns travel as tensors through ``dist.gather`` (not pickled objects): ranks hold different
numbers of rows, so every rank pads to the longest and the root trims. Only the root holds the
whole set, so memory grows on one rank, not on all of them (``all_gather`` would put
N x world on every rank). With nccl the tensors go through the current CUDA device.

Without an initialised process group (or with world size 1) every function is the identity.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist

ROOT = 0  # group rank that computes metrics


def is_distributed(group: Optional[dist.ProcessGroup] = None) -> bool:
    """True when a process group with more than one rank is active."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def rank_and_world(group: Optional[dist.ProcessGroup] = None) -> tuple[int, int]:
    """(rank in ``group``, size of ``group``); (0, 1) without distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return 0, 1


def _global_rank(group: Optional[dist.ProcessGroup], group_rank: int) -> int:
    return group_rank if group is None else dist.get_global_rank(group, group_rank)


def _comm_device(group: Optional[dist.ProcessGroup]) -> torch.device:
    # nccl moves only CUDA tensors; every other backend here (gloo) works on CPU tensors.
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_objects(obj: Any, group: Optional[dist.ProcessGroup] = None) -> List[Any]:
    """Small picklable ``obj`` of every rank, in rank order (``[obj]`` without distributed)."""
    if not is_distributed(group):
        return [obj]
    out: List[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out


def broadcast_from_root(obj: Any, group: Optional[dist.ProcessGroup] = None) -> Any:
    """``obj`` of the root rank, returned on every rank."""
    if not is_distributed(group):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=_global_rank(group, ROOT), group=group)
    return box[0]


def gather_columns(
    columns: Dict[str, np.ndarray], group: Optional[dist.ProcessGroup] = None
) -> Optional[Dict[str, np.ndarray]]:
    """Concatenate every rank's ``columns`` (rank order) on the root; None on other ranks.

    Args:
        columns: name -> ``[n_rank]`` 1-D array; all ranks must pass the same names and dtypes
            (checked first, so a mismatch is a clear error instead of a hang).

    Returns:
        On the root: name -> ``[sum of n_rank]``; elsewhere None.
    """
    if not is_distributed(group):
        return {k: np.asarray(v) for k, v in columns.items()}
    rank, world = rank_and_world(group)
    lengths = {k: int(np.shape(v)[0]) for k, v in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"rank {rank}: columns have different lengths {lengths}")
    n_local = next(iter(lengths.values()), 0)
    schema = sorted((k, np.asarray(v).dtype.str) for k, v in columns.items())
    infos = all_gather_objects((schema, n_local), group)
    for r, (other, _) in enumerate(infos):
        if other != schema:
            raise ValueError(f"rank {rank} has columns {schema} but rank {r} has {other}")
    sizes = [n for _, n in infos]
    longest = max(sizes)
    device = _comm_device(group)
    root_global = _global_rank(group, ROOT)
    out: Dict[str, np.ndarray] = {}
    for name, _ in schema:  # same order on every rank
        local = torch.from_numpy(np.ascontiguousarray(columns[name]))
        padded = torch.zeros(longest, dtype=local.dtype, device=device)
        padded[:n_local] = local.to(device)
        parts = [torch.empty_like(padded) for _ in range(world)] if rank == ROOT else None
        dist.gather(padded, parts, dst=root_global, group=group)
        if parts is not None:
            out[name] = np.concatenate([p[:n].cpu().numpy() for p, n in zip(parts, sizes)])
        del padded, parts
    return out if rank == ROOT else None

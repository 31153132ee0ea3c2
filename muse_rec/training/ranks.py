"""This process's rank, a barrier, and rank 0's value on every rank: the collectives a checkpoint's save
and load (and the choice of one) make, each the identity without an initialised process group."""
from __future__ import annotations

from typing import TypeVar

import torch.distributed as dist

T = TypeVar("T")


def this_rank() -> int:
    """The global rank; 0 without an initialised process group."""
    return dist.get_rank() if dist.is_initialized() else 0


def barrier() -> None:
    """Every rank waits for all; nothing without an initialised process group."""
    if dist.is_initialized():
        dist.barrier()


def multi_rank() -> bool:
    """True when an initialised process group has more than one rank."""
    return dist.is_initialized() and dist.get_world_size() > 1


def from_main_rank(value: T) -> T:
    """Rank 0's ``value`` (any picklable) on every rank, so all ranks act alike (raise the same error,
    read the same checkpoint) and none hangs; collective where several ranks run."""
    if not multi_rank():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]

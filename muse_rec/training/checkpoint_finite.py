"""Whether a checkpoint's state holds a NaN or Inf: checked on every rank before a save and after a load.

A non-finite weight is never written (`NonFiniteError`), so one found on loading was put into the
files after they were written; each check names the first such key of the lowest rank holding one.
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Optional

import torch

from muse_rec.training.checkpoint_position import CheckpointError
from muse_rec.metrics.gather import all_gather_objects


class NonFiniteError(CheckpointError):
    """A weight or optimizer state holds NaN or Inf: such a checkpoint is never written."""


def _local_parts(value: object) -> Iterator[torch.Tensor]:
    """The tensors this rank holds of a state-dict value (ShardedTensor shards, DTensor local)."""
    if hasattr(value, "local_shards"):  # ShardedTensor (a Tensor subclass: test it first)
        for shard in value.local_shards():
            yield shard.tensor
    elif hasattr(value, "to_local"):  # DTensor
        yield value.to_local()
    elif isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _local_parts(v)


def _all_finite(t: torch.Tensor, chunk: int = 1 << 24) -> bool:
    """In chunks: a whole-table isfinite mask would cost a byte per element (GBs at full scale)."""
    flat = t.detach().reshape(-1)
    return all(bool(torch.isfinite(part).all()) for part in flat.split(chunk))


def _first_non_finite(state: Dict) -> Optional[str]:
    """The first key of ``state`` (model, then optimizer) holding a NaN/Inf on this rank."""
    for section in ("model", "optim"):
        entries = state.get(section, {})
        if section == "optim":
            entries = entries.get("state", {})
        for key, value in entries.items():
            for t in _local_parts(value):
                if t.is_floating_point() and not _all_finite(t):
                    return f"{section}.{key}" if section == "optim" else key
    return None


def first_non_finite_of_any_rank(state: Dict) -> Optional[str]:
    """Collective: the first key holding a NaN/Inf on the lowest rank that has one, or None."""
    found: List[Optional[str]] = all_gather_objects(_first_non_finite(state))
    return next((b for b in found if b), None)


def check_finite(state: Dict, step: int) -> None:
    """Collective: refuse to save when any rank holds a non-finite value; name the first one."""
    first = first_non_finite_of_any_rank(state)
    if first:
        raise NonFiniteError(f"step {step}: parameter {first!r} holds NaN/Inf - not writing a checkpoint "
                             "(the last good checkpoint is kept); lower the learning rate or check the data")

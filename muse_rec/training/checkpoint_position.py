"""What a checkpoint records of where training stood (``position.json``), read back field by field.

Torch-free (``dataclasses`` and JSON), so the resume checks and the commands' error handling can read
a position, or name `CheckpointError`, without importing torch.distributed.checkpoint.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from muse_rec.json_files import INT64_MAX, read_json_object

MODEL_RECORD = "model.json"  # the model settings a checkpoint was trained with (older checkpoints lack it)


@dataclass
class Position:
    """Where training stands: the next batch to train on is ``batch_in_epoch`` of ``epoch``."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    world_size: int = 1
    batch_size: int = 0  # train.batch_size per rank of the steps so far (0 = not recorded: older checkpoints)
    samples_seen: int = 0
    run_id: str = ""  # the run that wrote the checkpoint ("" = written before run ids existed)
    data_fingerprint: str = ""  # PreparedData.fingerprint of the data it was trained on
    # Wall seconds of the training loop up to here (steps, loss checks, logging, earlier checkpoints),
    # summed over every process of the run whose steps a checkpoint kept, so a resumed run reports its
    # whole samples/s and time; None = a checkpoint written before this was recorded.
    train_seconds: Optional[float] = None


class CheckpointError(ValueError):
    """A checkpoint cannot be written or read as asked; the message names the directory and why."""


def read_position(path: Path) -> Position:
    """``position.json`` of a checkpoint directory (fields this version does not know are ignored)."""
    pos_file = Path(path) / "position.json"
    if not pos_file.exists():
        raise CheckpointError(f"{path}: not a complete checkpoint (no position.json)")
    raw = read_json_object(pos_file, CheckpointError)
    # A checkpoint may come from elsewhere: each field the resume reads is checked here, once,
    # instead of failing as a TypeError (or a loader's range error) deep inside the run.
    for f in dataclasses.fields(Position):
        if f.name not in raw:
            continue
        v, low = raw[f.name], (1 if f.name == "world_size" else 0)
        if f.type == "int":  # the step fills the fused optimizers' int64 step tensors: JSON bounds no integer
            if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= INT64_MAX:
                raise CheckpointError(f"{pos_file}: {f.name} must be a 64-bit integer >= {low}, got {v!r}")
        elif f.type == "Optional[float]":
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0):
                raise CheckpointError(f"{pos_file}: {f.name} must be a finite number >= 0 or null, got {v!r}")
        elif not isinstance(v, str):
            raise CheckpointError(f"{pos_file}: {f.name} must be a string, got {v!r}")
    return Position(**{f.name: raw[f.name] for f in dataclasses.fields(Position) if f.name in raw})

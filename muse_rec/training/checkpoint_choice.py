"""The checkpoint an evaluation reads: chosen by rank 0 for every rank, checked against the spec and
the data, and chosen again when the run that wrote it, still training, deletes it meanwhile.

A training run keeps only its newest checkpoints (`checkpoint.save_checkpoint`'s ``keep``): each save
deletes the older ones. An evaluation of a run's latest checkpoint started while the run trains
spends seconds building the model and reading the shards, long enough, at a checkpoint every few
steps, for the checkpoint it chose to be deleted under it. Ranks that each listed the directory could
also pick different checkpoints, so rank 0 chooses and broadcasts.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional, Tuple

import torch

from muse_rec.data.prepared import PreparedData
from muse_rec.distributed.env import DistEnv
from muse_rec.metrics.gather import broadcast_from_root
from muse_rec.spec import Spec
from muse_rec.training.checkpoint import load_checkpoint
from muse_rec.training.checkpoint_names import named_checkpoint_problem
from muse_rec.training.checkpoint_position import CheckpointError, Position
from muse_rec.training.run_record import (RunError, check_data_fingerprint, check_model_settings, check_run_compat,
                                          scored_checkpoint)

logger = logging.getLogger("muse_rec")

# Times an evaluation reads the run's newest checkpoint again after the one it chose was deleted.
DELETED_RETRIES = 3


def _main_rank_choice(compute: Callable[[], Tuple[Optional[str], Optional[str]]], env: DistEnv) -> str:
    """Rank 0's ``(value, error)`` of ``compute`` on every rank: the value, or the error raised as
    `RunError` on every rank (none waits in a collective that rank 0 left)."""
    value, error = broadcast_from_root(compute() if env.is_main else (None, None))
    if error:
        raise RunError(error)
    return str(value)


def evaluation_checkpoint(spec: Spec, checkpoint: Optional[str], data: PreparedData, env: DistEnv,
                          allow_data_mismatch: bool = False) -> Path:
    """Collective: ``checkpoint``, or the newest of ``spec``'s run, checked: complete, trained on the
    vocabularies and (unless ``allow_data_mismatch``) the prepared data of ``data``, with ``spec``'s model.
    `RunError` on every rank naming what does not fit."""
    def choose() -> Tuple[Optional[str], Optional[str]]:
        run_dir = Path(spec.run_dir)
        try:
            ck = scored_checkpoint(run_dir, checkpoint)
            if ck is None or not (ck / "position.json").exists():
                problem = named_checkpoint_problem(ck) if checkpoint else None  # a run's directory named instead
                raise RunError(problem or f"no complete checkpoint at {checkpoint or run_dir / 'checkpoints'}")
            check_run_compat(ck.parent.parent / "run.json", data, scoring=True)
            check_data_fingerprint(ck, data, allow_data_mismatch)
            check_model_settings(ck, spec)
        except (RunError, CheckpointError) as e:
            return None, str(e)
        return str(ck), None

    return Path(_main_rank_choice(choose, env))


def load_for_evaluation(ck: Path, spec: Spec, checkpoint: Optional[str], data: PreparedData, env: DistEnv,
                        model: torch.nn.Module, skip: Callable[[str], bool], allow_data_mismatch: bool = False,
                        expect_sha256: Optional[str] = None) -> Tuple[Path, Position]:
    """Collective: load ``ck`` (from `evaluation_checkpoint`) into ``model``; (the checkpoint read, its position).

    Where ``ck`` was deleted while it was read (the run is still training) and the user named no
    ``checkpoint``, the run's newest is chosen and read again, up to `DELETED_RETRIES` times."""
    for _ in range(DELETED_RETRIES):
        try:
            return ck, load_checkpoint(ck, model, None, skip=skip, expect_sha256=expect_sha256)
        except (CheckpointError, OSError):
            if not broadcast_from_root(not ck.exists() if env.is_main else False):  # rank 0's view: one answer for all
                raise
            deleted_while_read(ck, checkpoint)
        ck = evaluation_checkpoint(spec, None, data, env, allow_data_mismatch)
    raise deleted_too_often(spec)


def deleted_while_read(ck: Path, checkpoint: Optional[str]) -> None:
    """After a read of ``ck`` failed because ``ck`` is gone: `RunError` where the user named it
    (``checkpoint``), else a warning; the caller then reads the run's newest checkpoint."""
    if checkpoint:
        raise RunError(f"{ck}: deleted while it was read: the run that wrote it is still training and keeps only "
                       "its newest checkpoints; copy the checkpoint out first, or use the run's latest (no "
                       "--checkpoint)") from None
    logger.warning("%s was deleted while it was read (its run is still training and keeps only its newest "
                   "checkpoints): reading the run's newest checkpoint instead", ck)


def deleted_too_often(spec: Spec) -> RunError:
    """The error once `DELETED_RETRIES` checkpoints in a row were deleted while they were read."""
    return RunError(f"{spec.run_dir}: {DELETED_RETRIES} checkpoints in a row were deleted while they were read: the "
                    "run is still training with a short train.checkpoint_every; try again once it has finished")

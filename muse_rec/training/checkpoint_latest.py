"""Which checkpoint is the newest of a run directory: the one a resume, an evaluation or an export reads.

A step directory gets its final name only once whole, so one without position.json is damage:
the newest such directory is refused (`latest_checkpoint`), never passed over for an older one.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

from muse_rec.training.checkpoint_names import step_dirs
from muse_rec.training.checkpoint_position import CheckpointError, read_position


def run_id_of(path: Path) -> Optional[str]:
    """The run that wrote ``path``; None when its position.json is unreadable (pruning skips it)."""
    try:
        return read_position(path).run_id
    except CheckpointError:
        return None


def _damaged(path: Path) -> CheckpointError:
    return CheckpointError(
        f"{path / 'position.json'}: missing, so the checkpoint is damaged or partly deleted (a step directory gets "
        f"its name only once complete); remove {path} to fall back to the previous checkpoint")


def _newest(steps: List[Tuple[int, Path]], run_id: Optional[str]) -> Optional[Path]:
    """`latest_checkpoint` on one listing of the step directories, looked at newest first."""
    for _, p in reversed(steps):
        if not (p / "position.json").exists():
            # Newer than any checkpoint of the run found so far, and whose it is cannot be told:
            # it may be the run's newest, so it is refused rather than passed over.
            raise _damaged(p)
        if run_id is None or read_position(p).run_id == run_id:
            return p
    return None


def latest_checkpoint(ckpt_root: str, run_id: Optional[str] = None) -> Optional[Path]:
    """The newest complete checkpoint under ``ckpt_root`` (of run ``run_id`` when given), or None.

    A step directory appears only once whole (saved under ``.tmp``, then renamed), so a newest
    step directory without a position.json, or with an unreadable one, is damage, not a crash
    mid-save: `CheckpointError` naming it, instead of silently resuming from an older checkpoint.
    Only the step directories from the newest down to the checkpoint returned are looked at: an
    older damaged one (or one that pruning is deleting) does not stop the use of a newer one.
    ``.tmp`` directories (saves in progress or killed) are never looked at.
    """
    root = Path(ckpt_root)
    for attempt in range(3):
        steps = step_dirs(root)
        try:
            return _newest(steps, run_id)
        except CheckpointError:
            # A save that finished meanwhile may have pruned the directory taken for the newest (one
            # checkpoint kept): damage only if the listing still stands.
            if attempt == 2 or step_dirs(root) == steps:
                raise
    raise AssertionError("unreachable: the last attempt returns or raises")


def checkpoint_to_resume(ckpt_root: str, run_id: Optional[str]) -> Optional[Path]:
    """The checkpoint a resume continues from: the newest of run ``run_id`` (run.json's), else the
    newest of any run (no run.json, or one written before run ids; a checkpoint of another run left
    behind is then the one found, as before run ids existed)."""
    return (latest_checkpoint(ckpt_root, run_id=run_id) if run_id else None) or latest_checkpoint(ckpt_root)

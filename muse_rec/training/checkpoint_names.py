"""How checkpoint directories are named, and what a ``--checkpoint`` path that is not one is instead.

Torch-free (only paths), so that `muse-rec export` and `rank` refuse a wrong ``--checkpoint`` before
they import torch and TorchRec, and `evaluate` words the refusal the same way.

A run directory holds ``checkpoints/step-NNNNNNNN/`` (see `muse_rec.training.checkpoint`); a complete
checkpoint is a step directory with a ``position.json``. Naming the run directory, or its
``checkpoints/`` directory, where one checkpoint is asked for is the usual slip: it was refused as
"no complete checkpoint at RUN", though the run holds several.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import List, Optional, Tuple

STEP_DIR = re.compile(r"^step-(\d{8})$")  # a complete checkpoint's final name (never ``.tmp`` / ``.replaced``)
CHECKPOINTS_DIR = "checkpoints"  # a run directory's folder of step directories
POSITION_FILE = "position.json"  # written last into a step directory: its presence marks it complete


def step_dirs(root: Path) -> List[Tuple[int, Path]]:
    """Every ``(step, step-NNNNNNNN directory)`` under ``root`` (final names only: ``.tmp`` staging
    directories never match), oldest first, complete or not."""
    if not root.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir())


def complete_steps(root: Path) -> List[Tuple[int, Path]]:
    """`step_dirs` of ``root`` that hold a position.json (complete checkpoints), oldest first."""
    return [(step, p) for step, p in step_dirs(root) if (p / POSITION_FILE).exists()]


def newest_complete_step(root: Path) -> Optional[Path]:
    """The highest-numbered complete ``step-NNNNNNNN`` directory under ``root`` (`complete_steps`), or None."""
    steps = complete_steps(root)
    return steps[-1][1] if steps else None


def named_checkpoint_problem(checkpoint: Path) -> Optional[str]:
    """Why ``checkpoint`` (a ``--checkpoint`` that holds no position.json) is a run directory or a
    run's ``checkpoints/`` directory rather than one checkpoint, naming the newest checkpoint in it
    to pass instead; None when it is neither (the caller says "no complete checkpoint")."""
    for root, what in ((checkpoint / CHECKPOINTS_DIR, "a run directory"),
                       (checkpoint, "a run's checkpoints directory")):
        newest = newest_complete_step(root)
        if newest is not None:
            return (f"--checkpoint {checkpoint}: {what}, not one checkpoint; pass one of its step directories, "
                    f"e.g. the newest: --checkpoint {newest}")
    return None

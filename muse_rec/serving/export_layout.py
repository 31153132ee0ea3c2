"""The files of an export directory (`muse-rec export --out DIR`), without torch.

Kept apart from `muse_rec.serving.export` (which imports torch and TorchRec: seconds) so that
`muse-rec export` refuses a bad ``--out`` before paying for those imports, and so that every
command's error handling can name `ExportError` without them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from muse_rec.dirlock import LOCK_FILE
from muse_rec.integrity import MANIFEST as INTEGRITY_MANIFEST
from muse_rec.training.checkpoint_names import named_checkpoint_problem

PROGRAM_FILE = "ranker.pt2"
# Candidates one call of an exported program may score: at least one, at most the int32 range (a
# candidate count is a tensor size; beyond it the manifest would promise what no call can do).
MIN_CANDIDATES, MAX_CANDIDATES = 1, 2**31 - 1
MANIFEST_FILE = "manifest.json"
# manifest.json's ``format``: the layout of the manifest and of the program's inputs it describes.
MANIFEST_FORMAT = "muse_rec.ranker/1"
# Where an export writes its files before they replace an earlier export's (inside its directory).
STAGING_DIR = ".staging"
# What an interrupted export of an earlier version may have left beside its files.
OLD_LEFTOVERS = ("partial-" + PROGRAM_FILE, INTEGRITY_MANIFEST + ".tmp")
# What an export writes into its directory (with the lock it writes under and an interrupted
# one's leftovers): the names a new export may replace there.
EXPORT_FILES = (PROGRAM_FILE, MANIFEST_FILE, INTEGRITY_MANIFEST, LOCK_FILE, STAGING_DIR) + OLD_LEFTOVERS


def check_max_candidates(max_candidates: int) -> None:
    """ValueError naming ``--max-candidates`` unless it is in [`MIN_CANDIDATES`, `MAX_CANDIDATES`]."""
    if not MIN_CANDIDATES <= max_candidates <= MAX_CANDIDATES:
        raise ValueError(f"--max-candidates {max_candidates}: must be in [{MIN_CANDIDATES}, {MAX_CANDIDATES:,}]")


class ExportError(RuntimeError):
    """Export cannot proceed as asked (no checkpoint, bad directory, unsupported spec)."""


def no_checkpoint(where: object) -> ExportError:
    """The error for a run with no checkpoint to export (or a --checkpoint that is not one)."""
    return ExportError(f"no complete checkpoint at {where} (train first, or pass --checkpoint DIR)")


def no_named_checkpoint(checkpoint: str) -> ExportError:
    """The error for a ``--checkpoint`` that is not a complete checkpoint: where it is a run directory
    or a run's ``checkpoints/``, which step directory to pass instead."""
    problem = named_checkpoint_problem(Path(checkpoint))
    return ExportError(problem) if problem else no_checkpoint(checkpoint)


def check_checkpoint_present(run_dir: str, checkpoint: Optional[str]) -> None:
    """Cheap pre-check, before torch's import: `checkpoint` holds a position.json, or (None) the run
    has a ``checkpoints`` directory with something in it. `resolve_checkpoint` then checks it whole."""
    if checkpoint:
        if not (Path(checkpoint) / "position.json").exists():
            raise no_named_checkpoint(checkpoint)
        return
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir() or not any(not p.name.startswith(".") for p in root.iterdir()):
        raise no_checkpoint(root)

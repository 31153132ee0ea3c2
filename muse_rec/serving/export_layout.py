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


# Bytes: a memory page. TorchRec pads each quantized row to a multiple of the alignment (16 for its CUDA
# kernels, 4 is tight on CPU); past a page no kernel gains, and each table grows by the alignment per row
# (2**40 asked for terabytes and ended in an out-of-memory line that did not name the flag).
MAX_ROW_ALIGNMENT = 4096


def check_row_alignment(row_alignment: int, name: str = "--row-alignment") -> None:
    """ValueError naming ``name`` unless ``row_alignment`` is a power of two in [1, `MAX_ROW_ALIGNMENT`] bytes.

    Why powers of two only: an fp16 table's rows must stay a whole number of fp16 values. An odd alignment
    can pad a row to an odd byte count (128 fp16 values = 256 B -> 259 B at 7), which FBGEMM's CPU lookup
    reads misaligned (NaN and wrong values measured at 3 with 10 and 64 values per row) and which no fp16
    view of the table can describe (`--scl-dtype fp16 --row-alignment 7` ended in torch's stride error
    after the model was loaded). Every power of two keeps each row's length even, and every memory
    alignment a kernel asks for is one.
    """
    if not (1 <= row_alignment <= MAX_ROW_ALIGNMENT and row_alignment & (row_alignment - 1) == 0):
        raise ValueError(f"{name} {row_alignment}: must be a power of two in [1, {MAX_ROW_ALIGNMENT:,}] bytes "
                         "(16 = TorchRec's default, 4 is tighter on CPU)")


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

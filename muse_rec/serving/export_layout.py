"""The files of an export directory (`muse-rec export --out DIR`), without torch.

Kept apart from `muse_rec.serving.export` (which imports torch and TorchRec: seconds) so that
`muse-rec export` refuses a bad ``--out`` before paying for those imports, and so that every
command's error handling can name `ExportError` without them.
"""
from __future__ import annotations

from muse_rec.dirlock import LOCK_FILE
from muse_rec.integrity import MANIFEST as INTEGRITY_MANIFEST

PROGRAM_FILE = "ranker.pt2"
MANIFEST_FILE = "manifest.json"
# Where an export writes its files before they replace an earlier export's (inside its directory).
STAGING_DIR = ".staging"
# What an interrupted export of an earlier version may have left beside its files.
OLD_LEFTOVERS = ("partial-" + PROGRAM_FILE, INTEGRITY_MANIFEST + ".tmp")
# What an export writes into its directory (with the lock it writes under and an interrupted
# one's leftovers): the names a new export may replace there.
EXPORT_FILES = (PROGRAM_FILE, MANIFEST_FILE, INTEGRITY_MANIFEST, LOCK_FILE, STAGING_DIR) + OLD_LEFTOVERS


class ExportError(RuntimeError):
    """Export cannot proceed as asked (no checkpoint, bad directory, unsupported spec)."""

"""A failed checkpoint save or load said in one line: a write the OS refused, damaged files, another
model's checkpoint.

DCP's `CheckpointException` is a BaseException whose str() is a multi-line dump of every rank's
failures, and a damaged file fails inside torch's readers: each is turned here into the one line a
command prints (`CheckpointError` and its subclasses carry it).
"""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path

from torch.distributed.checkpoint.api import CheckpointException

from muse_rec.training.checkpoint_position import CheckpointError
from muse_rec.wording import one_line


class CheckpointWriteError(CheckpointError):
    """The OS refused a write of a checkpoint (a full disk, a file-size limit): that step is not saved."""


def write_refused(tmp: Path, detail: str) -> CheckpointWriteError:
    """The one line for a save the OS refused: it names the step's staging directory, the free
    space there (a file-size limit refuses with space left) and how to go on."""
    try:
        free = f"{shutil.disk_usage(tmp.parent).free:,} bytes free there"
    except OSError:
        free = "free space unknown"
    return CheckpointWriteError(f"{tmp}: cannot write this checkpoint ({detail}; {free}); the checkpoints saved "
                                "before it are whole: free space, then continue the run with --resume")


def error_line(e: BaseException) -> str:
    """``e``'s type and text on one line (`one_line`), cut at 600 characters: a rank's failure in a
    summary of several."""
    return f"{type(e).__name__}: {one_line(e)[:600]}"


def failure_summary(e: CheckpointException) -> str:
    """DCP's per-rank failures, one line (its str() is a multi-line traceback dump)."""
    msgs = sorted({error_line(exc) for exc, _ in e.failures.values()})
    return "; ".join(msgs) if msgs else "unknown failure"


# What reading a damaged file raises (a truncated pickle or tensor file); DCP's reader reports an
# unreadable .metadata as "metadata is None". Such files match their SHA-256 manifest only when they
# were written damaged (or the manifest was rewritten): the checkpoint is unusable, not a misfit.
UNREADABLE = (EOFError, pickle.UnpicklingError)
DAMAGED = "damaged, its files cannot be read (use another checkpoint, e.g. an earlier step)"
# What torch's zip reader raises (a RuntimeError) for a .distcp cut short at most lengths: the message
# blamed the model ("does not fit this model"), as if the spec were wrong.
DAMAGED_ZIP = "PytorchStreamReader failed"


def describe_load_failure(e: CheckpointException) -> str:
    """One line for a failed `dcp.load`: damaged files, or a checkpoint of another model."""
    failures = [exc for exc, _ in e.failures.values()]
    if any(isinstance(exc, UNREADABLE) or "metadata is None" in str(exc) or DAMAGED_ZIP in str(exc)
           for exc in failures):
        return f"{DAMAGED}: {failure_summary(e)}"
    return f"does not fit this model: {failure_summary(e)}"

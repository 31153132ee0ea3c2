"""Which exceptions are the user's bad input (exit 2, one line) rather than a bug (exit 1, traceback).

Exit codes of every command: 0 ok, 2 bad input (the one-line message names the file, key or
flag), 1 a bug (a traceback; please report it). The imports are lazy: evaluated only when an
exception reaches a command's boundary, so a command's start-up stays light. Output locations
are checked up front (`check_output_path`), so a bad ``--out`` fails before any work.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Collection, Optional, Tuple, Type


class OutputPathError(ValueError):
    """An output location (``--out``, ``OUT``) that cannot be created or written."""


def check_output_path(path: str, flag: str, directory: bool = True, replaces: Optional[Collection[str]] = None) -> None:
    """Refuse an output location before any work is done; creates nothing.

    ``path`` is a directory the command creates (``directory``) or a file it writes. It must
    not be an existing file (resp. directory), and its nearest existing ancestor must be a
    directory this process can write. ``replaces``: the names the command writes into its
    directory; an existing one may then hold only those (an earlier output, replaced), so
    nothing else in it (a run directory's metrics.json, say) is overwritten or mixed in.
    Anything the OS still refuses at write time (a read-only mount, a full disk) is reported by
    the command as one line naming the path (OSError).
    """
    p = Path(path).absolute()
    if p.exists():
        if directory and not p.is_dir():
            raise OutputPathError(f"{flag} {path}: exists and is not a directory")
        if directory and replaces is not None:
            other = sorted(c.name for c in p.iterdir() if c.name not in replaces)
            if other:
                raise OutputPathError(f"{flag} {path}: holds files this command did not write ({', '.join(other[:3])}"
                                      f"{', ...' if len(other) > 3 else ''}); write into a new or empty directory")
        if not directory and p.is_dir():
            raise OutputPathError(f"{flag} {path}: is a directory, expected a file path")
        target = p if directory else p.parent
    else:
        target = next(a for a in p.parents if a.exists())
        if not target.is_dir():
            raise OutputPathError(f"{flag} {path}: cannot be created: {target} is not a directory")
    if not os.access(target, os.W_OK | os.X_OK):
        raise OutputPathError(f"{flag} {path}: cannot be written: {target} is not writable by this user")


def bad_input_errors() -> Tuple[Type[BaseException], ...]:
    """Exception types that mean "the input is wrong", for ``except bad_input_errors() as e``."""
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception

    from muse_rec.data.prepared import PreparedDataError
    from muse_rec.integrity import IntegrityError
    from muse_rec.serving.request import RequestError
    from muse_rec.spec import SpecError
    from muse_rec.training.checkpoint import CheckpointError
    from muse_rec.training.run_dir import RunDirError
    from muse_rec.training.trainer import RunError

    errors: Tuple[Type[BaseException], ...] = (SpecError, RunError, RunDirError, CheckpointError, PreparedDataError,
                                               IntegrityError, RequestError, CheckpointException, OutputPathError)
    try:
        from muse_rec.serving.export import ExportError

        errors += (ExportError,)
    except ImportError:  # serving extras broken: training commands still classify their errors
        pass
    return errors


def report(command: str, e: BaseException) -> int:
    """Print ``muse-rec <command>: <one line>`` to stderr; returns exit code 2."""
    text = " ".join(str(e).split()) if not _is_checkpoint_exception(e) else _dcp_line(e)
    # One write for the line and its newline: every rank of a job reports its error, and with
    # PYTHONUNBUFFERED (usual in containers) print() writes the text and the newline separately,
    # so two ranks' lines could merge into one on the shared stderr.
    sys.stderr.write(f"muse-rec {command}: {text}\n")
    sys.stderr.flush()
    return 2


def _is_checkpoint_exception(e: BaseException) -> bool:
    return type(e).__name__ == "CheckpointException" and hasattr(e, "failures")


def _dcp_line(e: BaseException) -> str:
    from muse_rec.training.checkpoint import _failure_summary

    return f"checkpoint does not fit this model: {_failure_summary(e)}"  # type: ignore[arg-type]

"""Which exceptions are the user's bad input (exit 2, one line) rather than a bug (exit 1, traceback).

Exit codes of every command: 0 ok, 2 bad input (the one-line message names the file, key or
flag), 130 interrupted (Ctrl-C; `muse_rec.cli.main` says how to go on), 141 the reader of the
output went away (quietly), 1 a bug (a traceback; please report it), or a rank of a job whose
collective failed because another rank's process ended (one line: `lost_a_peer`; the cause is that
rank's to say) or waited past `train.collective_timeout_s` for a hung one (one line naming it where it can:
`waited_past_timeout`). The imports are lazy: evaluated only when an
exception reaches a command's boundary, so a command's start-up stays light. Output locations
are checked up front (`muse_rec.output_paths`), so a bad ``--out`` fails before any work.
"""
from __future__ import annotations

import sys
from typing import Tuple, Type

from muse_rec.wording import one_line_text


def bad_input_errors() -> Tuple[Type[BaseException], ...]:
    """Exception types that mean "the input is wrong", for ``except bad_input_errors() as e``."""
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception

    from muse_rec.data.prepared import PreparedDataError
    from muse_rec.distributed.env import DeviceError, LaunchEnvError
    from muse_rec.integrity import IntegrityError
    from muse_rec.output_paths import OutputPathError
    from muse_rec.serving.export_layout import ExportError  # without torch.export and TorchRec (seconds)
    from muse_rec.serving.request import RequestError
    from muse_rec.spec import SpecError
    from muse_rec.training.checkpoint_position import CheckpointError
    from muse_rec.training.run_dir import RunDirError
    from muse_rec.training.run_record import RunError

    return (SpecError, RunError, RunDirError, CheckpointError, PreparedDataError, IntegrityError, RequestError,
            CheckpointException, OutputPathError, DeviceError, LaunchEnvError, ExportError)


def report(command: str, e: BaseException, what: str = "") -> int:
    """Print ``muse-rec <command>: <what><one line>`` to stderr; returns exit code 2. Every command's one-line
    error goes through here: a message whose text spans lines (a path holding a newline, another library's
    text) is one line (`wording.one_line_text`), as the exit-code contract above promises; so is ``what``, which
    may quote a flag's value (``--out PATH: cannot write: ``)."""
    text = one_line_text(what + (_dcp_line(e) if _is_checkpoint_exception(e) else str(e)))  # folded once, whole
    # One write for the line and its newline: every rank of a job reports its error, and with
    # PYTHONUNBUFFERED (usual in containers) print() writes the text and the newline separately,
    # so two ranks' lines could merge into one on the shared stderr.
    sys.stderr.write(f"muse-rec {command}: {text}\n")
    sys.stderr.flush()
    return 2


def _is_checkpoint_exception(e: BaseException) -> bool:
    return type(e).__name__ == "CheckpointException" and hasattr(e, "failures")


def _dcp_line(e: BaseException) -> str:
    from muse_rec.training.checkpoint_failures import describe_load_failure

    return f"checkpoint {describe_load_failure(e)}"  # type: ignore[arg-type]


# What gloo's TCP transport raises (a plain RuntimeError) on a rank whose collective has another rank at
# its other end that is gone: that process ended (its own error, a SIGKILL, the OOM killer).
_GLOO_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


# What gloo raises (a plain RuntimeError, measured under torch 2.13) on a rank whose collective waited past the
# process group's timeout (`train.collective_timeout_s`): the first where the wait itself timed out, the second
# where an earlier timed-out wait had already closed the connection the next collective used.
_GLOO_TIMED_OUT = ("Timed out waiting", "Application timeout caused pair closure")


def _in_multi_rank_job(e: BaseException) -> bool:
    """Whether ``e`` is a RuntimeError raised in a process group of several ranks. torch.distributed is looked
    up, not imported: a command that never loaded it has no peers."""
    dist = sys.modules.get("torch.distributed")
    if not isinstance(e, RuntimeError) or dist is None or not dist.is_available() or not dist.is_initialized():
        return False
    return dist.get_world_size() > 1


def lost_a_peer(e: BaseException) -> bool:
    """Whether ``e`` is this rank's collective failing because another rank of a multi-rank job ended."""
    text = str(e)
    return _in_multi_rank_job(e) and "gloo" in text and any(m in text for m in _GLOO_PEER_GONE)


def waited_past_timeout(e: BaseException) -> bool:
    """Whether ``e`` is this rank's collective giving up on another rank of a multi-rank job that neither took
    part nor ended within the collective timeout (hung, SIGSTOPped, far slower)."""
    return _in_multi_rank_job(e) and any(m in str(e) for m in _GLOO_TIMED_OUT)


def report_lost_peer(command: str, e: BaseException) -> int:
    """One line for `lost_a_peer`: the rank that ended says why (its own line, or torchrun's report of its
    signal), so this rank's traceback through TorchRec's collectives only buried that; returns 1 (the job
    failed, not this rank's input)."""
    import torch.distributed as dist

    what = next(m for m in _GLOO_PEER_GONE if m in str(e))
    sys.stderr.write(f"muse-rec {command}: rank {dist.get_rank()} of {dist.get_world_size()}: stopped, another rank "
                     f"of the job ended during a collective (gloo: {what}); that rank's error, or torchrun's report "
                     "of its exit, says why\n")
    sys.stderr.flush()
    return 1


def report_waited_past_timeout(command: str, e: BaseException) -> int:
    """One line for `waited_past_timeout`, naming this rank and, in a job of two, the one it waited for (of more,
    the collective's message does not say which); returns 1 (the job failed, not this rank's input)."""
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    other = f"rank {1 - rank}" if world == 2 else "another rank"
    gloo = " ".join(str(e).split()).rsplit("] ", 1)[-1]  # its text without gloo's source location
    sys.stderr.write(f"muse-rec {command}: rank {rank} of {world}: stopped, a collective waited longer than "
                     f"train.collective_timeout_s for {other}, which neither took part nor ended (hung, stopped by "
                     "SIGSTOP, or far slower); look there, or raise train.collective_timeout_s where that work is slow "
                     f"by nature (gloo: {gloo})\n")
    sys.stderr.flush()
    return 1

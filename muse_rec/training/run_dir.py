"""A run directory belongs to one run, and to one live process at a time.

Two rules keep a run's files (spec.yaml, run.json, checkpoints, metrics) describing the same run:

* **one run per directory**: a fresh run (not ``--resume``) into a directory that already holds
  anything is refused, unless ``--overwrite``, which *moves* the old run aside as a whole to a
  sibling ``<run_dir>.old-<UTC time>/`` (nothing is deleted; remove it yourself when sure);
* **one process per directory**: the main rank holds an exclusive ``fcntl.flock`` on
  ``<run_dir>/.lock`` for the run's life. The kernel drops the lock when the process dies,
  so a lock left by a killed run is never "stale": the next run simply gets it. The file
  holds the holder's host, pid, start time and command, which a refused run prints.

A restarted elastic job (torchrun / TorchX ``max_retries``) continues its own run: the
trainer treats it as ``--resume``, which never refuses a used directory.

Only the main rank touches the lock and the directory; the other ranks receive its verdict
(`claim_run_dir` broadcasts it), so every rank raises the same error and none hangs.
"""
from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import socket
import sys
import uuid
from pathlib import Path
from typing import IO, List, Optional

import torch.distributed as dist

LOCK_FILE = ".lock"


class RunDirError(ValueError):
    """The run directory is in use by another process or holds another run."""


def new_run_id() -> str:
    """A unique id for a fresh run: UTC start time + random suffix (sorts by start time)."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


class RunDirLock:
    """An exclusive lock on ``<run_dir>/.lock``, held until `release` or the process ends."""

    def __init__(self, run_dir: Path, handle: IO[str]) -> None:
        self.run_dir, self._handle = run_dir, handle

    @classmethod
    def acquire(cls, run_dir: Path, command: Optional[str] = None) -> "RunDirLock":
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            handle = open(run_dir / LOCK_FILE, "a+", encoding="utf-8")  # "a+": never truncate another's info
        except OSError as e:
            raise RunDirError(f"{run_dir}: cannot create the run directory or its lock ({e.strerror})") from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = _describe(handle.read())
            handle.close()
            raise RunDirError(f"{run_dir}: in use by another run ({holder}); wait for it to end or "
                              "choose another output_dir") from None
        info = {"host": socket.gethostname(), "pid": os.getpid(),
                "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "command": command if command is not None else " ".join(sys.argv)}
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(info) + "\n")
        handle.flush()
        return cls(run_dir, handle)

    def release(self) -> None:
        """Drop the lock (idempotent). The holder info stays in the file; it is only read while locked."""
        if not self._handle.closed:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()


def _describe(text: str) -> str:
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on {info['host']} since {info['started']}: {info['command']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"


def previous_contents(run_dir: Path) -> List[str]:
    """Names in ``run_dir`` other than the lock file, sorted (empty: a fresh directory)."""
    if not run_dir.is_dir():
        return []
    return sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_FILE)


def move_aside(run_dir: Path) -> Path:
    """Move everything but the (held) lock file into a new sibling ``<run_dir>.old-<UTC time>``.

    The lock file stays: moving the directory would move the locked inode with it, and a
    second process would then lock a different file.
    """
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    dest = run_dir.with_name(f"{run_dir.name}.old-{stamp}")
    dest.mkdir()
    for name in previous_contents(run_dir):
        os.replace(run_dir / name, dest / name)
    return dest


def _claim_on_main(run_dir: Path, resume: bool, overwrite: bool) -> RunDirLock:
    lock = RunDirLock.acquire(run_dir)
    try:
        used = previous_contents(run_dir)
        if used and not resume:  # (resume wins over overwrite: see claim_run_dir)
            if not overwrite:
                shown = ", ".join(used[:6]) + (", ..." if len(used) > 6 else "")
                raise RunDirError(f"{run_dir}: already holds a run ({shown}); continue it with --resume, "
                                  "start over with --overwrite (moves it to a sibling .old-<time> directory) "
                                  "or choose another output_dir")
            moved = move_aside(run_dir)
            print(f"muse-rec: --overwrite: moved the previous run in {run_dir} to {moved}", file=sys.stderr)
    except OSError as e:
        lock.release()
        raise RunDirError(f"{run_dir}: cannot move the previous run aside ({e})") from None
    except RunDirError:
        lock.release()
        raise
    return lock


def claim_run_dir(run_dir: Path, is_main: bool, resume: bool, overwrite: bool) -> Optional[RunDirLock]:
    """Collective: lock ``run_dir`` for this run (main rank) and apply the one-run rule.

    Returns the lock on the main rank (None elsewhere). Raises `RunDirError` on every rank
    when the directory is locked by a live process, or holds a run and neither ``resume``
    nor ``overwrite`` is set. ``resume`` wins over ``overwrite``: a job started with
    ``--overwrite`` and restarted by torchrun (which the trainer turns into a resume) must
    continue its own run, not move it aside. The CLI refuses both flags together.
    """
    lock, err = None, None
    if is_main:
        try:
            lock = _claim_on_main(run_dir, resume, overwrite)
        except RunDirError as e:
            err = str(e)
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [err]
        dist.broadcast_object_list(box, src=0)
        err = box[0]
    if err:
        raise RunDirError(err)
    return lock

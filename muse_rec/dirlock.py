"""An exclusive lock on a directory that one command writes at a time (a run, a prepared set, a
synthetic release).

The holder keeps an ``fcntl.flock`` on ``<dir>/.lock`` while it writes. The kernel drops the
lock when the process dies, so a lock left by a killed process is never "stale": the next one
simply gets it. The file holds the holder's host, pid, start time and command, which a refused
process prints, so the user knows what to wait for.
"""
from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import os
import socket
import sys
from pathlib import Path
from typing import IO, Optional, Sequence, Type

from muse_rec.json_files import refuse_special_file

LOCK_FILE = ".lock"
_LOCK_MODE = 0o666  # as open() creates a file: the umask decides


class DirLockError(ValueError):
    """The directory cannot be locked: another process holds it, or it cannot be created."""


class DirLock:
    """An exclusive lock on ``<directory>/.lock``, held until `release` or the process ends."""

    def __init__(self, directory: Path, handle: IO[str], before: Optional[str] = None,
                 created: Sequence[Path] = ()) -> None:
        self.directory, self._handle = directory, handle
        # What `abandon` puts back: the lock file's text before (None: there was no lock file)
        # and the directories `acquire` created, innermost first.
        self._before, self._created = before, list(created)

    @classmethod
    def acquire(cls, directory: Path, command: Optional[str] = None, *, holder: str = "another process",
                hint: str = "wait for it to end", error: Type[DirLockError] = DirLockError) -> "DirLock":
        """Create ``directory`` if needed and lock it, or raise ``error`` naming the holder.

        ``holder`` and ``hint`` word the refusal ("in use by <holder> (pid ...); <hint>").
        """
        created = [d for d in (directory, *directory.parents) if not d.exists()]
        had_lock_file = (directory / LOCK_FILE).exists()
        # A FIFO there opened (read-write does not block) but could not be used as a file: "cannot create
        # the directory or its lock (None)".
        refuse_special_file(directory / LOCK_FILE, error, "; the lock is a regular file: remove it")
        try:
            directory.mkdir(parents=True, exist_ok=True)
            # "a+" (append): never truncate another's info. O_NOFOLLOW: a directory from elsewhere may hold a
            # symbolic link here, and the holder info was written where it pointed (any file the user can write).
            fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, _LOCK_MODE)
            # surrogateescape: a lock file of other bytes (damaged, or from elsewhere) was a UnicodeDecodeError
            # traceback of every command locking the directory; its bytes now read as holder info nobody can
            # parse ("holder unknown") and `abandon` writes them back unchanged.
            handle = os.fdopen(fd, "a+", encoding="utf-8", errors="surrogateescape")
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise error(f"{directory / LOCK_FILE}: a symbolic link; the lock would write its holder info where "
                            "it points: remove it") from None
            raise error(f"{directory}: cannot create the directory or its lock ({e.strerror})") from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            who = _describe(handle.read())
            handle.close()
            raise error(f"{directory}: in use by {holder} ({who}); {hint}") from None
        info = {"host": socket.gethostname(), "pid": os.getpid(),
                "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "command": command if command is not None else " ".join(sys.argv)}
        handle.seek(0)
        before = handle.read() if had_lock_file else None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(info) + "\n")
        handle.flush()
        return cls(directory, handle, before, created)

    def release(self) -> None:
        """Drop the lock (idempotent). The holder info stays in the file; it is only read while locked."""
        if not self._handle.closed:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()

    def abandon(self) -> None:
        """Release, and leave the directory as `acquire` found it: the lock file's earlier text back
        (or no lock file), the directories it created removed where still empty. For a command
        refused after it took the lock (a used run directory): a refused command writes nothing."""
        if self._handle.closed:
            return
        lock_file = self.directory / LOCK_FILE
        try:
            if self._before is None:
                lock_file.unlink(missing_ok=True)  # while still held: nobody can have taken it since
            else:
                self._handle.seek(0)
                self._handle.truncate()
                self._handle.write(self._before)
                self._handle.flush()
        finally:
            self.release()
        for d in self._created:
            try:
                d.rmdir()
            except OSError:  # not empty (or not ours to remove): leave it
                break

    def __enter__(self) -> "DirLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _describe(text: str) -> str:
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on {info['host']} since {info['started']}: {info['command']}"
    except (ValueError, KeyError, TypeError, RecursionError):  # RecursionError: JSON nested thousands deep
        return "holder unknown"

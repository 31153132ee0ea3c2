"""Reading the small JSON files that runs, checkpoints and exports carry (run.json, position.json,
manifest.json, metrics.json, reproduce.json).

Such a file can come from elsewhere (a copied run directory, a downloaded export), so each read
either returns a JSON object or raises the caller's error type with one line naming the file;
what the object must hold is checked by the caller.
"""
from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any, Dict, Optional, Type

# The integers NumPy, torch and PyArrow hold as a C int64. JSON and the command line bound none: a
# larger integer (a request id, a position.json step, a flag) was an OverflowError deep in a command.
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


def special_file_kind(path: str | os.PathLike) -> Optional[str]:
    """What ``path`` is where it exists and is neither a regular file nor a directory ("a FIFO (named
    pipe)", "a character device", ...), else None (missing and unreadable paths included: the reader
    names those). Such a file read whole blocks (a FIFO, until something writes to it: forever, with no
    message) or never ends (/dev/zero), so every file read whole is asked first."""
    try:
        mode = os.stat(path).st_mode  # follows links: what is read is the link's target
    except (OSError, ValueError):  # missing, unreadable, a NUL byte in the name
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a character device" if stat.S_ISCHR(mode)
            else "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a file")


def is_symlink_loop(path: str | os.PathLike) -> bool:
    """Whether following ``path``'s symbolic links never ends (the OS's ELOOP): a link to itself, or
    links leading to each other. `Path.exists()` is False for one, so it looked like a missing path."""
    try:
        os.stat(path)
    except OSError as e:
        return e.errno == errno.ELOOP
    except ValueError:  # a NUL byte in the name: no loop; the caller names the path
        return False
    return False


def refuse_special_file(path: str | os.PathLike, error: Type[Exception] = ValueError, advice: str = "",
                        label: Optional[str] = None) -> None:
    """``error("<label>: a FIFO (named pipe), not a regular file<advice>")`` where `special_file_kind` names
    one: asked before a file is opened to be read, which for a FIFO blocks until something writes to it.
    ``label``: the file as the user named it, where that is not ``path`` (a spec's parent is named by its
    child's ``extends:`` line); ``path`` by default."""
    kind = special_file_kind(path)
    if kind:
        raise error(f"{path if label is None else label}: {kind}, not a regular file{advice}")


def read_json_object(path: str | os.PathLike, error: Type[Exception] = ValueError, advice: str = "") -> Dict[str, Any]:
    """The JSON object in ``path``; ``error("<path>: ...<advice>")`` when the file cannot be read,
    is not UTF-8 JSON, or holds another JSON value. ``advice``: what to do, e.g. "; re-export"."""
    p = Path(path)
    refuse_special_file(p, error, advice)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise error(f"{p}: cannot read ({e.strerror or e}){advice}") from None
    except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
        raise error(f"{p}: not valid JSON ({' '.join(str(e).split())}){advice}") from None
    except RecursionError:  # json's decoder recurses per [ or {: thousands of them were a traceback
        raise error(f"{p}: not valid JSON (nested too deeply){advice}") from None
    if not isinstance(doc, dict):
        raise error(f"{p}: expected a JSON object, got {type(doc).__name__}{advice}")
    return doc

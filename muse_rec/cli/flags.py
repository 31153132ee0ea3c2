"""argparse value types shared by the commands' flags."""
from __future__ import annotations

import argparse

# Every integer flag ends in NumPy, PyArrow or torch, which hold it as a C int64: past that, a
# value was an OverflowError ("Python int too large to convert to C long") or a NumPy ValueError
# traceback from deep inside the command (synth --users, prepare --batch-rows, baselines --seq-len).
from muse_rec.json_files import INT64_MAX, INT64_MIN


def int64(text: str) -> int:
    """An integer flag's value: a base-10 integer within int64 (argparse names the flag on error)."""
    try:
        value = int(text)
    except ValueError:  # argparse's own wording for type=int
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if not INT64_MIN <= value <= INT64_MAX:
        raise argparse.ArgumentTypeError(f"{text}: outside the 64-bit integers ({INT64_MIN:,} to {INT64_MAX:,})")
    return value


def nonempty_path(text: str) -> str:
    """A file or directory flag's value: not empty (``--out ''`` was taken as no --out at all, so
    nothing was written, and ``--exported ''`` as no --exported: the run's checkpoint was served)."""
    return _nonempty(text, "empty path: name a file or directory")


def nonempty(text: str) -> str:
    """A named value's flag (a split, a list): not empty (``rank --split ''`` was taken as no --split:
    the spec's eval split served, and ``reproduce --scl-qualities ''`` as the default qualities)."""
    return _nonempty(text, "empty value: give one, or leave the flag out for its default")


def _nonempty(text: str, why: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError(why)
    return text

"""argparse value types shared by the commands' flags."""
from __future__ import annotations

import argparse
import os

# Every integer flag ends in NumPy, PyArrow or torch, which hold it as a C int64: past that, a
# value was an OverflowError ("Python int too large to convert to C long") or a NumPy ValueError
# traceback from deep inside the command (synth --users, prepare --batch-rows, baselines --seq-len).
from muse_rec.json_files import INT64_MAX, INT64_MIN, is_symlink_loop, refuse_special_file
from muse_rec.output_paths import FILE_URI_PREFIX, strip_file_uri


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


def input_path(text: str) -> str:
    """A flag naming a local file or directory the command reads (``--checkpoint``, ``--exported``,
    compare's run directories): not empty, and a ``file://`` URI as the local path it names
    (`strip_file_uri`), as prepared data and every output take one; it was looked up as a relative
    path (``file:/abs/...``: "no such directory"). A URI of another scheme is refused: `Path` took it for a
    relative path and collapsed its '//' ("s3:/bucket/x.yaml: spec file not found")."""
    return nonempty_path(strip_file_uri(_local(text)))


def local_data_path(text: str) -> str:
    """A flag naming raw or prepared data (prepare's RAW, baselines' and check's PREPARED, reproduce's
    --raw / --prepared): not empty, local, its ``file://`` URI kept as given (the data readers take it, and
    prepare records the raw path as given). A URI of another scheme was "no meta.json - no such
    directory": the command line registers no reader for it."""
    return nonempty_path(_local(text))


def _local(text: str) -> str:
    """``text``; ArgumentTypeError for a URI of another scheme than ``file://``."""
    if "://" in strip_file_uri(text):
        raise argparse.ArgumentTypeError(f"{text}: not a local path; this flag reads a local file or directory "
                                         f"(a {FILE_URI_PREFIX} URI names one): copy it here first")
    return text


def input_file(text: str) -> str:
    """A flag naming a file the command reads whole (``--spec``, ``--floors``, ``--request``,
    ``--profiles-file``): an `input_path` that is not a FIFO, device or socket. Such a file was read
    like any other: a FIFO blocked the command until something wrote to it (forever, with no message),
    a device such as /dev/zero never ends. A missing file or a directory is left to the command's own
    one-line error, which names what it expected there. A symbolic link loop is named as one: the
    command's existence check sees no file there and said "not found". A file named with a trailing
    slash is refused for every such flag alike: `Path` drops the slash (``--spec din.yaml/`` loaded the
    file) while `open` keeps it (``--request req.json/``: "Not a directory")."""
    return _not_special(_no_trailing_slash(_not_a_loop(input_path(text))))


def optional_input_file(text: str) -> str:
    """`input_file` whose empty value means the default (``launch --spec ''``: the profile's spec)."""
    return input_file(text) if text else text


def _not_a_loop(text: str) -> str:
    if is_symlink_loop(text):
        raise argparse.ArgumentTypeError(f"{text}: a symbolic link loop (following it never reaches a file); give a file")
    return text


def _no_trailing_slash(text: str) -> str:
    name = text.rstrip(os.sep)
    if name != text and name and not os.path.isdir(text) and os.path.lexists(name):
        raise argparse.ArgumentTypeError(f"{text}: names the file {name} as a directory (the trailing "
                                         f"{os.sep!r}); give the file without it")
    return text


def _not_special(text: str) -> str:
    # A missing or unreadable path passes: the command says so, naming it.
    refuse_special_file(text, argparse.ArgumentTypeError, " (it would be read whole: a FIFO blocks until written to, "
                        "a device never ends); give a file")
    return text


def nonempty(text: str) -> str:
    """A named value's flag (a split, a list): not empty (``rank --split ''`` was taken as no --split:
    the spec's eval split served, and ``reproduce --scl-qualities ''`` as the default qualities)."""
    return _nonempty(text, "empty value: give one, or leave the flag out for its default")


def _nonempty(text: str, why: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError(why)
    return text

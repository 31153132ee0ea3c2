"""Output locations (``--out``, ``OUT``, ``--json``): refused before any work, creating nothing.

Shared by the commands (checked up front, so a bad location fails in a second, before the
heavy imports) and by library entry points that write a directory whose every file matters
(``export_model``: the integrity manifest covers the whole directory).

One rule for both kinds of output: another command's output directory (`OUTPUT_MARKERS`:
prepared data, a run, an export, a checkpoint, ...) belongs to that command. A directory output
may not be one, and a file output (``baselines --out``, ``compare --out``, ``plan --json``) may
not be written directly into one, whatever its name: it would replace one of the artifact's own
files (its meta.json, run.json, metrics.json, manifest.json) or be an extra file its readers
refuse (a checkpoint's or an export's integrity manifest lists every file; ``prepare`` takes an
OUT holding only its own files). No output, file or directory, may lie deeper inside one either
(`enclosing_output`): the artifact's next writer would refuse its directory, or move the nested
output away with it (``train --overwrite``).

Outputs are local paths: a ``file://`` URI names the local path after the prefix, as for the
readers (`strip_file_uri`); a URI of another scheme is refused (`local_output`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Collection, Mapping, Optional, Sequence, Tuple, Union

from muse_rec.json_files import is_symlink_loop


class OutputPathError(ValueError):
    """An output location (``--out``, ``OUT``) that cannot be created or written."""


FILE_URI_PREFIX = "file://"


def strip_file_uri(path: str) -> str:
    """``file:///abs/path`` as the local path ``/abs/path``; any other path as given. The readers'
    rule (iopath's handler for ``file://``, `muse_rec.data.reader.FileURIHandler`), so a URI names
    the same directory to the command that writes it and to those that read it."""
    return path[len(FILE_URI_PREFIX):] if path.startswith(FILE_URI_PREFIX) else path


def local_output(path: str, flag: str) -> str:
    """The local path an output location names (`strip_file_uri`); OutputPathError for a URI of
    another scheme, which `Path` would otherwise take as a relative directory (``./s3:/bucket``),
    and for an empty one, which `Path` takes as the current directory (``synth ''`` wrote a release
    among the files of wherever it was run)."""
    local = strip_file_uri(path)
    if not local:
        raise OutputPathError(f"{flag} {path!r}: empty path; name the output location")
    if "://" in local:
        raise OutputPathError(f"{flag} {path}: not a local path; outputs are written to local directories "
                              f"(a {FILE_URI_PREFIX} URI names one)")
    return local


def output_exists(path: Path, flag: str, shown: str) -> bool:
    """``path.exists()``; OutputPathError naming ``flag`` and ``shown`` (the path as given) where the OS
    refuses to look (a name longer than the filesystem takes: ENAMETOOLONG was a traceback)."""
    try:
        return path.exists()
    except OSError as e:
        raise OutputPathError(f"{flag} {shown}: {e.strerror}") from None


def check_output_path(path: str, flag: str, directory: bool = True,
                      replaces: Union[None, Collection[str], Callable[[str], bool]] = None, own_marker: str = "") -> str:
    """Refuse an output location before any work is done; creates nothing. Returns the local path
    it names (`local_output`: a ``file://`` URI's path), the one to write.

    ``path`` is a directory the command creates (``directory``) or a file it writes. It must
    not be an existing file (resp. directory), and its nearest existing ancestor must be a
    directory this process can write. ``replaces``: the names the command writes into its
    directory (or a test of a name); an existing one may then hold only those (an earlier output,
    replaced), so nothing else in it (a run directory's metrics.json, say) is overwritten or mixed
    in. The refusal names another command's output where the directory is one
    (`output_of_another_command`; ``own_marker``: the asking command's own marker, not counted).
    A file output is refused inside another command's output directory (`inside_another_command_s_output`),
    and any output at any depth inside a closed artifact (`check_not_inside_another_output`).
    Anything the OS still refuses at write time (a read-only mount, a full disk) is reported by
    the command as one line naming the path (OSError).
    """
    local = local_output(path, flag)
    p = Path(local).absolute()
    check_not_a_loop(p, f"{flag} {path}")
    if output_exists(p, flag, path):
        if directory and not p.is_dir():
            raise OutputPathError(f"{flag} {path}: exists and is not a directory")
        if directory and replaces is not None:
            is_own = replaces if callable(replaces) else replaces.__contains__
            other = sorted(c.name for c in p.iterdir() if not is_own(c.name))
            if other:
                held = (output_of_another_command(p, own=own_marker) or "files this command did not write "
                        f"({', '.join(other[:3])}{', ...' if len(other) > 3 else ''})")
                raise OutputPathError(f"{flag} {path}: holds {held}; write into a new or empty directory")
        if not directory and p.is_dir():
            raise OutputPathError(f"{flag} {path}: is a directory, expected a file path")
        target = p if directory else p.parent
    else:
        target = next(a for a in p.parents if a.exists())
        if not target.is_dir():
            raise OutputPathError(f"{flag} {path}: cannot be created: {target} is not a directory")
    if not directory:
        inside = inside_another_command_s_output(p, own=own_marker)
        if inside is not None:
            folder, held = inside
            raise OutputPathError(f"{flag} {path}: {folder} holds {held}, whose files this command must not replace "
                                  "or add to; write the file outside that directory")
    check_not_inside_another_output(p, f"{flag} {path}")
    if directory:  # a file is written through a link to nowhere (it creates the target); a directory is not
        check_not_dangling(p, f"{flag} {path}")
    if not os.access(target, os.W_OK | os.X_OK):
        raise OutputPathError(f"{flag} {path}: cannot be written: {target} is not writable by this user")
    return local


def check_not_an_input(path: str, flag: str, inputs: Mapping[str, Optional[str]]) -> None:
    """OutputPathError when the file output ``path`` (``flag``'s) is one of the command's input files
    (``inputs``: flag -> path, None where not given), as named or through a link: ``plan --json
    spec.yaml`` wrote the plan over the spec it read, silently."""
    out = Path(strip_file_uri(path)).absolute()
    for input_flag, given in inputs.items():
        if given is None:
            continue
        source = Path(strip_file_uri(given)).absolute()
        try:
            same = os.path.samefile(out, source)  # also a hard link, a link to it, or another spelling
        except OSError:  # one of them does not exist: then only the same name is the same file
            same = os.path.realpath(out) == os.path.realpath(source)
        if same:
            raise OutputPathError(f"{flag} {path}: is the {input_flag} file this command reads; write the output "
                                  "to another path")


# The file that marks a directory as a command's output, and what to call it. A command that
# writes into a directory it may share with its user's own files (synth's release directory may
# hold a LICENSE) or that resumes its own (reproduce's OUT) refuses one marked as another's.
# Literal names: checked before any heavy import; tests check them against the writers' constants.
REPRODUCE_MANIFEST = "reproduce.json"
OUTPUT_MARKERS = (
    ("meta.json", "prepared data (meta.json)"),
    ("run.json", "a training run (run.json)"),
    ("ranker.pt2", "an export (ranker.pt2)"),
    # muse_rec.integrity.MANIFEST, after the export's marker: an export has one too. Every file of the
    # directory is listed in it, so an added one is refused as tampering when the checkpoint loads.
    ("SHA256SUMS.json", "a checkpoint (SHA256SUMS.json)"),
    (REPRODUCE_MANIFEST, f"a reproduce OUT ({REPRODUCE_MANIFEST})"),
    ("predictions.parquet", "an evaluation (predictions.parquet)"),
    ("_synth_manifest.json", "a synthetic release (_synth_manifest.json)"),
)


def output_of_another_command(path: Path, own: str = "",
                              markers: Sequence[Tuple[str, str]] = OUTPUT_MARKERS) -> Optional[str]:
    """What `path` holds when it is another muse-rec command's output (e.g. "prepared data
    (meta.json)"), else None; ``own``: the marker of the asking command's output, not counted;
    ``markers``: the kinds of output looked for."""
    for marker, kind in markers:
        if marker != own and (path / marker).exists():
            return kind
    return None


def inside_another_command_s_output(file: Path, own: str = "") -> Optional[Tuple[Path, str]]:
    """``(directory, what it holds)`` when the file ``file`` would be written directly into another
    muse-rec command's output directory (`output_of_another_command`), else None.

    Any name is refused there, not only the artifact's own files: those would be replaced, and an
    added one makes the artifact fail its readers' checks (the integrity manifest of a checkpoint
    or an export lists every file; ``prepare`` resumes only an OUT holding its own files). Both the
    directory as named and, where ``file`` is a symbolic link, the one its target lies in."""
    file = Path(file).absolute()
    for folder in dict.fromkeys((file.parent, Path(os.path.realpath(file)).parent)):
        held = output_of_another_command(folder, own=own) if folder.is_dir() else None
        if held:
            return folder, held
    return None


# The outputs nothing may be written inside, at any depth: each is one artifact that its next
# writer replaces or moves as a whole, or that a manifest or `prepare` checks entry by entry. A
# reproduce OUT and a synthetic release are left out: they hold other commands' outputs by design
# (reproduce writes its data, prepared data and runs under OUT; a release may hold the user's files).
CLOSED_MARKERS = tuple((m, kind) for m, kind in OUTPUT_MARKERS if m not in (REPRODUCE_MANIFEST, "_synth_manifest.json"))
# A second entry each closed artifact always holds beside its marker: "meta.json" and "run.json" are
# common names, and a stray one in a home directory must not close every directory below it.
CLOSED_CONFIRMED_BY = {"meta.json": "vocab", "run.json": "spec.yaml", "ranker.pt2": "manifest.json",
                       "SHA256SUMS.json": "position.json", "predictions.parquet": "metrics.json"}


def _up_as_the_os_goes(path: Path) -> Path:
    """``path`` (absolute) with each ``..`` after an existing directory taken as the OS takes it: the
    parent of that directory's real location, so ``RUN/../x`` is a sibling of RUN, not inside it. A
    ``..`` after a name that does not exist yet is kept: creating the output creates that name, and
    ``RUN/new/..`` then is RUN itself."""
    out = Path(path.anchor)
    for part in path.parts[1:]:
        out = Path(os.path.realpath(out)).parent if part == ".." and out.is_dir() else out / part
    return out


def enclosing_output(path: Path) -> Optional[Tuple[Path, str]]:
    """``(directory, what it holds)`` for the nearest ancestor of ``path`` that is a closed
    artifact (`CLOSED_MARKERS`, with its `CLOSED_CONFIRMED_BY` entry), else None. Ancestors of the path as named and, where a symbolic
    link leads elsewhere, of its real location."""
    path = _up_as_the_os_goes(Path(path).absolute())
    for start in dict.fromkeys((path, Path(os.path.realpath(path)))):
        for folder in start.parents:
            held = output_of_another_command(folder, markers=[(m, kind) for m, kind in CLOSED_MARKERS
                                                               if (folder / CLOSED_CONFIRMED_BY[m]).exists()])
            if held:
                return folder, held
    return None


def check_not_inside_another_output(path: Path, what: str) -> None:
    """OutputPathError when ``path`` (``what``: its flag and name as the user wrote them) lies inside a
    closed artifact (`enclosing_output`), naming both."""
    inside = enclosing_output(path)
    if inside is not None:
        folder, held = inside
        raise OutputPathError(f"{what}: inside {folder}, which holds {held}; that directory is one artifact, "
                              "nothing else may be written into it: choose a path outside it")


def check_not_a_loop(path: Path, what: str) -> None:
    """OutputPathError when ``path`` (``what``: its flag and name as given) is a symbolic link loop: a
    file output replaced the link with the file (its target cannot be resolved, so the rename went over
    the link itself), a directory output was called a link to nowhere."""
    if is_symlink_loop(path):
        raise OutputPathError(f"{what}: a symbolic link loop (following it never reaches a file or directory); "
                              "name another location or remove the link")


def check_not_dangling(path: Path, what: str) -> None:
    """OutputPathError when ``path`` (``what``: its flag and name as given) is a symbolic link to nowhere:
    creating it failed later as mkdir's bare "File exists" (prepare, synth) or "exists and is not a
    directory" (evaluate), naming no flag. A loop is named as one (`check_not_a_loop`)."""
    check_not_a_loop(path, what)
    if path.is_symlink() and not path.exists():
        raise OutputPathError(f"{what}: a symbolic link to {os.readlink(path)}, which does not exist; "
                              "name an existing location or remove the link")


def output_within(root: Path, own: Callable[[str], bool]) -> Optional[Tuple[Path, str]]:
    """``(directory, what it holds)`` for another command's output (`output_of_another_command`) that
    is ``root`` itself or lies anywhere under it, the entries of ``root`` that ``own`` names aside
    (the asking command's own files, e.g. a run's checkpoints); else None. For a command about to
    move or replace everything else in ``root``."""
    held = output_of_another_command(root, markers=[(m, kind) for m, kind in OUTPUT_MARKERS if not own(m)])
    if held:
        return root, held
    for entry in sorted(root.iterdir()):
        if own(entry.name) or entry.is_symlink() or not entry.is_dir():
            continue
        for folder, _, _ in os.walk(entry):  # not into linked directories: moving the link moves no files
            held = output_of_another_command(Path(folder))
            if held:
                return Path(folder), held
    return None

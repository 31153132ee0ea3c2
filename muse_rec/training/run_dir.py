"""A run directory belongs to one run, and to one live process at a time.

Two rules keep a run's files (spec.yaml, run.json, checkpoints, metrics) describing the same run:

* **one run per directory**: a fresh run (not ``--resume``) into a directory that already holds
  anything is refused, unless ``--overwrite``, which *moves* the old run aside as a whole to a
  sibling ``<run_dir>.old-<UTC time>/`` (nothing is deleted; remove it yourself when sure);
* **one process per directory**: the main rank holds the directory's lock
  (`muse_rec.dirlock`: ``<run_dir>/.lock``) for the run's life.

A restarted elastic job (torchrun / TorchX ``max_retries``) continues its own run: the
trainer treats it as ``--resume``, which never refuses a used directory.

Only the main rank touches the lock and the directory; the other ranks receive its verdict
(`claim_run_dir` broadcasts it), so every rank raises the same error and none hangs.

An evaluation's ``--out`` follows the second rule too (`claim_evaluation_dir`); the first is the
command's (`muse-rec evaluate` replaces an earlier evaluation and refuses anything else).
"""
from __future__ import annotations

import datetime as _dt
import os
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, List, Optional, TypeVar

from muse_rec.data.files import remove_killed_tmps, tmp_of
from muse_rec.dirlock import LOCK_FILE, DirLock, DirLockError
from muse_rec.output_paths import OutputPathError, check_not_inside_another_output, output_within
from muse_rec.spec import load_spec


_Lock = TypeVar("_Lock", bound=DirLock)


class RunDirError(DirLockError):
    """The run directory is in use by another process or holds another run."""


def check_spec_names_its_run(spec_file: str, run_dir: str) -> None:
    """RunDirError where ``spec_file`` is a run's spec.yaml (beside its run.json) whose ``output_dir``
    names another directory: a copied run directory's spec.yaml still names the original (spec.yaml
    holds it absolute), so training with it, --resume included, would write into the original.
    ``run_dir`` is the run directory after the command's overrides: one that ``--set output_dir``
    moved away from the file's own is the user's choice (a new run from a run's settings), not refused."""
    holder = Path(spec_file).parent
    if Path(spec_file).name != "spec.yaml" or not (holder / "run.json").exists():
        return
    if Path(run_dir).resolve() == holder.resolve():
        return
    if Path(load_spec(spec_file).run_dir).resolve() == Path(run_dir).resolve():  # the file's own output_dir
        raise RunDirError(f"{spec_file}: the spec.yaml of the run in {holder}, but its output_dir is {run_dir}: "
                          f"training with it would write there; add --set output_dir={holder} to train this "
                          "copy (or another output_dir for a new run)")


def new_run_id() -> str:
    """A unique id for a fresh run: UTC start time + random suffix (sorts by start time)."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


class RunDirLock(DirLock):
    """The lock of a run directory (`muse_rec.dirlock`); its refusal is a `RunDirError`."""

    moved_to: Optional[Path] = None  # where --overwrite moved the previous run (`move_aside`), if it did

    def abandon(self) -> None:
        """`DirLock.abandon`, with a previous run that --overwrite moved aside moved back while nothing
        was written in its place: a run refused after the claim (a sparse optimizer the device lacks,
        no plan that fits) left it in ``<dir>.old-<time>`` and an empty run directory behind."""
        if self.moved_to is not None and not self._handle.closed and not previous_contents(self.directory):
            for name in previous_contents(self.moved_to):
                os.replace(self.moved_to / name, self.directory / name)
            self.moved_to.rmdir()
            self.moved_to = None
        super().abandon()

    @classmethod
    def acquire(cls, run_dir: Path, command: Optional[str] = None) -> "RunDirLock":  # type: ignore[override]
        return super().acquire(run_dir, command, holder="another run",
                               hint="wait for it to end or choose another output_dir", error=RunDirError)


def previous_contents(run_dir: Path) -> List[str]:
    """Names in ``run_dir`` other than the lock file, sorted (empty: a fresh directory)."""
    if not run_dir.is_dir():
        return []
    return sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_FILE)


# What marks a directory as a run's (its record, or a checkpoint of a run whose record was not
# written yet): only such a directory can be continued with --resume.
RUN_MARKERS = ("run.json", "spec.yaml", "checkpoints")


def holds_a_run(used: List[str]) -> bool:
    """Whether a directory holding ``used`` (`previous_contents`) holds a run."""
    return any(name in RUN_MARKERS for name in used)


def used_run_dir_message(run_dir: Path, used: List[str], resume_flag: str = "--resume",
                         overwrite: bool = True) -> str:
    """Why a fresh run into ``run_dir`` (holding ``used``) is refused, and what to do instead, in the
    flags of the command that refuses it (``torchx run`` spells a bool ``--resume True``)."""
    shown = ", ".join(used[:6]) + (", ..." if len(used) > 6 else "")
    over = "start over with --overwrite (moves it to a sibling .old-<time> directory) " if overwrite else ""
    if not holds_a_run(used):  # a folder of other files: there is no run to continue
        over = "move them aside with --overwrite (to a sibling .old-<time> directory) " if overwrite else ""
        return f"{run_dir}: holds files that are not a run ({shown}); {over}or choose another output_dir"
    return (f"{run_dir}: already holds a run ({shown}); continue it with {resume_flag}, {over}"
            "or choose another output_dir")


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


# What a run writes in its directory: checked before any step, so an unwritable one fails in one
# line at the start, not as a traceback at the first checkpoint after the run record was rewritten.
PREDICTIONS_DIR = "predictions.parquet"  # a run's or an evaluation's predictions: a Parquet part per rank
RUN_SUBDIRS = ("checkpoints", "tensorboard", "memory", PREDICTIONS_DIR)
RUN_FILES = ("spec.yaml", "run.json")  # rewritten in place
RUN_REPLACED = ("metrics.json",)  # written beside and renamed over: only the directory's write matters
RUN_RANK_FILES = "memory"  # the subdirectory whose files (rank<r>.json) each rank rewrites


def _rewritten_files(run_dir: Path) -> Iterator[Path]:
    """The files in ``run_dir`` that a run rewrites, as they are there now."""
    yield from (run_dir / name for name in RUN_FILES + RUN_REPLACED)
    if (run_dir / RUN_RANK_FILES).is_dir():
        yield from sorted((run_dir / RUN_RANK_FILES).iterdir())


def _check_writable(run_dir: Path) -> None:
    """RunDirError naming the first place in ``run_dir`` this run could not write."""
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise RunDirError(f"{run_dir}: not a writable directory; fix it or choose another output_dir")
    _check_predictions_dir(run_dir / PREDICTIONS_DIR, "the run", "output_dir")
    for name in RUN_SUBDIRS:
        p = run_dir / name
        if p.exists() and not (p.is_dir() and os.access(p, os.W_OK | os.X_OK)):
            raise RunDirError(f"{p}: not a writable directory (the run writes its {name} there); "
                              "fix it or choose another output_dir")
    # What is in a file's place first (a link, a directory: `_check_rewritable`, for every rewritten file), then
    # whether a file rewritten in place may be written. The directory test was made twice for spec.yaml and
    # run.json, first in the writability test, so a link to a directory was called "not a writable file" and,
    # once that was fixed, refused again as a link.
    for p in _rewritten_files(run_dir):
        _check_rewritable(p, "the run", "output_dir")
    for name in RUN_FILES:
        p = run_dir / name
        if p.exists() and not os.access(p, os.W_OK):
            raise RunDirError(f"{p}: not a writable file (the run writes it); fix it or choose another output_dir")


def _check_rewritable(p: Path, writer: str, option: str) -> None:
    """RunDirError when ``p``, a file that ``writer`` rewrites, is a symbolic link or a directory.

    A run or evaluation directory may come from elsewhere: its files are written where a symbolic link
    points (anywhere: a resume overwrote the target), and a dangling link or a directory in their place
    failed at the end with a traceback, after the whole run had trained."""
    if p.is_symlink():
        raise RunDirError(f"{p}: a symbolic link (to {os.readlink(p)}); {writer} rewrites this file and would "
                          f"write there: remove the link or choose another {option}")
    if p.is_dir():
        raise RunDirError(f"{p}: not a writable file ({writer} writes it); fix it or choose another {option}")


def _check_predictions_dir(p: Path, writer: str, option: str) -> None:
    """RunDirError when ``p``, the predictions directory ``writer`` replaces, is a symbolic link or not a directory.

    Its parts are replaced and those of another world size deleted: through a link (a directory from elsewhere)
    that was done in the link's target, and a file in its place was a ValueError traceback after the scoring."""
    if p.is_symlink():
        raise RunDirError(f"{p}: a symbolic link (to {os.readlink(p)}); {writer} replaces the predictions' parts "
                          f"in this directory and would do so there: remove the link or choose another {option}")
    if p.exists() and not p.is_dir():
        raise RunDirError(f"{p}: not a directory ({writer} writes its predictions there, a Parquet part per rank); "
                          f"remove it or choose another {option}")


def check_not_inside_an_artifact(out: Path, what: str) -> None:
    """RunDirError when the run or evaluation directory ``out`` lies inside another command's output
    (`muse_rec.output_paths.enclosing_output`); ``what`` names it as the user gave it. Before the
    lock, which would create ``out`` there."""
    try:
        check_not_inside_another_output(out, what)
    except OutputPathError as e:
        raise RunDirError(str(e)) from None


def _is_run_entry(name: str) -> bool:
    """A name the run writes in its directory (its checkpoints are other commands' kind of output)."""
    return (name in RUN_MARKERS + RUN_SUBDIRS + RUN_FILES + RUN_REPLACED or name == LOCK_FILE
            or tmp_of(name) == "metrics.json")


def _claim_on_main(run_dir: Path, resume: bool, overwrite: bool) -> RunDirLock:
    check_not_inside_an_artifact(run_dir, f"output_dir {run_dir}")
    lock = RunDirLock.acquire(run_dir)
    try:
        used = previous_contents(run_dir)
        if used and resume and not holds_a_run(used):  # it would train into the folder beside them
            raise RunDirError(f"{run_dir}: --resume: holds no run to continue ({', '.join(used[:6])}"
                              f"{', ...' if len(used) > 6 else ''}); choose another output_dir")
        if used and not resume:  # (resume wins over overwrite: see claim_run_dir)
            if not overwrite:
                raise RunDirError(used_run_dir_message(run_dir, used))
            # Moving it would take another command's output (prepared data, an export, a run
            # nested in a folder of runs) away from where its users look for it.
            other = output_within(run_dir, own=_is_run_entry)
            if other is not None:
                raise RunDirError(f"{run_dir}: --overwrite would move {other[0]} aside with it, which holds "
                                  f"{other[1]}; move that out yourself or choose another output_dir")
            lock.moved_to = move_aside(run_dir)  # said once the run goes on (`given_back_on_error`)
        _check_writable(run_dir)
    except OSError as e:
        lock.abandon()
        raise RunDirError(f"{run_dir}: cannot move the previous run aside ({e})") from None
    except RunDirError:
        lock.abandon()  # a refused run leaves the directory as it was, its lock file included
        raise
    return lock


def check_resumable(run_dir: Path) -> None:
    """`claim_run_dir`'s refusals of a resume, checked and let go: RunDirError when ``run_dir`` is in
    use or holds something that is not a run; the directory is left exactly as it was found."""
    _claim_on_main(run_dir, resume=True, overwrite=False).abandon()


def claim_run_dir(run_dir: Path, is_main: bool, resume: bool, overwrite: bool) -> Optional[RunDirLock]:
    """Collective: lock ``run_dir`` for this run (main rank) and apply the one-run rule.

    Returns the lock on the main rank (None elsewhere). Raises `RunDirError` on every rank
    when the directory is locked by a live process, or holds a run and neither ``resume``
    nor ``overwrite`` is set. ``resume`` wins over ``overwrite``: a job started with
    ``--overwrite`` and restarted by torchrun (which the trainer turns into a resume) must
    continue its own run, not move it aside. The CLI refuses both flags together.
    """
    return _main_rank_verdict(lambda: _claim_on_main(run_dir, resume, overwrite), is_main)


def _main_rank_verdict(claim: Callable[[], _Lock], is_main: bool) -> Optional[_Lock]:
    """Collective: ``claim`` on the main rank only; its `RunDirError` is raised on every rank (the
    main rank broadcasts it), so the other ranks never wait in a collective the main rank left."""
    lock, err = None, None
    if is_main:
        try:
            lock = claim()
        except RunDirError as e:
            err = str(e)
    import torch.distributed as dist  # here: `muse-rec launch` checks a run directory without torch

    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [err]
        dist.broadcast_object_list(box, src=0)
        err = box[0]
    if err:
        raise RunDirError(err)
    return lock


def claim_evaluation_dir(out: Path, is_main: bool) -> Optional[DirLock]:
    """Collective: lock an evaluation's ``--out`` (main rank) for the evaluation's life.

    Two evaluations into one directory would leave one's metrics.json beside the other's
    predictions; the second is refused (`RunDirError` on every rank), naming the holder. Under
    the lock no other evaluation is writing, so a metrics.json temporary found there is a killed
    one's (`muse_rec.data.files.tmp_name`) and is removed. Returns the lock on the main rank.
    """
    def claim() -> DirLock:
        check_not_inside_an_artifact(out, f"--out {out}")
        lock = DirLock.acquire(out, holder="another evaluation", hint="wait for it to end or choose another --out",
                               error=RunDirError)
        try:
            remove_killed_tmps(out, "metrics.json")
            _check_rewritable(out / "metrics.json", "the evaluation", "--out")
            _check_predictions_dir(out / PREDICTIONS_DIR, "the evaluation", "--out")
        except OSError as e:
            lock.abandon()
            raise RunDirError(f"{out}: cannot remove a killed evaluation's temporary file ({e})") from None
        except RunDirError:
            lock.abandon()
            raise
        return lock

    return _main_rank_verdict(claim, is_main)


@contextmanager
def given_back_on_error(lock: Optional[RunDirLock]) -> Iterator[None]:
    """An exception in the block (a refused resume, no plan that fits, a damaged checkpoint) gives
    the run directory back as `claim_run_dir` found it (`DirLock.abandon`): its lock file's holder
    info restored, a directory the claim created removed. For the part of a run before it writes
    anything; ``lock`` is None on the ranks that do not hold it. A previous run that --overwrite moved
    aside is moved back on an exception (`RunDirLock.abandon`), else said where it went."""
    try:
        yield
    except BaseException:
        if lock is not None:
            lock.abandon()
        raise
    if lock is not None and lock.moved_to is not None:
        # only `train` takes --overwrite; its line names the command as every other muse-rec line does
        print(f"muse-rec train: --overwrite: moved the previous run in {lock.directory} to {lock.moved_to}",
              file=sys.stderr)

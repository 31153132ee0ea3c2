"""Sharded checkpoints with torch.distributed.checkpoint (DCP): model + optimizer + data position.

Layout of a run directory's ``checkpoints/``::

    step-00000040/           one complete checkpoint (DCP shards + .metadata)
        position.json        {"step": 40, "epoch": 0, "batch_in_epoch": 40, "world_size": 2, ...}
        model.json           the resolved spec's ``model`` mapping it was trained with
        rng-<rank>.pt        each rank's torch RNG state (dropout, shuffling)
        SHA256SUMS.json      every file's SHA-256 (muse_rec.integrity), checked before loading
    step-00000080.tmp/       a save in progress or killed mid-way: never read, removed later
    step-00000040.replaced/  a checkpoint renamed aside to be deleted (pruned, or saved again): never read

A step directory gets its final name only once whole, so one without position.json is damage:
the newest such directory is refused (`latest_checkpoint`), never passed over for an older one.

A checkpoint is written into ``*.tmp`` and renamed by rank 0 after every rank finished, so a run
killed mid-save leaves the previous checkpoint as the latest. DCP stores each ShardedTensor
shard with its global offsets, so a checkpoint written by N ranks loads on M ranks (resharding
happens at load time). The frozen SCL table is not saved: it is a constant that the run reloads
from the prepared data, and at 35M x 128 it would dominate every checkpoint.

A checkpoint records the id of the run that wrote it (``position.json``: ``run_id``) and the
fingerprint of the prepared data it was trained on (``data_fingerprint``): pruning only ever
deletes the current run's checkpoints, and a resume / evaluation / export on other data is
refused. A checkpoint with a non-finite weight is never written (`NonFiniteError`) nor loaded, and
loading checks the integrity manifest before DCP unpickles anything.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pickle
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, TypeVar

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from muse_rec.data.files import write_binary
from muse_rec.integrity import IntegrityError, verify, write_manifest
from muse_rec.json_files import INT64_MAX, read_json_object
from muse_rec.lifetime import interrupts_deferred
from muse_rec.metrics.gather import all_gather_objects
from muse_rec.training.checkpoint_names import complete_steps, step_dirs

logger = logging.getLogger(__name__)

T = TypeVar("T")
MODEL_RECORD = "model.json"  # the model settings a checkpoint was trained with (older checkpoints lack it)


@dataclass
class Position:
    """Where training stands: the next batch to train on is ``batch_in_epoch`` of ``epoch``."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    world_size: int = 1
    batch_size: int = 0  # train.batch_size per rank of the steps so far (0 = not recorded: older checkpoints)
    samples_seen: int = 0
    run_id: str = ""  # the run that wrote the checkpoint ("" = written before run ids existed)
    data_fingerprint: str = ""  # PreparedData.fingerprint of the data it was trained on
    # Wall seconds of the training loop up to here (steps, loss checks, logging, earlier checkpoints),
    # summed over every process of the run whose steps a checkpoint kept, so a resumed run reports its
    # whole samples/s and time; None = a checkpoint written before this was recorded.
    train_seconds: Optional[float] = None


class CheckpointError(ValueError):
    """A checkpoint cannot be written or read as asked; the message names the directory and why."""


class CheckpointWriteError(CheckpointError):
    """The OS refused a write of a checkpoint (a full disk, a file-size limit): that step is not saved."""


def _write_refused(tmp: Path, detail: str) -> CheckpointWriteError:
    """The one line for a save the OS refused: it names the step's staging directory, the free
    space there (a file-size limit refuses with space left) and how to go on."""
    try:
        free = f"{shutil.disk_usage(tmp.parent).free:,} bytes free there"
    except OSError:
        free = "free space unknown"
    return CheckpointWriteError(f"{tmp}: cannot write this checkpoint ({detail}; {free}); the checkpoints saved "
                                "before it are whole: free space, then continue the run with --resume")


class NonFiniteError(CheckpointError):
    """A weight or optimizer state holds NaN or Inf: such a checkpoint is never written."""


def read_position(path: Path) -> Position:
    """``position.json`` of a checkpoint directory (fields this version does not know are ignored)."""
    pos_file = Path(path) / "position.json"
    if not pos_file.exists():
        raise CheckpointError(f"{path}: not a complete checkpoint (no position.json)")
    raw = read_json_object(pos_file, CheckpointError)
    # A checkpoint may come from elsewhere: each field the resume reads is checked here, once,
    # instead of failing as a TypeError (or a loader's range error) deep inside the run.
    for f in dataclasses.fields(Position):
        if f.name not in raw:
            continue
        v, low = raw[f.name], (1 if f.name == "world_size" else 0)
        if f.type == "int":  # the step fills the fused optimizers' int64 step tensors: JSON bounds no integer
            if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= INT64_MAX:
                raise CheckpointError(f"{pos_file}: {f.name} must be a 64-bit integer >= {low}, got {v!r}")
        elif f.type == "Optional[float]":
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0):
                raise CheckpointError(f"{pos_file}: {f.name} must be a finite number >= 0 or null, got {v!r}")
        elif not isinstance(v, str):
            raise CheckpointError(f"{pos_file}: {f.name} must be a string, got {v!r}")
    return Position(**{f.name: raw[f.name] for f in dataclasses.fields(Position) if f.name in raw})


def _run_id_of(path: Path) -> Optional[str]:
    """The run that wrote ``path``; None when its position.json is unreadable (pruning skips it)."""
    try:
        return read_position(path).run_id
    except CheckpointError:
        return None


def _damaged(path: Path) -> CheckpointError:
    return CheckpointError(
        f"{path / 'position.json'}: missing, so the checkpoint is damaged or partly deleted (a step directory gets "
        f"its name only once complete); remove {path} to fall back to the previous checkpoint")


def _newest(steps: List[Tuple[int, Path]], run_id: Optional[str]) -> Optional[Path]:
    """`latest_checkpoint` on one listing of the step directories, looked at newest first."""
    for _, p in reversed(steps):
        if not (p / "position.json").exists():
            # Newer than any checkpoint of the run found so far, and whose it is cannot be told:
            # it may be the run's newest, so it is refused rather than passed over.
            raise _damaged(p)
        if run_id is None or read_position(p).run_id == run_id:
            return p
    return None


def latest_checkpoint(ckpt_root: str, run_id: Optional[str] = None) -> Optional[Path]:
    """The newest complete checkpoint under ``ckpt_root`` (of run ``run_id`` when given), or None.

    A step directory appears only once whole (saved under ``.tmp``, then renamed), so a newest
    step directory without a position.json, or with an unreadable one, is damage, not a crash
    mid-save: `CheckpointError` naming it, instead of silently resuming from an older checkpoint.
    Only the step directories from the newest down to the checkpoint returned are looked at: an
    older damaged one (or one that pruning is deleting) does not stop the use of a newer one.
    ``.tmp`` directories (saves in progress or killed) are never looked at.
    """
    root = Path(ckpt_root)
    for attempt in range(3):
        steps = step_dirs(root)
        try:
            return _newest(steps, run_id)
        except CheckpointError:
            # A save that finished meanwhile may have pruned the directory taken for the newest (one
            # checkpoint kept): damage only if the listing still stands.
            if attempt == 2 or step_dirs(root) == steps:
                raise
    raise AssertionError("unreachable: the last attempt returns or raises")


def checkpoint_to_resume(ckpt_root: str, run_id: Optional[str]) -> Optional[Path]:
    """The checkpoint a resume continues from: the newest of run ``run_id`` (run.json's), else the
    newest of any run (no run.json, or one written before run ids; a checkpoint of another run left
    behind is then the one found, as before run ids existed)."""
    return (latest_checkpoint(ckpt_root, run_id=run_id) if run_id else None) or latest_checkpoint(ckpt_root)


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _multi_rank() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def from_main_rank(value: T) -> T:
    """Rank 0's ``value`` (any picklable) on every rank, so all ranks act alike (raise the same error,
    read the same checkpoint) and none hangs; collective where several ranks run."""
    if not _multi_rank():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _local_parts(value: object) -> Iterator[torch.Tensor]:
    """The tensors this rank holds of a state-dict value (ShardedTensor shards, DTensor local)."""
    if hasattr(value, "local_shards"):  # ShardedTensor (a Tensor subclass: test it first)
        for shard in value.local_shards():
            yield shard.tensor
    elif hasattr(value, "to_local"):  # DTensor
        yield value.to_local()
    elif isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _local_parts(v)


def _all_finite(t: torch.Tensor, chunk: int = 1 << 24) -> bool:
    """In chunks: a whole-table isfinite mask would cost a byte per element (GBs at full scale)."""
    flat = t.detach().reshape(-1)
    return all(bool(torch.isfinite(part).all()) for part in flat.split(chunk))


def _first_non_finite(state: Dict) -> Optional[str]:
    """The first key of ``state`` (model, then optimizer) holding a NaN/Inf on this rank."""
    for section in ("model", "optim"):
        entries = state.get(section, {})
        if section == "optim":
            entries = entries.get("state", {})
        for key, value in entries.items():
            for t in _local_parts(value):
                if t.is_floating_point() and not _all_finite(t):
                    return f"{section}.{key}" if section == "optim" else key
    return None


def _first_non_finite_of_any_rank(state: Dict) -> Optional[str]:
    """Collective: the first key holding a NaN/Inf on the lowest rank that has one, or None."""
    bad = _first_non_finite(state)
    found: List[Optional[str]] = [bad]
    if _multi_rank():
        found = [None] * dist.get_world_size()
        dist.all_gather_object(found, bad)
    return next((b for b in found if b), None)


def _check_finite(state: Dict, step: int) -> None:
    """Collective: refuse to save when any rank holds a non-finite value; name the first one."""
    first = _first_non_finite_of_any_rank(state)
    if first:
        raise NonFiniteError(f"step {step}: parameter {first!r} holds NaN/Inf - not writing a checkpoint "
                             "(the last good checkpoint is kept); lower the learning rate or check the data")


def _state(model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer], skip: Callable[[str], bool]) -> Dict:
    model_sd = {k: v for k, v in model.state_dict().items() if not skip(k)}
    state: Dict = {"model": model_sd}
    if optimizer is not None:
        osd = optimizer.state_dict()
        osd["state"] = {k: v for k, v in osd["state"].items() if not skip(k)}
        state["optim"] = osd
    return state


def save_checkpoint(
    ckpt_root: str,
    model: torch.nn.Module,
    optimizer: Optional[torch.optim.Optimizer],
    position: Position,
    skip: Callable[[str], bool] = lambda k: False,
    keep: int = 2,
    model_spec: Optional[Dict[str, Any]] = None,
) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint directory.

    ``model_spec`` (the resolved spec's ``model`` mapping) is written as ``model.json``, so an
    evaluation or export under another model's spec is refused by name (`run_record.check_model_settings`)
    even where the other model's tensors happen to have the same shapes.

    Raises `NonFiniteError` (on every rank, before anything is written) when a weight or an
    optimizer state holds NaN/Inf. Only ``position.run_id``'s older checkpoints are pruned.
    """
    root = Path(ckpt_root)
    final = root / f"step-{position.step:08d}"
    tmp = root / f"step-{position.step:08d}.tmp"
    state = _state(model, optimizer, skip)
    _check_finite(state, position.step)
    with interrupts_deferred():  # Ctrl-C / SIGTERM: the save finishes first (a run stopped there resumes from it)
        _save(root, final, tmp, state, position, keep, model_spec)
    return final


def _save(root: Path, final: Path, tmp: Path, state: Dict, position: Position, keep: int,
          model_spec: Optional[Dict[str, Any]]) -> None:
    """`save_checkpoint`'s writes: staged in ``tmp``, renamed to ``final``, older ones pruned."""
    if _rank() == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    _barrier()
    # A refused write (a full disk) reached the user as DCP's "unexpected pos" under a load's
    # words ("does not fit this model"), or as torch.save's traceback: said as what it is.
    try:
        dcp.save(state, checkpoint_id=str(tmp))
        write_binary(tmp / f"rng-{_rank()}.pt", lambda f: torch.save(torch.get_rng_state(), f))
    except CheckpointException as e:  # raised on every rank: DCP gathers each rank's failures
        raise _write_refused(tmp, _failure_summary(e)) from None
    except OSError as e:
        raise _write_refused(tmp, " ".join(str(e).split())) from None
    _barrier()
    if _rank() == 0:
        try:
            (tmp / "position.json").write_text(json.dumps(asdict(position), indent=2))
            if model_spec is not None:
                (tmp / MODEL_RECORD).write_text(json.dumps(model_spec, indent=2))
            digest = write_manifest(tmp)  # last: it covers every file above (all ranks' shards)
        except OSError as e:
            raise _write_refused(tmp, " ".join(str(e).split())) from None
        replaced = root / f"step-{position.step:08d}.replaced"
        if final.exists():  # a save of a step saved before (a resume): renamed aside, then deleted, so
            # a kill during the (slow) delete leaves a whole checkpoint under the step's name, not a half one
            shutil.rmtree(replaced, ignore_errors=True)
            os.replace(final, replaced)
        os.replace(tmp, final)
        shutil.rmtree(replaced, ignore_errors=True)
        logger.info("checkpoint %s (sha256 %s)", final, digest)
        _prune(root, keep, position.run_id)
    _barrier()


def _prune(root: Path, keep: int, run_id: str) -> None:
    """Keep the newest ``keep`` complete checkpoints of run ``run_id``; drop leftovers of killed saves.

    Another run's checkpoint is never deleted (a run directory belongs to one run, see
    run_dir.py; this is the second line of defence).
    """
    mine = [p for _, p in complete_steps(root) if _run_id_of(p) == run_id]
    for p in mine[:-keep] if keep > 0 else []:
        # Renamed aside, then deleted: an evaluation or export reading it meanwhile finds its name gone at
        # once (and reads the run's newest instead), not a directory losing its files one by one.
        aside = p.with_name(p.name + ".replaced")
        shutil.rmtree(aside, ignore_errors=True)
        try:
            os.replace(p, aside)
        except OSError:
            aside = p
        shutil.rmtree(aside, ignore_errors=True)
    for p in [*root.glob("step-*.tmp"), *root.glob("step-*.replaced")]:
        shutil.rmtree(p, ignore_errors=True)


def _materialize_lazy_state(optimizer: torch.optim.Optimizer) -> None:
    """Create the dense optimizers' state (torch builds it at the first step) so DCP can load
    into it in place. The dummy step's effect on parameters is overwritten by the model load."""
    # Here, not at the top: the resume checks import this module before the training stack (TorchRec).
    from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper

    parts = [o for _, o in optimizer.optimizers] if isinstance(optimizer, CombinedOptimizer) else [optimizer]
    for opt in parts:
        if isinstance(opt, KeyedOptimizerWrapper) and not opt.state:
            opt.init_state()
            opt.zero_grad(set_to_none=True)


def load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: Optional[torch.optim.Optimizer],
    skip: Callable[[str], bool] = lambda k: False,
    expect_sha256: Optional[str] = None,
) -> Position:
    """Collective: load model (+ optimizer) state in place, resharding if the world size changed.

    The directory is first checked against its SHA-256 manifest (and ``expect_sha256``) on rank
    0, before DCP unpickles its metadata. Raises `CheckpointError` (every rank) naming the
    directory and the missing / mismatched keys; DCP's own `CheckpointException` is a
    BaseException, so it is turned into one here.
    """
    err: Optional[str] = None
    if _rank() == 0:
        try:
            verify(path, expect_sha256)
        except IntegrityError as e:
            err = str(e)
    err = from_main_rank(err)
    if err:
        raise CheckpointError(err)
    position = read_position(path)
    if optimizer is not None:
        _materialize_lazy_state(optimizer)
    state = _state(model, optimizer, skip)
    try:
        dcp.load(state, checkpoint_id=str(path))
    except CheckpointException as e:
        raise CheckpointError(f"{path}: {describe_load_failure(e)}") from None
    except _UNREADABLE as e:
        raise CheckpointError(f"{path}: {_DAMAGED}: {_one_line(e)}") from None
    except (RuntimeError, ValueError, KeyError, OSError) as e:
        what = _DAMAGED if _DAMAGED_ZIP in str(e) else "does not fit this model"
        raise CheckpointError(f"{path}: {what}: {_one_line(e)}") from None
    # DCP casts a saved tensor to the model's dtype without a word: an int64 or float64 tensor where training saves
    # fp32 (a file from elsewhere, re-sealed) loaded as other weights than it holds.
    foreign = _foreign_dtype(Path(path), state["model"])
    if foreign:
        raise CheckpointError(f"{path}: {foreign}; not a checkpoint of this model")
    # Training never saves a NaN/Inf (`_check_finite`), so one here was written into a file that still matches
    # its manifest (re-sealed): loaded, it made `rank` and `evaluate` fail on NaN scores with a traceback, or a
    # resumed run train on it. One pass over the loaded values, as the save makes.
    bad = _first_non_finite_of_any_rank(state)
    if bad:
        raise CheckpointError(f"{path}: {bad!r} holds NaN/Inf, which training never saves (the checkpoint was "
                              "altered after it was written); use another checkpoint, e.g. an earlier step")
    # Load the complete state dict: sharded collections' load hooks expect every table of theirs,
    # the skipped (frozen) ones simply keep their current values.
    full = model.state_dict()
    full.update(state["model"])
    model.load_state_dict(full)
    if optimizer is not None:
        full_osd = optimizer.state_dict()
        full_osd["state"].update(state["optim"]["state"])
        if "param_groups" in state["optim"]:  # KeyedOptimizer saves them only when asked to
            full_osd["param_groups"] = state["optim"]["param_groups"]
        optimizer.load_state_dict(full_osd)
        # FBGEMM's fused optimizers keep their step count (Adam's bias correction) outside any state
        # dict: without this a resumed run's Adam would start its bias correction over.
        from muse_rec.distributed.fused_step_count import set_fused_optimizer_step

        set_fused_optimizer_step(model, position.step)
    rng = Path(path) / f"rng-{_rank()}.pt"
    bad_rng: Optional[str] = None
    if rng.exists() and position.world_size == (dist.get_world_size() if dist.is_initialized() else 1):
        try:
            state = torch.load(rng, weights_only=True)
            if not (isinstance(state, torch.Tensor) and state.dtype == torch.uint8 and state.dim() == 1):
                raise TypeError(f"expected a 1-D uint8 tensor, got {type(state).__name__}")
            torch.set_rng_state(state)
        # Bytes that are no pickle at all make torch's weights-only unpickler fail inside itself: a missing memo
        # entry (KeyError), an empty stack (IndexError) or a short file (EOFError), besides UnpicklingError.
        except (RuntimeError, TypeError, ValueError, LookupError, *_UNREADABLE) as e:
            bad_rng = f"{rng}: not a torch RNG state ({_one_line(e)})"
    # Each rank reads only its own rng-<rank>.pt: one rank's damaged file raised on that rank alone, while
    # the others rewrote the run record for the resume and trained into a collective it never joined.
    bad_rng = next((b for b in all_gather_objects(bad_rng) if b), None)
    if bad_rng:
        raise CheckpointError(bad_rng)
    return position


def _foreign_dtype(path: Path, model_state: Dict) -> Optional[str]:
    """The first key of ``model_state`` whose dtype in the checkpoint's metadata is another, said as such; None
    when every saved tensor has the model's dtype. Read after `dcp.load`, so the metadata is known to be readable."""
    saved = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    for key, value in model_state.items():
        dtype = getattr(getattr(saved.get(f"model.{key}"), "properties", None), "dtype", None)
        if dtype is not None and isinstance(value, torch.Tensor) and value.dtype != dtype:
            return f"{key!r} is saved as {dtype}, the model holds {value.dtype}"
    return None


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:600]}"


def _failure_summary(e: CheckpointException) -> str:
    """DCP's per-rank failures, one line (its str() is a multi-line traceback dump)."""
    msgs = sorted({_one_line(exc) for exc, _ in e.failures.values()})
    return "; ".join(msgs) if msgs else "unknown failure"


# What reading a damaged file raises (a truncated pickle or tensor file); DCP's reader reports an
# unreadable .metadata as "metadata is None". Such files match their SHA-256 manifest only when they
# were written damaged (or the manifest was rewritten): the checkpoint is unusable, not a misfit.
_UNREADABLE = (EOFError, pickle.UnpicklingError)
_DAMAGED = "damaged, its files cannot be read (use another checkpoint, e.g. an earlier step)"
# What torch's zip reader raises (a RuntimeError) for a .distcp cut short at most lengths: the message
# blamed the model ("does not fit this model"), as if the spec were wrong.
_DAMAGED_ZIP = "PytorchStreamReader failed"


def describe_load_failure(e: CheckpointException) -> str:
    """One line for a failed `dcp.load`: damaged files, or a checkpoint of another model."""
    failures = [exc for exc, _ in e.failures.values()]
    if any(isinstance(exc, _UNREADABLE) or "metadata is None" in str(exc) or _DAMAGED_ZIP in str(exc)
           for exc in failures):
        return f"{_DAMAGED}: {_failure_summary(e)}"
    return f"does not fit this model: {_failure_summary(e)}"

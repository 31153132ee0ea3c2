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
the newest such directory is refused (`checkpoint_latest.latest_checkpoint`), never passed over
for an older one.

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

This module saves and loads through DCP. What ``position.json`` holds is `checkpoint_position`;
finding the newest checkpoint, `checkpoint_latest`; the NaN/Inf checks, `checkpoint_finite`; the
one-line account of a failed save or load, `checkpoint_failures`; the ranks' collectives, `ranks`.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from muse_rec.data.files import write_binary
from muse_rec.integrity import IntegrityError, verify, write_manifest
from muse_rec.lifetime import interrupts_deferred
from muse_rec.metrics.gather import all_gather_objects, broadcast_from_root, rank_and_world
from muse_rec.training.checkpoint_failures import (DAMAGED, DAMAGED_ZIP, UNREADABLE, describe_load_failure,
                                                   error_line, failure_summary, write_refused)
from muse_rec.training.checkpoint_finite import check_finite, first_non_finite_of_any_rank
from muse_rec.training.checkpoint_latest import run_id_of
from muse_rec.training.checkpoint_names import complete_steps
from muse_rec.training.checkpoint_position import MODEL_RECORD, CheckpointError, Position, read_position

logger = logging.getLogger(__name__)


def _barrier() -> None:
    """Every rank waits for all; nothing without an initialised process group."""
    if dist.is_initialized():
        dist.barrier()


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
    check_finite(state, position.step)
    with interrupts_deferred():  # Ctrl-C / SIGTERM: the save finishes first (a run stopped there resumes from it)
        _save(root, final, tmp, state, position, keep, model_spec)
    return final


def _save(root: Path, final: Path, tmp: Path, state: Dict, position: Position, keep: int,
          model_spec: Optional[Dict[str, Any]]) -> None:
    """`save_checkpoint`'s writes: staged in ``tmp``, renamed to ``final``, older ones pruned."""
    rank = rank_and_world()[0]
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    _barrier()
    # A refused write (a full disk) reached the user as DCP's "unexpected pos" under a load's
    # words ("does not fit this model"), or as torch.save's traceback: said as what it is.
    try:
        dcp.save(state, checkpoint_id=str(tmp))
        write_binary(tmp / f"rng-{rank}.pt", lambda f: torch.save(torch.get_rng_state(), f))
    except CheckpointException as e:  # raised on every rank: DCP gathers each rank's failures
        raise write_refused(tmp, failure_summary(e)) from None
    except OSError as e:
        raise write_refused(tmp, " ".join(str(e).split())) from None
    _barrier()
    if rank == 0:
        try:
            (tmp / "position.json").write_text(json.dumps(asdict(position), indent=2))
            if model_spec is not None:
                (tmp / MODEL_RECORD).write_text(json.dumps(model_spec, indent=2))
            digest = write_manifest(tmp)  # last: it covers every file above (all ranks' shards)
        except OSError as e:
            raise write_refused(tmp, " ".join(str(e).split())) from None
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
    mine = [p for _, p in complete_steps(root) if run_id_of(p) == run_id]
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
    if rank_and_world()[0] == 0:
        try:
            verify(path, expect_sha256)
        except IntegrityError as e:
            err = str(e)
    err = broadcast_from_root(err)
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
    except UNREADABLE as e:
        raise CheckpointError(f"{path}: {DAMAGED}: {error_line(e)}") from None
    except (RuntimeError, ValueError, KeyError, OSError) as e:
        what = DAMAGED if DAMAGED_ZIP in str(e) else "does not fit this model"
        raise CheckpointError(f"{path}: {what}: {error_line(e)}") from None
    # DCP casts a saved tensor to the model's dtype without a word: an int64 or float64 tensor where training saves
    # fp32 (a file from elsewhere, re-sealed) loaded as other weights than it holds.
    foreign = _foreign_dtype(Path(path), state["model"])
    if foreign:
        raise CheckpointError(f"{path}: {foreign}; not a checkpoint of this model")
    # Training never saves a NaN/Inf (`check_finite`), so one here was written into a file that still matches
    # its manifest (re-sealed): loaded, it made `rank` and `evaluate` fail on NaN scores with a traceback, or a
    # resumed run train on it. One pass over the loaded values, as the save makes.
    bad = first_non_finite_of_any_rank(state)
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
    rank, world_size = rank_and_world()
    rng = Path(path) / f"rng-{rank}.pt"
    bad_rng: Optional[str] = None
    if rng.exists() and position.world_size == world_size:
        try:
            state = torch.load(rng, weights_only=True)
            if not (isinstance(state, torch.Tensor) and state.dtype == torch.uint8 and state.dim() == 1):
                got = (f"a {state.dim()}-D {state.dtype} tensor of shape {tuple(state.shape)}"
                       if isinstance(state, torch.Tensor) else f"a {type(state).__name__}")
                raise TypeError(f"expected a 1-D uint8 tensor, got {got}")
            torch.set_rng_state(state)
        # Bytes that are no pickle at all make torch's weights-only unpickler fail inside itself: a missing memo
        # entry (KeyError), an empty stack (IndexError) or a short file (EOFError), besides UnpicklingError.
        except (RuntimeError, TypeError, ValueError, LookupError, *UNREADABLE) as e:
            bad_rng = f"{rng}: not a torch RNG state ({error_line(e)})"
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

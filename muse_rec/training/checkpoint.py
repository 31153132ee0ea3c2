"""Sharded checkpoints with torch.distributed.checkpoint (DCP): model + optimizer + data position.

Layout of a run directory's ``checkpoints/``::

    step-00000040/           one complete checkpoint (DCP shards + .metadata)
        position.json        {"step": 40, "epoch": 0, "batch_in_epoch": 40, "world_size": 2, ...}
        rng-<rank>.pt        each rank's torch RNG state (dropout, shuffling)
    step-00000080.tmp/       a save in progress or killed mid-way: never read, removed later

A checkpoint is written into ``*.tmp`` and renamed by rank 0 after every rank finished, so a run
killed mid-save leaves the previous checkpoint as the latest. DCP stores each ShardedTensor
shard with its global offsets, so a checkpoint written by N ranks loads on M ranks (resharding
happens at load time). The frozen SCL table is not saved: it is a constant that the run reloads
from the prepared data, and at 35M x 128 it would dominate every checkpoint.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Optional

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper

logger = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step-(\d{8})$")


@dataclass
class Position:
    """Where training stands: the next batch to train on is ``batch_in_epoch`` of ``epoch``."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    world_size: int = 1
    samples_seen: int = 0


def latest_checkpoint(ckpt_root: str) -> Optional[Path]:
    """The newest complete checkpoint under ``ckpt_root``, or None."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return None
    steps = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and (p / "position.json").exists())
    return steps[-1][1] if steps else None


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
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
) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint directory."""
    root = Path(ckpt_root)
    final = root / f"step-{position.step:08d}"
    tmp = root / f"step-{position.step:08d}.tmp"
    if _rank() == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    _barrier()
    dcp.save(_state(model, optimizer, skip), checkpoint_id=str(tmp))
    torch.save(torch.get_rng_state(), tmp / f"rng-{_rank()}.pt")
    _barrier()
    if _rank() == 0:
        (tmp / "position.json").write_text(json.dumps(asdict(position), indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _prune(root, keep)
    _barrier()
    return final


def _prune(root: Path, keep: int) -> None:
    """Keep the newest ``keep`` complete checkpoints; drop leftovers of killed saves."""
    complete = sorted(p for p in root.iterdir() if _STEP_DIR.match(p.name))
    for p in complete[:-keep] if keep > 0 else []:
        shutil.rmtree(p, ignore_errors=True)
    for p in root.glob("step-*.tmp"):
        shutil.rmtree(p, ignore_errors=True)


def _materialize_lazy_state(optimizer: torch.optim.Optimizer) -> None:
    """Create the dense optimizers' state (torch builds it at the first step) so DCP can load
    into it in place. The dummy step's effect on parameters is overwritten by the model load."""
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
) -> Position:
    """Collective: load model (+ optimizer) state in place, resharding if the world size changed."""
    pos_file = Path(path) / "position.json"
    if not pos_file.exists():
        raise FileNotFoundError(f"{path}: not a complete checkpoint (no position.json)")
    position = Position(**json.loads(pos_file.read_text()))
    if optimizer is not None:
        _materialize_lazy_state(optimizer)
    state = _state(model, optimizer, skip)
    dcp.load(state, checkpoint_id=str(path))
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
    rng = Path(path) / f"rng-{_rank()}.pt"
    if rng.exists() and position.world_size == (dist.get_world_size() if dist.is_initialized() else 1):
        torch.set_rng_state(torch.load(rng))
    return position

"""Opening a training run, before its first step: the job's process group and logging, the prepared data
and its checks, the run directory claimed (or a restart's or resume's checks), the sharded model and
optimizer built, the checkpoint to continue from loaded, and where the run stands (`RunStart`).

Every refusal here leaves the run directory as it was: the run's record is written after (`trainer`).
"""
from __future__ import annotations

import importlib
import json
import logging
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import torch

from muse_rec.data.prepared import PreparedData, PreparedDataError
from muse_rec.distributed.env import DistEnv, init_distributed, restart_count, scheduler_retry_count
from muse_rec.lifetime import torchrun_job
from muse_rec.metrics.gather import broadcast_from_root
from muse_rec.quiet import quiet_known_warnings
from muse_rec.spec import Spec
from muse_rec.training.checkpoint import load_checkpoint
from muse_rec.training.checkpoint_latest import checkpoint_to_resume
from muse_rec.training.checkpoint_position import Position, read_position
from muse_rec.training.results import rank_memory
from muse_rec.training.run_dir import (RunDirError, RunDirLock, claim_run_dir, given_back_on_error, new_run_id,
                                       previous_contents, used_run_dir_message)
from muse_rec.training.run_record import (RunError, check_data_fingerprint, check_resume_settings, check_run_compat,
                                          open_spec_data, read_run_json, resume_place)
from muse_rec.wording import count

# The training stack (TorchRec and FBGEMM: ~4 s of imports per process) is imported inside `open_run`
# (`_import_training_stack`), after the run-directory, data and resume checks: a refused run answers
# without it (tests/robustness/test_run_dir.py checks the module stays light).

logger = logging.getLogger("muse_rec")


def setup_logging(env: DistEnv) -> None:
    quiet_known_warnings()
    level = logging.INFO if env.is_main else logging.WARNING
    # force: an imported library already gave the root logger a bare handler ("INFO:muse_rec:...").
    # Root stays at WARNING (libraries' INFO chatter off); our logger says what the job does.
    logging.basicConfig(level=logging.WARNING, format=f"[%(asctime)s rank{env.rank}] %(message)s",
                        datefmt="%H:%M:%S", force=True)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_MarkedFormatter(handler.formatter))
    logger.setLevel(level)


class _MarkedFormatter(logging.Formatter):
    """The run log's format, with "WARNING: " / "ERROR: " before such messages: in a log of progress
    lines, what needs the user's attention (a run below its floor, a resume of nothing) must stand out."""

    def __init__(self, inner: Optional[logging.Formatter]) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        text = self.inner.format(record)
        if record.levelno < logging.WARNING:
            return text
        head, sep, rest = text.partition("] ")
        return f"{head}{sep}{record.levelname}: {rest}" if sep else f"{record.levelname}: {text}"


@dataclass
class RunStart:
    """A run once `open_run` has checked, claimed and loaded it: the job, its data and sharded model,
    and where the run stands. What its record, its training loop and its end read."""

    env: DistEnv
    run_dir: Path
    data: PreparedData
    lock: Optional[RunDirLock]  # rank 0's claim on the run directory (None elsewhere), held until the run ends
    dmp: torch.nn.Module
    optimizer: torch.optim.Optimizer
    skip: Callable[[str], bool]  # the state checkpoints leave out (`build_sharded`)
    memory: Dict  # this rank's memory once sharded, written with the results
    model_record: Dict  # each checkpoint's model.json
    run_id: str
    position: Position  # where training continues; the loop advances it
    train_loader_len: int  # this rank's batches per epoch
    split_samples: int  # the train split's impressions and clicks
    train_clicks: int
    total_steps: int
    finished: bool  # a resumed run that had already trained to its end: evaluated again only
    keep_record: bool  # finished, with a run.json: its run.json and spec.yaml are not written again
    trained_world_size: int  # the ranks the run's weights were trained on

    @property
    def ckpt_root(self) -> Path:
        return self.run_dir / "checkpoints"


def open_run(spec: Spec, resume: bool, device_type: Optional[str], overwrite: bool,
              allow_data_mismatch: bool) -> RunStart:
    """Join the job, check the data, claim the run directory, check a resume, build the sharded model
    and load the checkpoint to resume from: in this order, so that a refusal comes before what it
    would waste, and leaves the run directory as it found it."""
    env = init_distributed(DistEnv.from_environ(device_type=device_type), collective_timeout(spec))
    setup_logging(env)
    restart, restarted_fresh_run = _restart_attempt(resume)
    if restarted_fresh_run:
        resume = True
    t = spec.train
    run_dir = Path(spec.run_dir)
    data = open_spec_data(spec)
    if t.eval_at_end:
        _check_eval_data(spec, data)
    lock = claim_run_dir(run_dir, env.is_main, resume, overwrite)  # held until the run ends
    with given_back_on_error(lock):  # until the run record is written, a refusal leaves no trace
        prev_run = read_run_json(run_dir / "run.json") if resume else {}
        if restarted_fresh_run:
            _refuse_used_dir_again(run_dir, prev_run)
        if resume:  # every rank checks (same files), so all raise together instead of some hanging
            check_run_compat(run_dir / "run.json", data)
            check_resume_settings(run_dir / "spec.yaml", spec)
        _import_training_stack()
        from muse_rec.data.loader import make_loader
        from muse_rec.training.build import build_sharded

        torch.manual_seed(t.seed)

        seq_len = spec.data.seq_len
        train_loader_len = len(make_loader(data, spec.data.train_split, t.batch_size, seq_len, rank=env.rank,
                                           world_size=env.world_size))
        if train_loader_len == 0:
            raise RunError(f"data.prepared = {spec.data.prepared!r}: split {spec.data.train_split!r} has no samples")
        # Shown at the start: at a fixed lr, how far one epoch gets follows its clicks (docs/accuracy.md).
        split_samples, train_clicks = data.num_samples(spec.data.train_split), data.num_positives(spec.data.train_split)

        dmp, optimizer, skip = build_sharded(spec, data, env)
        # Measured now, written with the results: a run that stops early (e.g. a refused resume)
        # must leave the run directory as it found it.
        memory = rank_memory(dmp, env)

        ckpt_root = run_dir / "checkpoints"
        model_record = json.loads(json.dumps(spec.to_dict()["model"]))  # each checkpoint's model.json
        ck = checkpoint_to_resume(str(ckpt_root), prev_run.get("run_id")) if resume else None
        run_id = prev_run.get("run_id") or (read_position(ck).run_id if ck is not None else "") or new_run_id()
        position = Position(world_size=env.world_size, batch_size=t.batch_size, run_id=run_id,
                            data_fingerprint=data.fingerprint, train_seconds=0.0)
        saved_world_size = env.world_size  # the ranks that trained the weights loaded (none: this run's)
        if resume:
            if ck is None and not prev_run and not restart:  # the user's --resume, and nothing there
                logger.warning("--resume: %s holds no run (no run.json, no checkpoint): starting a new run from "
                               "step 0; if you meant to continue a run, check output_dir and name", run_dir)
            elif ck is None:  # a restart before the first checkpoint, or a run that saved none yet
                logger.info("--resume: no checkpoint under %s yet, starting from step 0", ckpt_root)
            else:
                check_data_fingerprint(ck, data, allow_data_mismatch)
                position = load_checkpoint(ck, dmp, optimizer, skip=skip)
                saved_world_size = position.world_size  # before `place_in_epoch` re-expresses it in this run's
                logger.info("resumed from %s (step %d, epoch %d, batch %d; saved by %s, now %d)", ck,
                            position.step, position.epoch, position.batch_in_epoch, count(position.world_size, "rank"),
                            env.world_size)
                resume_place(position, ck, spec, split_samples, env.world_size, train_loader_len)
                position.run_id, position.data_fingerprint = run_id, data.fingerprint
        # The run ends after train.epochs epochs (or train.max_steps steps): counted from where it stands, as
        # a resume on another number of ranks has steps of another size behind it.
        total_steps = position.step + max(0, (t.epochs - position.epoch) * train_loader_len - position.batch_in_epoch)
        if t.max_steps:
            total_steps = min(t.max_steps, total_steps)
    # A resumed run that had already trained to its end: evaluated again, its checkpoint, its record
    # (run.json: the ranks it trained on, its steps) and its training figures left as they were.
    finished = not (position.step < total_steps and position.epoch < t.epochs)
    keep_record = finished and (run_dir / "run.json").exists()
    # The ranks the run's weights were trained on (compare groups runs by them), not those of a
    # later evaluation-only resume.
    trained_world_size = saved_world_size if finished else env.world_size
    return RunStart(env=env, run_dir=run_dir, data=data, lock=lock, dmp=dmp, optimizer=optimizer, skip=skip,
                    memory=memory, model_record=model_record, run_id=run_id, position=position,
                    train_loader_len=train_loader_len, split_samples=split_samples, train_clicks=train_clicks,
                    total_steps=total_steps, finished=finished, keep_record=keep_record,
                    trained_world_size=trained_world_size)


def _restart_attempt(resume: bool) -> Tuple[int, bool]:
    """(torchrun's restart count, whether this is a fresh run's job started again), said in a warning:
    such an attempt resumes."""
    restart, retry = restart_count(), scheduler_retry_count()
    restarted_fresh_run = bool((restart or retry) and not resume)
    if restarted_fresh_run:
        # torchrun restarted the job after a rank failed, or the scheduler ran it again (a Slurm requeue, whose
        # torchrun counts from 0 again; before, that attempt was refused as a fresh run into a used directory,
        # so max_retries could never continue a run): continue from the last checkpoint.
        attempt = (f"restart {restart} of the job (torchrun --max-restarts)" if restart else
                   f"retry {retry} of the job (its scheduler's requeue, the profile's max_retries)")
        logger.warning("%s: resuming from the latest checkpoint", attempt)
    return restart, restarted_fresh_run


def _check_eval_data(spec: Spec, data: PreparedData) -> None:
    """`RunError` where the eval split's rows, or the item popularities its GAUC is grouped by, are damaged."""
    # The train split's rows are checked batch by batch as it trains; damage in the eval split's, or in
    # the item popularities its GAUC is grouped by, would otherwise surface only after the whole run
    # (seconds for the release's test split). Not in `open_spec_data`: an evaluation reads those at once
    # anyway, and checked them twice.
    try:
        if spec.data.eval_split != spec.data.train_split:
            data.check_sample_rows(spec.data.eval_split)
        data.item_popularity()
    except PreparedDataError as e:
        raise RunError(str(e)) from None


def _refuse_used_dir_again(run_dir: Path, prev_run: Dict) -> None:
    """`RunDirError` on every rank where a restarted fresh run's directory holds another job's run."""
    # The first attempt of this fresh run was refused, the directory holding an earlier run (or other
    # files): the restart must refuse it again, not continue a run some other job wrote. Rank 0's
    # verdict: it wrote the job into run.json, and on another host a rank's job id can read otherwise.
    used = previous_contents(run_dir)
    refusal = used_run_dir_message(run_dir, used) if used and prev_run.get("job") != torchrun_job() else None
    refusal = broadcast_from_root(refusal)
    if refusal:
        raise RunDirError(refusal)


def _import_training_stack() -> None:
    """Import the training stack (TorchRec, FBGEMM) and evaluation's (pandas) now, in this order: after the
    run directory, data and resume checks, and before the model is built and its RSS measured."""
    for module in ("muse_rec.data.loader", "muse_rec.distributed.sharders", "muse_rec.training.build",
                   "muse_rec.training.evaluate"):
        importlib.import_module(module)


def collective_timeout(spec: Spec) -> timedelta:
    """The spec's ``train.collective_timeout_s`` as the timedelta torch.distributed takes."""
    return timedelta(seconds=spec.train.collective_timeout_s)

"""The training loop: a run's steps from where it stands to its end, epoch by epoch, with its progress
lines, loss checks and checkpoints. `trainer.train` opens the run before it and evaluates the run after.

The crash, restart and hung-rank tests inject their faults here (CRASH_ENV, KILL_ENV).
"""
from __future__ import annotations

import logging
import os
import signal
import time
from typing import TYPE_CHECKING, Optional, Tuple

from muse_rec.data.prepared import PreparedData
from muse_rec.distributed.env import DistEnv, restart_count, scheduler_retry_count
from muse_rec.spec import Spec
from muse_rec.training.checkpoint import save_checkpoint
from muse_rec.training.checkpoint_position import Position
from muse_rec.training.progress import LossMonitor, NonFiniteLoss, ProgressLog
from muse_rec.training.run_record import RunError

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

    from muse_rec.data.loader import PreparedLoader
    from muse_rec.training.run_start import RunStart

logger = logging.getLogger("muse_rec")

# Fault injection for the resume test: every rank exits hard right after this step.
CRASH_ENV = "MUSE_REC_CRASH_AFTER_STEP"
# Fault injection for the restart test: "RANK:STEP" = that rank SIGKILLs itself after that step,
# in the job's first attempt only (a torchelastic restart, which resumes, does not repeat it);
# "RANK:STEP:SIGSTOP" (any signal's name) sends that signal instead (the hung-rank test).
KILL_ENV = "MUSE_REC_KILL_RANK_AFTER_STEP"


def epoch_loader(data: PreparedData, spec: Spec, rank: int, world_size: int, position: Position) -> PreparedLoader:
    """This rank's train batches from ``position`` to the end of its epoch. A seeded shuffle
    (``train.shuffle_seed``) draws each epoch's order with seed ``shuffle_seed + epoch``: a new order
    per epoch, and the same one again when a run resumes inside it."""
    from muse_rec.data.loader import make_loader

    t = spec.train
    return make_loader(
        data, spec.data.train_split, t.batch_size, spec.data.seq_len, rank=rank, world_size=world_size,
        num_workers=spec.data.num_workers, start_batch=position.batch_in_epoch,
        shuffle_seed=None if t.shuffle_seed is None else t.shuffle_seed + position.epoch,
    )


def train_steps(spec: Spec, run: RunStart, writer: Optional[SummaryWriter]) -> Tuple[float, int]:
    """Train from ``run.position`` to ``run.total_steps``, saving checkpoints on the way and at the end (none
    where the run had finished); this process's (seconds, samples) of training. Hosts the crash and kill
    test hooks (CRASH_ENV, KILL_ENV)."""
    from muse_rec.training.build import make_pipeline

    t, env, data, dmp, optimizer = spec.train, run.env, run.data, run.dmp, run.optimizer
    position, total_steps, train_loader_len = run.position, run.total_steps, run.train_loader_len
    crash_after = int(os.environ.get(CRASH_ENV, "0") or 0)
    kill_rank, kill_step, kill_signal = _kill_request(env)
    train_seconds, samples_trained = 0.0, 0  # by this process
    # The work behind the run in this run's steps: after a resume on other ranks, its steps were of another size.
    progress = ProgressLog(total_steps, position.step, env.is_main, writer,
                           done_before=position.epoch * train_loader_len + position.batch_in_epoch)
    monitor = LossMonitor(position.step, env.device)
    dmp.train()
    # The run's training time is the loop's wall time, not only its steps': loss checks, logging,
    # checkpoints and each epoch's loader and pipeline are what a run spends too (docs/benchmarks.md;
    # timing only `pipeline.progress` reported 2x the wall rate at checkpoint_every 2). The clock runs
    # on from step to step; each step closes its share before its checkpoint is saved, so a checkpoint
    # records the time up to it and its own save counts in the next step.
    clock = time.perf_counter()
    while position.step < total_steps and position.epoch < t.epochs:
        loader = epoch_loader(data, spec, env.rank, env.world_size, position)
        pipeline = make_pipeline(t.pipeline, dmp, optimizer, env)
        it = iter(loader)
        steps_this_epoch = min(train_loader_len - position.batch_in_epoch, total_steps - position.step)
        for _ in range(steps_this_epoch):
            loss, _, _ = pipeline.progress(it)
            # On device (no host sync per step), weighted by this rank's real rows of the step's batch.
            monitor.add(loss, loader.dataset.batch_rows(position.batch_in_epoch))
            # Padding rows are not samples: they would inflate samples/s and position.samples_seen.
            samples = loader.dataset.step_rows(position.batch_in_epoch)
            position.step += 1
            position.batch_in_epoch += 1
            position.samples_seen += samples
            if position.batch_in_epoch >= train_loader_len:  # the epoch is done: a checkpoint now starts the next
                position.epoch += 1
                position.batch_in_epoch = 0
            samples_trained += samples
            progress.step(samples)
            saving = bool(t.checkpoint_every and position.step % t.checkpoint_every == 0 and position.step < total_steps)
            if saving or position.step % t.log_every == 0 or position.step == total_steps:
                # The host reads the loss only here; a non-finite one stops the run before any save.
                progress.interval(position.step, _checked_loss(monitor, position.step, env))
            now = time.perf_counter()
            train_seconds += now - clock
            if position.train_seconds is not None:
                position.train_seconds += now - clock
            clock = now
            if saving:
                save_checkpoint(str(run.ckpt_root), dmp, optimizer, position, skip=run.skip,
                                model_spec=run.model_record)
            if crash_after and position.step == crash_after:
                logger.warning("%s=%d: exiting hard to simulate a crash", CRASH_ENV, crash_after)
                progress.close()
                os._exit(3)
            if position.step == kill_step and env.rank == kill_rank:
                logger.warning("%s: rank %d kills itself with %s after step %d", KILL_ENV, env.rank,
                               kill_signal.name, kill_step)
                os.kill(os.getpid(), kill_signal)
        _detach(pipeline)
    progress.close()
    _checked_loss(monitor, position.step, env)  # never save a checkpoint after a non-finite loss
    if not run.finished:  # else the checkpoint it resumed from is this state already
        save_checkpoint(str(run.ckpt_root), dmp, optimizer, position, skip=run.skip, model_spec=run.model_record)
    return train_seconds, samples_trained


def _checked_loss(monitor: LossMonitor, step: int, env: DistEnv) -> Optional[float]:
    """The mean loss since the last check (all ranks); a non-finite loss ends the run as a RunError."""
    try:
        return monitor.check(step, env.world_size)
    except NonFiniteLoss as e:
        raise RunError(str(e)) from None


def _kill_request(env: DistEnv) -> Tuple[int, int, signal.Signals]:
    """(rank, step, signal) of KILL_ENV in the job's first attempt, else (-1, -1, SIGKILL)."""
    text = os.environ.get(KILL_ENV, "")
    if not text or restart_count() > 0 or scheduler_retry_count() > 0:
        return -1, -1, signal.SIGKILL
    rank, step, *name = text.split(":")
    return int(rank), int(step), signal.Signals[name[0]] if name else signal.SIGKILL


def _detach(pipeline) -> None:
    """Give the model its original forwards back (the next epoch or eval builds its own)."""
    if hasattr(pipeline, "detach"):
        pipeline.detach()

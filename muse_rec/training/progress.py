"""Training progress for people and for cluster logs, and the loss monitor that stops a diverged run.

`LossMonitor` keeps the loss on the device: each step adds it to a running sum and records
the FIRST step whose loss is not finite, with tensor ops only (no ``.item()``, no host sync
per step). The host reads both only at `check` — at the log cadence and before every
checkpoint save — so a NaN/inf loss stops the run at the next check (at most ``log_every``
steps after it happened), naming the exact step where it first appeared, and no checkpoint
is ever written after a non-finite loss (its check would fail first).

`ProgressLog` prints what a user watching the run needs: on a terminal (rank 0 only) a tqdm
bar; without one (TorchX, torchrun --tee, Slurm, Kubernetes, CI) one line per log interval::

    step 40/120 (33%) | 2,310 samples/s | loss 0.4123 | ETA 0:00:35

Other ranks print only warnings and errors (their logger level). TensorBoard gets every
scalar of every interval (train/loss, train/samples_per_s).
"""
from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as dist

from muse_rec.terminal import shows_bars

logger = logging.getLogger("muse_rec")

# "No non-finite step seen yet": larger than any step, so MIN across ranks keeps real ones.
_NONE = torch.iinfo(torch.int64).max


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite; the message names the first such step."""


class LossMonitor:
    """Running loss sum and first non-finite step, both on ``device``; read only by `check`.

    Args:
        start_step: the step already done before the first `add` (0, or the resumed step).
        device: where the loss lives (the rank's compute device).
    """

    def __init__(self, start_step: int, device: torch.device) -> None:
        self._start = start_step
        self._step = torch.full((), start_step, dtype=torch.int64, device=device)
        self._first_bad = torch.full((), _NONE, dtype=torch.int64, device=device)
        self._sum = torch.zeros((), dtype=torch.float64, device=device)
        self._count = 0.0  # host-side: samples (or steps) added since the last check

    def add(self, loss: torch.Tensor, samples: float = 1.0) -> None:
        """Account one step's loss (a 0-d tensor, the mean over this rank's ``samples`` real rows);
        queues device ops only. Weighting by ``samples`` makes the logged loss the mean per sample:
        a rank whose batch is all padding (an epoch's last step) reports 0 and must not halve it."""
        loss = loss.detach()
        self._step.add_(1)
        self._sum.add_(loss.to(torch.float64) * samples)
        bad = ~torch.isfinite(loss)
        # Keep the first bad step: only overwrite while still _NONE.
        self._first_bad.copy_(torch.where(bad & (self._first_bad == _NONE), self._step, self._first_bad))
        self._count += samples

    def check(self, step: int, world_size: int = 1) -> Optional[float]:
        """Mean loss per sample since the last check over all ranks (None if none); raises NonFiniteLoss.

        Collective when ``world_size > 1``: every rank calls it at the same steps, so every
        rank learns of a non-finite loss on any rank and all stop together.
        """
        totals = torch.stack([self._sum, torch.tensor(float(self._count), dtype=torch.float64,
                                                       device=self._sum.device)])
        first_bad = self._first_bad.clone()
        if world_size > 1 and dist.is_initialized():
            dist.all_reduce(totals, op=dist.ReduceOp.SUM)
            dist.all_reduce(first_bad, op=dist.ReduceOp.MIN)
        loss_sum, count = totals.tolist()  # the one host sync of the interval
        bad = int(first_bad.item())
        if bad != _NONE:
            raise NonFiniteLoss(
                f"training loss is not finite (NaN or inf) from step {bad} on; stopped at step {step} "
                f"(the loss is checked every train.log_every steps and before each checkpoint); "
                f"no checkpoint was written after step {bad - 1}. {self._advice(bad)}"
            )
        self._sum.zero_()
        self._count = 0.0
        return loss_sum / count if count else None

    def _advice(self, bad: int) -> str:
        """What to change: the first step's loss is that of the weights the run started with (no update
        applied yet), so the learning rate cannot be its cause (model.init_std 1e30 was told to lower it)."""
        if bad == self._start + 1 and self._start == 0:
            return ("No update had been applied yet, so it is not the learning rate: check the model's "
                    "initialisation (model.init_std, model.parametrization.*) or the data.")
        if bad == self._start + 1:
            return (f"No update had been applied since the step-{self._start} checkpoint this run resumed from, so "
                    "it is not the learning rate: check that checkpoint's weights or the data.")
        return "Lower the learning rate or check the data."


# What the few-clicks warning advises: the demo profile's (specs/profiles/demo.yaml) batch and dense
# lr, measured on data this small in docs/accuracy.md. A test checks they are the profile's.
ADVISED_BATCH_SIZE = 256  # per rank, as train.batch_size
ADVISED_DENSE_LR = 1e-3


def few_clicks_warning(clicks: int, epochs: float, threshold: int, samples_per_step: int,
                       dense_lr: float, batch_size: Optional[int] = None,
                       full_epochs: Optional[float] = None) -> Optional[str]:
    """The start-of-run warning for a run that trains on fewer clicks than ``threshold``
    (``train.warn_below_clicks``; 0 = never), or None; also None when the run already has what the
    advice would give it: a batch per rank at most the demo profile's and a dense lr at least its.

    Args:
        clicks: positive impressions in one epoch of the train split.
        epochs: epochs the run trains for (a fraction where ``train.max_steps`` stops it early).
        threshold: the spec's ``train.warn_below_clicks``.
        samples_per_step, dense_lr: the run's, shown beside the settings the warning was measured at.
        batch_size: the run's ``train.batch_size`` per rank (default: ``samples_per_step``, one rank).
        full_epochs: the epochs it would train without ``train.max_steps`` (default: ``epochs``).
    """
    seen = round(clicks * epochs)
    if threshold <= 0 or seen >= threshold:
        return None
    full = round(clicks * (epochs if full_epochs is None else full_epochs))
    if full >= threshold:  # train.max_steps cuts the run short: that, not the data, is what to say
        return (f"this run trains on {seen:,} clicks, fewer than train.warn_below_clicks = {threshold:,}, because "
                f"train.max_steps stops it after {epochs:.2f} of its {full_epochs:g} epoch(s) ({full:,} clicks): "
                "a model trained this briefly is far from its best; lift train.max_steps for one")
    # Only the changes this run does not already have: advising a higher lr to a run at 1e-3 misleads.
    per_rank = samples_per_step if batch_size is None else batch_size
    advice = ([] if per_rank <= ADVISED_BATCH_SIZE else ["a smaller batch"]) + \
        ([] if dense_lr >= ADVISED_DENSE_LR else ["a higher dense lr"])
    if not advice:
        return None
    # Clicks, not steps or impressions: at a fixed dense lr the sets measured in docs/accuracy.md
    # order by the clicks of their epoch, not by its steps.
    return (f"this run trains on {seen:,} clicks ({samples_per_step:,} samples per step, dense lr {dense_lr:g}), "
            f"fewer than train.warn_below_clicks = {threshold:,}: on the synthetic sets measured, one epoch at "
            "batch 1000 and dense lr 2e-4 over fewer clicks left 0.002-0.021 GAUC to a 5x higher dense lr, the more "
            f"the fewer the clicks (docs/accuracy.md); to get a model at its best on such data, use {' or '.join(advice)}, "
            f"e.g. specs/profiles/demo.yaml (batch {ADVISED_BATCH_SIZE}, dense lr {ADVISED_DENSE_LR:g})")


class ProgressLog:
    """Rank 0's view of the run: a tqdm bar on a terminal, else one line per log interval.

    Args:
        total_steps: the run's last step.
        start_step: the step it starts from (resumed runs start later).
        is_main: only rank 0 shows anything.
        writer: TensorBoard SummaryWriter (rank 0) or None.
        tty: show a bar instead of lines; default: stderr is a terminal.
        done_before: the work behind ``start_step`` in this run's steps (default ``start_step``). A run
            resumed on another number of ranks has steps of another size behind it: 15 steps of 2 ranks
            are 30 of 1, and the share done is counted in those (35 of 66, not step 20 of 51).
    """

    def __init__(self, total_steps: int, start_step: int, is_main: bool, writer=None,
                 tty: Optional[bool] = None, done_before: Optional[int] = None) -> None:
        self.total_steps, self.writer = total_steps, writer
        self.is_main = is_main
        self.tty = shows_bars() if tty is None else tty
        self._done_before = start_step if done_before is None else done_before
        self._work = self._done_before + max(0, total_steps - start_step)  # the whole run, in this run's steps
        self._bar = None
        if is_main and self.tty:
            from tqdm import tqdm

            self._bar = tqdm(total=self._work, initial=self._done_before, unit="step", dynamic_ncols=True)
        self._run_start, self._run_start_step = time.perf_counter(), start_step
        self._window_start, self._window_step, self._window_samples = time.perf_counter(), start_step, 0

    def step(self, samples: int) -> None:
        """One step done, of `samples` real samples over all ranks."""
        self._window_samples += samples
        if self._bar is not None:
            self._bar.update(1)

    def interval(self, step: int, mean_loss: Optional[float]) -> None:
        """The log cadence: rate over the interval, loss, ETA over the whole run so far."""
        now = time.perf_counter()
        steps = step - self._window_step
        rate = self._window_samples / max(now - self._window_start, 1e-9)
        self._window_start, self._window_step, self._window_samples = now, step, 0
        if not self.is_main or steps <= 0:
            return
        if self.writer is not None:
            if mean_loss is not None:
                self.writer.add_scalar("train/loss", mean_loss, step)
            self.writer.add_scalar("train/samples_per_s", rate, step)
        loss_text = "n/a" if mean_loss is None else f"{mean_loss:.4f}"
        if self._bar is not None:
            self._bar.set_postfix(loss=loss_text, samples_s=f"{rate:,.0f}")
            return
        done = step - self._run_start_step
        per_step = (now - self._run_start) / max(done, 1)
        eta = timedelta(seconds=round(per_step * (self.total_steps - step)))
        share = 100 * (self._done_before + step - self._run_start_step) // max(self._work, 1)
        logger.info("step %d/%d (%d%%) | %s samples/s | loss %s | ETA %s", step, self.total_steps, share,
                    f"{rate:,.0f}", loss_text, eta)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

"""Evaluation: run a (sharded) model over a split and compute exact metrics across all ranks."""
from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from tqdm import tqdm

from muse_rec.data.loader import make_loader
from muse_rec.data.prepared import PreparedData
from muse_rec.data.vocab import MISSING_ID, PADDING_ROW
from muse_rec.distributed.env import DistEnv
from muse_rec.metrics import PredictionAccumulator
from muse_rec.metrics.gather import all_gather_objects
from muse_rec.metrics.kernels import UserAuc
from muse_rec.training.run_record import RunError
from muse_rec.terminal import shows_bars
from muse_rec.wording import count

logger = logging.getLogger(__name__)


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    data: PreparedData,
    split: str,
    batch_size: int,
    seq_len: int,
    env: DistEnv,
    num_workers: int = 0,
    max_batches: int = 0,
    progress: bool = True,
    log_every: int = 0,
) -> PredictionAccumulator:
    """Score every sample of ``split`` once (each rank its share) into an accumulator.

    Args:
        model: the `LifelongCTRTrain` wrapper (sharded or not); its ``model`` gives logits.
        max_batches: stop after this many batches per rank (0 = the whole split).
        progress: rank 0 shows a bar on a terminal; without one (a cluster log) it logs one line
            every ``log_every`` batches (0 = none), as training does.
    """
    loader = make_loader(data, split, batch_size, seq_len, rank=env.rank, world_size=env.world_size, num_workers=num_workers)
    # [n_items] int64, memory-mapped and read per batch: a copy held 1.9 GB per rank at the release's 243M items.
    popularity = data.item_popularity()
    # A sample without a user id (raw id 0) is nobody's: in AUC and logloss, in no GAUC user.
    acc = PredictionAccumulator(no_user_key=MISSING_ID)
    was_training = model.training
    model.eval()
    n = len(loader) if not max_batches else min(max_batches, len(loader))
    tty = env.is_main and shows_bars(progress)
    lines = progress and env.is_main and not tty and log_every > 0
    bar = tqdm(total=n, desc=f"eval {split}", unit="batch", disable=not tty, dynamic_ncols=True)
    start, samples = time.perf_counter(), 0
    non_finite: Optional[int] = None  # this rank's first batch (1-based) scored NaN/Inf
    for i, batch in enumerate(loader):
        if i >= n:
            break
        batch = batch.to(env.device)
        _, (_, logits, labels) = model(batch)
        scores = torch.sigmoid(logits.float())
        # Finite weights can still overflow the logits (a checkpoint edited and re-sealed): the accumulator's
        # ValueError was a traceback, raised on the ranks that met it alone while the others waited in the
        # metrics' collectives. Noted here, told to every rank after the loop. The loop goes on (unscored):
        # each forward of a sharded model is a collective, so a rank that stopped early would leave the
        # others waiting in their next batch's embedding exchange.
        if non_finite is None and not bool(torch.isfinite(scores[batch.weights > 0]).all()):
            non_finite = i + 1
            logger.warning("rank %d: %s batch %d scored NaN/Inf; the other batches run on unscored, as every "
                           "rank's forwards are one collective", env.rank, split, non_finite)
        if non_finite is None:
            acc.update(
                user_keys=batch.user_keys,
                item_keys=batch.item_keys,
                labels=labels,
                scores=scores,
                weights=batch.weights,
                seq_lengths=batch.seq_lengths,
                item_popularity=_target_popularity(popularity, batch.target_item.cpu().numpy()),
            )
        bar.update(1)
        samples += int(labels.numel())
        if lines and (i + 1) % log_every == 0 and i + 1 < n:
            _log_line(split, i + 1, n, samples, time.perf_counter() - start)
    bar.close()
    model.train(was_training)
    bad = next(((r, b) for r, b in enumerate(all_gather_objects(non_finite)) if b is not None), None)
    if bad is not None:
        raise RunError(f"the model scored NaN/Inf on {split} batch {bad[1]} of rank {bad[0]}: its weights are finite "
                       "but overflow the scores; evaluate another checkpoint (e.g. an earlier step)")
    if env.is_main:
        logger.info("scored %s of %s in %.1f s", count(n, "batch", "batches"), split, time.perf_counter() - start)
    return acc


def _target_popularity(popularity: np.ndarray, targets: np.ndarray) -> torch.Tensor:
    """``[B]`` int64 train-target count of each target item row ``targets [B]`` from ``popularity [n_items]``.

    Row 0 counts the train targets without an item id (raw id 0), whatever their items: no item's
    popularity. A target there is grouped as never a train target (the popularity floor gives it the
    prior); with the pooled count it joined the popular items' groups of Fig. 6.
    """
    return torch.from_numpy(np.where(targets == PADDING_ROW, 0, popularity[targets]).astype(np.int64, copy=False))


def _log_line(split: str, done: int, total: int, samples: int, seconds: float) -> None:
    """One progress line of an evaluation in a log: rank 0's batches, its rate and the ETA."""
    eta = timedelta(seconds=round(seconds / done * (total - done)))
    logger.info("eval %s: batch %d/%d (%d%%) | %s samples/s on this rank | ETA %s", split, done, total,
                100 * done // total, f"{samples / max(seconds, 1e-9):,.0f}", eta)


def evaluate(
    model: torch.nn.Module,
    data: PreparedData,
    split: str,
    batch_size: int,
    seq_len: int,
    env: DistEnv,
    num_workers: int = 0,
    predictions_path: Optional[str] = None,
    max_batches: int = 0,
    log_every: int = 0,
) -> Tuple[Dict, Optional[UserAuc]]:
    """Exact GAUC / AUC / logloss (+ grouped GAUC) over the whole split, identical on every rank; and, on
    rank 0 (None elsewhere), the per-user AUCs that GAUC averages, for the floor check's errors."""
    acc = predict(model, data, split, batch_size, seq_len, env, num_workers=num_workers, max_batches=max_batches,
                  log_every=log_every)
    metrics = acc.compute()
    if predictions_path:
        acc.write_parquet(predictions_path)
    return metrics, acc.user_aucs

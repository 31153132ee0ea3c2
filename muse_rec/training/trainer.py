"""The training job: spec -> planner -> DistributedModelParallel -> TrainPipelineSparseDist -> eval.

Every rank runs `train(spec)`: it opens the run (`run_start.open_run`), trains it (`train_loop.train_steps`)
and ends it (`_finish_run`); rank 0 logs, writes TensorBoard scalars and the run's files::

    <run_dir>/spec.yaml           the resolved spec (what exactly ran)
    <run_dir>/run.json            vocab sizes, world size, optimizers in use, data position
    <run_dir>/checkpoints/        DCP checkpoints (see checkpoint.py)
    <run_dir>/tensorboard/        train/loss, train/samples_per_s, eval/*
    <run_dir>/metrics.json        final GAUC / AUC / logloss (+ grouped) and throughput
    <run_dir>/predictions.parquet per-sample (user, item, label, score)
    <run_dir>/memory/rank<r>.json  every rank: bytes its embedding kernels hold, RSS after sharding, peak RSS
"""
from __future__ import annotations

import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterator, Optional

import torch
import yaml

from muse_rec.data.files import replace_texts
from muse_rec.distributed.env import DistEnv, init_distributed
from muse_rec.distributed.plan_measure import status_bytes
from muse_rec.lifetime import torchrun_job
from muse_rec.output_paths import strip_file_uri
from muse_rec.spec import Spec
from muse_rec.training.checkpoint_choice import evaluation_checkpoint, load_for_evaluation
from muse_rec.training.progress import few_clicks_warning
from muse_rec.training.results import summary_line, training_figures, write_json, write_rank_memory
from muse_rec.training.run_dir import claim_evaluation_dir
from muse_rec.training.run_record import open_spec_data
from muse_rec.training.run_start import RunStart, collective_timeout, open_run, setup_logging
from muse_rec.training.train_loop import train_steps
from muse_rec.wording import count

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

# The training stack (TorchRec and FBGEMM: ~4 s of imports per process) is imported inside `train`
# and `evaluate_checkpoint`, after their run-directory, data and resume checks: a refused run
# answers without it (tests/robustness/test_run_dir.py checks the module stays light).

logger = logging.getLogger("muse_rec")


# The spec's `data` keys an evaluation's metrics.json records (its `data`): what its model-free floors are of.
SCORED_DATA_KEYS = ("prepared", "train_split", "eval_split", "seq_len")


def spec_record(spec: Spec) -> Dict:
    """The resolved spec as a run's spec.yaml holds it: ``output_dir`` (its {name} filled in) and a local
    ``data.prepared`` as absolute paths, so ``--spec RUN/spec.yaml`` (what a refusal or the docs suggest
    for evaluate, export, rank) names the same run and data from any working directory. URIs of other
    schemes are kept as written."""
    record = spec.to_dict()
    record["output_dir"] = os.path.abspath(spec.run_dir)
    prepared = strip_file_uri(spec.data.prepared)
    if "://" not in prepared:
        record["data"]["prepared"] = os.path.abspath(prepared)
    return record


def train(spec: Spec, resume: bool = False, device_type: Optional[str] = None, overwrite: bool = False,
          allow_data_mismatch: bool = False) -> Dict:
    """Train (and evaluate) `spec` on this rank. Collective: every rank of the job calls it.

    The run directory belongs to this run (run_dir.py): a fresh run into a used one is refused
    unless ``overwrite`` (the old run is moved aside); ``resume`` continues the run there. The
    run's files (spec.yaml, run.json) are written only once the checkpoint (if any) loaded, so
    a refused resume leaves the directory exactly as it was.
    """
    run = open_run(spec, resume, device_type, overwrite, allow_data_mismatch)
    if run.env.is_main and not run.keep_record:
        # Only now, with the checkpoint loaded, does the run record describe this run.
        _write_run_record(spec, run)
    if run.env.is_main:
        _log_start(spec, run)
    writer = _open_tensorboard(run)
    train_seconds, samples_trained = train_steps(spec, run, writer)
    return _finish_run(spec, run, writer, train_seconds, samples_trained)


def _write_run_record(spec: Spec, run: RunStart) -> None:
    """The run's spec.yaml (the resolved spec) and run.json (its data, ranks, optimizers and length)."""
    from muse_rec.distributed.sharders import FusedOptimizerConfig

    t, env, data = spec.train, run.env, run.data
    # Both whole, or neither replaced: a resume that cannot write (a full disk) must not leave a
    # cut spec.yaml, which every later --resume is compared against, nor a new spec.yaml beside
    # the earlier run.json.
    replace_texts({
        run.run_dir / "spec.yaml": yaml.safe_dump(spec_record(spec), sort_keys=False),
        run.run_dir / "run.json": json.dumps({
            "run_id": run.run_id, "data_fingerprint": data.fingerprint,
            "job": torchrun_job(),  # a restarted attempt of this job continues this run, no other job's
            "vocab_sizes": dict(data.vocab_sizes), "world_size": run.trained_world_size, "device": str(env.device),
            "sparse_optimizer": asdict(t.sparse_optimizer), "dense_optimizer": asdict(t.dense_optimizer),
            "sparse_optimizer_route": FusedOptimizerConfig(name=t.sparse_optimizer.name).route(env.device.type),
            "batches_per_epoch": run.train_loader_len, "total_steps": run.total_steps,
        }, indent=2)})


def _log_start(spec: Spec, run: RunStart) -> None:
    """Rank 0's line on what the run trains (or that it only evaluates), and the few-clicks warning."""
    from muse_rec.distributed.sharders import describe_sparse_route

    t, env, position, total_steps = spec.train, run.env, run.position, run.total_steps
    if run.finished:
        logger.info("%s: already trained (step %d of %d); evaluating its checkpoint only", spec.name,
                    position.step, total_steps)
        return
    logger.info(
        "training %s: %d rank(s) on %s, %s of %d x %d samples, seq_len %d; "
        "split %s: %s, %s (%.1f%%); embeddings: %s; dense: %s (lr %g)",
        spec.name, env.world_size, env.device, count(total_steps - position.step, "step"), env.world_size,
        t.batch_size, spec.data.seq_len, spec.data.train_split, count(run.split_samples, "impression"),
        count(run.train_clicks, "click"), 100.0 * run.train_clicks / run.split_samples,
        describe_sparse_route(t.sparse_optimizer.name, t.sparse_optimizer.lr, env.device.type),
        t.dense_optimizer.name, t.dense_optimizer.lr,
    )
    # Epochs of the whole run: those behind it (steps of another size, after a resume on other ranks) and ahead.
    epochs = position.epoch + (position.batch_in_epoch + total_steps - position.step) / run.train_loader_len
    warning = few_clicks_warning(run.train_clicks, epochs, t.warn_below_clicks,
                                 env.world_size * t.batch_size, t.dense_optimizer.lr, t.batch_size,
                                 full_epochs=float(t.epochs))
    if warning:
        logger.warning(warning)


def _open_tensorboard(run: RunStart) -> Optional[SummaryWriter]:
    """Rank 0's TensorBoard writer of the run (None on the other ranks)."""
    if not run.env.is_main:
        return None
    from torch.utils.tensorboard import SummaryWriter

    position = run.position
    # Hides the events a crashed process logged after its last checkpoint (step T), which
    # this one logs again from T + 1; the events up to T stay.
    return SummaryWriter(str(run.run_dir / "tensorboard"), purge_step=position.step + 1 if position.step else None)


def _finish_run(spec: Spec, run: RunStart, writer: Optional[SummaryWriter], train_seconds: float,
                samples_trained: int) -> Dict:
    """The run's result: its training figures, its evaluation and floor check (``train.eval_at_end``), written
    to metrics.json, memory/ and TensorBoard; then the run directory is released."""
    env, position = run.env, run.position
    result = _training_result(spec, run, train_seconds, samples_trained)
    if spec.train.eval_at_end:
        _evaluate_at_end(spec, run, result)
    memory = run.memory
    memory["peak_rss_bytes"] = status_bytes("VmHWM")  # the kernel's high-water mark of this process
    write_rank_memory(run.run_dir, env, memory)
    if env.is_main:
        write_json(run.run_dir / "metrics.json", result)
        if writer is not None:
            for k in ("gauc", "auc", "logloss"):
                if k in result:
                    writer.add_scalar(f"eval/{k}", result[k], position.step)
            writer.close()
        logger.info("done: %s", summary_line(result))
    if run.lock is not None:
        run.lock.release()
    return result


def _training_result(spec: Spec, run: RunStart, train_seconds: float, samples_trained: int) -> Dict:
    """metrics.json's training part: the run, its ranks and steps, its samples/s and wall time."""
    position = run.position
    result: Dict = {"method": spec.model.method, "name": spec.name, "world_size": run.trained_world_size,
                    "steps": position.step, "train_samples_per_s": samples_trained / max(train_seconds, 1e-9),
                    "wall_seconds": train_seconds}
    if position.train_seconds:  # the whole run's figures, over every process whose steps it kept
        result.update(train_samples_per_s=position.samples_seen / position.train_seconds,
                      wall_seconds=position.train_seconds)
    elif run.finished:  # a checkpoint without them, no step ran here: what the process that trained it recorded
        result.update(training_figures(run.run_dir / "metrics.json"))
    return result


def _evaluate_at_end(spec: Spec, run: RunStart, result: Dict) -> None:
    """Evaluate the trained model on ``data.eval_split`` into ``result``, and (rank 0) check it against the
    model-free floors (``train.check_floors``)."""
    from muse_rec.training.evaluate import evaluate

    env, data, run_dir, seq_len = run.env, run.data, run.run_dir, spec.data.seq_len
    eval_start = time.perf_counter()
    metrics, user_aucs = evaluate(run.dmp, data, spec.data.eval_split, spec.train.eval_batch_size, seq_len, env,
                                  num_workers=spec.data.num_workers,
                                  predictions_path=str(run_dir / "predictions.parquet"), log_every=spec.train.log_every)
    # The metrics' world_size is the evaluation's, kept apart from the ranks that trained the run; and
    # the split, as a resume may evaluate another one than spec.yaml names, and the data it scored.
    evaluated = {**metrics, "eval_world_size": metrics.get("world_size", env.world_size),
                 "eval_split": spec.data.eval_split, "data_fingerprint": data.fingerprint}
    evaluated.pop("world_size", None)
    result.update(evaluated)
    result["eval_seconds"] = time.perf_counter() - eval_start
    if spec.train.check_floors and env.is_main:  # cached beside the run directory: computed once per data set
        from muse_rec.metrics.floor_options import model_reads
        from muse_rec.metrics.floors import check_run_against_floors, run_floors_cache

        with _all_cores():
            result.update(check_run_against_floors(data, spec.data.eval_split, seq_len, result.get("gauc"),
                                                   run_floors_cache(str(run_dir)), spec.data.train_split,
                                                   model_reads(spec.model), user_aucs))


@contextmanager
def _all_cores() -> Iterator[None]:
    """torch's intra-op threads raised to the cores this process may run on, then restored.

    For rank 0's floor check: it runs after every rank has finished evaluating, so the cores
    torchrun shares out (OMP_NUM_THREADS=1 per rank) are idle; on the release's 23M-sample test
    split it is a CPU pass of tens of minutes on one thread (docs/metrics.md). The check scores
    that many chunks at once, one thread each (`floor_scores.split_scores`), so a core another
    job holds slows one chunk instead of every op.
    """
    before = torch.get_num_threads()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or before
    torch.set_num_threads(max(before, cores))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def evaluate_checkpoint(spec: Spec, checkpoint: Optional[str], out_dir: str,
                        device_type: Optional[str] = None, max_batches: int = 0,
                        allow_data_mismatch: bool = False, expect_sha256: Optional[str] = None) -> Dict:
    """Evaluate a checkpoint (default: the run's latest) on ``spec.data.eval_split`` at this world size.

    The checkpoint is verified against its SHA-256 manifest (and ``expect_sha256``) before it is
    read, must have been trained with ``spec``'s model and on ``spec.data.prepared`` unless
    ``allow_data_mismatch``; the run's newest is read again where a run still training deletes it
    meanwhile (`checkpoint_choice`).
    """
    env = init_distributed(DistEnv.from_environ(device_type=device_type), collective_timeout(spec))
    setup_logging(env)
    data = open_spec_data(spec)
    # Checked before the model is built (seconds): a wrong checkpoint, data or spec fails at once.
    ck = evaluation_checkpoint(spec, checkpoint, data, env, allow_data_mismatch)
    from muse_rec.training.build import build_sharded
    from muse_rec.training.evaluate import evaluate

    dmp, _, skip = build_sharded(spec, data, env, evaluation_only=True)
    ck, position = load_for_evaluation(ck, spec, checkpoint, data, env, dmp, skip, allow_data_mismatch, expect_sha256)
    out = Path(out_dir)
    lock = claim_evaluation_dir(out, env.is_main)  # creates it; refused on every rank while another evaluation writes
    try:
        metrics, _ = evaluate(dmp, data, spec.data.eval_split, spec.train.eval_batch_size, spec.data.seq_len, env,
                              num_workers=spec.data.num_workers, predictions_path=str(out / "predictions.parquet"),
                              max_batches=max_batches, log_every=spec.train.log_every)
        # What was scored: `compare` counts one model once and refuses scores of other splits, other data or
        # partial ones; it computes the model-free floors of `data` (an evaluation has no spec.yaml of its own).
        scored = spec_record(spec)["data"]  # the resolved spec once, not once per key
        metrics.update({"method": spec.model.method, "name": spec.name, "checkpoint": str(ck.resolve()),
                        "step": position.step, "world_size": env.world_size, "eval_split": spec.data.eval_split,
                        "data_fingerprint": data.fingerprint, "max_batches": max_batches,
                        "data": {k: scored[k] for k in SCORED_DATA_KEYS}})
        if env.is_main:
            write_json(out / "metrics.json", metrics)
            logger.info("evaluated %s at %d rank(s): %s", ck, env.world_size, summary_line(metrics))
    finally:
        if lock is not None:
            lock.release()
    return metrics

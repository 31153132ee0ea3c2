"""The training job: spec -> planner -> DistributedModelParallel -> TrainPipelineSparseDist -> eval.

Every rank runs `train(spec)`; rank 0 logs, writes TensorBoard scalars and the run's files::

    <run_dir>/spec.yaml           the resolved spec (what exactly ran)
    <run_dir>/run.json            vocab sizes, world size, optimizers in use, data position
    <run_dir>/checkpoints/        DCP checkpoints (see checkpoint.py)
    <run_dir>/tensorboard/        train/loss, train/samples_per_s, eval/*
    <run_dir>/metrics.json        final GAUC / AUC / logloss (+ grouped) and throughput
    <run_dir>/predictions.parquet per-sample (user, item, label, score)
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Dict, Optional

import torch
import yaml
from fbgemm_gpu.split_embedding_configs import SparseType
from tqdm import tqdm

from muse_rec.data.loader import make_loader
from muse_rec.data.prepared import PreparedData, PreparedDataError
from muse_rec.distributed.env import DistEnv, init_distributed
from muse_rec.distributed.model_parallel import build_optimizer, shard_model
from muse_rec.distributed.planner import make_constraints
from muse_rec.distributed.sharders import FusedOptimizerConfig, describe_sparse_route
from muse_rec.models.ctr_model import build_train_model, is_frozen_key
from muse_rec.models.frozen_scl import SCL_TABLE
from muse_rec.spec import Spec
from muse_rec.training.checkpoint import Position, latest_checkpoint, load_checkpoint, save_checkpoint
from muse_rec.training.evaluate import evaluate
from muse_rec.training.quiet import quiet_known_warnings

logger = logging.getLogger("muse_rec")

# Fault injection for the resume test: every rank exits hard right after this step.
CRASH_ENV = "MUSE_REC_CRASH_AFTER_STEP"


class RunError(RuntimeError):
    """The run cannot start as asked (data, spec and checkpoint disagree); the message says why."""


def _setup_logging(env: DistEnv) -> None:
    quiet_known_warnings()
    level = logging.INFO if env.is_main else logging.WARNING
    logging.basicConfig(level=level, format=f"[%(asctime)s rank{env.rank}] %(message)s", datefmt="%H:%M:%S")
    logger.setLevel(level)


def _open_data(spec: Spec) -> PreparedData:
    try:
        return PreparedData(spec.data.prepared)
    except (FileNotFoundError, PreparedDataError) as e:
        raise RunError(
            f"data.prepared = {spec.data.prepared!r}: no prepared data there ({e}). "
            "Create it with `muse-rec synth RAW && muse-rec prepare RAW PREPARED` or point the spec at it."
        ) from None


def _check_run_compat(run_json: Path, data: PreparedData, env: DistEnv) -> None:
    """A resumed run must see the same vocabularies it was started with."""
    if not run_json.exists():
        return
    prev = json.loads(run_json.read_text())
    if prev.get("vocab_sizes") != dict(data.vocab_sizes):
        diff = {k: (prev.get("vocab_sizes", {}).get(k), v) for k, v in data.vocab_sizes.items() if prev.get("vocab_sizes", {}).get(k) != v}
        raise RunError(
            f"{run_json}: the checkpoint was trained on other vocabularies than data.prepared now has "
            f"(table: (checkpoint, data)) {diff}; re-prepare the same data or start a new run directory"
        )


def train(spec: Spec, resume: bool = False, device_type: Optional[str] = None) -> Dict:
    """Train (and evaluate) `spec` on this rank. Collective: every rank of the job calls it."""
    env = init_distributed(DistEnv.from_environ(device_type=device_type))
    _setup_logging(env)
    t = spec.train
    run_dir = Path(spec.run_dir)
    data = _open_data(spec)
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            _check_run_compat(run_dir / "run.json", data, env)
        (run_dir / "spec.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    torch.manual_seed(t.seed)

    seq_len = spec.data.seq_len
    train_loader_len = len(make_loader(data, spec.data.train_split, t.batch_size, seq_len, rank=env.rank, world_size=env.world_size))
    if train_loader_len == 0:
        raise RunError(f"data.prepared = {spec.data.prepared!r}: split {spec.data.train_split!r} has no samples")
    total_steps = t.epochs * train_loader_len if not t.max_steps else min(t.max_steps, t.epochs * train_loader_len)

    dmp, optimizer, skip = build_sharded(spec, data, env)

    ckpt_root = run_dir / "checkpoints"
    position = Position(world_size=env.world_size)
    if resume:
        ck = latest_checkpoint(str(ckpt_root))
        if ck is None:
            logger.info("--resume: no checkpoint under %s yet, starting from step 0", ckpt_root)
        else:
            position = load_checkpoint(ck, dmp, optimizer, skip=skip)
            logger.info("resumed from %s (step %d, epoch %d, batch %d; saved by %d ranks, now %d)",
                        ck, position.step, position.epoch, position.batch_in_epoch, position.world_size, env.world_size)
            position.world_size = env.world_size
    if env.is_main:
        (run_dir / "run.json").write_text(json.dumps({
            "vocab_sizes": dict(data.vocab_sizes), "world_size": env.world_size, "device": str(env.device),
            "sparse_optimizer": asdict(t.sparse_optimizer), "dense_optimizer": asdict(t.dense_optimizer),
            "sparse_optimizer_route": FusedOptimizerConfig(name=t.sparse_optimizer.name).route(env.device.type),
            "batches_per_epoch": train_loader_len, "total_steps": total_steps,
        }, indent=2))
        logger.info(
            "training %s: %d rank(s) on %s, %d steps of %d x %d samples, seq_len %d; "
            "embeddings: %s; dense: %s (lr %g)",
            spec.name, env.world_size, env.device, total_steps - position.step, env.world_size, t.batch_size, seq_len,
            describe_sparse_route(t.sparse_optimizer.name, t.sparse_optimizer.lr, env.device.type),
            t.dense_optimizer.name, t.dense_optimizer.lr,
        )

    writer = None
    if env.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=position.step or None)
    crash_after = int(os.environ.get(CRASH_ENV, "0") or 0)
    train_seconds, train_samples = 0.0, 0
    dmp.train()
    while position.step < total_steps and position.epoch < t.epochs:
        loader = make_loader(
            data, spec.data.train_split, t.batch_size, seq_len, rank=env.rank, world_size=env.world_size,
            num_workers=spec.data.num_workers, start_batch=position.batch_in_epoch,
            shuffle_seed=None if t.shuffle_seed is None else t.shuffle_seed + position.epoch,
        )
        pipeline = make_pipeline(t.pipeline, dmp, optimizer, env)
        it = iter(loader)
        steps_this_epoch = min(train_loader_len - position.batch_in_epoch, total_steps - position.step)
        bar = tqdm(total=steps_this_epoch, desc=f"epoch {position.epoch}", unit="batch", disable=not env.is_main, dynamic_ncols=True)
        window_t, window_n, losses = time.perf_counter(), 0, []
        for _ in range(steps_this_epoch):
            step_start = time.perf_counter()
            loss, _, _ = pipeline.progress(it)
            losses.append(float(loss))
            position.step += 1
            position.batch_in_epoch += 1
            position.samples_seen += t.batch_size * env.world_size
            train_seconds += time.perf_counter() - step_start
            train_samples += t.batch_size * env.world_size
            window_n += t.batch_size * env.world_size
            bar.update(1)
            if position.step % t.log_every == 0 or position.step == total_steps:
                rate = window_n / max(time.perf_counter() - window_t, 1e-9)
                mean_loss = sum(losses) / len(losses)
                bar.set_postfix(loss=f"{mean_loss:.4f}", samples_s=f"{rate:,.0f}")
                if writer is not None:
                    writer.add_scalar("train/loss", mean_loss, position.step)
                    writer.add_scalar("train/samples_per_s", rate, position.step)
                window_t, window_n, losses = time.perf_counter(), 0, []
            if t.checkpoint_every and position.step % t.checkpoint_every == 0 and position.step < total_steps:
                save_checkpoint(str(ckpt_root), dmp, optimizer, position, skip=skip)
            if crash_after and position.step == crash_after:
                logger.warning("%s=%d: exiting hard to simulate a crash", CRASH_ENV, crash_after)
                bar.close()
                os._exit(3)
        bar.close()
        _detach(pipeline)
        if position.batch_in_epoch >= train_loader_len:
            position.epoch += 1
            position.batch_in_epoch = 0
    save_checkpoint(str(ckpt_root), dmp, optimizer, position, skip=skip)

    result: Dict = {"method": spec.model.method, "name": spec.name, "world_size": env.world_size,
                    "steps": position.step, "train_samples_per_s": train_samples / max(train_seconds, 1e-9)}
    if t.eval_at_end:
        eval_start = time.perf_counter()
        metrics = evaluate(dmp, data, spec.data.eval_split, t.eval_batch_size, seq_len, env,
                           num_workers=spec.data.num_workers, predictions_path=str(run_dir / "predictions.parquet"))
        result.update(metrics)
        result["eval_seconds"] = time.perf_counter() - eval_start
        if t.check_floors and env.is_main:  # cached beside the run directory: computed once per data set
            from muse_rec.metrics.floors import check_run_against_floors

            result.update(check_run_against_floors(data, spec.data.eval_split, seq_len, result.get("gauc"),
                                                   str(run_dir.parent / ".floors"), spec.data.train_split))
    result["wall_seconds"] = train_seconds
    if env.is_main:
        _write_json(run_dir / "metrics.json", result)
        if writer is not None:
            for k in ("gauc", "auc", "logloss"):
                if k in result:
                    writer.add_scalar(f"eval/{k}", result[k], position.step)
            writer.close()
        logger.info("done: %s", _summary_line(result))
    return result


def build_sharded(spec: Spec, data: PreparedData, env: DistEnv):
    """Model on meta -> DMP (planner picks the sharding) -> SCL loaded -> combined optimizer.

    Returns ``(dmp, optimizer, skip)``; ``skip(key)`` is True for state that checkpoints leave
    out (the frozen SCL table, reloaded from the prepared data instead).
    """
    try:  # an optimizer neither FBGEMM nor RowSparseAdam serves on this device
        FusedOptimizerConfig(name=spec.train.sparse_optimizer.name).fused_params(env.device.type)
    except ValueError as e:
        raise RunError(f"train.sparse_optimizer.name: {e}") from None
    model = build_train_model(spec.model, data.vocab_sizes, seq_len=spec.data.seq_len, device=torch.device("meta"))
    # The frozen SCL lookups are the largest all-to-all of a step ([U*L, 128] per rank): send them
    # as fp16 (exact for the int8 values). TorchRec 1.8 returns correct fp16 lookups across ranks
    # only for row-wise tables (docs/sharding.md), so with several ranks the SCL table is row-wise.
    constraints = make_constraints(model, {SCL_TABLE: ["row_wise"]}) if env.world_size > 1 else None
    dmp = shard_model(model, env, sparse_optimizer=spec.train.sparse_optimizer, constraints=constraints,
                      frozen_output_dtype=SparseType.FP16)
    arch = dmp.module.model.sparse_arch
    arch.load_scl_(data.scl())  # frozen: loaded, never trained, never saved
    optimizer = build_optimizer(dmp, spec.train.dense_optimizer)
    return dmp, optimizer, is_frozen_key


def evaluate_checkpoint(spec: Spec, checkpoint: Optional[str], out_dir: str,
                        device_type: Optional[str] = None, max_batches: int = 0) -> Dict:
    """Evaluate a checkpoint (default: the run's latest) on ``spec.data.eval_split`` at this world size."""
    env = init_distributed(DistEnv.from_environ(device_type=device_type))
    _setup_logging(env)
    data = _open_data(spec)
    ck = Path(checkpoint) if checkpoint else latest_checkpoint(str(Path(spec.run_dir) / "checkpoints"))
    if ck is None or not (ck / "position.json").exists():
        raise RunError(f"no complete checkpoint at {checkpoint or Path(spec.run_dir) / 'checkpoints'}")
    _check_run_compat(ck.parent.parent / "run.json", data, env)
    dmp, _, skip = build_sharded(spec, data, env)
    position = load_checkpoint(ck, dmp, None, skip=skip)
    out = Path(out_dir)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
    metrics = evaluate(dmp, data, spec.data.eval_split, spec.train.eval_batch_size, spec.data.seq_len, env,
                       num_workers=spec.data.num_workers, predictions_path=str(out / "predictions.parquet"),
                       max_batches=max_batches)
    metrics.update({"method": spec.model.method, "name": spec.name, "checkpoint": str(ck),
                    "step": position.step, "world_size": env.world_size})
    if env.is_main:
        _write_json(out / "metrics.json", metrics)
        logger.info("evaluated %s at %d rank(s): %s", ck, env.world_size,
                    ", ".join(f"{k}={metrics[k]:.4f}" for k in ("gauc", "auc", "logloss") if k in metrics))
    return metrics


def _summary_line(r: Dict) -> str:
    parts = [f"{k}={r[k]:.4f}" for k in ("gauc", "auc", "logloss") if k in r]
    parts.append(f"train {r['train_samples_per_s']:,.0f} samples/s")
    return ", ".join(parts)


def _write_json(path: Path, obj: Dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=float))
    os.replace(tmp, path)


def make_pipeline(kind: str, dmp: torch.nn.Module, optimizer: torch.optim.Optimizer, env: DistEnv):
    from torchrec.distributed.train_pipeline import TrainPipelineBase, TrainPipelineSparseDist

    cls = TrainPipelineSparseDist if kind == "sparse_dist" else TrainPipelineBase
    return cls(dmp, optimizer, env.device)


def _detach(pipeline) -> None:
    """Give the model its original forwards back (the next epoch or eval builds its own)."""
    if hasattr(pipeline, "detach"):
        pipeline.detach()

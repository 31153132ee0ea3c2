"""Training throughput: end to end through `muse-rec train`, and the model step alone, TorchRec vs plain torch.

Two measurements, both in samples/s of ALL ranks together (divide by the world size for per process):

* **end to end** (`run_end_to_end`): the real entry point, ``python -m muse_rec.cli train`` (one
  process) or ``torchrun --standalone --nproc_per_node W -m muse_rec.cli train``, on prepared
  data, with ``max_steps = window * (1 + windows)`` and ``log_every = window``. The trainer logs
  the samples/s of each window of ``window`` steps to TensorBoard; the first window (FX tracing
  of the train pipeline, pipeline fill, cold caches) is dropped and the median of the others is
  reported, next to the trainer's own whole-run figure (``metrics.json``, warm-up included).
* **model step** (`step_worker`, run in a child process, under torchrun for W > 1): forward +
  backward + optimizer on batches built before timing (no loader). TorchRec: the trainer's own
  `build_sharded` (planner -> DMP -> fused sparse + dense optimizer) driven by the spec's train
  pipeline; plain: `benchmarks.plain_torch_muse` (``nn.Embedding(sparse=True)``, SparseAdam /
  Adagrad, AdamW, DDP over gloo). One job per model; ``warmup`` steps, then the median of
  ``steps`` timed steps.

    .venv/bin/python benchmarks/bench_train.py --prepared data/bench/prepared --out results/train

The worker mode (``--worker-step``) is internal: `run_model_step` launches it.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.args import at_least, int_list, output_dir, prepared_dir_flag, require_cuda  # noqa: E402

METHODS: List[str] = ["din", "sim_hard", "sim_soft", "twin", "miss", "muse"]
DEMO_SPECS = REPO / "specs" / "demo"
TB_RATE_TAG = "train/samples_per_s"


class BenchError(RuntimeError):
    """A benchmark child failed; the message carries the command and the tail of its output."""


def spec_path(method: str) -> Path:
    path = DEMO_SPECS / f"{method}.yaml"
    if not path.exists():
        raise BenchError(f"no spec for method {method!r} at {path} (known: {METHODS})")
    return path


def child_env(threads: int) -> Dict[str, str]:
    """Environment for benchmark children: the repo importable, optional fixed thread count."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    if threads > 0:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def launcher(world_size: int) -> List[str]:
    """The command prefix that starts ``world_size`` ranks of a Python module or script."""
    if world_size == 1:
        return [sys.executable]
    # --standalone: a private c10d rendezvous on a free port (other jobs may share this host).
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world_size}"]


def _run(cmd: Sequence[str], threads: int, timeout_s: float) -> float:
    """Run a child to completion; its wall seconds. Raises `BenchError` with the output's tail."""
    start = time.perf_counter()
    try:
        done = subprocess.run(list(cmd), cwd=REPO, env=child_env(threads), capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise BenchError(f"timed out after {timeout_s:.0f} s: {' '.join(cmd)}") from None
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-3000:]
        raise BenchError(f"exit {done.returncode}: {' '.join(cmd)}\n{tail}")
    return time.perf_counter() - start


def read_window_rates(tensorboard_dir: Path) -> List[float]:
    """The trainer's per-window samples/s (TensorBoard ``train/samples_per_s``), in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tensorboard_dir), size_guidance={"scalars": 0})
    acc.Reload()
    if TB_RATE_TAG not in acc.Tags().get("scalars", []):
        raise BenchError(f"{tensorboard_dir}: no {TB_RATE_TAG!r} scalars (did the run log any window?)")
    return [e.value for e in sorted(acc.Scalars(TB_RATE_TAG), key=lambda e: e.step)]


def run_end_to_end(method: str, world_size: int, prepared: str, out_dir: Path, batch_size: int = 1000,
                   seq_len: int = 1000, window: int = 5, windows: int = 4, device: str = "cpu",
                   threads: int = 0, timeout_s: float = 900.0) -> Dict:
    """Train ``method`` through `muse-rec train` on ``world_size`` processes; steady samples/s.

    Returns a dict with ``samples_per_s`` (median of the steady windows, all ranks),
    ``per_process`` (that / world_size), ``window_rates``, ``whole_run_samples_per_s`` (the
    trainer's figure, first steps included) and ``wall_s`` (the whole child, start-up included).
    """
    if window < 1 or windows < 1:
        raise ValueError(f"window and windows must be >= 1, got {window}, {windows}")
    run_dir = out_dir / f"{method}_w{world_size}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a stale checkpoint would make it resume
    overrides = {
        "data.prepared": prepared, "data.seq_len": seq_len, "train.batch_size": batch_size,
        "train.max_steps": window * (1 + windows), "train.log_every": window, "train.eval_at_end": "false",
        "train.epochs": 1, "train.checkpoint_every": 0, "output_dir": str(run_dir),
    }
    cmd = launcher(world_size) + ["-m", "muse_rec.cli", "train", "--spec", str(spec_path(method)),
                                  "--device", device]
    for key, value in overrides.items():
        cmd += ["--set", f"{key}={value}"]
    wall = _run(cmd, threads, timeout_s)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rates = read_window_rates(run_dir / "tensorboard")
    steady = rates[1:] if len(rates) > 1 else rates
    if metrics.get("steps", 0) < window * (1 + windows):
        raise BenchError(f"{run_dir}: ran {metrics.get('steps')} steps, wanted {window * (1 + windows)} "
                         "(the prepared train split has too few batches for this world size)")
    median = statistics.median(steady)
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # only throughput is wanted
    return {"method": method, "world_size": world_size, "batch_size": batch_size, "seq_len": seq_len,
            "steps": metrics["steps"], "window": window, "window_rates": rates,
            "samples_per_s": median, "per_process": median / world_size,
            "whole_run_samples_per_s": metrics["train_samples_per_s"], "wall_s": wall}


def run_model_step(methods: Sequence[str], world_size: int, prepared: str, out_json: Path,
                   plain: bool, batch_size: int = 1000, seq_len: int = 1000, warmup: int = 3, steps: int = 10,
                   device: str = "cpu", plain_sparse_optimizer: str = "sparse_adam", plain_sparse_lr: float = 2e-3,
                   prebuilt: int = 4, threads: int = 0, timeout_s: float = 900.0) -> List[Dict]:
    """Model-step samples/s of each TorchRec method and (if ``plain``) the plain MUSE.

    Each of them runs in a job of its own (fresh processes: no allocator or cache state left by
    the previous model). Every rank pre-builds ``prebuilt`` batches of its own data, spread over
    the train split, and cycles through them. Returns one dict per (implementation, method):
    ``step_ms`` (each timed step), ``step_ms_median``, ``samples_per_s`` (all ranks), ``per_process``.
    """
    jobs = [(m, False) for m in methods] + ([("", True)] if plain else [])
    rows: List[Dict] = []
    for method, is_plain in jobs:
        cmd = launcher(world_size) + [str(Path(__file__).resolve()), "--worker-step", "--prepared", prepared,
                                      "--methods", method, "--json", str(out_json),
                                      "--batch-size", str(batch_size), "--seq-len", str(seq_len),
                                      "--warmup", str(warmup), "--steps", str(steps), "--device", device,
                                      "--plain-sparse-optimizer", plain_sparse_optimizer,
                                      "--plain-sparse-lr", str(plain_sparse_lr), "--prebuilt", str(prebuilt)]
        if is_plain:
            cmd.append("--plain")
        out_json.unlink(missing_ok=True)
        _run(cmd, threads, timeout_s)
        rows += json.loads(out_json.read_text())
    return rows


# ----------------------------------------------------------------------------------------------
# The worker: every rank of the job runs this.
# ----------------------------------------------------------------------------------------------
def _time_steps(step, warmup: int, steps: int, sync) -> List[float]:
    """``warmup`` untimed calls, then the wall seconds of each of ``steps`` calls."""
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def _step_result(impl: str, method: str, times: List[float], batch_size: int, world_size: int) -> Dict:
    med = statistics.median(times)
    rate = batch_size * world_size / med
    return {"impl": impl, "method": method, "world_size": world_size, "batch_size": batch_size,
            "step_ms_median": med * 1e3, "step_ms": [t * 1e3 for t in times],
            "samples_per_s": rate, "per_process": rate / world_size}


def step_worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    from muse_rec.data.loader import make_loader
    from muse_rec.data.prepared import PreparedData
    from muse_rec.distributed.env import DistEnv, destroy_distributed, init_distributed
    from muse_rec.spec import load_spec
    from muse_rec.training.build import build_sharded, make_pipeline

    env = init_distributed(DistEnv.from_environ(device_type=args.device))
    data = PreparedData(args.prepared)
    loader = make_loader(data, "train", args.batch_size, args.seq_len, rank=env.rank, world_size=env.world_size)
    distinct = max(2, args.prebuilt)
    if len(loader) < distinct:
        raise BenchError(f"{args.prepared}: only {len(loader)} train batches per rank, need {distinct}")
    # Spread over the split, so the timed steps see typical batches, not only its first users; the
    # last batch is left out (it may be mostly padding rows).
    last_full = max(len(loader) - 2, distinct - 1)
    picks = sorted({round(i * last_full / (distinct - 1)) for i in range(distinct)})
    ds = loader.dataset
    batches = [ds.make_batch(ds.sample_indices(j)).to(env.device) for j in picks]

    def sync() -> None:
        if env.device.type == "cuda":
            torch.cuda.synchronize(env.device)

    results: List[Dict] = []
    for method in args.methods:
        spec = load_spec(spec_path(method), [f"data.prepared={args.prepared}", f"data.seq_len={args.seq_len}",
                                             f"train.batch_size={args.batch_size}"])
        torch.manual_seed(spec.train.seed)
        dmp, optimizer, _ = build_sharded(spec, data, env)
        dmp.train()
        pipeline = make_pipeline(spec.train.pipeline, dmp, optimizer, env)
        it = itertools.cycle(batches)
        times = _time_steps(lambda: pipeline.progress(it), args.warmup, args.steps, sync)
        results.append(_step_result(f"torchrec ({spec.train.pipeline} pipeline)", method, times,
                                    args.batch_size, env.world_size))
        if hasattr(pipeline, "detach"):
            pipeline.detach()
        del dmp, optimizer
    if args.plain:
        results.append(_plain_steps(args, env, data, batches, sync))
    if env.is_main:
        Path(args.json).write_text(json.dumps(results, indent=2))
    dist.barrier()
    destroy_distributed()


def _plain_steps(args: argparse.Namespace, env, data, batches, sync) -> Dict:
    import torch

    from benchmarks.plain_torch_muse import PlainTrainStep, build_plain_model, plain_sparse_arch
    from muse_rec.spec import load_spec

    spec = load_spec(spec_path("muse"), [f"data.prepared={args.prepared}", f"data.seq_len={args.seq_len}"])
    torch.manual_seed(spec.train.seed)
    model = build_plain_model(spec.model, data.vocab_sizes, seq_len=args.seq_len, device=env.device)
    plain_sparse_arch(model).load_scl_(data.scl())
    if env.world_size > 1:
        if env.backend != "gloo":
            raise BenchError("plain DDP needs gloo: NCCL cannot all-reduce the sparse embedding gradients")
        model = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
    step = PlainTrainStep(model, spec.train.dense_optimizer, args.plain_sparse_optimizer, args.plain_sparse_lr)
    it = itertools.cycle(batches)
    model.train()
    times = _time_steps(lambda: step(next(it)), args.warmup, args.steps, sync)
    return _step_result(f"plain torch ({args.plain_sparse_optimizer}, DDP)" if env.world_size > 1
                        else f"plain torch ({args.plain_sparse_optimizer})", "muse", times,
                        args.batch_size, env.world_size)


def batches_per_rank(prepared: str, batch_size: int, seq_len: int, world_size: int) -> int:
    """Train batches of one epoch on the rank that gets the fewest, at this batch size per rank."""
    from muse_rec.data.loader import make_loader
    from muse_rec.data.prepared import PreparedData

    data = PreparedData(prepared)
    return min(len(make_loader(data, "train", batch_size, seq_len, rank=r, world_size=world_size))
               for r in range(world_size))


def method_list(text: str) -> List[str]:
    """Type of ``--methods``: comma-separated names of ``specs/demo/`` specs (empty: none, as the
    plain-torch job's ranks are started)."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise argparse.ArgumentTypeError(f"{unknown[0]}: no such demo spec; choose from {','.join(METHODS)}")
    return methods


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepared", required=True, help="output of `muse-rec prepare` (train split is used)")
    ap.add_argument("--out", type=Path, default=Path("results/train"), help="run directories and bench_train.json")
    ap.add_argument("--methods", type=method_list, default=list(METHODS),
                    help=f"comma-separated demo spec names (default {','.join(METHODS)})")
    ap.add_argument("--world-sizes", type=int_list(1), default=[1, 2],
                    help="comma-separated process counts (default 1,2)")
    ap.add_argument("--batch-size", type=at_least(1), default=1000, help="per process")
    ap.add_argument("--seq-len", type=at_least(1), default=1000)
    ap.add_argument("--window", type=at_least(1), default=5, help="end to end: steps per logged window")
    ap.add_argument("--windows", type=at_least(1), default=4, help="end to end: steady windows after the first")
    ap.add_argument("--warmup", type=at_least(0), default=3, help="model step: untimed steps")
    ap.add_argument("--steps", type=at_least(1), default=10, help="model step: timed steps (median)")
    ap.add_argument("--prebuilt", type=at_least(1), default=4, help="model step: distinct batches cycled")
    ap.add_argument("--plain", action="store_true", help="model step: also the plain-torch MUSE")
    ap.add_argument("--plain-sparse-optimizer", default="sparse_adam", choices=["sparse_adam", "adagrad"])
    ap.add_argument("--plain-sparse-lr", type=float, default=2e-3)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--threads", type=at_least(0), default=0,
                    help="OMP_NUM_THREADS of the children (0 = torch default)")
    ap.add_argument("--json", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker-step", action="store_true", help=argparse.SUPPRESS)  # internal: a rank of the job
    args = ap.parse_args(argv)
    if args.worker_step:
        step_worker(args)
        return 0
    if args.plain and args.device == "cuda" and max(args.world_sizes) > 1:
        # plain_torch_muse's DDP all-reduces sparse embedding gradients, which NCCL cannot (run_all skips it).
        ap.error("--plain with --device cuda: the plain-torch model's sparse gradients cannot be all-reduced "
                 "over NCCL; use --world-sizes 1 or --device cpu for it")
    prepared_dir_flag(ap, args.prepared)
    require_cuda(ap, args.device)
    methods = args.methods
    # Checked before any child starts: a split too small ended in a BenchError traceback after the
    # end-to-end run had trained (it stops at one epoch) or inside the model-step job.
    need = max(args.window * (1 + args.windows) if methods else 0,
               max(2, args.prebuilt) if methods or args.plain else 0)
    for w in args.world_sizes:
        have = batches_per_rank(args.prepared, args.batch_size, args.seq_len, w)
        if have < need:
            ap.error(f"--prepared {args.prepared}: {have} train batches per rank at --batch-size {args.batch_size} "
                     f"on {w} process(es), this run needs {need} (end to end: --window x (1 + --windows) steps "
                     "in one epoch; model step: --prebuilt distinct batches, at least 2); lower them")
    output_dir(ap, "--out", args.out)
    rows: List[Dict] = []
    for w in args.world_sizes:
        for m in methods:
            r = run_end_to_end(m, w, args.prepared, args.out, args.batch_size, args.seq_len, args.window,
                               args.windows, args.device, args.threads)
            rows.append({"kind": "end_to_end", **r})
            print(f"e2e  {m:9s} W={w} {r['samples_per_s']:9,.0f} samples/s", flush=True)
        for r in run_model_step(methods, w, args.prepared, args.out / f"step_w{w}.json", args.plain,
                                args.batch_size, args.seq_len, args.warmup, args.steps, args.device,
                                plain_sparse_optimizer=args.plain_sparse_optimizer,
                                plain_sparse_lr=args.plain_sparse_lr, prebuilt=args.prebuilt, threads=args.threads):
            rows.append({"kind": "model_step", **r})
            print(f"step {r['impl']:30s} {r['method']:9s} W={w} {r['samples_per_s']:9,.0f} samples/s", flush=True)
    (args.out / "bench_train.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

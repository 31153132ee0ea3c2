"""Cost of the CPU Adam route: MUSE train steps with RowSparseAdam vs FBGEMM's fused row-wise Adagrad.

Side by side in one job (so both see the same machine load): every rank builds the spec's model
twice with the trainer's own `build_sharded` - once with ``train.sparse_optimizer.name=adam``
(CPU: `RowSparseAdam`, touched rows only) and once with ``exact_row_wise_adagrad`` (FBGEMM's
fused in-backward kernel) - and drives both through the spec's train pipeline on the same
pre-built batches, alternating ``rounds`` blocks of ``steps`` timed steps (after ``warmup``).
Reported per optimizer: median step ms, samples/s (all ranks), and for RowSparseAdam the
median time of its ``step()`` (gradient coalescing + Adam on touched rows; the gradient capture
runs inside the backward and is part of the step time only); the system load average before
and after.

    .venv/bin/python benchmarks/bench_sparse_optimizer.py --prepared data/demo/prepared \\
        --world-sizes 1,2 --out results/sparse_optimizer

``--worker`` is internal (a rank of the job).
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.args import at_least, int_list, output_dir, prepared_dir_flag  # noqa: E402
from benchmarks.bench_train import METHODS, BenchError, _run, batches_per_rank, launcher, spec_path  # noqa: E402

OPTIMIZERS = {  # name -> spec overrides (the paper's sparse lr for Adam; the demo profile's for Adagrad)
    "adam": ["train.sparse_optimizer.name=adam", "train.sparse_optimizer.lr=0.002"],
    "exact_row_wise_adagrad": ["train.sparse_optimizer.name=exact_row_wise_adagrad", "train.sparse_optimizer.lr=0.05"],
}


def loadavg() -> List[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    from muse_rec.data.loader import make_loader
    from muse_rec.data.prepared import PreparedData
    from muse_rec.distributed.env import DistEnv, destroy_distributed, init_distributed
    from muse_rec.distributed.model_parallel import row_sparse_adam
    from muse_rec.spec import load_spec
    from muse_rec.training.build import build_sharded, make_pipeline

    env = init_distributed(DistEnv.from_environ(device_type="cpu"))
    data = PreparedData(args.prepared)
    loader = make_loader(data, "train", args.batch_size, args.seq_len, rank=env.rank, world_size=env.world_size)
    if len(loader) < args.prebuilt + 1:
        raise BenchError(f"{args.prepared}: only {len(loader)} train batches per rank, need {args.prebuilt + 1}")
    ds = loader.dataset
    picks = [round(i * (len(loader) - 2) / max(args.prebuilt - 1, 1)) for i in range(args.prebuilt)]
    batches = [ds.make_batch(ds.sample_indices(j)) for j in picks]

    runs: Dict[str, Dict] = {}
    for name, overrides in OPTIMIZERS.items():
        spec = load_spec(spec_path(args.method), [f"data.prepared={args.prepared}", f"data.seq_len={args.seq_len}",
                                                  f"train.batch_size={args.batch_size}", *overrides])
        torch.manual_seed(spec.train.seed)
        dmp, optimizer, _ = build_sharded(spec, data, env)
        dmp.train()
        pipeline = make_pipeline(spec.train.pipeline, dmp, optimizer, env)
        timers: Dict[str, List[float]] = {"optimizer_step": []}
        sparse = row_sparse_adam(dmp)
        if sparse is not None:  # time RowSparseAdam's own work inside the step
            step_fn = sparse.step

            def timed_step(closure=None, _f=step_fn, _t=timers["optimizer_step"]):
                t0 = time.perf_counter()
                _f(closure)
                _t.append(time.perf_counter() - t0)

            sparse.step = timed_step  # type: ignore[method-assign]
        runs[name] = {"pipeline": pipeline, "it": itertools.cycle(batches), "times": [], "timers": timers,
                      "dmp": dmp, "optimizer": optimizer}
    for run in runs.values():  # warm-up (pipeline tracing, allocator)
        for _ in range(args.warmup):
            run["pipeline"].progress(run["it"])
        for t in run["timers"].values():
            t.clear()
    load_before = loadavg()
    for _ in range(args.rounds):
        for run in runs.values():
            for _ in range(args.steps):
                dist.barrier()
                t0 = time.perf_counter()
                run["pipeline"].progress(run["it"])
                run["times"].append(time.perf_counter() - t0)
    load_after = loadavg()
    rows = []
    for name, run in runs.items():
        med = statistics.median(run["times"])
        rate = args.batch_size * env.world_size / med
        row = {"optimizer": name, "method": args.method, "world_size": env.world_size, "batch_size": args.batch_size,
               "seq_len": args.seq_len, "steps_timed": len(run["times"]), "step_ms_median": med * 1e3,
               "step_ms_min": min(run["times"]) * 1e3, "samples_per_s": rate, "per_process": rate / env.world_size}
        if run["timers"]["optimizer_step"]:
            row["row_sparse_adam_step_ms_median"] = statistics.median(run["timers"]["optimizer_step"]) * 1e3
        rows.append(row)
    base = {r["optimizer"]: r for r in rows}
    for r in rows:
        r["step_time_vs_exact_row_wise_adagrad"] = r["step_ms_median"] / base["exact_row_wise_adagrad"]["step_ms_median"]
        r["loadavg_before"], r["loadavg_after"] = load_before, load_after
    if env.is_main:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    dist.barrier()
    destroy_distributed()


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepared", required=True, help="output of `muse-rec prepare` (train split is used)")
    ap.add_argument("--out", type=Path, default=Path("results/sparse_optimizer"))
    ap.add_argument("--method", default="muse", choices=METHODS, help="demo spec name")
    ap.add_argument("--world-sizes", type=int_list(1), default=[1, 2], help="comma-separated process counts")
    ap.add_argument("--batch-size", type=at_least(1), default=1000, help="per process")
    ap.add_argument("--seq-len", type=at_least(1), default=1000)
    ap.add_argument("--warmup", type=at_least(0), default=3)
    ap.add_argument("--steps", type=at_least(1), default=3, help="timed steps per block")
    ap.add_argument("--rounds", type=at_least(1), default=4, help="alternating blocks per optimizer")
    ap.add_argument("--prebuilt", type=at_least(1), default=4, help="distinct batches cycled")
    ap.add_argument("--threads", type=at_least(0), default=1,
                    help="OMP_NUM_THREADS of the children (0 = torch's default)")
    ap.add_argument("--json", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    prepared_dir_flag(ap, args.prepared)
    # Every rank picks --prebuilt batches short of its last one: checked here, not in the job's ranks.
    for w in args.world_sizes:
        have = batches_per_rank(args.prepared, args.batch_size, args.seq_len, w)
        if have < args.prebuilt + 1:
            ap.error(f"--prepared {args.prepared}: {have} train batches per rank at --batch-size {args.batch_size} "
                     f"on {w} process(es), --prebuilt {args.prebuilt} needs {args.prebuilt + 1}; lower either")
    output_dir(ap, "--out", args.out)
    rows: List[Dict] = []
    for w in args.world_sizes:
        out_json = args.out / f"sparse_optimizer_w{w}.json"
        out_json.unlink(missing_ok=True)
        cmd = launcher(w) + [str(Path(__file__).resolve()), "--worker", "--prepared", args.prepared,
                             "--method", args.method, "--batch-size", str(args.batch_size),
                             "--seq-len", str(args.seq_len), "--warmup", str(args.warmup), "--steps", str(args.steps),
                             "--rounds", str(args.rounds), "--prebuilt", str(args.prebuilt), "--json", str(out_json)]
        _run(cmd, args.threads, timeout_s=1800)
        for r in json.loads(out_json.read_text()):
            rows.append(r)
            extra = (f", RowSparseAdam.step {r['row_sparse_adam_step_ms_median']:.1f} ms"
                     if "row_sparse_adam_step_ms_median" in r else "")
            print(f"W={w} {r['optimizer']:24s} step {r['step_ms_median']:8.1f} ms  {r['samples_per_s']:8,.0f} samples/s  "
                  f"x{r['step_time_vs_exact_row_wise_adagrad']:.2f}{extra}  load {r['loadavg_before']}", flush=True)
    (args.out / "bench_sparse_optimizer.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Ranker latency: 1,000 candidates for one user at history length L = 1K, 10K, 100K.

    .venv/bin/python benchmarks/bench_ranker.py --out results/

Model: the demo MUSE spec (``specs/demo/muse.yaml``), random init, float (`FloatScorer`, the
Ranker's checkpoint path), item vocabulary of ``--items`` rows with a random int8 SCL table
(memory-mapped from a temporary ``.npy``, as a prepared directory holds it). Per L, a synthetic
user history of L random item rows:

* prefetch: `build_context` (cut/pad the history, gather its L SCL rows from the memory-mapped
  table), the work `Ranker.prefetch` runs on its thread pool; median of ``--reps``;
* score: `FloatScorer` (what `Ranker.score` calls) on the cached context for ``--candidates``
  random candidates (GSU: `shared_keys_cosine_topk`, the certified bf16 shortlist + exact
  re-score over all L positions; ESU on the K = 50 picks; tower): p50 and p99 over ``--reps``
  calls after one warm-up, wall time and process CPU time;
* bound: in the same run, this machine's fastest matrix product of the GSU's shape,
  ``[C x 128] x [128 x L]`` in bf16 (the GSU's GEMM dtype; oneDNN, AMX where present) into a
  preallocated ``[C, L]`` output, and fp32 for reference: median of ``--reps``. Reported:
  score p50 / p99 over the bf16 product (the issue's target: p99 <= 2x at L = 100K).

Writes ``bench_ranker.md`` and ``bench_ranker.json`` under ``--out``.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import sys

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.args import at_least, int_list, output_dir, same_length  # noqa: E402
from benchmarks.bench_gsu import median_times  # noqa: E402

from muse_rec.data.batch import POOLED_FEATURES  # noqa: E402
from muse_rec.models.ctr_model import build_train_model  # noqa: E402
from muse_rec.serving.inference import InferenceModel  # noqa: E402
from muse_rec.serving.ranker import FloatScorer, build_context  # noqa: E402
from muse_rec.spec import load_spec  # noqa: E402

SCL_DIM = 128


def percentile_ms(times: List[float], q: float) -> float:
    return float(np.percentile(np.asarray(times) * 1e3, q))


def gemm_bound(candidates: int, L: int, reps: int) -> Dict[str, float]:
    """Median ms (wall, CPU) of ``[C, 128] x [128, L]`` into a preallocated output, bf16 and fp32."""
    out: Dict[str, float] = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        a = torch.randint(-127, 128, (candidates, SCL_DIM)).to(dtype)
        b = torch.randint(-127, 128, (L, SCL_DIM)).to(dtype)
        o = torch.empty(candidates, L, dtype=dtype)
        wall, cpu = median_times(lambda: torch.mm(a, b.t(), out=o), reps)
        out[f"gemm_{name}_ms_wall"], out[f"gemm_{name}_ms_cpu"] = wall * 1e3, cpu * 1e3
    return out


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results", help="directory for bench_ranker.md / .json")
    ap.add_argument("--lengths", type=int_list(1), default=[1000, 10_000, 100_000],
                    help="history lengths L (default 1000,10000,100000)")
    ap.add_argument("--candidates", type=at_least(1), default=1000)
    # Row 0 is padding: the random histories and candidates draw from rows 1 .. items-1.
    ap.add_argument("--items", type=at_least(2), default=200_000, help="item vocabulary rows (SCL table rows)")
    ap.add_argument("--reps", type=int_list(1), default=[30, 15, 8],
                    help="timed calls per L (same order as --lengths; default 30,15,8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=at_least(1), default=1,
                    help="torch intra-op threads (1: on a shared 2-core box more threads oversubscribe, ~20x slower)")
    args = ap.parse_args(argv)
    lengths, reps = args.lengths, args.reps
    same_length(ap, "--lengths", lengths, "--reps", reps)
    out = output_dir(ap, "--out", Path(args.out))

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    spec = load_spec(REPO / "specs" / "demo" / "muse.yaml")
    sizes: Dict[str, int] = {f: 1000 for f in POOLED_FEATURES}
    sizes.update(item=args.items, category=10_000)
    model = build_train_model(spec.model, sizes, spec.data.seq_len, device=torch.device("cpu")).model
    scl = rng.integers(-127, 128, size=(args.items, SCL_DIM), dtype=np.int8)
    scl[0] = 0
    model.sparse_arch.load_scl_(scl)
    scorer = FloatScorer(InferenceModel(model))
    cats_of = rng.integers(1, 10_000, size=args.items)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "scl.npy", scl)
        scl_map = np.load(Path(tmp) / "scl.npy", mmap_mode="r")
        for L, n_reps in zip(lengths, reps):
            items = rng.integers(1, args.items, size=L).astype(np.int32)
            cats = cats_of[items].astype(np.int32)
            fields = np.ones(6, np.int64)
            pre = []
            for _ in range(n_reps):
                t0 = time.perf_counter()
                ctx = build_context(1, True, items, cats, fields, scl_map, scorer, L)
                pre.append(time.perf_counter() - t0)
            cand = torch.from_numpy(rng.integers(1, args.items, size=args.candidates))
            ccat = torch.from_numpy(cats_of[cand.numpy()])
            attrs = torch.ones(args.candidates, 2, dtype=torch.int64)
            scorer(ctx, cand, ccat, attrs)  # warm-up
            times, cpu = [], []
            for _ in range(n_reps):
                t0, c0 = time.perf_counter(), time.process_time()
                scorer(ctx, cand, ccat, attrs)
                cpu.append(time.process_time() - c0)
                times.append(time.perf_counter() - t0)
            bound = gemm_bound(args.candidates, L, max(3, n_reps // 3))
            row = {"L": L, "candidates": args.candidates, "reps": n_reps,
                   "prefetch_ms_p50": percentile_ms(pre, 50), "score_ms_p50": percentile_ms(times, 50),
                   "score_ms_p99": percentile_ms(times, 99), "score_cpu_ms_p50": percentile_ms(cpu, 50),
                   "score_cpu_ms_p99": percentile_ms(cpu, 99), "context_mb": ctx.nbytes / 2**20, **bound}
            for clock, key in (("wall", "score_ms"), ("cpu", "score_cpu_ms")):
                for q in ("p50", "p99"):
                    row[f"{q}_over_gemm_{clock}"] = row[f"{key}_{q}"] / row[f"gemm_bf16_ms_{clock}"]
            rows.append(row)
            print(f"L={L}: prefetch {row['prefetch_ms_p50']:.2f} ms, score p50 {row['score_ms_p50']:.1f} ms, "
                  f"p99 {row['score_ms_p99']:.1f} ms (CPU {row['score_cpu_ms_p50']:.1f} / {row['score_cpu_ms_p99']:.1f}); "
                  f"bf16 GEMM {row['gemm_bf16_ms_wall']:.1f} ms (CPU {row['gemm_bf16_ms_cpu']:.1f})", flush=True)

    env = {"machine": platform.machine(), "processor": platform.processor(), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "items": args.items, "spec": "specs/demo/muse.yaml (random init)"}
    (out / "bench_ranker.json").write_text(json.dumps({"env": env, "rows": rows}, indent=2))
    lines = ["# Ranker latency (float scorer, one user, batched candidates)", "",
             f"torch {env['torch']}, {env['threads']} threads, {env['machine']}; {env['spec']}; "
             f"{args.items:,} items. Prefetch = cut/pad the history + gather its int8 SCL rows from a "
             "memory-mapped table (runs on the Ranker's thread pool, off the request path).", "",
             "Bound = the bf16 GEMM `[C x 128] x [128 x L]` measured in this run (fp32 beside it). "
             "Wall and CPU (process time: leaves out waiting for a core on a shared machine).", "",
             "| L | candidates | prefetch p50 (ms) | score p50 / p99 wall (ms) | bf16 GEMM wall (ms) | "
             "p50 / p99 over GEMM (wall) | score p50 / p99 CPU (ms) | bf16 GEMM CPU (ms) | p50 / p99 over GEMM (CPU) "
             "| fp32 GEMM CPU (ms) | cached context (MB) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['L']:,} | {r['candidates']:,} | {r['prefetch_ms_p50']:.2f} | {r['score_ms_p50']:.1f} / "
                     f"{r['score_ms_p99']:.1f} | {r['gemm_bf16_ms_wall']:.1f} | {r['p50_over_gemm_wall']:.2f}x / "
                     f"{r['p99_over_gemm_wall']:.2f}x | {r['score_cpu_ms_p50']:.1f} / {r['score_cpu_ms_p99']:.1f} | "
                     f"{r['gemm_bf16_ms_cpu']:.1f} | {r['p50_over_gemm_cpu']:.2f}x / {r['p99_over_gemm_cpu']:.2f}x | "
                     f"{r['gemm_fp32_ms_cpu']:.1f} | {r['context_mb']:.1f} |")
    (out / "bench_ranker.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Ranker latency: 1,000 candidates for one user at history length L = 1K, 10K, 100K.

    .venv/bin/python benchmarks/bench_ranker.py --out results/

Model: the demo MUSE spec (``specs/demo/muse.yaml``), random init, float (`FloatScorer`, the
Ranker's checkpoint path), item vocabulary of ``--items`` rows with a random int8 SCL table
(memory-mapped from a temporary ``.npy``, as a prepared directory holds it). Per L, a synthetic
user history of L random item rows:

* prefetch: `build_context` (cut/pad the history, gather its L SCL rows from the memory-mapped
  table), the work `Ranker.prefetch` runs on its thread pool; median of ``--reps``;
* score: `FloatScorer` on the cached context for ``--candidates`` random candidates (GSU:
  cosine + running top-50 over all L positions per candidate; ESU; tower): p50 and p99 over
  ``--reps`` calls after one warm-up.

Writes ``bench_ranker.md`` and ``bench_ranker.json`` under ``--out``.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from muse_rec.data.batch import POOLED_FEATURES
from muse_rec.models.ctr_model import build_train_model
from muse_rec.serving.inference import InferenceModel
from muse_rec.serving.ranker import FloatScorer, build_context
from muse_rec.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
SCL_DIM = 128


def percentile_ms(times: List[float], q: float) -> float:
    return float(np.percentile(np.asarray(times) * 1e3, q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results", help="directory for bench_ranker.md / .json")
    ap.add_argument("--lengths", default="1000,10000,100000", help="history lengths L")
    ap.add_argument("--candidates", type=int, default=1000)
    ap.add_argument("--items", type=int, default=200_000, help="item vocabulary rows (SCL table rows)")
    ap.add_argument("--reps", default="30,15,8", help="timed calls per L (same order as --lengths)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (1: on a shared 2-core box more threads oversubscribe, ~20x slower)")
    args = ap.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    reps = [int(x) for x in args.reps.split(",")]
    if len(reps) != len(lengths):
        raise SystemExit("--reps needs one count per --lengths entry")

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
            times = []
            for _ in range(n_reps):
                t0 = time.perf_counter()
                scorer(ctx, cand, ccat, attrs)
                times.append(time.perf_counter() - t0)
            rows.append({"L": L, "candidates": args.candidates, "reps": n_reps,
                         "prefetch_ms_p50": percentile_ms(pre, 50), "score_ms_p50": percentile_ms(times, 50),
                         "score_ms_p99": percentile_ms(times, 99), "context_mb": ctx.nbytes / 2**20})
            print(f"L={L}: prefetch {rows[-1]['prefetch_ms_p50']:.2f} ms, score p50 {rows[-1]['score_ms_p50']:.1f} ms, "
                  f"p99 {rows[-1]['score_ms_p99']:.1f} ms", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {"machine": platform.machine(), "processor": platform.processor(), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "items": args.items, "spec": "specs/demo/muse.yaml (random init)"}
    (out / "bench_ranker.json").write_text(json.dumps({"env": env, "rows": rows}, indent=2))
    lines = ["# Ranker latency (float scorer, one user, batched candidates)", "",
             f"torch {env['torch']}, {env['threads']} threads, {env['machine']}; {env['spec']}; "
             f"{args.items:,} items. Prefetch = cut/pad the history + gather its int8 SCL rows from a "
             "memory-mapped table (runs on the Ranker's thread pool, off the request path).", "",
             "| L | candidates | prefetch p50 (ms) | score p50 (ms) | score p99 (ms) | cached context (MB) |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['L']:,} | {r['candidates']:,} | {r['prefetch_ms_p50']:.2f} | {r['score_ms_p50']:.1f} | "
                     f"{r['score_ms_p99']:.1f} | {r['context_mb']:.1f} |")
    (out / "bench_ranker.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

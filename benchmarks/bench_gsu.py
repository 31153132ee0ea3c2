"""Benchmark of MUSE's multimodal GSU (`CosineGSU`) against this machine's own ceilings.

    .venv/bin/python benchmarks/bench_gsu.py --out results/

Shapes:
* training: B queries, each with its own ``[L, 128]`` int8 sequence (B = 256; L = 1K, 10K);
* serving: one user's ``[L, 128]`` int8 sequence shared by 1000 candidates (L = 1K, 10K, 100K).

Reported per shape (median of ``--reps`` timed calls after one warm-up):
* GB/s: bytes of int8 keys read per call (training: ``B*L*128``; serving: ``L*128``, the
  keys are shared, so serving is compute-bound and GB/s is small by nature);
* GFLOP/s: ``2 * B * L * 128`` (one multiply-add per key element and query);
* both as fractions of what THIS machine measured in the same run: memory bandwidth
  (a large fp32 sum, bytes read per second) and matmul peak (a large fp32 GEMM).
Writes ``bench_gsu.md`` (Markdown table) and ``bench_gsu.json`` under ``--out``.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

from muse_rec.modules.gsu import CosineGSU

SCL_DIM = 128
TOP_K = 50


def median_seconds(fn: Callable[[], object], reps: int) -> float:
    """Median wall time of ``reps`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def memory_bandwidth_gbs(reps: int, mib: int = 512) -> float:
    """Read bandwidth: sum of a ``mib`` MiB fp32 tensor (touched first, so pages are real)."""
    x = torch.ones(mib * 2**20 // 4)
    return x.numel() * 4 / median_seconds(lambda: x.sum(), reps) / 1e9


def matmul_peak_gflops(reps: int, n: int = 2048) -> float:
    """fp32 GEMM ``[n, n] x [n, n]`` throughput."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / median_seconds(lambda: a @ b, reps) / 1e9


def int8_scl(*shape: int, gen: torch.Generator) -> torch.Tensor:
    """Random SCL-like vectors, int8 = trunc(127 * unit vector)."""
    v = torch.randn(*shape, SCL_DIM, generator=gen)
    return torch.trunc(127 * v / v.norm(dim=-1, keepdim=True)).to(torch.int8)


def bench_case(kind: str, batch: int, seq_len: int, chunk: int, reps: int, gen: torch.Generator) -> Dict:
    key_batch = batch if kind == "training" else 1
    keys = int8_scl(key_batch, seq_len, gen=gen)
    query = int8_scl(batch, gen=gen)
    mask = torch.ones(key_batch, seq_len, dtype=torch.bool)
    gsu = CosineGSU(top_k=TOP_K, chunk_size=chunk)
    seconds = median_seconds(lambda: gsu(query, keys, mask), reps)
    key_bytes = keys.numel()  # int8: one byte per element
    flops = 2 * batch * seq_len * SCL_DIM
    return {
        "shape": kind,
        "B": batch,
        "L": seq_len,
        "chunk_size": chunk,
        "ms": seconds * 1e3,
        "GB_per_s": key_bytes / seconds / 1e9,
        "GFLOP_per_s": flops / seconds / 1e9,
    }


def to_markdown(rows: List[Dict], ceil: Dict) -> str:
    lines = [
        f"CosineGSU (K={TOP_K}, int8 SCL, D={SCL_DIM}) on {ceil['cpu']} with {ceil['threads']} torch threads.",
        f"Machine ceilings measured in the same run: memory read {ceil['mem_GBps']:.1f} GB/s, "
        f"fp32 GEMM {ceil['gemm_GFLOPps']:.1f} GFLOP/s.",
        "",
        "| shape | B | L | ms (median) | GB/s int8 keys | of mem BW | GFLOP/s | of GEMM peak |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['B']} | {r['L']} | {r['ms']:.1f} | {r['GB_per_s']:.2f} | "
            f"{r['GB_per_s'] / ceil['mem_GBps']:.1%} | {r['GFLOP_per_s']:.1f} | "
            f"{r['GFLOP_per_s'] / ceil['gemm_GFLOPps']:.1%} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results"), help="output folder")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions per case (median)")
    parser.add_argument("--chunk-size", type=int, default=None, help="CosineGSU chunk_size (default: its own)")
    parser.add_argument("--quick", action="store_true", help="small sizes only (smoke test)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (0 = torch's default). On a shared, oversubscribed "
                             "box use 1: the chunk loop's many small parallel regions stall otherwise")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    gen = torch.Generator().manual_seed(0)
    chunk = args.chunk_size or CosineGSU().chunk_size
    ceil = {
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "mem_GBps": memory_bandwidth_gbs(args.reps, mib=64 if args.quick else 512),
        "gemm_GFLOPps": matmul_peak_gflops(args.reps, n=512 if args.quick else 2048),
    }
    if args.quick:
        cases = [("training", 16, 1000), ("serving", 100, 1000)]
    else:
        cases = [("training", 256, 1000), ("training", 256, 10_000),
                 ("serving", 1000, 1000), ("serving", 1000, 10_000), ("serving", 1000, 100_000)]
    rows = []
    for kind, batch, seq_len in cases:
        rows.append(bench_case(kind, batch, seq_len, chunk, args.reps, gen))
        print(f"{kind:8s} B={batch:5d} L={seq_len:6d} {rows[-1]['ms']:9.1f} ms", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    table = to_markdown(rows, ceil)
    (args.out / "bench_gsu.md").write_text(table)
    (args.out / "bench_gsu.json").write_text(json.dumps({"machine": ceil, "cases": rows}, indent=2))
    print(table)


if __name__ == "__main__":
    main()

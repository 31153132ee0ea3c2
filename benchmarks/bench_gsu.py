"""MUSE's multimodal GSU against this machine's own roofline, measured in the same run.

    .venv/bin/python benchmarks/bench_gsu.py --out results/ [--quick] [--threads 1]

Cases (int8 SCL vectors, D = 128, K = 50), at L = 1K, 10K, 100K:

* training: B samples of U distinct users (B / U = 11, as in Taobao-MM), one history per user,
  grouped as the loader groups them; `grouped_cosine_topk` (exact fp32 padded batched GEMM,
  selection scores, running top-K over chunks of L);
* serving: one user's ``[L, 128]`` history shared by 1,000 candidates;
  `shared_keys_cosine_topk` (bf16 shortlist + exact re-score + certificate), beside the
  static-shape path (`static_shared_keys_cosine_topk`, the previous implementation).

Roofline of a case = ``max(bytes / bandwidth, flops / peak)``: bytes = the int8 keys read
(training ``U*L*128``, serving ``L*128``), flops = ``2*B*L*128``; bandwidth = a large fp32 sum
(bytes read per second); peak = a large GEMM in the arithmetic the case uses (fp32 for the
exact training GEMM, bf16 for the serving shortlist). "of roofline" = roofline time / measured
time. Every figure is taken twice: wall time, and process CPU time (which leaves out the time
the process waits for a core on a shared, oversubscribed machine; with one torch thread it is
the work itself). Medians of ``--reps`` calls after one warm-up. Writes ``bench_gsu.md`` and
``bench_gsu.json`` under ``--out``.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.args import at_least, output_dir  # noqa: E402
from muse_rec.data.batch import history_groups  # noqa: E402
from muse_rec.modules.cosine import grouped_cosine_topk  # noqa: E402
from muse_rec.modules.shared_keys_cosine import shared_keys_cosine_topk, static_shared_keys_cosine_topk  # noqa: E402

SCL_DIM = 128
TOP_K = 50
SAMPLES_PER_USER = 11
CANDIDATES = 1000
LENGTHS = (1000, 10_000, 100_000)
# Training batch per length: the full 1000 x 1000 batch where it fits a shared box's memory
# (keys U x L x 128 int8), a quarter of it at 100K (23 users' histories = 295 MB).
TRAIN_BATCH = {1000: 1000, 10_000: 1000, 100_000: 256}


def median_times(fn: Callable[[], object], reps: int) -> Tuple[float, float]:
    """Median (wall s, process CPU s) of ``reps`` calls after one warm-up call."""
    fn()
    wall, cpu = [], []
    for _ in range(reps):
        w, c = time.perf_counter(), time.process_time()
        fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return statistics.median(wall), statistics.median(cpu)


def machine_ceilings(reps: int, quick: bool) -> Dict:
    """Memory read bandwidth and GEMM peaks (fp32, bf16), wall and CPU time."""
    x = torch.ones((64 if quick else 512) * 2**20 // 4)
    bw = median_times(lambda: x.sum(), reps)
    n = 1024 if quick else 2048
    a32, b32 = torch.randn(n, n), torch.randn(n, n)
    o32 = torch.empty(n, n)
    f32 = median_times(lambda: torch.mm(a32, b32, out=o32), reps)
    a16, b16 = a32.bfloat16(), b32.bfloat16()
    o16 = torch.empty(n, n, dtype=torch.bfloat16)
    f16 = median_times(lambda: torch.mm(a16, b16, out=o16), reps)
    flops = 2 * n**3
    out = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability()}
    for i, clock in enumerate(("wall", "cpu")):
        out[f"mem_GBps_{clock}"] = x.numel() * 4 / bw[i] / 1e9
        out[f"fp32_GFLOPps_{clock}"] = flops / f32[i] / 1e9
        out[f"bf16_GFLOPps_{clock}"] = flops / f16[i] / 1e9
    # Names older reports read.
    out["mem_GBps"], out["gemm_GFLOPps"] = out["mem_GBps_wall"], out["fp32_GFLOPps_wall"]
    return out


def int8_scl(*shape: int, gen: torch.Generator) -> torch.Tensor:
    """Random SCL-like vectors, int8 = trunc(127 * unit vector), built in slices (bounded memory)."""
    out = torch.empty(*shape, SCL_DIM, dtype=torch.int8)
    flat = out.view(-1, SCL_DIM)
    for r0 in range(0, flat.shape[0], 1 << 16):
        v = torch.randn(min(1 << 16, flat.shape[0] - r0), SCL_DIM, generator=gen)
        flat[r0:r0 + v.shape[0]] = torch.trunc(127 * v / v.norm(dim=1, keepdim=True)).to(torch.int8)
    return out


def _roofline(row: Dict, ceil: Dict, peak_key: str) -> None:
    for clock in ("wall", "cpu"):
        t_mem = row["key_bytes"] / (ceil[f"mem_GBps_{clock}"] * 1e9)
        t_gemm = row["flops"] / (ceil[f"{peak_key}_{clock}"] * 1e9)
        row[f"bound_{clock}"] = "memory" if t_mem >= t_gemm else "compute"
        row[f"of_roofline_{clock}"] = max(t_mem, t_gemm) / row[f"s_{clock}"]


def bench_training(L: int, reps: int, gen: torch.Generator, ceil: Dict) -> Dict:
    B = TRAIN_BATCH[L]
    U = -(-B // SAMPLES_PER_USER)
    users = np.repeat(np.arange(U), SAMPLES_PER_USER)[:B]
    np.random.default_rng(0).shuffle(users)
    index, members = (torch.from_numpy(a) for a in history_groups(users))
    keys = int8_scl(members.shape[0], L, gen=gen)
    query = int8_scl(B, gen=gen)
    mask = torch.ones(members.shape[0], L, dtype=torch.bool)
    wall, cpu = median_times(lambda: grouped_cosine_topk(query, keys, mask, index, TOP_K, members), reps)
    row = {"shape": "training", "B": B, "U": int(members.shape[0]), "L": L, "arith": "fp32 (exact)",
           "s_wall": wall, "s_cpu": cpu, "key_bytes": keys.numel(), "flops": 2 * B * L * SCL_DIM}
    _roofline(row, ceil, "fp32_GFLOPps")
    return row


def bench_serving(L: int, reps: int, gen: torch.Generator, ceil: Dict, static_reps: int) -> Dict:
    keys = int8_scl(L, gen=gen)
    query = int8_scl(CANDIDATES, gen=gen)
    mask = torch.ones(L, dtype=torch.bool)
    wall, cpu = median_times(lambda: shared_keys_cosine_topk(query, keys, mask, TOP_K), reps)
    row = {"shape": "serving", "B": CANDIDATES, "U": 1, "L": L, "arith": "bf16 shortlist + exact",
           "s_wall": wall, "s_cpu": cpu, "key_bytes": keys.numel(), "flops": 2 * CANDIDATES * L * SCL_DIM}
    _roofline(row, ceil, "bf16_GFLOPps")
    if static_reps > 0:
        sw, sc = median_times(lambda: static_shared_keys_cosine_topk(query, keys, mask, TOP_K), static_reps)
        row["static_s_wall"], row["static_s_cpu"] = sw, sc
    return row


def run(reps: int, quick: bool, static_reps: int = 1) -> Dict:
    """Ceilings and every case, in one run: ``{"machine", "cases", "markdown"}``."""
    gen = torch.Generator().manual_seed(0)
    ceil = machine_ceilings(reps, quick)
    rows: List[Dict] = []
    for L in LENGTHS:
        rows.append(bench_training(L, reps, gen, ceil))
        print(f"training B={rows[-1]['B']} L={L}: {rows[-1]['s_wall'] * 1e3:.1f} ms", flush=True)
    for L in LENGTHS:
        rows.append(bench_serving(L, reps, gen, ceil, static_reps))
        print(f"serving  B={CANDIDATES} L={L}: {rows[-1]['s_wall'] * 1e3:.1f} ms", flush=True)
    return {"machine": ceil, "cases": rows, "markdown": to_markdown(rows, ceil)}


def to_markdown(rows: List[Dict], ceil: Dict) -> str:
    c = ceil
    lines = [
        f"GSU op (K={TOP_K}, int8 SCL, D={SCL_DIM}) on {c['cpu']} ({c['capability']}), {c['threads']} torch thread(s).",
        f"Ceilings measured in the same run (wall / CPU time): memory read {c['mem_GBps_wall']:.1f} / "
        f"{c['mem_GBps_cpu']:.1f} GB/s, fp32 GEMM {c['fp32_GFLOPps_wall']:.0f} / {c['fp32_GFLOPps_cpu']:.0f} GFLOP/s, "
        f"bf16 GEMM {c['bf16_GFLOPps_wall']:.0f} / {c['bf16_GFLOPps_cpu']:.0f} GFLOP/s.",
        "",
        "| shape | B | histories | L | arithmetic | ms wall | ms CPU | binding | of roofline (wall) | "
        "of roofline (CPU) | previous path ms CPU | speed-up |",
        "|---|---:|---:|---:|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        prev = r.get("static_s_cpu")
        prev_ms = "" if prev is None else f"{prev * 1e3:.0f}"
        speedup = "" if prev is None else f"{prev / r['s_cpu']:.1f}x"
        lines.append(
            f"| {r['shape']} | {r['B']} | {r['U']} | {r['L']:,} | {r['arith']} | {r['s_wall'] * 1e3:.1f} | "
            f"{r['s_cpu'] * 1e3:.1f} | {r['bound_cpu']} | {r['of_roofline_wall']:.0%} | {r['of_roofline_cpu']:.0%} | "
            f"{prev_ms} | {speedup} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results"), help="output folder")
    parser.add_argument("--reps", type=at_least(1), default=5, help="timed repetitions per case (median)")
    parser.add_argument("--static-reps", type=at_least(0), default=1,
                        help="timed repetitions of the previous serving path (0 = skip; ~20x slower)")
    parser.add_argument("--quick", action="store_true", help="smaller ceiling measurements")
    parser.add_argument("--threads", type=at_least(0), default=1,
                        help="torch intra-op threads (1: steady on a shared box; CPU time then equals work; "
                             "0 = torch's default)")
    args = parser.parse_args(argv)
    output_dir(parser, "--out", args.out)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    res = run(args.reps, args.quick, args.static_reps)
    (args.out / "bench_gsu.md").write_text(res["markdown"])
    (args.out / "bench_gsu.json").write_text(json.dumps({"machine": res["machine"], "cases": res["cases"]}, indent=2))
    print(res["markdown"])


if __name__ == "__main__":
    main()

"""Scale benchmark: `muse-rec prepare` on release-shaped synthetic sets of growing size.

For each size (a fraction 1/d of the `scale` synth preset: items, users, clusters and categories
divided by d; histories up to 1000, row groups as the preset writes them) it generates the raw
release once (`muse-rec synth --preset scale`, cached under ``--data``), then runs `muse-rec
prepare` in a fresh process and records wall time, input rows/s and behaviours/s, the peak RSS
of the prepare process (anonymous and total, sampled from /proc every 50 ms, plus the kernel's
max RSS) and the prepared output size. Memory is bounded by ``--batch-rows`` and the per-item
partition size, not by the input: the peaks should stay flat while rows grow 16x.

    python benchmarks/bench_scale.py --quick              # CI: three tiny sizes, seconds
    python benchmarks/bench_scale.py --sizes 128,64,16    # the table in docs/benchmarks.md
    python benchmarks/bench_scale.py --plan-check 30000000 --world-sizes 2,1   # memory vs plan

``--plan-check ITEMS`` shards specs/taobao_mm_full/muse.yaml (exact row-wise Adagrad, the CPU
optimizer) with an ITEMS-row item table and an ITEMS-row frozen fp16 SCL table on 1..N gloo
ranks and compares each rank's measured table bytes and RSS with `muse-rec plan`'s prediction
(`muse_rec.distributed.plan_measure`).

Writes ``OUT/bench_scale.json`` and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
SCALE = {"items": 30_000_000, "users": 1_000_000, "clusters": 250_000, "categories": 10_000}
# --quick: tiny absolute sizes (x1, x2, x4) with the scale preset's shape but short histories.
QUICK = {"items": 4000, "users": 200, "clusters": 80, "categories": 16, "max-seq-len": 200,
         "row-group-rows": 2000, "user-row-group-rows": 100}
_POLL_S = 0.05


def _env() -> Dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _status_kib(pid: int) -> Dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("RssAnon", "RssFile", "RssShmem", "VmRSS"):
                    out[key] = int(rest.split()[0])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def run_measured(cmd: List[str]) -> Dict[str, float]:
    """Run `cmd`, sampling its RSS; returns seconds, peak anonymous / total RSS (MiB), exit code."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = {"RssAnon": 0, "VmRSS": 0}
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            s = _status_kib(proc.pid)
            for k in peak:
                peak[k] = max(peak[k], s.get(k, 0))
            stop.wait(_POLL_S)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    stop.set()
    th.join()
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {err[-2000:]}")
    return {"seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "peak_rss_anon_mib": peak["RssAnon"] / 1024,
            "peak_rss_total_mib": max(peak["VmRSS"], usage.ru_maxrss) / 1024}


def _du_bytes(path: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def _raw_rows(raw: Path) -> int:
    import pyarrow.parquet as pq

    from muse_rec.data import schema as S

    return sum(pq.ParquetFile(raw / spec.file).metadata.num_rows for spec in S.TABLES.values())


def synth_args(divisor: int, quick: bool) -> List[str]:
    """`muse-rec synth` flags of size 1/divisor of the scale preset (--quick: `divisor` x QUICK)."""
    if quick:
        knobs = {k: (v * divisor if k in ("items", "users", "clusters", "categories") else v)
                 for k, v in QUICK.items()}
    else:
        knobs = {k: max(1, -(-v // divisor)) for k, v in SCALE.items()}
    return [a for k, v in knobs.items() for a in (f"--{k}", str(v))]


def bench_size(label: str, raw: Path, out: Path, synth: List[str], batch_rows: int) -> Dict[str, object]:
    py = sys.executable
    if not (raw / "_synth_manifest.json").exists():
        gen = run_measured([py, "-m", "muse_rec.cli", "synth", str(raw), "--preset", "scale", "--quiet", *synth])
    else:
        gen = json.loads((raw / "_synth_manifest.json").read_text()).get("bench_generation")
    shutil.rmtree(out, ignore_errors=True)
    prep = run_measured([py, "-m", "muse_rec.cli", "prepare", str(raw), str(out), "--no-progress",
                         "--batch-rows", str(batch_rows)])
    meta = json.loads((out / "meta.json").read_text())
    rows = _raw_rows(raw)
    behaviours = sum(meta["splits"][s]["behaviours"] for s in meta["splits"])
    return {
        "size": label, "synth_flags": synth, "raw_bytes": _du_bytes(raw), "raw_rows": rows,
        "behaviours": behaviours, "items": meta["vocab_sizes"]["item"] - 1,
        "users": meta["splits"]["train"]["user_rows"],
        "samples": sum(meta["splits"][s]["samples"] for s in meta["splits"]),
        # Per CPU-second too: on a shared machine wall time depends on the other jobs' load.
        "prepare": {**prep, "rows_per_s": rows / prep["seconds"], "behaviours_per_s": behaviours / prep["seconds"],
                    "behaviours_per_cpu_s": behaviours / max(prep["cpu_seconds"], 1e-9),
                    "output_bytes": _du_bytes(out)},
        "synth": gen,
    }


def markdown(results: List[Dict[str, object]]) -> str:
    head = ("| size | items | users | behaviours | raw GB | prepare wall s | CPU s | rows/s | behaviours/s | "
            "behaviours per CPU-s | peak RSS anon MiB | peak RSS total MiB | output GB |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in results:
        p = r["prepare"]
        lines.append(f"| {r['size']} | {r['items']:,} | {r['users']:,} | {r['behaviours']:,} | "
                     f"{r['raw_bytes'] / 1e9:.2f} | {p['seconds']:.0f} | {p['cpu_seconds']:.0f} | "
                     f"{p['rows_per_s']:,.0f} | {p['behaviours_per_s']:,.0f} | {p['behaviours_per_cpu_s']:,.0f} | "
                     f"{p['peak_rss_anon_mib']:.0f} | "
                     f"{p['peak_rss_total_mib']:.0f} | "
                     f"{p['output_bytes'] / 1e9:.2f} |")
    return head + "\n".join(lines) + "\n"


PLAN_SPEC = "specs/taobao_mm_full/muse.yaml"
PLAN_SET = ["train.sparse_optimizer.name=exact_row_wise_adagrad"]


def plan_check(items: int, world_sizes: List[int]) -> List[Dict[str, object]]:
    """Planned vs measured per-rank memory of the full spec with `items` item rows."""
    from muse_rec.distributed.plan_measure import compare

    # Small tables at the 1/4 scale preset's counts (they are < 1% of the bytes).
    sizes = {"item": items + 1, "category": 2501, "user_id": 250001, "user_f1": 9, "user_f2": 4, "user_f3": 41,
             "user_f4": 5001, "user_f5": 9, "item_f213": 250001, "item_f214": 13}
    out = []
    for ws in world_sizes:
        t0 = time.perf_counter()
        rows = compare(PLAN_SPEC, sizes, ws, PLAN_SET)
        out.append({"items": items, "world_size": ws, "seconds": time.perf_counter() - t0, "ranks": rows})
        for r in rows:
            print(f"[bench_scale] plan check {ws} rank(s), rank {r['rank']}: tables planned "
                  f"{r['planned_table_bytes'] / 2**30:.3f} GiB, measured {r['measured_table_bytes'] / 2**30:.3f} GiB; "
                  f"plan DDR {r['planned_ddr_bytes'] / 2**30:.3f} GiB, RSS anon added "
                  f"{r['measured_rss_anon_delta_bytes'] / 2**30:.3f} GiB", flush=True)
    return out


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="three tiny sizes (CI, seconds)")
    ap.add_argument("--sizes", default="64,16,4", help="divisors of the scale preset, largest divisor first")
    ap.add_argument("--data", default=str(REPO / "data" / "bench_scale"), help="raw releases are cached here")
    ap.add_argument("--out", default=str(REPO / "data" / "bench_scale" / "results"), help="results directory")
    ap.add_argument("--batch-rows", type=int, default=4096, help="prepare --batch-rows")
    ap.add_argument("--plan-check", type=int, default=0, metavar="ITEMS",
                    help="instead: per-rank memory of the sharded full spec with ITEMS items vs the plan")
    ap.add_argument("--world-sizes", default="1,2", help="gloo world sizes of --plan-check")
    args = ap.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.plan_check:
        res = plan_check(args.plan_check, [int(x) for x in args.world_sizes.split(",")])
        (out / f"plan_check_{args.plan_check}.json").write_text(json.dumps(res, indent=2) + "\n")
        return 0
    results = []
    if args.quick:
        sizes = [(f"quick x{m}", m) for m in (1, 2, 4)]
    else:
        sizes = [(f"1/{d}" if d > 1 else "1", d) for d in (int(x) for x in args.sizes.split(","))]
    for label, d in sizes:
        tag = f"quick_{d}" if args.quick else f"scale_{d}"
        res = bench_size(label, data / tag, data / f"{tag}_prepared", synth_args(d, args.quick), args.batch_rows)
        results.append(res)
        print(f"[bench_scale] {label}: {res['behaviours']:,} behaviours, prepare {res['prepare']['seconds']:.1f} s, "
              f"peak RSS anon {res['prepare']['peak_rss_anon_mib']:.0f} MiB", flush=True)
        if args.quick:
            shutil.rmtree(data / f"{tag}_prepared", ignore_errors=True)
    with open("/proc/loadavg", encoding="ascii") as f:
        load = f.read().split()[:3]
    doc = {"results": results, "loadavg": load, "batch_rows": args.batch_rows}
    (out / "bench_scale.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(markdown(results) + f"\nload average {' '.join(load)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Scale benchmark: `muse-rec prepare` on release-shaped synthetic sets of growing size.

For each size (a fraction 1/d of the `scale` synth preset: items, users, clusters and categories
divided by d; histories up to 1000, row groups as the preset writes them) it generates the raw
release once (`muse-rec synth --preset scale`, cached under ``--data``), then runs `muse-rec
prepare` in a fresh process and records wall time, input rows/s and behaviours/s, the peak RSS
of the prepare process (anonymous and total, sampled from /proc every 50 ms, plus the kernel's
max RSS) and the prepared output size. Memory is bounded by ``--batch-rows`` and the per-item
partition size, not by the input: the peaks should stay flat while rows grow 16x.

    python benchmarks/bench_scale.py --quick              # CI: three tiny sizes, seconds
    python benchmarks/bench_scale.py --sizes 16,4,1       # the prepare curve in docs/benchmarks.md
    python benchmarks/bench_scale.py --plan-check 30000000 --world-sizes 2,1   # memory vs plan
    python benchmarks/bench_scale.py --train-check PREPARED --world-sizes 1,2 --steps 0   # training vs plan

``--plan-check ITEMS`` shards specs/taobao_mm_full/muse.yaml (exact row-wise Adagrad, the CPU
optimizer) with an ITEMS-row item table and an ITEMS-row frozen fp16 SCL table on 1..N gloo
ranks and compares each rank's measured table bytes and RSS with `muse-rec plan`'s prediction
(`muse_rec.distributed.plan_measure`).

``--train-check PREPARED`` trains that spec for real on PREPARED (`muse-rec train`, CPU gloo:
one plain process, or torchrun for several ranks; ``--steps`` steps, then exact evaluation on
the test split) at each of ``--world-sizes``, while sampling every rank's RSS (anonymous and
total, /proc/PID/status every 0.05 s) and the proportional set size of each rank with its loader
workers (/proc/PID/smaps_rollup, every second and as soon as a worker appears; forked workers
share the rank's pages, so their RSS would count those twice). It compares each rank's peak with
`muse-rec plan --prepared PREPARED --device cpu` for the same spec, overrides and world size (`plan_measure.planned`),
and reads the bytes the rank's embedding kernels held and the run's GAUC from the run directory.
The plan's per-rank total includes its reservation for the rest of the rank
(`muse_rec.distributed.rank_memory`); ``within_tolerance``: peak PSS / plan total within 15%.

Writes ``OUT/bench_scale.json`` (``OUT/train_check.json`` for --train-check, ``OUT/plan_check_N.json``
for --plan-check) and prints a Markdown table.
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
from typing import Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.args import at_least, int_list, output_dir, prepared_dir  # noqa: E402

SCALE = {"items": 30_000_000, "users": 1_000_000, "clusters": 250_000, "categories": 10_000}
# --quick: tiny absolute sizes (x1, x2, x4) with the scale preset's shape but short histories.
QUICK = {"items": 4000, "users": 200, "clusters": 80, "categories": 16, "max-seq-len": 200,
         "row-group-rows": 2000, "user-row-group-rows": 100}
_POLL_S = 0.05


def _env() -> Dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _proc_kib(pid: int, name: str, keys: Tuple[str, ...]) -> Dict[str, int]:
    """The ``keys`` (kB fields) of /proc/PID/<name>; {} once the process is gone."""
    out = {}
    try:
        with open(f"/proc/{pid}/{name}", encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in keys:
                    out[key] = int(rest.split()[0])
    except (OSError, ValueError):
        pass
    return out


def _status_kib(pid: int) -> Dict[str, int]:
    return _proc_kib(pid, "status", ("RssAnon", "RssFile", "RssShmem", "VmRSS"))


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


# --train-check: the spec trained, its overrides (the plan sees the same) and what the run adds.
TRAIN_CHECK_SET = [*PLAN_SET, "train.checkpoint_every=0", "train.check_floors=false"]
TRAIN_CHECK_TOLERANCE = 0.15  # the bar: the plan predicts each rank's peak within 15%
# The process tree and /proc/PID/status every 0.05 s: a short run's loader worker can live well under
# a second (3 steps and a small test split: ~0.5 s), and at 0.2 s a loaded machine missed it. A scan of
# /proc costs ~1 ms per 70 processes, ~2% of a core at this rate.
_POLL_S = 0.05
# smaps_rollup (a page-table walk) once a second, and at once when a rank's process tree gains a
# worker, so a worker that lives between two seconds is still in the peak PSS with its loader.
_SMAPS_EVERY_S = 1.0


def _proc_tree() -> Dict[int, List[int]]:
    """Children of every process (from /proc/PID/stat)."""
    kids: Dict[int, List[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def _descendants(pid: int, kids: Dict[int, List[int]]) -> List[int]:
    out, todo = [], list(kids.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def _env_rank(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            for item in f.read().split(b"\0"):
                if item.startswith(b"RANK="):
                    return int(item[5:])
    except (OSError, ValueError):
        pass
    return None


def _pss_kib(pid: int) -> Dict[str, int]:
    return _proc_kib(pid, "smaps_rollup", ("Pss", "Pss_Anon"))


class RankSampler:
    """Samples the memory of every rank of a job started as process `root` (torchrun's agent or
    the one training process) until `stop()`: per rank, peak RssAnon / VmRSS of the rank process
    and peak Pss_Anon / Pss of the rank with its loader workers, plus a 1 s series of RssAnon."""

    def __init__(self, root: int, world_size: int, start: bool = True) -> None:
        self.root, self.world_size = root, world_size
        self.peak: Dict[int, Dict[str, int]] = {}
        self.series: Dict[int, List[List[float]]] = {}
        self._next_smaps: Dict[int, float] = {}  # rank -> when its next smaps walk is due
        self._smapped: Dict[int, set] = {}  # rank -> the worker pids already in a smaps walk
        self._stop = threading.Event()
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)
        if start:  # start=False: the caller calls sample() itself (tests)
            self._thread.start()

    def _ranks(self, kids: Dict[int, List[int]]) -> Dict[int, int]:
        """rank -> pid: the process that has RANK in its environment and whose parent has not
        (loader workers inherit the rank's environment)."""
        if self.world_size == 1:
            return {0: self.root}
        found = {}
        for pid in kids.get(self.root, []):
            r = _env_rank(pid)
            if r is not None:
                found[r] = pid
        return found

    def sample(self) -> None:
        """One look at every rank: its status now, and its tree's PSS when due or when it gained a worker."""
        kids = _proc_tree()
        now = time.perf_counter()
        for rank, pid in self._ranks(kids).items():
            peak = self.peak.setdefault(rank, {"RssAnon": 0, "VmRSS": 0, "Pss_Anon": 0, "Pss": 0, "workers": 0})
            st = _status_kib(pid)
            for k in ("RssAnon", "VmRSS"):
                peak[k] = max(peak[k], st.get(k, 0))
            workers = _descendants(pid, kids)
            peak["workers"] = max(peak["workers"], len(workers))
            due, smapped = now >= self._next_smaps.get(rank, now), self._smapped.setdefault(rank, set())
            if due or not smapped.issuperset(workers):
                tree = [_pss_kib(p) for p in [pid, *workers]]
                for k in ("Pss_Anon", "Pss"):
                    peak[k] = max(peak[k], sum(t.get(k, 0) for t in tree))
                smapped.update(workers)
            if due:  # the 1 s series keeps its own clock
                self.series.setdefault(rank, []).append([round(now - self._t0, 1), st.get("RssAnon", 0) // 1024])
                self._next_smaps[rank] = now + _SMAPS_EVERY_S

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(_POLL_S)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def train_command(prepared: Path, out_dir: Path, world_size: int, steps: int, overrides: List[str]) -> List[str]:
    """`muse-rec train` of PLAN_SPEC on `world_size` gloo ranks (torchrun when > 1)."""
    from muse_rec.distributed.env import free_port

    bindir = Path(sys.executable).parent
    if world_size == 1:
        cmd = [sys.executable, "-m", "muse_rec.cli"]
    else:
        cmd = [str(bindir / "torchrun"), "--nnodes", "1", "--nproc_per_node", str(world_size),
               "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{free_port()}", "-m", "muse_rec.cli"]
    sets = [f"data.prepared={prepared}", f"output_dir={out_dir}/{{name}}", f"train.max_steps={steps}", *overrides]
    return [*cmd, "train", "--spec", PLAN_SPEC, "--device", "cpu", "--overwrite",
            *[a for ov in sets for a in ("--set", ov)]]


def train_check(prepared: Path, out: Path, world_sizes: List[int], steps: int,
                extra: List[str]) -> List[Dict[str, object]]:
    """Train on `prepared` at each world size; per-rank peak memory beside `muse-rec plan`'s."""
    from muse_rec.cli.plan import _quiet_planner, prepared_vocab_sizes
    from muse_rec.distributed.plan_measure import planned

    _quiet_planner(verbose=False)  # as `muse-rec plan`: no dry-run warnings at every plan
    sizes = prepared_vocab_sizes(str(prepared))
    overrides = [*TRAIN_CHECK_SET, *extra]
    results = []
    for ws in world_sizes:
        run_root = out / f"train_check_{ws}rank"
        t0 = time.perf_counter()
        plan = planned(PLAN_SPEC, sizes, ws, overrides)
        plan_s = time.perf_counter() - t0
        cmd = train_command(prepared, run_root, ws, steps, overrides)
        print(f"[bench_scale] train check, {ws} rank(s): {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        with open(out / f"train_check_{ws}rank.log", "w", encoding="utf-8") as log:
            proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT)
            sampler = RankSampler(proc.pid, ws)
            rc = proc.wait()
            sampler.stop()
        seconds = time.perf_counter() - t0
        if rc != 0:
            tail = (out / f"train_check_{ws}rank.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"train check at {ws} rank(s) failed ({rc}): {tail}")
        run_dir = run_root / "muse"
        metrics = json.loads((run_dir / "metrics.json").read_text())
        rows = []
        for p in plan:
            r = p["rank"]
            kib = sampler.peak.get(r, {})
            mem = json.loads((run_dir / "memory" / f"rank{r}.json").read_text())
            anon, total = kib.get("RssAnon", 0) * 1024, kib.get("VmRSS", 0) * 1024
            pss_anon = kib.get("Pss_Anon", 0) * 1024
            predicted_ratio = pss_anon / max(1, p["predicted_ddr_bytes"])
            rows.append({
                "rank": r, "planned_table_bytes": p["table_bytes"], "planned_ddr_bytes": p["ddr_bytes"],
                "measured_table_bytes": mem["table_bytes"], "table_ratio": mem["table_bytes"] / max(1, p["table_bytes"]),
                "peak_rss_anon_bytes": anon, "peak_rss_bytes": max(total, mem.get("peak_rss_bytes", 0)),
                "peak_pss_anon_bytes": pss_anon, "peak_pss_bytes": kib.get("Pss", 0) * 1024,
                "rss_anon_after_shard_bytes": mem["rss_anon_bytes_after_shard"],
                "loader_workers": kib.get("workers", 0),
                "rss_anon_ratio": anon / max(1, p["ddr_bytes"]),
                "pss_anon_ratio": pss_anon / max(1, p["ddr_bytes"]),
                # The plan's whole rank: tables + state + the reservation for the rest (rank_memory),
                # against the rank's peak with its loader workers (their own pages: PSS).
                "reserved_bytes": p["reserved_ddr_bytes"], "predicted_bytes": p["predicted_ddr_bytes"],
                "predicted_ratio": predicted_ratio,
                "within_tolerance": abs(predicted_ratio - 1) <= TRAIN_CHECK_TOLERANCE,
                "rss_anon_series_mib": sampler.series.get(r, []),
            })
        res = {"prepared": str(prepared), "vocab_sizes": sizes, "world_size": ws, "steps": metrics.get("steps"),
               "overrides": overrides, "seconds": seconds, "plan_seconds": plan_s,
               "train_samples_per_s": metrics.get("train_samples_per_s"), "eval_seconds": metrics.get("eval_seconds"),
               "gauc": metrics.get("gauc"), "auc": metrics.get("auc"), "logloss": metrics.get("logloss"),
               "ranks": rows}
        results.append(res)
        for r in rows:
            print(f"[bench_scale] train check {ws} rank(s), rank {r['rank']}: tables planned "
                  f"{r['planned_table_bytes'] / 2**30:.3f} GiB, held {r['measured_table_bytes'] / 2**30:.3f} GiB; "
                  f"plan DDR {r['planned_ddr_bytes'] / 2**30:.3f} GiB, peak RSS anon {r['peak_rss_anon_bytes'] / 2**30:.3f} "
                  f"GiB ({r['rss_anon_ratio']:.3f} x plan DDR), peak PSS anon with loader "
                  f"{r['peak_pss_anon_bytes'] / 2**30:.3f} GiB vs predicted rank {r['predicted_bytes'] / 2**30:.3f} GiB "
                  f"({r['predicted_ratio']:.3f}, {'within' if r['within_tolerance'] else 'OUTSIDE'} 15%); "
                  f"GAUC {res['gauc']}", flush=True)
    if len(results) > 1:
        by_ws = {r["world_size"]: r for r in results}
        if 1 in by_ws:
            one = by_ws[1]["ranks"][0]["measured_table_bytes"]
            for r in results:
                for row in r["ranks"]:
                    row["table_share_of_one_rank"] = row["measured_table_bytes"] / max(1, one)
    return results


def train_markdown(results: List[Dict[str, object]]) -> str:
    g = lambda b: f"{b / 2**30:.3f}"  # noqa: E731
    head = ("| ranks | rank | steps | GAUC | tables planned GiB | tables held GiB | plan DDR (tables) GiB | "
            "plan reserved GiB | plan rank total GiB | peak RSS anon GiB | peak RSS total GiB | "
            "peak PSS anon (rank + loader) GiB | PSS anon / plan total | RSS anon / plan DDR (tables) |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in results:
        for row in r["ranks"]:
            lines.append(f"| {r['world_size']} | {row['rank']} | {r['steps']} | {r['gauc']:.4f} | "
                         f"{g(row['planned_table_bytes'])} | {g(row['measured_table_bytes'])} | "
                         f"{g(row['planned_ddr_bytes'])} | {g(row['reserved_bytes'])} | {g(row['predicted_bytes'])} | "
                         f"{g(row['peak_rss_anon_bytes'])} | {g(row['peak_rss_bytes'])} | "
                         f"{g(row['peak_pss_anon_bytes'])} | {row['predicted_ratio']:.3f} | {row['rss_anon_ratio']:.3f} |")
    return head + "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # One mode per run: given together, all but one were ignored without a word.
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="three tiny sizes (CI, seconds)")
    mode.add_argument("--sizes", type=int_list(1), default=[64, 16, 4],
                    help="divisors of the scale preset, largest divisor first (default 64,16,4)")
    ap.add_argument("--data", default=str(REPO / "data" / "bench_scale"), help="raw releases are cached here")
    ap.add_argument("--out", default=str(REPO / "data" / "bench_scale" / "results"), help="results directory")
    ap.add_argument("--batch-rows", type=at_least(1), default=4096, help="prepare --batch-rows")
    mode.add_argument("--plan-check", type=at_least(0), default=0, metavar="ITEMS",
                    help="instead: per-rank memory of the sharded full spec with ITEMS items vs the plan")
    ap.add_argument("--world-sizes", type=int_list(1), default=[1, 2],
                    help="gloo world sizes of --plan-check / --train-check (default 1,2)")
    mode.add_argument("--train-check", type=prepared_dir, default=None, metavar="PREPARED",
                    help="instead: train the full spec on this prepared set (--steps steps + exact evaluation) "
                         "and compare each rank's peak memory with the plan")
    ap.add_argument("--steps", type=at_least(0), default=40,
                    help="train.max_steps of --train-check (0 = one whole epoch)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra spec overrides of --train-check (the plan gets them too), e.g. train.batch_size=500")
    args = ap.parse_args(argv)
    if args.set and not args.train_check:
        ap.error("--set: spec overrides apply to --train-check only")
    if args.train_check:
        from muse_rec.spec import SpecError, load_spec

        try:  # the spec as the plan and the training will read it, before either runs
            load_spec(REPO / PLAN_SPEC, [*TRAIN_CHECK_SET, *args.set])
        except SpecError as e:
            ap.error(f"--set: {e}")
    data, out = Path(args.data), output_dir(ap, "--out", Path(args.out))
    if not (args.train_check or args.plan_check):
        output_dir(ap, "--data", data)
    if args.train_check:
        res = train_check(Path(args.train_check).resolve(), out.resolve(),
                          args.world_sizes, args.steps, args.set)
        (out / "train_check.json").write_text(json.dumps(res, indent=2) + "\n")
        print(train_markdown(res))
        return 0
    if args.plan_check:
        res = plan_check(args.plan_check, args.world_sizes)
        (out / f"plan_check_{args.plan_check}.json").write_text(json.dumps(res, indent=2) + "\n")
        return 0
    results = []
    if args.quick:
        sizes = [(f"quick x{m}", m) for m in (1, 2, 4)]
    else:
        sizes = [(f"1/{d}" if d > 1 else "1", d) for d in args.sizes]
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

"""Every benchmark of the project in one run: tables and ratios in ``<out>/benchmarks.md`` + ``.json``.

    .venv/bin/python benchmarks/run_all.py --out results/ [--quick] [--device cpu|cuda]

Sections (each measured in this one run, so the ratios compare numbers taken under the same load):

1. data: `bench_data` -- raw demo release (cached under ``--work``), `muse-rec prepare` rows/s and
   peak RSS (a fresh prepare every run; its output is the training data below), loader samples/s;
2. training: `bench_train` -- samples/s per method, 1 and 2 processes, end to end through
   `muse-rec train` and model step only, next to the plain-PyTorch MUSE (`plain_torch_muse`);
3. GSU op: `bench_gsu` -- fraction of the roofline (measured bandwidth and GEMM peaks) at L = 1K-100K;
4. ranker latency: `bench_ranker.py` -- p50/p99 over the bf16 GEMM of the same shape, same run;
5. memory per rank at the full Taobao-MM vocabulary: `muse-rec plan --json` (8 x 80 GiB GPUs).

Numbers are medians (of timed windows, steps or repetitions); the load average at the start and
end of the run is recorded, since these machines are shared. A failing section is reported in
the tables and makes the exit status 1; the other sections still run. See docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import bench_data, bench_gsu, bench_train  # noqa: E402
from benchmarks.args import at_least, output_dir, require_cuda  # noqa: E402
from benchmarks.report_md import render  # noqa: E402

FULL_VOCAB_SPEC = REPO / "specs" / "taobao_mm_full" / "muse.yaml"
RANKER_SCRIPT = REPO / "benchmarks" / "bench_ranker.py"
PLAN_WORLD_SIZE = 8
# --quick: history lengths and timed calls per length passed to bench_ranker (when it takes them).
RANKER_QUICK_LENGTHS, RANKER_QUICK_REPS = "1000,10000,100000", "10,5,5"
SECTIONS = ("data", "training", "gsu", "ranker", "plan")
# Written into --work by the data section, which deletes and rewrites its raw/ and prepared/.
WORK_MARK = ".run_all_work"


@dataclass
class Settings:
    """How much of each benchmark to run; `for_mode` gives the --quick and default sizes.

    Attributes:
        e2e_methods / step_methods: demo specs trained end to end / timed as model steps.
        step_methods_multi: model-step methods for world sizes > 1.
        world_sizes: process counts (2 processes are skipped on CUDA with fewer than 2 GPUs).
        window, windows: end to end: steps per logged window, steady windows after the first.
        warmup, steps: model step: untimed and timed steps.
        batch_size, seq_len: per process (the target is stated at 1000 x 1000).
        prepare_reps, loader_reps, loader_workers, loader_epochs: data section.
        gsu_reps: timed calls per GSU case; gsu_quick: bench_gsu's small cases.
    """

    e2e_methods: List[str]
    step_methods: List[str]
    step_methods_multi: List[str]
    world_sizes: List[int] = field(default_factory=lambda: [1, 2])
    window: int = 4
    windows: int = 5
    warmup: int = 3
    steps: int = 10
    batch_size: int = 1000
    seq_len: int = 1000
    prepare_reps: int = 2
    loader_reps: int = 2
    loader_workers: List[int] = field(default_factory=lambda: [0, 2])
    loader_epochs: int = 1
    gsu_reps: int = 5
    gsu_quick: bool = False

    @classmethod
    def for_mode(cls, quick: bool) -> "Settings":
        if quick:
            return cls(e2e_methods=["muse"], step_methods=list(bench_train.METHODS), step_methods_multi=["muse"],
                       window=3, windows=2, warmup=2, steps=5, prepare_reps=1, loader_reps=1,
                       loader_workers=[0], gsu_reps=3, gsu_quick=True)
        return cls(e2e_methods=list(bench_train.METHODS), step_methods=list(bench_train.METHODS),
                   step_methods_multi=list(bench_train.METHODS))


def _load() -> List[float]:
    return [round(x, 2) for x in os.getloadavg()]


def section(results: Dict, name: str, fn: Callable[[], Dict]) -> None:
    """Run one section; record its result or its error, its wall time and the load around it."""
    print(f"== {name} (load {_load()})", flush=True)
    start = time.perf_counter()
    try:
        out = fn()
    except Exception as e:  # noqa: BLE001 -- one broken section must not lose the others
        traceback.print_exc()
        out = {"error": f"{type(e).__name__}: {e}"}
    out["wall_s"] = time.perf_counter() - start
    out["load_after"] = _load()
    results["sections"][name] = out


# ----------------------------------------------------------------------------------------------
def run_data(work: Path, st: Settings) -> Dict:
    """Raw release (cached), timed prepare into ``work/prepared`` (kept for training), loader."""
    raw, prepared, done = work / "raw", work / "prepared", work / "raw.complete"
    if not done.exists():
        shutil.rmtree(raw, ignore_errors=True)
        raw.mkdir(parents=True)
        done.write_text(bench_data.make_raw_in_child(str(raw), "demo", 0))
    prepares = []
    for _ in range(st.prepare_reps):
        shutil.rmtree(prepared, ignore_errors=True)  # prepare resumes into an existing directory
        prepares.append(bench_data.bench_prepare(str(raw), str(prepared)))
    prep = dict(prepares[-1])
    for key in ("seconds", "rows_per_s", "behaviours_per_s", "peak_rss_mib"):
        prep[key] = statistics.median(p[key] for p in prepares)
    loaders = []
    for w in st.loader_workers:
        reps = [bench_data.bench_loader(str(prepared), st.batch_size, st.seq_len, w, st.loader_epochs)
                for _ in range(st.loader_reps)]
        row = dict(reps[0])
        row["steady_samples_per_s"] = statistics.median(r["steady_samples_per_s"] for r in reps)
        row["first_batch_s"] = statistics.median(r["first_batch_s"] for r in reps)
        loaders.append(row)
    res = {"host": f"{platform.node()}, {os.cpu_count()} CPUs", "raw_source": done.read_text().strip(),
           "prepare": prep, "prepare_reps": len(prepares), "loader": loaders, "loader_reps": st.loader_reps}
    res["markdown"] = bench_data.markdown(res)
    return res


def threads_per_process(threads: int, world_size: int, device: str) -> int:
    """OMP/torch threads of each of ``world_size`` processes (0 = torch's default).

    ``threads`` >= 0 is used as is; -1 is a fair share of this machine's cores (2 cores: 2 threads
    for one process, 1 each for two, torchrun's own default) on CPU and torch's default on CUDA.
    """
    if threads >= 0:
        return threads
    return max(1, (os.cpu_count() or 1) // world_size) if device == "cpu" else 0


def run_training(prepared: Path, out: Path, st: Settings, device: str, threads_arg: int) -> Dict:
    """End-to-end and model-step samples/s; plain MUSE in every model-step job."""
    rows: List[Dict] = []
    skipped: List[str] = []
    for w in st.world_sizes:
        threads = threads_per_process(threads_arg, w, device)
        if device == "cuda" and w > _cuda_count():
            skipped.append(f"{w} processes: this machine has {_cuda_count()} GPU(s)")
            continue
        for m in st.e2e_methods:
            r = bench_train.run_end_to_end(m, w, str(prepared), out / "runs", st.batch_size, st.seq_len,
                                           st.window, st.windows, device, threads)
            rows.append({"kind": "end_to_end", "threads": threads, **r})
            print(f"   e2e  {m:9s} W={w} {r['samples_per_s']:10,.0f} samples/s (load {_load()})", flush=True)
        methods = st.step_methods if w == 1 else st.step_methods_multi
        plain = device == "cpu" or w == 1  # NCCL cannot all-reduce sparse gradients
        if not plain:
            skipped.append(f"plain torch at {w} processes on CUDA: NCCL has no sparse all-reduce")
        for r in bench_train.run_model_step(methods, w, str(prepared), out / "runs" / f"step_w{w}.json", plain,
                                            st.batch_size, st.seq_len, st.warmup, st.steps, device,
                                            threads=threads):
            rows.append({"kind": "model_step", "threads": threads, **r})
            print(f"   step {r['impl']:34s} {r['method']:9s} W={w} {r['samples_per_s']:10,.0f} samples/s", flush=True)
    return {"rows": rows, "skipped": skipped, "batch_size": st.batch_size, "seq_len": st.seq_len,
            "window": st.window, "windows": st.windows, "warmup": st.warmup, "steps": st.steps}


def run_gsu(st: Settings, device: str) -> Dict:
    """bench_gsu's cases (training and serving shapes at L = 1K, 10K, 100K) against the machine's
    bandwidth and GEMM peaks measured in the same call (CPU: its kernels are CPU kernels)."""
    res = bench_gsu.run(st.gsu_reps, st.gsu_quick, static_reps=1)
    res["device"] = "cpu"
    res["note"] = "" if device == "cpu" else "measured on the CPU: bench_gsu's kernels are the CPU paths"
    return res


def run_ranker(out: Path, quick: bool, threads: int) -> Dict:
    """`bench_ranker.py --out DIR [--quick]` when it exists; collects the JSON/Markdown it writes."""
    if not RANKER_SCRIPT.exists():
        return {"available": False, "reason": f"{RANKER_SCRIPT.relative_to(REPO)} not present"}
    folder = out / "ranker"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    helptext = subprocess.run([sys.executable, str(RANKER_SCRIPT), "--help"], cwd=REPO, capture_output=True,
                              text=True, env=bench_train.child_env(threads)).stdout
    cmd = [sys.executable, str(RANKER_SCRIPT), "--out", str(folder)]
    if quick and "--quick" in helptext:
        cmd.append("--quick")
    elif quick and "--lengths" in helptext and "--reps" in helptext:
        cmd += ["--lengths", RANKER_QUICK_LENGTHS, "--reps", RANKER_QUICK_REPS]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=bench_train.child_env(threads))
    if done.returncode != 0:
        return {"available": False, "reason": f"exit {done.returncode}: {(done.stdout + done.stderr)[-1500:]}"}
    found = {p.name: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
    md = "\n".join(p.read_text() for p in sorted(folder.glob("*.md")))
    return {"available": bool(found or md), "reason": "" if found or md else "it wrote no .json/.md",
            "command": " ".join(cmd), "json": found, "markdown": md or done.stdout[-4000:]}


def run_plan(out: Path) -> Dict:
    """`muse-rec plan --spec specs/taobao_mm_full/muse.yaml --world-size 8 --json`: bytes per rank."""
    path = out / "plan_full_vocab.json"
    cmd = [sys.executable, "-m", "muse_rec.cli", "plan", "--spec", str(FULL_VOCAB_SPEC.relative_to(REPO)),
           "--world-size", str(PLAN_WORLD_SIZE), "--json", str(path)]
    path.unlink(missing_ok=True)
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=bench_train.child_env(0))
    if not path.exists():
        return {"available": False, "reason": f"`{' '.join(cmd[2:])}` wrote no JSON (exit {done.returncode}): "
                                              f"{(done.stdout + done.stderr)[-800:]}"}
    plan = json.loads(path.read_text())
    if not plan.get("plan") or "ranks" not in plan["plan"]:
        return {"available": False, "reason": f"{path}: no per-rank plan in the JSON"}
    return {"available": True, "command": " ".join(["muse-rec"] + cmd[3:]), "fits": plan.get("fits"),
            "setup": plan.get("setup"), "ranks": plan["plan"]["ranks"], "tables": plan["plan"].get("tables", [])}


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_work(parser: argparse.ArgumentParser, work: Path) -> None:
    """parser.error when ``--work`` holds a raw/ or prepared/ folder that run_all did not write:
    the data section deletes both (``--work data`` deleted the user's data/raw and data/prepared).
    Its own are known by WORK_MARK, or by raw.complete from runs before the mark existed."""
    if (work / WORK_MARK).exists() or (work / "raw.complete").exists():
        return
    theirs = [f"{name}/" for name in ("raw", "prepared") if (work / name).exists()]
    if theirs:
        parser.error(f"--work {work}: holds {' and '.join(theirs)} that run_all.py did not write, and its data "
                     "section deletes them; give a new or empty folder")


def section_list(text: str) -> List[str]:
    """Type of ``--only``: comma-separated names of SECTIONS (a misspelt one ran nothing, exit 0)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"{(unknown or [text])[0]!r}: not a section; choose from {','.join(SECTIONS)}")
    return names


# ----------------------------------------------------------------------------------------------
def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("results"), help="writes benchmarks.md / benchmarks.json here")
    ap.add_argument("--quick", action="store_true", help="small version (2-5 min on 2 cores, by load); default ~10-15 min")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto = cuda when available")
    ap.add_argument("--work", type=Path, default=Path("data/bench"),
                    help="raw demo release (cached) and the prepared data of this run")
    ap.add_argument("--threads", type=at_least(-1), default=None,
                    help="torch/OMP threads per process. Default: 1 on CPU (steady on a shared, oversubscribed "
                         "box, where more threads stall), torch's default on CUDA. -1 = the cores split between "
                         "a job's processes (for a dedicated machine); 0 = torch's default")
    ap.add_argument("--only", type=section_list, default=list(SECTIONS),
                    help=f"comma-separated sections to run, of {','.join(SECTIONS)} (training needs data, "
                         "or the prepared data a previous run left under --work)")
    args = ap.parse_args(argv)
    import torch

    require_cuda(ap, args.device)
    if "training" in args.only and "data" not in args.only and not (args.work / "prepared" / "meta.json").is_file():
        ap.error(f"--only training without data: {args.work / 'prepared'} holds no prepared data; "
                 "add the data section or give the --work of a run that had it")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if args.threads is None:
        args.threads = 1 if device == "cpu" else 0
    threads = threads_per_process(args.threads, 1, device)  # this process: the GSU op
    if threads > 0:
        torch.set_num_threads(threads)
    st = Settings.for_mode(args.quick)
    only = set(args.only)
    if "data" in only:
        check_work(ap, args.work)
    out = output_dir(ap, "--out", args.out).resolve()
    work = output_dir(ap, "--work", args.work).resolve()
    if "data" in only:
        (work / WORK_MARK).touch()
    started = time.perf_counter()
    results: Dict = {
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        "quick": args.quick, "device": device,
        "threads": ("a fair share of the cores (see each row)" if args.threads < 0 and device == "cpu"
                    else args.threads if args.threads > 0 else "torch's default"), "torch": torch.__version__,
        "host": {"node": platform.node(), "cpus": os.cpu_count(), "machine": platform.machine(),
                 "python": platform.python_version(),
                 "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None},
        "settings": asdict(st), "load_start": _load(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "sections": {},
    }
    if "data" in only:
        section(results, "data", lambda: run_data(work, st))
    if "training" in only:
        prepared = work / "prepared"
        section(results, "training", lambda: run_training(prepared, out, st, device, args.threads))
    if "gsu" in only:
        section(results, "gsu", lambda: run_gsu(st, device))
    if "ranker" in only:
        section(results, "ranker", lambda: run_ranker(out, args.quick, max(threads, 0)))
    if "plan" in only:
        section(results, "plan", lambda: run_plan(out))
    results["load_end"] = _load()
    results["wall_s"] = time.perf_counter() - started
    (out / "benchmarks.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "benchmarks.md").write_text(render(results))
    print(f"wrote {out / 'benchmarks.md'} and {out / 'benchmarks.json'} in {results['wall_s']:.0f} s")
    failed = [n for n, s in results["sections"].items() if "error" in s]
    if failed:
        print(f"failed sections: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

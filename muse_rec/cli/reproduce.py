"""`muse-rec reproduce OUT`: re-run the paper's tables and figures and write OUT/report.md + PNGs.

Default: the synthetic demo release, 3 seeds, Tables 5/3/1/2 and Figs. 5/6 (17 distinct
configurations, 51 trainings, ~20 min measured on the shared 2-core CPU box). ``--quick`` keeps every table
and figure but uses a smaller synthetic release (1,200 users, ~13k train impressions), 2 seeds
and Fig. 5 at N = 50, 200, 1000 only (15 configurations, 30 trainings). Finished runs are
skipped, so re-running the same command resumes. ``--prepared``/``--raw`` point at the real
Taobao-MM release: Table 5 then uses ``specs/taobao_mm_p90/``, the ablations get that profile's
training settings laid over them (docs/reproduce.md).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import List, Optional

from muse_rec.cli.errors import report
from muse_rec.cli.flags import int64, local_data_path, nonempty, nonempty_path
from muse_rec.json_files import read_json_object
from muse_rec.wording import count

HELP = "reproduce the paper's tables and figures (Tables 5/3/1/2, Figs. 5/6): train, then write OUT/report.md + PNGs"

QUICK_SEEDS = 2
QUICK_FIG5_LENGTHS = (50, 200, 1000)
QUICK_SYNTH_ARGS = ("--preset", "demo", "--users", "1200")
DEFAULT_SYNTH_ARGS = ("--preset", "demo")
WHAT_ALL = "table5,table3,table1,table2,fig5,fig6"
FUSION_PARALLEL = 2  # --what fusion: trainings at once by default (one per SCL quality; 2 cores)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", type=nonempty_path, help="output directory (runs, logs, report.md, PNGs); re-running resumes")
    p.add_argument("--quick", action="store_true",
                   help=f"smaller synthetic release (1,200 users), {QUICK_SEEDS} seeds, Fig. 5 at N="
                        f"{','.join(map(str, QUICK_FIG5_LENGTHS))}: a few minutes")
    p.add_argument("--seeds", type=int64, default=None, help=f"seeds per cell (default 3; --quick {QUICK_SEEDS})")
    p.add_argument("--what", default=WHAT_ALL,
                   help="comma-separated experiments: table5,table3,table1,table2,fig5,fig6 (default all); or 'fusion' "
                        "alone: GAUC of MUSE, SIM-soft and MUSE-fusion against SCL quality (docs/fusion.md)")
    p.add_argument("--scl-qualities", type=nonempty, default=None,
                   help="--what fusion: SCL qualities Q of the sweep (default 1,0.5,0.2,0)")
    p.add_argument("--parallel", type=int64, default=None,
                   help=f"--what fusion: trainings at once (one per quality; default {FUSION_PARALLEL})")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prepared", type=local_data_path, default=None,
                     help="prepared real Taobao-MM data (a local path or file:// URI; `muse-rec prepare --vocab p90`)")
    src.add_argument("--raw", type=local_data_path, default=None,
                     help="raw real Taobao-MM release (a local path or file:// URI): prepared into OUT/data/prepared "
                     "first")
    p.add_argument("--nproc", type=int64, default=None,
                   help="ranks per training job (default: the GPU count with CUDA, else 2: on the 2-core box 2 ranks x 1 "
                        "thread are ~4x faster than 1 process x 2 threads; --what fusion: 1, --parallel trainings "
                        "at once)")
    p.add_argument("--threads", type=int64, default=1, help="OMP threads per rank (default 1)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="default: cuda when available (--what fusion: cpu)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="spec override applied to every run (repeatable), e.g. train.batch_size=1000")
    p.add_argument("--report-only", action="store_true", help="train nothing; write the report from the finished runs")
    p.add_argument("--dry-run", action="store_true", help="print the plan (configurations and runs) and exit")
    p.add_argument("--min-z", type=float, default=2.0,
                   help="a claimed gap holds when it is at least this many standard errors (default 2)")


def _bad_arguments(args: argparse.Namespace) -> Optional[str]:
    """The one-line reason the flags that both paths share are unusable, else None."""
    import math

    from muse_rec.output_paths import REPRODUCE_MANIFEST, OutputPathError, check_output_path, local_output, output_exists

    from muse_rec.distributed import MAX_PLAN_RANKS

    # Every rank plans the sharding for all of them at its start: past plan's own bound that is minutes
    # and GBs per rank (and --nproc 1000000 was accepted, to fork that many processes).
    if args.nproc is not None and not 1 <= args.nproc <= MAX_PLAN_RANKS:
        return f"--nproc {args.nproc}: must be in 1..{MAX_PLAN_RANKS:,}"
    if args.threads < 1:
        return f"--threads {args.threads}: must be >= 1"
    if not (math.isfinite(args.min_z) and args.min_z >= 0):
        return f"--min-z {args.min_z}: must be a finite number >= 0"
    # OUT is reproduce's own (re-running resumes it, whatever it holds): one it did not start may
    # hold only its kinds of entries (finished runs under OUT/runs), or its plan and report files would
    # land among another command's (an export then fails its integrity check).
    try:
        started = output_exists(Path(local_output(args.out, "OUT")) / REPRODUCE_MANIFEST, "OUT", args.out)
        args.out = check_output_path(args.out, "OUT", replaces=None if started else _written_by_reproduce,
                                     own_marker=REPRODUCE_MANIFEST)
    except OutputPathError as e:
        return str(e)
    return None


def _nothing_to_report(args: argparse.Namespace) -> Optional[str]:
    """The one-line refusal of --report-only where OUT holds nothing an earlier reproduce wrote, else None.

    --report-only reads the runs an earlier reproduce left in OUT: a mistyped OUT was created and
    reported as "claims holding here: 0 of 19; missing runs: 51", exit 0, as if the user's runs were lost."""
    from muse_rec.output_paths import REPRODUCE_MANIFEST

    out = Path(args.out)
    if not args.report_only or (out / REPRODUCE_MANIFEST).exists() or _holds_reproduce_runs(out):
        return None
    return f"OUT {args.out}: no reproduce runs there (run without --report-only first)"


# What reproduce writes in OUT (runner.py, report.py, fusion.py): its runs, logs, data, plan, report,
# figures and, for --what fusion, one q<quality> directory per SCL quality.
_REPRODUCE_ENTRIES = ("runs", "logs", "data", "plan.json", "report.md", "report.json", "progress.jsonl",
                      "fusion_report.md")


def _is_quality_dir(name: str) -> bool:
    """``q<quality>``: the directory of one SCL quality of --what fusion (`reproduce.fusion.quality_dir`)."""
    return name.startswith("q") and name[1:].replace(".", "", 1).isdigit()


def _written_by_reproduce(name: str) -> bool:
    from muse_rec.dirlock import LOCK_FILE

    return (name in _REPRODUCE_ENTRIES or name == LOCK_FILE or name.endswith(".png") or _is_quality_dir(name))


def _holds_reproduce_runs(out: Path) -> bool:
    """Whether ``out`` (a directory or not there) holds runs a reproduce trained: its runs/ folder, or
    for --what fusion one of its q<quality> folders."""
    return out.is_dir() and any(c.is_dir() and (c.name == "runs" or _is_quality_dir(c.name)) for c in out.iterdir())


def run(args: argparse.Namespace) -> int:
    """The reproduction, holding OUT's lock (`muse_rec.dirlock`) unless it is a dry run, which writes
    nothing: two reproductions in one OUT trained the same runs at once, one of them then "FAILED"
    on the other's run directory lock, and each wrote its report over the other's."""
    bad = _bad_arguments(args)  # also makes args.out the local path
    if bad:
        print(f"muse-rec reproduce: {bad}", file=sys.stderr)
        return 2
    if args.dry_run:
        return _run(args)
    from muse_rec.dirlock import DirLock, DirLockError

    try:
        lock = DirLock.acquire(Path(args.out), holder="another reproduce", hint="wait for it to end or choose another OUT")
    except DirLockError as e:
        report("reproduce", e)
        return 2
    code: Optional[int] = None
    try:
        code = _run(args)
        return code
    finally:
        if code == 2:  # refused: OUT is left as it was found (a new OUT not created)
            lock.abandon()
        else:
            lock.release()


def _run(args: argparse.Namespace) -> int:
    from muse_rec.data.files import replace_text
    from muse_rec.reproduce.plan import FIG5_LENGTHS, REAL, SYNTHETIC, build_plan, parse_what
    from muse_rec.reproduce.report import write_report
    from muse_rec.reproduce.results import GroupTableError, load_metrics
    from muse_rec.reproduce.runner import (Execution, ReproduceError, check_manifest, check_overrides, check_prepared,
                                           check_raw, execute, prepare_data, vocab_warning)
    from muse_rec.spec import SpecError

    if "fusion" in [w.strip().lower() for w in args.what.split(",")]:
        return run_fusion(args)
    for flag, value in (("--scl-qualities", args.scl_qualities), ("--parallel", args.parallel)):
        if value is not None:  # silently ignored before
            print(f"muse-rec reproduce: {flag} applies to --what fusion only", file=sys.stderr)
            return 2
    started = time.perf_counter()
    out = Path(args.out)
    real = bool(args.prepared or args.raw)
    seeds = args.seeds if args.seeds is not None else (QUICK_SEEDS if args.quick else 3)
    lengths = QUICK_FIG5_LENGTHS if args.quick else FIG5_LENGTHS
    synth_args: List[str] = [] if real else list(QUICK_SYNTH_ARGS if args.quick else DEFAULT_SYNTH_ARGS)
    try:
        what = parse_what(args.what)
        prepared_hint = args.prepared or str(out / "data" / "prepared")
        plan = build_plan(what, seeds, lengths, REAL if real else SYNTHETIC, prepared=prepared_hint)
        check_overrides(out, prepared_hint, plan.runs, args.set)
        vocab_note = None
        if args.prepared:  # before torch's import (seconds) and before OUT records it; --report-only too, which
            # else recorded a file or a typo as OUT's data and exited 0
            vocab_note = vocab_warning(args.prepared, check_prepared(args.prepared))
            if vocab_note:
                print(f"muse-rec reproduce: warning: {vocab_note}", file=sys.stderr)
        if args.raw and not (out / "data" / "prepared" / "meta.json").exists():  # --report-only too, as --prepared
            check_raw(args.raw)  # as --prepared: before OUT records it (a prepared OUT reads no raw)
        if args.device == "cuda" and not (args.dry_run or args.report_only):
            from muse_rec.distributed.env import check_device

            check_device("cuda")  # else synth and prepare ran before every run failed on it
        if args.dry_run:  # what the real command would refuse, it refuses too (and records nothing)
            check_manifest(out, {"data": args.prepared or args.raw or "synthetic", "synth_args": synth_args},
                           record=False)
    except (ValueError, SpecError, ReproduceError) as e:
        report("reproduce", e)
        return 2
    if args.dry_run:
        print(json.dumps(plan.to_dict(), indent=2))
        return 0
    nothing = _nothing_to_report(args)  # after the checks of the data it names, which say more
    if nothing:
        print(f"muse-rec reproduce: {nothing}", file=sys.stderr)
        return 2
    device = args.device
    nproc = args.nproc
    if device is None or nproc is None:
        import torch

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        nproc = nproc or (max(1, torch.cuda.device_count()) if device == "cuda" else 2)
    source = args.prepared or args.raw or "synthetic"
    try:
        check_manifest(out, {"data": source, "synth_args": synth_args})
        replace_text(out / "plan.json", json.dumps(plan.to_dict(), indent=2) + "\n")  # names the file it cannot write
        log = None
        if not args.report_only:
            prepared = prepare_data(out, args.raw, args.prepared, synth_args)
            log = execute(plan, out, prepared, Execution(nproc=nproc, device=device, threads_per_rank=args.threads,
                                                         extra_overrides=tuple(args.set)))
        metrics = load_metrics(out, plan)
        context = _context(out, source, synth_args, args, nproc, device, plan, log, time.perf_counter() - started)
        if vocab_note:
            context.insert(1, f"WARNING: {vocab_note}")
    except (ReproduceError, ValueError, OSError) as e:  # OSError: the OS refused to write under OUT
        report("reproduce", e)
        return 2
    per_run = [(m.get("wall_seconds") or 0.0) + (m.get("eval_seconds") or 0.0) for runs in metrics.values() for m in runs.values()]
    if per_run:
        context.append(f"training + evaluation time summed over the {count(len(per_run), 'finished run')}: "
                       f"{sum(per_run) / 60:.1f} min (from metrics.json; excludes process start-up)")
    try:
        written = write_report(plan, metrics, out, context, min_z=args.min_z, synthetic=not real)
    # OSError: the OS refused a figure or the report (a full disk): named, the earlier ones whole.
    # GroupTableError: runs whose group tables Fig. 6 pairs hold other groups (the runs named).
    except (OSError, GroupTableError) as e:
        report("reproduce", e)
        return 2
    figures = ", ".join(p.name for p in written.figures.values())
    print(f"[reproduce] wrote {out / 'report.md'}" + (f" and {figures}" if figures else " (no figure: no finished runs)"))
    held = [v for vs in written.verdicts.values() for v in vs]
    print(f"[reproduce] claims holding here: {sum(v.holds for v in held)} of {len(held)}"
          + (f"; missing runs: {len(written.missing_runs)}" if written.missing_runs else ""))
    return 1 if written.missing_runs and not args.report_only else 0


def _context(out: Path, source: str, synth_args: List[str], args: argparse.Namespace, nproc: int, device: str,
             plan, log, seconds: float) -> List[str]:
    lines = []
    if source == "synthetic":
        lines.append(f"data: synthetic release `muse-rec synth {' '.join(synth_args)}` (planted semantics; see the end)")
        manifest = out / "data" / "raw" / "_synth_manifest.json"
        if manifest.exists():  # a FIFO there blocked the report forever; a directory or bad JSON was a traceback
            m = read_json_object(manifest, advice="; remove OUT/data/raw (with OUT/data/prepared) to synthesize it again")
            st, truth = m.get("stats", {}), m.get("truth", {}).get("test", {})
            lines.append(f"synthetic release: {st.get('train_samples', '?')} train / {st.get('test_samples', '?')} test "
                         f"impressions, {st.get('test_users', '?')} test users; ceiling test GAUC of the true click "
                         f"model {truth.get('gauc', float('nan')):.4f}")
    else:
        lines.append(f"data: real Taobao-MM from `{source}` (profile specs/taobao_mm_p90)")
    if args.quick:
        lines.append(f"--quick: smaller synthetic release (1,200 users), {len(plan.seeds)} seeds, Fig. 5 at "
                     f"N={','.join(map(str, plan.fig5_lengths))} only")
    lines.append(f"{len(plan.configs)} distinct configurations overall; this report needs {len(plan.runs)} runs "
                 f"({nproc} rank(s) on {device} each)")
    if log is not None:
        trained = sum(log.seconds.values())
        lines.append(f"this invocation: trained {count(len(log.seconds), 'run')} ({trained / 60:.1f} min inside "
                     "training calls), "
                     f"skipped {len(log.skipped)} finished, {len(log.failed)} failed; wall {seconds / 60:.1f} min "
                     "(shared machine: timings are noisy)")
    flags = [f"--{k.replace('_', '-')} {v}" for k in ("seeds", "what", "prepared", "raw", "nproc", "device")
             if (v := getattr(args, k)) is not None and not (k == "what" and v == WHAT_ALL)]
    # And what changes the runs and the verdicts: without them the command reran other runs or judged otherwise.
    flags += [f"--set {kv}" for kv in args.set] + [f"--min-z {args.min_z:g}"]
    cmd = " ".join(["muse-rec reproduce", str(out)] + (["--quick"] if args.quick else []) + flags)
    lines.append(f"command: `{cmd}`")
    return lines


def run_fusion(args: argparse.Namespace) -> int:
    """``--what fusion``: the SCL-quality sweep of MUSE, SIM-soft and MUSE-fusion (synthetic data only)."""
    from muse_rec.reproduce.fusion import DEFAULT_QUALITIES, FUSION_METHODS, fusion_plan, parse_qualities, \
        quality_dir, run_sweep, write_fusion_report
    from muse_rec.reproduce.runner import Execution, ReproduceError, check_manifest, check_overrides
    from muse_rec.spec import SpecError

    started = time.perf_counter()
    out = Path(args.out)
    if args.what.strip().lower() != "fusion":
        print(f"muse-rec reproduce: --what {args.what!r}: 'fusion' runs alone (its own data per SCL quality); "
              "run the paper's experiments in another OUT", file=sys.stderr)
        return 2
    if args.prepared or args.raw:
        print("muse-rec reproduce: --what fusion sweeps the synthetic release's SCL quality; --prepared/--raw do not apply",
              file=sys.stderr)
        return 2
    try:
        qualities = parse_qualities(args.scl_qualities) if args.scl_qualities else DEFAULT_QUALITIES
        seeds = args.seeds if args.seeds is not None else (QUICK_SEEDS if args.quick else 3)
        plans = {q: fusion_plan(q, seeds) for q in qualities}
        # As on the paper's path, before any data is made (and under --dry-run): a --set that a run's spec refuses,
        # or one of the keys reproduce sets per run, was found only after every quality's release was synthesised
        # and prepared, and --dry-run printed the plan with it.
        for q, plan in plans.items():
            qd = quality_dir(out, q)
            check_overrides(qd, str(qd / "data" / "prepared"), plan.runs, args.set)
    except (ValueError, SpecError, ReproduceError) as e:
        report("reproduce", e)
        return 2
    parallel = FUSION_PARALLEL if args.parallel is None else args.parallel
    if parallel < 1:
        print(f"muse-rec reproduce: --parallel {parallel}: must be >= 1", file=sys.stderr)
        return 2
    synth_args = list(QUICK_SYNTH_ARGS if args.quick else DEFAULT_SYNTH_ARGS)
    if args.dry_run:
        try:  # what the real sweep would refuse (`run_sweep`'s check), the dry run refuses too, recording nothing
            check_manifest(out, {"what": "fusion", "synth_args": synth_args}, record=False)
        except ReproduceError as e:
            report("reproduce", e)
            return 2
        print(json.dumps({f"{q:g}": p.to_dict() for q, p in plans.items()}, indent=2))
        return 0
    nothing = _nothing_to_report(args)
    if nothing:
        print(f"muse-rec reproduce: {nothing}", file=sys.stderr)
        return 2
    if args.device == "cuda" and not args.report_only:
        from muse_rec.distributed.env import DeviceError, check_device

        try:  # else every quality's release was synthesised and prepared before each of its runs failed on it
            check_device("cuda")
        except DeviceError as e:
            report("reproduce", e)
            return 2
    execution = Execution(nproc=args.nproc or 1, device=args.device or "cpu", threads_per_rank=args.threads,
                          extra_overrides=tuple(args.set))
    try:
        table = run_sweep(out, qualities, seeds, synth_args, execution, parallel=parallel,
                          train=not args.report_only)
    except (ReproduceError, ValueError, OSError) as e:  # OSError: the OS refused to write under OUT
        report("reproduce", e)
        return 2
    flags = (["--quick"] if args.quick else []) + [f"--seeds {seeds}", "--what fusion",
                                                   f"--scl-qualities {','.join(f'{q:g}' for q in qualities)}"]
    flags += [f"--set {kv}" for kv in args.set]
    context = [f"data: `muse-rec synth {' '.join(synth_args)} --scl-quality Q` per Q (same world and seed)",
               f"methods: {', '.join(f'{lb} (specs/demo/{st}.yaml)' for lb, st in FUSION_METHODS)}; "
               f"{execution.nproc} rank(s) per training, {parallel} at once",
               ("report written from the finished runs (--report-only)" if args.report_only else
                f"wall {(time.perf_counter() - started) / 60:.1f} min (shared machine: timings are noisy)"),
               f"command: `muse-rec reproduce {out} {' '.join(flags)}`"]
    try:
        path, fig, holds = write_fusion_report(out, table, qualities, context)
    except OSError as e:  # as for the paper's report: a figure or the report the OS refused, named
        report("reproduce", e)
        return 2
    print(f"[reproduce] wrote {path}" + (f" and {fig.name}" if fig else "")
          + f"; fusion criterion {'holds' if holds else 'does not hold'}")
    missing = sum(len(p.runs) for p in plans.values()) - sum(s.n for row in table.values() for s in row.values())
    return 1 if missing and not args.report_only else 0

"""Exported int8 program vs the float Ranker, side by side, at 1, 1,000 and 100,000 candidates.

    .venv/bin/python benchmarks/bench_export.py --out results/

Model: ``--spec`` (default the demo MUSE spec), random init, an item vocabulary of ``--items``
rows with a random int8 SCL table, one synthetic user with a history of ``--seq-len`` items.
Two scorers rank the same candidates for that user through the Ranker's batching
(`score_in_batches`, ``--max-batch`` candidates per forward):

* float: `FloatScorer` (the trained model's modules in eager mode; cached int8 SCL history);
* exported: `ExportedScorer` over the program `muse-rec export` writes (int8 ID tables, lossless
  int8 SCL table, `torch.export`), exported into a temporary directory first.

Each timed repetition runs float then exported (alternating which goes first) so both see the
same machine load; ``/proc/loadavg`` is recorded before and after. Reports the median per scorer
and the ratio exported / float. Writes ``bench_export.md`` / ``bench_export.json`` under ``--out``.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.args import at_least, int_list, output_dir, same_length  # noqa: E402
from muse_rec.data.batch import POOLED_FEATURES  # noqa: E402
from muse_rec.models.ctr_model import build_train_model  # noqa: E402
from muse_rec.serving.export import (MANIFEST_FORMAT, PROGRAM_FILE, _write_staged, export_program,  # noqa: E402
                                     takes_scl)
from muse_rec.serving.inference import InferenceModel  # noqa: E402
from muse_rec.serving.quantize import quantize_for_serving  # noqa: E402
from muse_rec.serving.ranker import ExportedScorer, FloatScorer, build_context, score_in_batches  # noqa: E402
from muse_rec.spec import SpecError, load_spec  # noqa: E402
SCL_DIM = 128


def loadavg() -> str:
    """The 1/5/15-minute load averages (the machine is shared: read the ratios, not the times)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def build(spec_path: Path, items: int, seq_len: int, seed: int):
    """(float model, int8 model) with the same random weights, and the int8 SCL table."""
    spec = load_spec(spec_path, [f"data.seq_len={seq_len}"])
    sizes: Dict[str, int] = {f: 1000 for f in POOLED_FEATURES}
    sizes.update(item=items, category=10_000)
    rng = np.random.default_rng(seed)
    scl = rng.integers(-127, 128, size=(items, SCL_DIM), dtype=np.int8)
    scl[0] = 0
    models = []
    for _ in range(2):
        torch.manual_seed(seed)
        m = build_train_model(spec.model, sizes, seq_len, device=torch.device("cpu")).model
        m.sparse_arch.load_scl_(scl)
        models.append(m.eval())
    return models[0], models[1], scl


def export_to(model, scl: np.ndarray, seq_len: int, max_candidates: int, out: Path) -> float:
    """Quantize + export ``model`` into ``out`` as `muse-rec export` does; returns the seconds taken."""
    t0 = time.perf_counter()
    inf = InferenceModel(model)
    quantize_for_serving(inf, scl, "int8")
    program = export_program(inf, seq_len, max_candidates)
    inputs = {"seq_scl": {}} if takes_scl(inf) else {}
    # Written as `muse-rec export` writes it (with its integrity manifest, which the loader requires);
    # the manifest holds what the ExportedScorer reads.
    _write_staged(out, program, {"format": MANIFEST_FORMAT, "program": PROGRAM_FILE, "seq_len": seq_len,
                                 "min_candidates": 1, "max_candidates": max_candidates, "vocab_sizes": {},
                                 "inputs": inputs}, t0)
    return time.perf_counter() - t0


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results", help="directory for bench_export.md / .json")
    ap.add_argument("--spec", default=str(REPO / "specs" / "demo" / "muse.yaml"))
    ap.add_argument("--candidates", type=int_list(1), default=[1, 1000, 100_000],
                    help="candidate counts (default 1,1000,100000)")
    ap.add_argument("--reps", type=int_list(1), default=[50, 15, 3],
                    help="timed repetitions per candidate count (default 50,15,3)")
    ap.add_argument("--seq-len", type=at_least(1), default=1000, help="history length L (fixed in the program)")
    # Row 0 is padding: the random history and candidates draw from rows 1 .. items-1.
    ap.add_argument("--items", type=at_least(2), default=200_000)
    ap.add_argument("--max-batch", type=at_least(1), default=1024,
                    help="candidates per forward (the Ranker's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=at_least(1), default=1)
    args = ap.parse_args(argv)
    counts, reps = args.candidates, args.reps
    same_length(ap, "--candidates", counts, "--reps", reps)
    out = output_dir(ap, "--out", Path(args.out))
    torch.set_num_threads(args.threads)

    try:
        float_model, int8_model, scl = build(Path(args.spec), args.items, args.seq_len, args.seed)
    except SpecError as e:  # a missing or invalid --spec: its loader's one line names the file and key
        ap.error(f"--spec: {e}")
    rng = np.random.default_rng(args.seed + 1)
    rows: List[dict] = []
    load_before = loadavg()
    with tempfile.TemporaryDirectory() as tmp:
        export_s = export_to(int8_model, scl, args.seq_len, args.max_batch, Path(tmp))
        scorers = {"float": FloatScorer(InferenceModel(float_model)), "exported": ExportedScorer(tmp)}
        hist = rng.integers(1, args.items, size=args.seq_len)
        cats_of = rng.integers(1, 10_000, size=args.items)
        ctx = {k: build_context(1, True, hist, cats_of[hist], np.ones(6, np.int64), scl, s, args.seq_len)
               for k, s in scorers.items()}
        for n, n_reps in zip(counts, reps):
            cand = torch.from_numpy(rng.integers(1, args.items, size=n))
            ccat = torch.from_numpy(cats_of[cand.numpy()])
            attrs = torch.ones(n, 2, dtype=torch.int64)
            times: Dict[str, List[float]] = {k: [] for k in scorers}
            outs = {}
            with torch.no_grad():
                for k, s in scorers.items():  # warm-up
                    outs[k] = score_in_batches(s, ctx[k], cand, ccat, attrs, args.max_batch)
                for r in range(n_reps):
                    order = list(scorers) if r % 2 == 0 else list(reversed(list(scorers)))
                    for k in order:
                        t0 = time.perf_counter()
                        score_in_batches(scorers[k], ctx[k], cand, ccat, attrs, args.max_batch)
                        times[k].append(time.perf_counter() - t0)
            f_ms, e_ms = (float(np.median(times[k])) * 1e3 for k in ("float", "exported"))
            rows.append({"candidates": n, "reps": n_reps, "float_ms": f_ms, "exported_ms": e_ms,
                         "ratio": e_ms / f_ms,
                         "max_abs_dp": float((outs["float"] - outs["exported"]).abs().max())})
            print(f"{n:>7,} candidates: float {f_ms:9.2f} ms, exported {e_ms:9.2f} ms, ratio {e_ms / f_ms:.2f}",
                  flush=True)
    load_after = loadavg()

    env = {"machine": platform.machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "spec": str(Path(args.spec).relative_to(REPO)) if Path(args.spec).is_relative_to(REPO) else args.spec,
           "seq_len": args.seq_len, "items": args.items, "max_batch": args.max_batch,
           "export_seconds": round(export_s, 1), "loadavg_before": load_before, "loadavg_after": load_after}
    (out / "bench_export.json").write_text(json.dumps({"env": env, "rows": rows}, indent=2))
    lines = ["# Exported int8 program vs float Ranker (one user, candidates in batches of "
             f"{args.max_batch})", "",
             f"torch {env['torch']}, {env['threads']} thread(s), {env['machine']}; {env['spec']} (random init); "
             f"L = {args.seq_len:,}; {args.items:,} items; export took {env['export_seconds']} s; "
             f"load average before {load_before}, after {load_after}.", "",
             "| candidates | float p50 (ms) | exported p50 (ms) | exported / float | max abs dp (int8) |",
             "|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['candidates']:,} | {r['float_ms']:.2f} | {r['exported_ms']:.2f} | {r['ratio']:.2f} | "
                     f"{r['max_abs_dp']:.1e} |")
    (out / "bench_export.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

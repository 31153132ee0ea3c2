"""Markdown rendering of `run_all`'s results: summary ratios first, then one table per section.

`render(results)` takes the dict `run_all` writes to ``benchmarks.json`` and returns the text of
``benchmarks.md``. Pure formatting plus the ratios (no measurement happens here), so it is
tested on hand-made results. Run as a script it renders a saved run again:

    .venv/bin/python benchmarks/report_md.py results/benchmarks.json [--out results/benchmarks.md]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

# The stated goal for MUSE on the 2-core demo box (batch 1000, L = 1000), end to end.
TARGET_SAMPLES_PER_S_PER_PROCESS = 2500.0
GiB = 1024**3


def _num(x: Optional[float], fmt: str = ",.0f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or not b else a / b


def _threads(row: Dict) -> str:
    return str(row.get("threads") or "default")


def _rx(r: Optional[float]) -> str:
    return "n/a" if r is None else f"{r:.2f}x"


def find(rows: List[Dict], kind: str, method: str, world_size: int, impl_prefix: str = "") -> Optional[Dict]:
    """The first training row of ``kind`` for (method, world size[, implementation prefix])."""
    for r in rows:
        if (r["kind"] == kind and r["method"] == method and r["world_size"] == world_size
                and r.get("impl", "").startswith(impl_prefix)):
            return r
    return None


def rate(row: Optional[Dict], key: str = "samples_per_s") -> Optional[float]:
    return None if row is None else row[key]


def ranker_rows(ranker: Dict) -> List[Dict]:
    """Rows of the ranker's JSON (``{"rows": [...]}`` per file) that carry p50/p99 figures."""
    if not ranker.get("available"):
        return []
    rows = [r for doc in ranker.get("json", {}).values() if isinstance(doc, dict)
            for r in doc.get("rows", []) if isinstance(r, dict)]
    return [r for r in rows if any("p50" in k or "p99" in k for k in r)]


def summary_lines(res: Dict) -> List[str]:
    """The headline ratios, one bullet each; absent inputs give 'n/a'."""
    sec = res["sections"]
    rows = sec.get("training", {}).get("rows", [])
    worlds = sorted({r["world_size"] for r in rows}) or [1]
    out = []
    for w in worlds:
        e2e = rate(find(rows, "end_to_end", "muse", w), "per_process")
        r = _ratio(e2e, TARGET_SAMPLES_PER_S_PER_PROCESS)
        verdict = "n/a" if r is None else ("met" if r >= 1 else "NOT met")
        out.append(f"- MUSE end to end, {w} process(es): **{_num(e2e)} samples/s per process** vs target "
                   f"{TARGET_SAMPLES_PER_S_PER_PROCESS:,.0f} -> {_rx(r)} ({verdict})")
    for w in worlds:
        tr = rate(find(rows, "model_step", "muse", w, "torchrec"))
        pl = rate(find(rows, "model_step", "muse", w, "plain"))
        out.append(f"- MUSE model step, {w} process(es): TorchRec {_num(tr)} vs plain PyTorch {_num(pl)} samples/s "
                   f"-> TorchRec / plain = **{_rx(_ratio(tr, pl))}**")
    if 1 in worlds and 2 in worlds:
        e1, e2 = rate(find(rows, "end_to_end", "muse", 1)), rate(find(rows, "end_to_end", "muse", 2))
        s1, s2 = rate(find(rows, "model_step", "muse", 1, "torchrec")), rate(find(rows, "model_step", "muse", 2, "torchrec"))
        out.append(f"- MUSE 2 processes / 1 process (all ranks' samples/s): end to end {_rx(_ratio(e2, e1))}, "
                   f"model step {_rx(_ratio(s2, s1))} (2.00x = linear)")
    e, s = rate(find(rows, "end_to_end", "muse", 1)), rate(find(rows, "model_step", "muse", 1, "torchrec"))
    out.append(f"- MUSE end to end / model step, 1 process: {_rx(_ratio(e, s))} (what loader, logging and the "
               "loop leave of the bare step)")
    loaders = sec.get("data", {}).get("loader", [])
    if loaders:
        lo = loaders[0]
        out.append(f"- loader ({lo['workers']} workers) / MUSE model step, 1 process: "
                   f"{_rx(_ratio(lo['steady_samples_per_s'], s))} (> 1: the loader keeps up)")
    for c in sec.get("gsu", {}).get("cases", []):
        if "of_roofline_cpu" in c:  # bench_gsu's roofline cases
            out.append(f"- GSU {c['shape']} B={c['B']} L={c['L']:,}: {c['of_roofline_cpu']:.0%} of the {c['bound_cpu']} "
                       f"roofline (CPU time; wall {c['of_roofline_wall']:.0%})")
    for row in ranker_rows(sec.get("ranker", {})):
        where = ", ".join(f"{k}={row[k]:,}" for k in ("L", "candidates") if k in row)
        if "p99_over_gemm_cpu" in row:
            out.append(f"- ranker ({where}): p50 / p99 {row['score_ms_p50']:.1f} / {row['score_ms_p99']:.1f} ms = "
                       f"{row['p50_over_gemm_wall']:.2f}x / {row['p99_over_gemm_wall']:.2f}x the bf16 GEMM of the same "
                       f"shape (CPU time: {row['p50_over_gemm_cpu']:.2f}x / {row['p99_over_gemm_cpu']:.2f}x)")
        else:
            lat = ", ".join(f"{k} {v:.1f}" for k, v in row.items() if ("p50" in k or "p99" in k) and isinstance(v, float))
            out.append(f"- ranker ({where}): {lat}")
            break
    plan = sec.get("plan", {})
    if plan.get("available"):
        worst = max(plan["ranks"], key=lambda r: r["hbm_bytes"])
        out.append(f"- full vocabulary on {len(plan['ranks'])} x {plan['setup']['hbm_gib']:g} GiB GPUs: largest rank "
                   f"{worst['hbm_bytes'] / GiB:.1f} GiB HBM (fits: {plan.get('fits')})")
    return out


def training_tables(tr: Dict) -> List[str]:
    rows = tr.get("rows", [])
    lines = [f"Batch {tr['batch_size']} per process, L = {tr['seq_len']}. samples/s = all ranks together.", "",
             f"**End to end** (`muse-rec train`; median of {tr['windows']} windows of {tr['window']} steps after "
             "a first window that includes FX tracing and pipeline fill):", "",
             "| method | processes | threads each | samples/s | per process | whole run incl. warm-up "
             "| model step samples/s | end to end / step | vs 1 process |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in (r for r in rows if r["kind"] == "end_to_end"):
        step = rate(find(rows, "model_step", r["method"], r["world_size"], "torchrec"))
        one = rate(find(rows, "end_to_end", r["method"], 1))
        lines.append(f"| {r['method']} | {r['world_size']} | {_threads(r)} | {_num(r['samples_per_s'])} | "
                     f"{_num(r['per_process'])} | "
                     f"{_num(r['whole_run_samples_per_s'])} | {_num(step)} | {_rx(_ratio(r['samples_per_s'], step))} | "
                     f"{_rx(_ratio(r['samples_per_s'], one))} |")
    lines += ["", f"**Model step** (forward + backward + optimizer on pre-built batches, no loader; median of "
              f"{tr['steps']} steps after {tr['warmup']} warm-up steps):", "",
              "| method | processes | threads each | implementation | step ms | samples/s | per process | vs plain MUSE |",
              "|---|---:|---:|---|---:|---:|---:|---:|"]
    for r in (r for r in rows if r["kind"] == "model_step"):
        plain = rate(find(rows, "model_step", "muse", r["world_size"], "plain"))
        vs = _rx(_ratio(r["samples_per_s"], plain)) if r["method"] == "muse" else ""
        lines.append(f"| {r['method']} | {r['world_size']} | {_threads(r)} | {r['impl']} | {r['step_ms_median']:.0f} | "
                     f"{_num(r['samples_per_s'])} | {_num(r['per_process'])} | {vs} |")
    for s in tr.get("skipped", []):
        lines.append(f"\nskipped: {s}")
    return lines


def plan_table(plan: Dict) -> List[str]:
    s = plan["setup"]
    lines = [f"`{plan['command']}` ({s['world_size']} x {s['device']}, {s['hbm_gib']:g} GiB HBM per rank); "
             f"fits: {plan['fits']}.", "",
             "| rank | weights GiB | optimizer state GiB | HBM GiB | DDR GiB | fits |", "|---:|---:|---:|---:|---:|---|"]
    for r in plan["ranks"]:
        lines.append(f"| {r['rank']} | {r['weight_bytes'] / GiB:.2f} | {r['optimizer_bytes'] / GiB:.2f} | "
                     f"{r['hbm_bytes'] / GiB:.2f} | {r['ddr_bytes'] / GiB:.2f} | {'yes' if r['fits'] else 'no'} |")
    return lines


def _strip_h1(md: str) -> str:
    return "\n".join(line for line in md.splitlines() if not line.startswith("# "))


def render(res: Dict) -> str:
    """``benchmarks.md`` text from `run_all`'s results dict."""
    h, sec = res["host"], res["sections"]
    gpu = f", GPU {h['gpu']}" if h.get("gpu") else ""
    out = ["# muse_rec benchmarks", "",
           f"`{res['command']}` on {h['node']} ({h['cpus']} CPUs, {h['machine']}{gpu}), device **{res['device']}**, "
           f"torch {res['torch']}, threads per process: {res['threads']}; started {res['started']}, "
           f"took {res['wall_s']:.0f} s.", "",
           f"Load average (1/5/15 min): start {res['load_start']}, end {res['load_end']}. The machine is shared: "
           "numbers are medians, and a load above the core count means other jobs competed for the cores.", "",
           "## Summary", ""] + summary_lines(res)
    titles = {"training": "Training throughput", "data": "Data pipeline (bench_data)", "gsu": "GSU op (bench_gsu)",
              "ranker": "Ranker latency (bench_ranker)", "plan": "Memory per rank at the full vocabulary (planner)"}
    for name in ("training", "data", "gsu", "ranker", "plan"):
        if name not in sec:
            continue
        s = sec[name]
        out += ["", f"## {titles[name]}", "", f"_{s['wall_s']:.0f} s; load after: {s['load_after']}_", ""]
        if "error" in s:
            out.append(f"**section failed**: `{s['error']}`")
        elif name == "training":
            out += training_tables(s)
        elif name in ("data", "gsu"):
            out.append(_strip_h1(s["markdown"]).strip())
            if s.get("note"):
                out.append(f"\nnote: {s['note']}")
        elif not s.get("available"):
            out.append(f"not available: {s['reason']}")
        elif name == "ranker":
            out += [f"`{s['command']}`", "", _strip_h1(s["markdown"]).strip()]
        else:
            out += plan_table(s)
    return "\n".join(out) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    """Print (or write to ``--out``) the Markdown of a saved ``benchmarks.json``; exit 2 on a bad file."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, help="a benchmarks.json written by run_all.py")
    ap.add_argument("--out", type=Path, default=None, help="write the Markdown here instead of printing it")
    args = ap.parse_args(argv)
    try:
        res = json.loads(args.results.read_text(encoding="utf-8"))
        text = render(res)
    except OSError as e:
        ap.error(f"{args.results}: cannot read ({e.strerror})")
    except ValueError as e:  # not JSON (json.JSONDecodeError is a ValueError)
        ap.error(f"{args.results}: not JSON ({e})")
    except (KeyError, TypeError, AttributeError) as e:  # JSON, but not run_all's results
        ap.error(f"{args.results}: not a run_all.py benchmarks.json (no {e})")
    if args.out is None:
        print(text, end="")
    else:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`muse-rec compare RUN_DIR...`: the comparison table of finished runs, with seed-to-seed spread.

Runs of the same method with different seeds are grouped: the table shows the mean and the
standard deviation over seeds, so a gap between methods can be read against the noise.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Dict, List

HELP = "compare finished runs (metrics.json): mean and seed-to-seed spread per method, margin vs a baseline"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="run directories (each holding metrics.json)")
    p.add_argument("--baseline", default="DIN", help="method to measure margins against (default DIN)")
    p.add_argument("--out", default=None, help="also write the table (Markdown) and JSON next to this path")


def load_runs(paths: List[str]) -> List[Dict]:
    runs = []
    for p in paths:
        f = Path(p) / "metrics.json"
        if not f.exists():
            raise FileNotFoundError(f"{f}: no metrics.json (did the run finish? evaluate it with `muse-rec train --resume`)")
        runs.append(json.loads(f.read_text()))
    return runs


def summarise(runs: List[Dict], baseline: str) -> List[Dict]:
    """One row per method: seeds, mean and std (over seeds) of each metric, margin vs baseline."""
    by_method: Dict[str, List[Dict]] = {}
    for r in runs:
        by_method.setdefault(r["method"], []).append(r)
    rows = []
    for method, rs in by_method.items():
        row: Dict = {"method": method, "seeds": len(rs)}
        for k in ("gauc", "auc", "logloss", "train_samples_per_s", "wall_seconds"):
            vals = [r[k] for r in rs if r.get(k) is not None]
            if vals:
                row[k] = statistics.fmean(vals)
                if k in ("gauc", "auc", "logloss"):
                    row[f"{k}_std"] = statistics.stdev(vals) if len(vals) > 1 else None
        rows.append(row)
    base = next((r for r in rows if r["method"].lower() == baseline.lower()), None)
    for r in rows:
        if base is not None and "gauc" in r and "gauc" in base:
            r["gauc_vs_" + base["method"]] = r["gauc"] - base["gauc"]
    return rows


def run(args: argparse.Namespace) -> int:
    from muse_rec.metrics import metrics_table, save_metrics_json

    try:
        runs = load_runs(args.runs)
    except FileNotFoundError as e:
        print(f"muse-rec compare: {e}", file=sys.stderr)
        return 2
    rows = summarise(runs, args.baseline)
    cols = [c for c in ["method", "seeds", "gauc", "gauc_std", "auc", "auc_std", "logloss",
                        "train_samples_per_s", "wall_seconds"] + [k for k in rows[0] if k.startswith("gauc_vs_")]
            if any(c in r for r in rows)]
    table = metrics_table(rows, cols, formats={"train_samples_per_s": ",.0f", "wall_seconds": ".1f"}
                          if "wall_seconds" in cols else {"train_samples_per_s": ",.0f"})
    print(table)
    base = next((r for r in rows if r["method"].lower() == args.baseline.lower()), None)
    verdicts = []
    for r in rows:
        if base is None or r is base or "gauc" not in r:
            continue
        stds = [s for s in (r.get("gauc_std"), base.get("gauc_std")) if s is not None]
        margin = r["gauc"] - base["gauc"]
        if stds:
            spread = max(stds)
            verdicts.append(f"{r['method']} - {base['method']}: {margin:+.4f} GAUC; seed-to-seed spread (std, "
                            f"{min(r['seeds'], base['seeds'])}+ seeds) {spread:.4f}; margin = {margin / max(spread, 1e-12):.1f} x spread")
        else:
            verdicts.append(f"{r['method']} - {base['method']}: {margin:+.4f} GAUC (one seed each: no spread measured)")
    for v in verdicts:
        print(v)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(table + "\n\n" + "\n".join(verdicts) + "\n")
        save_metrics_json(out.with_suffix(".json"), {"rows": rows, "verdicts": verdicts})
    return 0

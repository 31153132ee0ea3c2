"""The files a run leaves for people and tools: metrics.json (strict JSON), memory/rank<r>.json,
and the one-line summary the log ends with."""
from __future__ import annotations

import json
import math
import numbers
from pathlib import Path
from typing import Dict

import torch

from muse_rec.data.files import replace_text
from muse_rec.distributed.env import DistEnv
from muse_rec.distributed.plan_measure import kernel_tensor_bytes, status_bytes


def rank_memory(dmp: torch.nn.Module, env: DistEnv) -> Dict:
    """This rank's memory once sharded: the bytes FBGEMM's kernels hold (weights + fused-optimizer
    state, what `muse-rec plan` predicts per rank) and the process's RSS then."""
    return {"rank": env.rank, "world_size": env.world_size, "table_bytes": kernel_tensor_bytes(dmp),
            "rss_anon_bytes_after_shard": status_bytes("RssAnon"), "rss_bytes_after_shard": status_bytes("VmRSS")}


def write_rank_memory(run_dir: Path, env: DistEnv, memory: Dict) -> None:
    out = run_dir / "memory"
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"rank{env.rank}.json", memory)  # whole or not at all, as every file of a run


def summary_line(r: Dict) -> str:
    """The run's last log line (and `evaluate`'s): its metrics, with the users GAUC averaged over."""
    parts = [f"{k}={r[k]:.4f}" for k in ("gauc", "auc", "logloss") if k in r]
    if parts and "gauc" in r and r.get("gauc_users") is not None and r.get("users") is not None:
        # GAUC counts only the users with both a click and a non-click: at a 3% click rate that was 782 of
        # 2,600 users, a figure whose noise a reader cannot judge without the count (metrics.json alone had it).
        parts[0] += f" over {r['gauc_users']:,} of {r['users']:,} users (those with a click and a non-click)"
    if r.get("train_samples_per_s") is not None:
        parts.append(f"train {r['train_samples_per_s']:,.0f} samples/s")
    if r.get("samples_without_user"):
        parts.append(f"GAUC left out the {r['samples_without_user']:,} samples without a user id")
    return ", ".join(parts)


def training_figures(metrics_json: Path) -> Dict:
    """``train_samples_per_s`` and ``wall_seconds`` as an earlier process of the run recorded them
    in ``metrics_json``; None each where it did not, or the file is missing or not a valid run's
    metrics.json (they are only figures: their loss does not stop the run)."""
    from muse_rec.metrics.report import read_run_metrics  # checks each figure is a finite number or null

    try:
        prev = read_run_metrics(metrics_json)
    except (OSError, ValueError):
        prev = {}
    return {k: prev.get(k) for k in ("train_samples_per_s", "wall_seconds")}


def write_json(path: Path, obj: Dict) -> None:
    """Strict JSON (no NaN/Infinity): an undefined metric becomes null, with its reason beside it."""
    replace_text(path, json.dumps(finite_or_null(obj), indent=2, default=float, allow_nan=False))


def finite_or_null(obj: Dict) -> Dict:
    """Non-finite numbers -> None, and ``"<key>_undefined"`` says why: NaN is a metric undefined for
    this data (a single-class split's AUC), +-inf an unbounded value (the last bin's open upper edge)."""
    out: Dict = {}
    for k, v in obj.items():
        if _non_finite(v):
            out[k] = None
            out[f"{k}_undefined"] = (
                f"{v}: undefined for this data (e.g. AUC of a split with one class, or no samples)"
                if math.isnan(float(v)) else f"{v}: unbounded (e.g. the open upper edge of the last bin)")
        else:
            out[k] = _clean(v)
    return out


def _non_finite(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and not math.isfinite(float(v))


def _clean(v: object) -> object:
    if isinstance(v, dict):
        return finite_or_null(v)
    if isinstance(v, (list, tuple)):
        return [None if _non_finite(x) else _clean(x) for x in v]
    return v

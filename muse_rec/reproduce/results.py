"""Read finished runs (metrics.json) and reduce them to per-cell statistics over seeds.

A cell is a table row (a configuration) measured at several seeds: `Stats`
(`muse_rec.metrics.seeds`, shared with `muse-rec compare`) keeps the per-seed values, their mean and
sample standard deviation (the seed-to-seed spread). Fig. 6 needs the
gain of MUSE over DIN per sample group; it is computed per seed (MUSE seed k vs DIN seed k,
same data order, same initialisation seed) so that the spread covers training noise only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from muse_rec.metrics.report import check_group_tables, read_run_metrics
from muse_rec.metrics.seeds import Stats
from muse_rec.reproduce.plan import Plan

# config id -> seed -> the run's metrics.json
RunMetrics = Dict[str, Dict[int, Dict]]


def load_metrics(out: Path, plan: Plan) -> RunMetrics:
    """Every finished run of ``plan`` under ``out/runs``: ``{config: {seed: metrics}}``."""
    found: RunMetrics = {}
    # What each run scored -> the first run that scored it: a report's gaps compare GAUCs of one split of one
    # data set, as `muse-rec compare` does (a run directory copied from another OUT, or left from other data).
    scored: Dict[str, Dict[str, str]] = {"eval_split": {}, "data_fingerprint": {}}
    for run in plan.runs:
        path = out / "runs" / run.name / "metrics.json"
        if not path.exists():
            continue
        try:
            metrics = read_run_metrics(path)
            check_group_tables(metrics, str(path))  # Fig. 6 reads them; `compare` does not
        except ValueError as e:
            raise ValueError(f"{e}; delete the run directory to re-train it") from None
        if "gauc" not in metrics:
            raise ValueError(f"{path}: no 'gauc' key (was the run trained with train.eval_at_end=false?)")
        if metrics["gauc"] is None:  # the trainer's null for an undefined GAUC, its reason beside it
            why = metrics.get("gauc_undefined")
            raise ValueError(f"{path}: gauc: null{f' ({why})' if isinstance(why, str) else ''}: the run has no GAUC "
                             "to report; check the data it was scored on, then delete the run directory to re-train it")
        for key, first in scored.items():
            if isinstance(metrics.get(key), str):
                first.setdefault(metrics[key], run.name)
        found.setdefault(run.config.id, {})[run.seed] = metrics
    for key, first in scored.items():
        if len(first) > 1:
            shown = ", ".join(f"{name}: {value}" for value, name in first.items())
            raise ValueError(f"{out / 'runs'}: the runs were scored on different {key.replace('_', ' ')}s ({shown}); "
                             "a report compares the scores of one; delete the other runs' directories to re-train them")
    return found


def metric_stats(metrics: RunMetrics, config: str, key: str = "gauc") -> Stats:
    """``key`` (gauc, auc, logloss, ...) of ``config`` over its finished seeds."""
    return Stats.of({s: m.get(key) for s, m in metrics.get(config, {}).items()})


@dataclass
class GroupGain:
    """Relative GAUC gain (percent) of one model over another within one sample group."""

    group: str
    lo: float
    gauc_samples: int  # samples that count in the group's GAUC (first paired seed)
    base: Stats  # baseline GAUC per seed
    model: Stats  # model GAUC per seed
    gain_pct: Stats  # 100 * (model - base) / base per paired seed


class GroupTableError(ValueError):
    """A run lacks a group table the report reads, or two runs it pairs have other groups (bins); names the runs."""


def group_gains(metrics: RunMetrics, model: str, base: str, table: str) -> List[GroupGain]:
    """Per-group gains of ``model`` over ``base`` from their ``table`` (``by_seq_length`` or
    ``by_popularity``) at the seeds both finished; groups with no GAUC (empty) are dropped."""
    m_runs, b_runs = metrics.get(model, {}), metrics.get(base, {})
    seeds = sorted(set(m_runs) & set(b_runs))
    if not seeds:
        return []
    for cfg, runs in ((model, m_runs), (base, b_runs)):
        for s in seeds:
            if table not in runs[s]:
                raise GroupTableError(f"run {cfg}-s{s}: metrics.json has no {table!r} table (needed for Fig. 6)")
    first = m_runs[seeds[0]][table]
    named = f"{model}-s{seeds[0]}"
    out: List[GroupGain] = []
    for i, g in enumerate(first):
        mg = {s: _group_gauc(m_runs[s][table], i, g["group"], f"{model}-s{s}", named) for s in seeds}
        bg = {s: _group_gauc(b_runs[s][table], i, g["group"], f"{base}-s{s}", named) for s in seeds}
        gains = {s: 100.0 * (mg[s] - bg[s]) / bg[s] for s in seeds if _ok(mg[s]) and _ok(bg[s]) and bg[s] > 0}
        if not gains:
            continue
        out.append(GroupGain(g["group"], float(g.get("lo", i)), int(g.get("gauc_samples", g.get("samples", 0))),
                             Stats.of(bg), Stats.of(mg), Stats.of(gains)))
    return out


def _ok(x: Optional[float]) -> bool:
    return x is not None and not math.isnan(x)


def _group_gauc(table: Sequence[Dict], i: int, label: str, run: str, first: str) -> Optional[float]:
    if i >= len(table) or table[i].get("group") != label:
        raise GroupTableError(f"run {run}: group tables disagree with run {first}'s: expected group {label!r} at "
                              f"position {i}; were the runs evaluated with different bins? Delete the run directory "
                              "to re-train it")
    return table[i].get("gauc")

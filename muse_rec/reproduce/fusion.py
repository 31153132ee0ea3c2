"""`muse-rec reproduce OUT --what fusion`: GAUC of MUSE, SIM-soft and MUSE-fusion against SCL quality.

Beyond the paper (docs/fusion.md). One synthetic release per SCL quality Q (`muse-rec synth
--scl-quality Q`, the same world and seed: only the SCL table on disk differs), each method
trained at every seed on it. Layout::

    OUT/reproduce.json              what was asked; a re-run must agree
    OUT/q<Q>/data/raw, prepared     the release of quality Q and its prepared copy
    OUT/q<Q>/runs/<method>-s<seed>/ one training each (metrics.json = finished: skipped on re-run)
    OUT/q<Q>/logs/, progress.jsonl  as `muse_rec.reproduce.runner` writes them
    OUT/fusion_report.md, fusion.png

Each Q is one `runner.execute` job of ``nproc`` ranks; ``parallel`` of them run at once (the
runner's progress file lives per Q directory, so concurrent jobs do not read each other's events).

The acceptance criterion of the fusion (`criterion`): at every Q, fusion >= max(MUSE, SIM-soft)
- 1 standard error of the difference of the two means (`diff_se`: paired by seed when both ran the
same seeds, else the two means' errors combined), and strictly
better than each of them (by more than that standard error) at some Q.
"""
from __future__ import annotations

import math
import statistics
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from muse_rec.data.files import replace_text
from muse_rec.reproduce.plan import SPECS_DIR, SYNTHETIC, Config, Plan, Run, check_seeds
from muse_rec.reproduce.results import Stats, load_metrics, metric_stats
from muse_rec.reproduce.runner import Execution, Printer, check_manifest, execute, prepare_data, say_now

# (label, spec stem under specs/demo/): the two single-similarity methods and the fusion.
FUSION_METHODS: Tuple[Tuple[str, str], ...] = (("MUSE", "muse"), ("SIM-soft", "sim_soft"),
                                               ("MUSE-fusion", "muse_fusion"))
FUSION_LABEL = "MUSE-fusion"
DEFAULT_QUALITIES: Tuple[float, ...] = (1.0, 0.5, 0.2, 0.0)


def parse_qualities(text: str) -> Tuple[float, ...]:
    """``"1,0.5,0"`` -> ``(1.0, 0.5, 0.0)``; each in [0, 1], no repeats."""
    try:
        qs = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ValueError(f"--scl-qualities {text!r}: comma-separated numbers in [0, 1]") from None
    if not qs or any(not 0.0 <= q <= 1.0 for q in qs) or len(set(qs)) != len(qs):
        raise ValueError(f"--scl-qualities {text!r}: need distinct values in [0, 1]")
    return qs


def quality_dir(out: Path, q: float) -> Path:
    return out / f"q{q:g}"


def fusion_plan(q: float, seeds: int, specs_dir: Path = SPECS_DIR) -> Plan:
    """The runs at one quality: every method of `FUSION_METHODS` x seeds 0 .. seeds-1."""
    check_seeds(seeds)
    configs = {stem: Config(stem, str(specs_dir / "demo" / f"{stem}.yaml"), ()) for _, stem in FUSION_METHODS}
    for c in configs.values():
        if not Path(c.spec_path).exists():
            raise ValueError(f"{c.spec_path}: spec file of the fusion sweep is missing")
    runs = [Run(configs[stem], s) for _, stem in FUSION_METHODS for s in range(seeds)]
    cells = {("fusion", f"{label}@Q={q:g}"): stem for label, stem in FUSION_METHODS}
    return Plan(("fusion",), tuple(range(seeds)), (), SYNTHETIC, cells, configs, runs)


def run_sweep(out: Path, qualities: Sequence[float], seeds: int, synth_args: Sequence[str], execution: Execution,
              parallel: int = 2, train: bool = True, say: Printer = say_now) -> Dict[float, Dict[str, Stats]]:
    """Make the data, train every pending run (``parallel`` qualities at a time) and return
    ``{Q: {label: GAUC stats}}`` of the finished runs."""
    check_manifest(out, {"what": "fusion", "synth_args": list(synth_args)})
    plans = {q: fusion_plan(q, seeds) for q in qualities}

    def one(q: float) -> None:
        qd = quality_dir(out, q)
        tell = lambda m: say(m.replace("[reproduce]", f"[reproduce Q={q:g}]", 1))  # noqa: E731
        prepared = prepare_data(qd, None, None, [*synth_args, "--scl-quality", str(q)], say=tell)
        execute(plans[q], qd, prepared, execution, say=tell)

    if train:
        with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
            for f in [pool.submit(one, q) for q in qualities]:
                f.result()
    return collect(out, plans)


def collect(out: Path, plans: Dict[float, Plan]) -> Dict[float, Dict[str, Stats]]:
    """``{Q: {label: GAUC Stats}}`` from the finished runs' metrics.json."""
    table: Dict[float, Dict[str, Stats]] = {}
    for q, plan in plans.items():
        metrics = load_metrics(quality_dir(out, q), plan)
        table[q] = {label: metric_stats(metrics, stem) for label, stem in FUSION_METHODS}
    return table


def sem(s: Stats) -> Optional[float]:
    """Standard error of the mean over seeds (None with < 2 seeds)."""
    return None if s.std is None else s.std / math.sqrt(s.n)


def diff_se(a: Stats, b: Stats) -> float:
    """Standard error of ``mean(a) - mean(b)``.

    Paired by seed when both finished the same seeds (>= 2): runs at one seed share the release,
    the data order and the initialisation seed, so the gap is measured per seed and its spread
    is training noise only (as the Fig. 6 gains, `results.group_gains`). Otherwise unpaired,
    ``sqrt(se_a^2 + se_b^2)``.
    """
    if a.seeds == b.seeds and a.n >= 2:
        return statistics.stdev([x - y for x, y in zip(a.values, b.values)]) / math.sqrt(a.n)
    return math.sqrt((sem(a) or 0.0) ** 2 + (sem(b) or 0.0) ** 2)


@dataclass
class PointVerdict:
    """The criterion at one Q: fusion vs the best single-similarity method."""

    q: float
    best: str  # label of the better of MUSE / SIM-soft
    gap: float  # fusion - best (GAUC)
    se: float  # standard error of that difference
    not_worse: bool  # gap >= -se
    better_than: Tuple[str, ...]  # methods the fusion beats by more than one standard error
    sentence: str


def judge_point(q: float, stats: Dict[str, Stats]) -> Optional[PointVerdict]:
    """The verdict at one quality, or None while a method has no finished run."""
    fus = stats.get(FUSION_LABEL)
    others = [(label, stats.get(label)) for label, _ in FUSION_METHODS if label != FUSION_LABEL]
    if fus is None or fus.mean is None or any(s is None or s.mean is None for _, s in others):
        return None

    best_label, best = max(others, key=lambda kv: kv[1].mean)
    gap, se = fus.mean - best.mean, diff_se(fus, best)
    beats = tuple(label for label, s in others if fus.mean - s.mean > diff_se(fus, s))
    pair = ", ".join(f"{label} {st.mean:.4f}" for label, st in others)
    if se > 0:
        where = "above" if gap >= 0 else "below"
        sentence = (f"Q = {q:g}: {best_label} is the better single-similarity method ({pair}); the fusion "
                    f"({fus.mean:.4f}) is {abs(gap):.4f} {where} it ({gap / se:+.1f} standard errors)")
    else:
        sentence = f"Q = {q:g}: fusion {fus.mean:.4f} vs {pair} (one seed: no standard error)"
    if beats:
        sentence += f", better than {' and '.join(beats)} by more than one standard error"
    return PointVerdict(q, best_label, gap, se, gap >= -se, beats, sentence + ".")


def criterion(verdicts: Sequence[PointVerdict], qualities: Sequence[float]) -> Tuple[bool, str]:
    """The sweep's acceptance test and one line saying why it holds or not."""
    if len(verdicts) < len(qualities):
        return False, f"incomplete: {len(verdicts)} of {len(qualities)} qualities have every method finished"
    worse = [v.q for v in verdicts if not v.not_worse]
    beaten = {label for v in verdicts for label in v.better_than}
    need = {label for label, _ in FUSION_METHODS if label != FUSION_LABEL}
    if worse:
        return False, f"the fusion is more than one standard error below the best method at Q = {worse}"
    if beaten != need:
        return False, f"never better (by > 1 standard error) than {sorted(need - beaten)} at any Q"
    return True, ("at every Q the fusion is within one standard error of the best single-similarity "
                  "method or above it, and it beats each of MUSE and SIM-soft by more than one standard error somewhere")


def write_fusion_report(out: Path, table: Dict[float, Dict[str, Stats]], qualities: Sequence[float],
                        context: Sequence[str] = ()) -> Tuple[Path, Optional[Path], bool]:
    """``OUT/fusion_report.md`` (table, one sentence per Q, the criterion) and ``OUT/fusion.png``.

    Returns ``(report path, figure path or None, criterion holds)``.
    """
    from muse_rec.reproduce.plots import plot_fusion

    labels = [label for label, _ in FUSION_METHODS]
    lines = ["# Beyond the paper: ID + multimodal fusion against SCL quality", "",
             "GAUC on the test split, mean +- standard error over seeds (n = seeds finished); the gap's standard "
             "error is paired by seed (same release, data order and initialisation seed). "
             "Q = share of each written SCL vector that is cluster signal (`muse-rec synth --scl-quality Q`; "
             "the click model always uses the true vectors).", "",
             "| SCL quality Q | " + " | ".join(labels) + " | fusion - best (SE) |",
             "|---|" + "---|" * (len(labels) + 1)]
    verdicts: List[PointVerdict] = []
    for q in sorted(qualities, reverse=True):
        row = table.get(q, {})
        cells = []
        for label in labels:
            st = row.get(label)
            cells.append("-" if st is None or st.mean is None else
                         f"{st.mean:.4f} +- {sem(st) or 0.0:.4f} (n={st.n})")
        v = judge_point(q, row) if row else None
        if v is not None:
            verdicts.append(v)
        lines.append(f"| {q:g} | " + " | ".join(cells) + " | "
                     + ("-" if v is None else f"{v.gap:+.4f} ({v.se:.4f})") + " |")
    holds, why = criterion(verdicts, qualities)
    lines += ["", "## Per point", ""] + [f"- {v.sentence}" for v in verdicts]
    lines += ["", "## Criterion", "",
              "At every Q, fusion >= max(MUSE, SIM-soft) - 1 SE, and strictly better than each of them "
              "(by more than 1 SE) at some Q: **" + ("holds" if holds else "does not hold") + f"** ({why}).", ""]
    if context:
        lines += ["## Run", ""] + [f"- {c}" for c in context] + [""]
    fig = plot_fusion(qualities, table, labels, out / "fusion.png")
    if fig is not None:
        lines += [f"![GAUC against SCL quality]({fig.name})", ""]
    path = out / "fusion_report.md"
    replace_text(path, "\n".join(lines))  # whole or not at all, naming the file it cannot write
    return path, fig, holds

"""OUT/report.md: our numbers beside the paper's, one computed sentence per claim, the figures.

Everything in the report is computed from the runs' metrics.json files (see results.py) and the
published numbers (paper.py); nothing is typed in by hand except the standing caveats of
`SYNTHETIC_DEVIATIONS` / `COMMON_DEVIATIONS`, which say why synthetic numbers cannot match the paper's absolute values.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, FrozenSet, List, Optional, Sequence

from muse_rec.data.files import replace_texts
from muse_rec.reproduce import plots
from muse_rec.reproduce.claims import DEFAULT_MIN_Z, HOLDS, Verdict, compare_sentence, evaluate_claim
from muse_rec.reproduce.paper import FIG5_CLAIM, FIG6_CLAIMS, PAPER_TABLES, PaperTable
from muse_rec.metrics.floor_noise import errors_below, recorded_gap_errors
from muse_rec.metrics.floor_options import floor_standing, lacked, model_reads, sort_by_standing
from muse_rec.reproduce.plan import Config, Plan
from muse_rec.reproduce.results import GroupGain, RunMetrics, Stats, group_gains, metric_stats

# Groups with fewer GAUC samples than this are shown but not used for the Fig. 6 claims: a
# GAUC over a few dozen impressions swings by several points between seeds.
DEFAULT_MIN_GROUP_SAMPLES = 300

SYNTHETIC_DEVIATIONS = (
    "**Data.** Every number here comes from the synthetic release of `muse-rec synth`, whose clicks are planted "
    "as a logistic function of the cosine between the target's and the user's long-term-interest SCL vectors. "
    "Multimodal retrieval therefore sees the very signal that generates the labels, so gaps between multimodal and "
    "ID-only methods can be far larger than the paper's, and absolute GAUCs are not comparable with the paper's: "
    "compare orderings and the signs of gaps.",
    "**Scale.** Tens of thousands of training impressions (see the header) instead of 76M, one epoch; ID "
    "embeddings of rarely seen items barely train, which favours methods that lean on the frozen SCL vectors, and "
    "seed-to-seed noise is large, so small paper gaps (0.001-0.002 GAUC) cannot be resolved here.",
    "**Optimiser.** Embeddings train with exact row-wise Adagrad (lr 0.05), not the paper's Adam: at tens of "
    "steps the paper's sparse Adam 2e-3 moves an ID row too little (docs/accuracy.md, 'Which sparse optimizer the "
    "CPU specs use'; on CPU, where FBGEMM has no fused Adam, `adam` runs as a row-sparse Adam); "
    "dense layers with AdamW (lr 1e-3), batch 256 per rank x 2 ranks (the demo profile), not the paper's "
    "8 x 1000 with Adam/AdamW.",
)
COMMON_DEVIATIONS = (
    "**Tables 1-3 and Fig. 5/6** were measured by the paper on its production set (5k to 100K behaviours); here "
    "they run on the same data as Table 5 with sequences of at most 1000, and Fig. 5 limits the GSU to the newest "
    "N of them. MUSE.md records no per-row numbers for Tables 1-2: their paper column is empty and their claims "
    "are the paper's stated conclusion.",
    "**Which ESU sees the SCL vectors.** As MUSE.md specifies, SIM-hard and SIM-soft keep MUSE's ESU (SimTier + "
    "SA-TA over SCL cosines), so they inherit most of the multimodal signal and can land close to MUSE; TWIN "
    "(TA + SimTier over ID cosines) and MISS (ID-only ESU) read only trainable ID embeddings, which need far more "
    "data than a synthetic release offers, so on it they can land near (or below) DIN.",
    "**MISS** is approximated: its GSU counts co-occurrence with the target's item/category inside the user's "
    "own history (a batch carries no cross-user co-occurrence statistics), merged with the multimodal GSU.",
)


@dataclass
class Report:
    """What `write_report` produced: the markdown, every verdict by section, the figure paths."""

    markdown: str
    verdicts: Dict[str, List[Verdict]] = field(default_factory=dict)
    figures: Dict[str, Path] = field(default_factory=dict)
    missing_runs: List[str] = field(default_factory=list)


def _fmt(x: Optional[float], digits: int = 4, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _pm(s: Stats, digits: int = 4) -> str:
    if s.mean is None:
        return "missing"
    return f"{s.mean:.{digits}f} ± {s.std:.{digits}f}" if s.std is not None else f"{s.mean:.{digits}f} (1 seed)"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _claim_lines(verdicts: Sequence[Verdict]) -> str:
    return "\n".join(f"- {v.sentence}" for v in verdicts)


def run_floors(metrics: RunMetrics) -> Dict[str, Dict]:
    """Per configuration, the model-free floors its runs recorded (``train.check_floors``). Each run
    computes them at its own ``data.seq_len``, so configurations at other lengths (Fig. 5) have other
    floors. Configurations whose runs recorded none are left out."""
    out: Dict[str, Dict] = {}
    for cfg, by_seed in metrics.items():
        for m in by_seed.values():
            if m.get("floors") and any(f.get("gauc") is not None for f in m["floors"].values()):
                out[cfg] = m["floors"]
                break
    return out


def _best_floor(floors: Dict) -> tuple:
    name = max((k for k in floors if floors[k].get("gauc") is not None), key=lambda k: floors[k]["gauc"])
    return name, floors[name]


def _floor_rows(floors: Dict, ref: Stats, width: int) -> List[List[str]]:
    """Rows ``floor: ...`` for a paper table of ``width`` columns (GAUC, gap to the reference)."""
    rows = []
    for name, f in floors.items():
        gap = f["gauc"] - ref.mean if f.get("gauc") is not None and ref.mean is not None else None
        row = [f"floor: {f.get('description', name)}", "-", "-", f"{_fmt(f.get('gauc'))} (model-free)",
               _fmt(gap, sign=True), _fmt(f.get("auc")), _fmt(f.get("logloss"))]
        rows.append(row + ["-", "`muse-rec baselines`"][: width - len(row)])
    return rows


def floors_section(floors: Dict[str, Dict], plan: Plan, metrics: RunMetrics) -> str:
    """The floors (`run_floors`), and every configuration whose mean GAUC over seeds is below its own
    best one; one table per set of floors when configurations recorded different ones."""
    groups: Dict[str, List[str]] = {}
    for cfg in dict.fromkeys(r.config.id for r in plan.runs):
        if cfg in floors:
            groups.setdefault(json.dumps(floors[cfg], sort_keys=True), []).append(cfg)
    md = ["## Model-free floors", "",
          "Scores computed without training (`muse-rec baselines`, docs/metrics.md) on the same evaluation "
          "split, with the same exact metrics; logloss `-` where the score is not a probability."
          + (" Each run computes them at its own `data.seq_len`: one table per set of floors." if len(groups) > 1
             else ""), ""]
    for cfgs in groups.values():
        own = floors[cfgs[0]]
        name, best = _best_floor(own)
        if len(groups) > 1:
            md += [f"### The floors of {', '.join(f'`{c}`' for c in cfgs)}", ""]
        rows = [[f"`{k}`", f.get("description", k), _fmt(f.get("gauc")), _fmt(f.get("auc")), _fmt(f.get("logloss"))]
                for k, f in own.items()]
        means = {cfg: metric_stats(metrics, cfg).mean for cfg in cfgs}
        # A configuration below the best floor is listed with how many of its seeds' paired errors below it.
        errors = {cfg: recorded_gap_errors(list(metrics.get(cfg, {}).values()), own).get(name) for cfg in cfgs}
        doubted, blind = sort_by_standing(
            (f"`{cfg}` ({mean:.4f}{errors_below(mean, best['gauc'], errors[cfg])})",
             floor_standing(mean, name, best["gauc"], own, _reads(plan.configs[cfg])))
            for cfg, mean in means.items() if mean is not None)
        which = "Every configuration" if len(groups) == 1 else "Each of these"
        floor = f"{best.get('description', name)}, GAUC {best['gauc']:.4f}"
        verdict = []
        if doubted:
            verdict.append(f"**Below the best floor** ({floor}): {', '.join(cfg for cfg, _ in doubted)}. A score "
                           "without training ranks better than these: check their learning rates and number of steps.")
        for (lacks, seen_name), group in blind.items():
            lack, them, _ = lacked(lacks)
            seen = own[seen_name]
            verdict.append(f"Below the best floor ({floor}) only for want of {lack}: "
                           f"{', '.join(cfg for cfg, _ in group)}: they do "
                           f"not read {them}, and are above the best floor without {them} "
                           f"({seen.get('description', seen_name)}, GAUC {seen['gauc']:.4f}).")
        if not verdict:
            verdict.append(f"{which} is above the best floor ({floor}).")
        md += [_md_table(["floor", "what", "GAUC", "AUC", "logloss"], rows), "", " ".join(verdict), ""]
    return "\n".join(md)


def _reads(config: Config) -> Optional[FrozenSet[str]]:
    """What the configuration's model reads of the floors' inputs (`floor_options.model_reads`); None when its
    spec no longer loads (a report re-written after the spec files changed): such a row is held to the best
    floor."""
    from muse_rec.spec import load_spec

    try:
        return model_reads(load_spec(config.spec_path, list(config.overrides)).model)
    except (OSError, ValueError):  # SpecError is a ValueError
        return None


def table_section(table: PaperTable, plan: Plan, metrics: RunMetrics, out: Path,
                  min_z: float = DEFAULT_MIN_Z, floors: Optional[Dict[str, Dict]] = None) -> tuple:
    """Markdown of one paper table (+ the model-free floors as rows) + its verdicts + its figure."""
    stats = {r.label: metric_stats(metrics, plan.config_of(table.key, r.label)) for r in table.rows}
    paper = {r.label: r.paper_gauc for r in table.rows}
    ref, p_ref = stats[table.reference], paper[table.reference]
    rows = []
    for r in table.rows:
        cfg = plan.config_of(table.key, r.label)
        s = stats[r.label]
        ours_gap = s.mean - ref.mean if s.mean is not None and ref.mean is not None else None
        p_gap = r.paper_gauc - p_ref if r.paper_gauc is not None and p_ref is not None else None
        auc, ll = metric_stats(metrics, cfg, "auc"), metric_stats(metrics, cfg, "logloss")
        rows.append([r.label, _fmt(r.paper_gauc), _fmt(p_gap, sign=True), _pm(s), _fmt(ours_gap, sign=True),
                     _fmt(auc.mean), _fmt(ll.mean), str(s.n), f"`{cfg}`"])
    header = ["row", "paper GAUC", f"paper Δ vs {table.reference}", "our GAUC (mean ± std)",
              f"our Δ vs {table.reference}", "our AUC", "our logloss", "seeds", "runs"]
    own = (floors or {}).get(plan.config_of(table.key, table.reference))  # the reference row's (its seq_len)
    if own:
        rows += _floor_rows(own, ref, len(header))
    verdicts = [evaluate_claim(c, stats, paper, min_z) for c in table.claims]
    fig = plots.plot_table(table, stats, out / f"{table.key}.png")
    md = [f"## {table.title}", "", f"Paper: {table.paper_setting}.", "", _md_table(header, rows), ""]
    if fig is not None:
        md += [f"![{table.title}]({fig.name})", ""]
    md += ["Claims:", "", _claim_lines(verdicts), ""]
    return "\n".join(md), verdicts, fig


def fig5_section(plan: Plan, metrics: RunMetrics, out: Path, min_z: float = DEFAULT_MIN_Z) -> tuple:
    """GAUC of MUSE vs the GSU's sequence length, DIN for reference."""
    lengths = list(plan.fig5_lengths)
    muse = {n: metric_stats(metrics, plan.config_of("fig5", f"N={n}")) for n in lengths}
    din = metric_stats(metrics, plan.config_of("table5", "DIN"))
    short, long_ = min(lengths), max(lengths)
    rows = [[str(n), _pm(muse[n]),
             _fmt(muse[n].mean - muse[short].mean if muse[n].mean is not None and muse[short].mean is not None else None, sign=True),
             _fmt(muse[n].mean - din.mean if muse[n].mean is not None and din.mean is not None else None, sign=True),
             str(muse[n].n), f"`{plan.config_of('fig5', f'N={n}')}`"] for n in lengths]
    rows.append(["DIN (newest 50)", _pm(din), "", "", str(din.n), f"`{plan.config_of('table5', 'DIN')}`"])
    verdicts = [
        compare_sentence("beats", f"MUSE at N={long_}", f"MUSE at N={short}", muse[long_], muse[short], min_z=min_z),
        compare_sentence("beats", f"MUSE at N={long_}", "DIN", muse[long_], din, min_z=min_z),
    ]
    measured = [n for n in lengths if muse[n].mean is not None]
    steps = list(zip(measured, measured[1:]))
    rises = sum(1 for a, b in steps if muse[b].mean > muse[a].mean)  # type: ignore[operator]
    trend = (f"The mean GAUC rises at {rises} of the {len(steps)} steps "
             f"{' -> '.join(str(n) for n in measured)}" + (" (monotone)." if steps and rises == len(steps) else "."))
    fig = plots.plot_fig5(lengths, muse, din, out / "fig5.png")
    md = ["## Fig. 5: GAUC vs the sequence length the GSU searches", "", f"Paper: {FIG5_CLAIM}.", "",
          _md_table(["N", "MUSE GAUC (mean ± std)", f"Δ vs N={short}", "Δ vs DIN", "seeds", "runs"], rows), ""]
    if fig is not None:
        md += [f"![Fig. 5]({fig.name})", ""]
    md += ["Claims:", "", _claim_lines(verdicts), f"- {trend}", ""]
    return "\n".join(md), verdicts, fig


def _gain_rows(gains: Sequence[GroupGain]) -> List[List[str]]:
    return [[g.group, str(g.gauc_samples), _pm(g.base), _pm(g.model), _pm(g.gain_pct, 2)] for g in gains]


def fig6_section(plan: Plan, metrics: RunMetrics, out: Path, min_z: float = DEFAULT_MIN_Z,
                 min_group_samples: int = DEFAULT_MIN_GROUP_SAMPLES) -> tuple:
    """Relative gain of MUSE over DIN per sequence-length group and per popularity group."""
    muse, din = plan.config_of("table5", "MUSE"), plan.config_of("table5", "DIN")
    by_seq = group_gains(metrics, muse, din, "by_seq_length")
    by_pop = group_gains(metrics, muse, din, "by_popularity")
    verdicts: List[Verdict] = []
    for gains, what, claim in ((by_seq, "sequence length", FIG6_CLAIMS[0]), (by_pop, "popularity", FIG6_CLAIMS[1])):
        big = [g for g in gains if g.gauc_samples >= min_group_samples]
        if len(big) < 2:
            verdicts.append(Verdict("not measured", f"{claim}: not measured (fewer than 2 {what} groups with "
                                                     f">= {min_group_samples} GAUC samples)."))
            continue
        # Seq length: the longest group should gain more than the shortest. Popularity: the
        # least popular group more than the most popular one.
        first, last = (big[-1], big[0]) if what == "sequence length" else (big[0], big[-1])
        v = compare_sentence("beats", f"gain in {what} group {first.group}", f"gain in {last.group}",
                             first.gain_pct, last.gain_pct, unit=" pt", min_z=min_z, digits=2)
        top = max(big, key=lambda g: g.gain_pct.mean)  # type: ignore[arg-type,return-value]
        verdicts.append(Verdict(v.status, f"{claim}: {v.sentence} The largest mean gain is in group {top.group}.", v.gap,
                                v.by_sign))
    fig = plots.plot_fig6(by_seq, by_pop, out / "fig6.png")
    header = ["group", "GAUC samples", "DIN GAUC", "MUSE GAUC", "gain % (mean ± std)"]
    md = ["## Fig. 6: relative GAUC gain of MUSE over DIN by group", "",
          f"Per seed k: 100 x (GAUC(MUSE, k) - GAUC(DIN, k)) / GAUC(DIN, k) inside the group; mean ± std over seeds. "
          f"Claims use groups with >= {min_group_samples} GAUC samples.", "",
          "By the user's behaviour-sequence length:", "", _md_table(header, _gain_rows(by_seq)), "",
          "By target popularity (times the item is a train target):", "", _md_table(header, _gain_rows(by_pop)), ""]
    if fig is not None:
        md += [f"![Fig. 6]({fig.name})", ""]
    md += ["Claims:", "", _claim_lines(verdicts), ""]
    return "\n".join(md), verdicts, fig


def write_report(plan: Plan, metrics: RunMetrics, out: Path, context: Sequence[str] = (),
                 min_z: float = DEFAULT_MIN_Z, min_group_samples: int = DEFAULT_MIN_GROUP_SAMPLES,
                 synthetic: bool = True) -> Report:
    """Write ``out/report.md`` (+ PNGs) for the experiments ``plan.what``; returns its content.

    Args:
        context: lines for the report's header (data source, sizes, timing).
        min_z: a gap counts as shown when it is >= min_z standard errors (claims.py).
        min_group_samples: smallest group used by the Fig. 6 claims.
        synthetic: the runs trained on the synthetic release (adds its caveats to the report).
    """
    out.mkdir(parents=True, exist_ok=True)
    report = Report(markdown="")
    report.missing_runs = [r.name for r in plan.runs if r.seed not in metrics.get(r.config.id, {})]
    sections: List[str] = []
    floors = run_floors(metrics)
    for key in plan.what:
        if key in PAPER_TABLES:
            md, verdicts, fig = table_section(PAPER_TABLES[key], plan, metrics, out, min_z, floors)
        elif key == "fig5":
            md, verdicts, fig = fig5_section(plan, metrics, out, min_z)
        else:
            md, verdicts, fig = fig6_section(plan, metrics, out, min_z, min_group_samples)
        sections.append(md)
        report.verdicts[key] = verdicts
        if fig is not None:
            report.figures[key] = fig
    every = [v for vs in report.verdicts.values() for v in vs]
    held = sum(v.status == HOLDS for v in every)
    # A cell with one seed measures no noise: its claims were decided by the gap's sign, not the rule above.
    by_sign = sum(v.status == HOLDS and v.by_sign for v in every)
    head = ["# MUSE paper reproduction", ""] + [f"- {c}" for c in context] + [
        f"- seeds per cell: {len(plan.seeds)}; cells show mean ± sample std over seeds; a claim holds when its gap "
        f"is >= {min_z:g} standard errors of the gap in the paper's direction (with one seed in a cell, when its "
        f"sign is the paper's: no noise is measured)",
        f"- claims that hold here: **{held} of {len(every)}**" + (
            f" ({by_sign} of them on one seed: decided by the gap's sign alone)" if by_sign else ""),
        "",
        "Absolute GAUCs are not comparable with the paper's unless the runs used the real Taobao-MM data; "
        "orderings and gaps are (see *Where and why this differs from the paper* at the end).",
        "",
    ]
    if report.missing_runs:
        head += [f"**Missing runs** (failed or not yet trained; their cells are incomplete): "
                 f"{', '.join(report.missing_runs)}", ""]
    if floors:
        head += [floors_section(floors, plan, metrics)]
    failed = [v.sentence for v in every if v.status != HOLDS]
    deviations = (SYNTHETIC_DEVIATIONS if synthetic else ()) + COMMON_DEVIATIONS
    tail = ["## Where and why this differs from the paper", ""] + [f"- {d}" for d in deviations] + [""]
    tail += ["Claims that did not hold (or were within noise) here:", ""]
    tail += [f"- {s}" for s in failed] if failed else ["- none"]
    report.markdown = "\n".join(head + sections + tail) + "\n"
    # Both or neither (a full disk): never a new report.md beside the earlier report.json.
    replace_texts({out / "report.md": report.markdown, out / "report.json": json.dumps(
        {k: [{"status": v.status, "sentence": v.sentence, "gap": v.gap} for v in vs]
         for k, vs in report.verdicts.items()}, indent=2) + "\n"})
    return report

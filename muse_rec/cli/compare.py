"""`muse-rec compare RUN_DIR...`: the comparison table of finished runs, with seed-to-seed spread.

Runs of the same method and settings with different seeds are grouped: the table shows the mean
and the standard deviation over seeds, so a gap between methods can be read against the noise.
The settings are each run's spec.yaml (the resolved spec it trained with) without its seed and
the keys that do not change what is trained (`muse_rec.spec.training_settings`): runs of one
method that differ in more (another lr, another batch size) are separate rows, labelled by the
keys that differ; two runs with the same settings and seed (a copied run directory, a re-run)
are refused, as they would count as two seeds. The
model-free floors of the runs' data (`muse-rec baselines`) are rows of the same table, marked
``floor:``; methods below the best floor are named. Floors come from ``--floors FILE``, else
from the runs' metrics.json (a run records them when ``train.check_floors`` is on), else they
are computed for the runs' ``data.prepared`` and cached under ``--floors-cache``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from muse_rec.cli.compare_floors import floor_rows, floor_verdict, floors_of_runs, load_floors
from muse_rec.cli.compare_runs import RunFiles, load_runs, row_name, split_warnings
from muse_rec.cli.errors import report
from muse_rec.cli.flags import input_file, input_path, nonempty_path
from muse_rec.metrics.floor_noise import recorded_gap_errors
from muse_rec.metrics.seeds import Stats, pooled_std

HELP = "compare finished runs (metrics.json): mean and seed-to-seed spread per method and settings, margin vs a baseline"


DEFAULT_BASELINE = "DIN"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", type=input_path, nargs="+", help="run directories (each holding metrics.json)")
    p.add_argument("--baseline", default=None,
                   help=f"method to measure margins against (default {DEFAULT_BASELINE}, when a run has it)")
    # `_written_files`: "next to this path" read as a directory beside it, or as OUT itself, which is never written.
    p.add_argument("--out", type=nonempty_path, default=None, metavar="OUT",
                   help="also write the table and verdicts to OUT.md (Markdown) and the rows, verdicts and floors "
                        "to OUT.json; an extension of OUT is replaced (--out cmp/t.md writes cmp/t.md and cmp/t.json)")
    # One or the other: `--floors F --no-floors` showed none and never read F (a missing F passed unnoticed).
    floors = p.add_mutually_exclusive_group()
    floors.add_argument("--floors", type=input_file, default=None, metavar="FILE",
                        help="model-free floors to show (JSON of `muse-rec baselines --out`); default: the runs' own")
    floors.add_argument("--no-floors", action="store_true", help="do not show the model-free floors")
    p.add_argument("--floors-cache", type=nonempty_path, default=None, metavar="DIR",
                   help="where floors computed here are cached (default: <first run's parent>/.floors)")


def baseline_method(runs: List[Dict], asked: Optional[str]) -> str:
    """The method margins are measured against: ``asked`` (ValueError when no run has it), else the default."""
    if asked is None:
        return DEFAULT_BASELINE
    methods = sorted({r["method"] for r in runs})
    if asked.lower() not in {m.lower() for m in methods}:
        raise ValueError(f"--baseline {asked!r}: no run of that method (the runs': {', '.join(methods)})")
    return asked


def runs_of_row(runs: List[Dict], row: Dict) -> List[Dict]:
    """The runs of one table row: its method and setting."""
    return [r for r in runs if r["method"] == row["method"] and r.get("setting", "") == row.get("setting", "")]


def metric_stats(runs: List[Dict], row: Dict, key: str) -> Stats:
    """``key`` (gauc, auc, ...) over the seeds of one table row's runs (`runs_of_row`); a run whose value is
    undefined (null) adds no sample to it."""
    return Stats([r[key] for r in runs_of_row(runs, row) if r.get(key) is not None])


def _regime(runs: List[Dict], row: Dict) -> Optional[str]:
    """The training settings but the model's that every run of ``row`` shares (`load_runs`' ``regime``), or None.
    A row's ``setting`` label cannot say it: it names only the keys in which its own method's runs differ."""
    regimes = {r.get("regime") for r in runs_of_row(runs, row)}
    return regimes.pop() if len(regimes) == 1 else None


def baseline_row(runs: List[Dict], rows: List[Dict], baseline: str, row: Optional[Dict] = None) -> Optional[Dict]:
    """The row of method ``baseline`` that ``row``'s margin is taken against: the baseline's row trained at
    ``row``'s settings (the model's aside) where it has one, else its first row (so for the baseline's own rows,
    and for ``row`` None)."""
    bases = [r for r in rows if r["method"].lower() == baseline.lower()]
    if not bases:
        return None
    mine = None if row is None or row["method"].lower() == baseline.lower() else _regime(runs, row)
    if mine is not None:
        # MUSE at batch 256 beside DIN at 1000 and at 256 was measured against DIN at 1000: the margin mixed a
        # change of settings into the change of method (an outside check: +0.0666 against +0.0649 at one setting).
        same = next((b for b in bases if _regime(runs, b) == mine), None)
        if same is not None:
            return same
    return bases[0]


def summarise(runs: List[Dict], baseline: str,
              floors: Optional[Dict] = None) -> Tuple[List[Dict], List[Optional[Dict]]]:
    """One row per method and setting (`load_runs`): seeds, mean and sample std (over seeds,
    `muse_rec.metrics.seeds.Stats`) of each metric, margin vs baseline (`baseline_row`: its row trained at the
    same settings, else its first), and ``floor_gap_se`` (`floor_noise.recorded_gap_errors`) against ``floors``;
    and each row's baseline row (None without one), which the verdicts read the same margins against."""
    from muse_rec.metrics.report import METRICS

    rows = []
    for method, setting in dict.fromkeys((r["method"], r.get("setting", "")) for r in runs):
        row: Dict = {"method": method, **({"setting": setting} if setting else {})}
        mine = runs_of_row(runs, row)
        row["seeds"] = metric_stats(mine, row, "gauc").n  # seeds that measured the GAUC
        for k in METRICS:
            s = metric_stats(mine, row, k)
            if s.n:
                row[k] = s.mean
                if k in ("gauc", "auc", "logloss"):
                    row[f"{k}_std"] = s.std
        reads = {None if r.get("reads") is None else tuple(r["reads"]) for r in mine}
        if len(reads) == 1 and None not in reads:  # known for every run of the row (`floor_verdict`)
            row["reads"] = list(reads.pop())
        errors = recorded_gap_errors(mine, floors)
        if errors:
            row["floor_gap_se"] = errors
        rows.append(row)
    bases = [baseline_row(runs, rows, baseline, r) for r in rows]
    for r, base in zip(rows, bases):
        if base is not None and "gauc" in r and "gauc" in base:
            r["gauc_vs_" + base["method"]] = r["gauc"] - base["gauc"]
    return rows, bases


def gauc_users_line(runs: List[Dict]) -> Optional[str]:
    """How many users every GAUC of the table averages over (the runs' metrics.json ``gauc_users`` of
    ``users``), or None where no run recorded the counts. The runs scored one split of one data set
    (`load_runs`), so the counts agree; a range is shown if they do not."""
    def counts(key: str) -> List[int]:
        return [r[key] for r in runs if isinstance(r.get(key), int) and not isinstance(r.get(key), bool)]

    def span(xs: List[int]) -> str:
        return f"{min(xs):,}" if min(xs) == max(xs) else f"{min(xs):,}-{max(xs):,}"

    used, users = counts("gauc_users"), counts("users")
    if not used:
        return None
    of = f" of {span(users)}" if users else ""
    return f"GAUC averages over {span(used)}{of} users (those with a click and a non-click in the split)"


def _written_files(out: str) -> Tuple[Path, Path]:
    """The table (Markdown) and JSON files ``--out OUT`` writes, next to OUT."""
    return Path(out).with_suffix(".md"), Path(out).with_suffix(".json")


def run(args: argparse.Namespace) -> int:
    from muse_rec.data.files import replace_texts
    from muse_rec.output_paths import check_not_an_input, check_output_path
    from muse_rec.metrics import metrics_table
    from muse_rec.metrics.report import metrics_json_text

    try:
        if args.out:
            args.out = check_output_path(args.out, "--out", directory=False)
            for written in _written_files(args.out):
                # Each file it writes, not only OUT: a directory at OUT.json was found at the write, after the
                # .md had replaced an earlier one (one of each run, against "both or neither").
                check_output_path(str(written), "--out", directory=False)
                # A run's metrics.json too: a hand-written run has no run.json to mark its directory, and
                # --out RUN/metrics replaced the run's metrics with the table's.
                read = [str(Path(r) / "metrics.json") for r in args.runs]
                check_not_an_input(str(written), "--out", {"--floors": args.floors, **{f: f for f in read}})
        files_read: RunFiles = {}
        runs = load_runs(args.runs, files_read)
        if args.floors_cache and not (args.no_floors or args.floors):
            from muse_rec.metrics.floors import is_cache_file

            # An output directory like any other: it was created and written inside prepared data or a
            # run (artifacts nothing else may be written into), and a file there was a traceback.
            args.floors_cache = check_output_path(args.floors_cache, "--floors-cache", replaces=is_cache_file)
        baseline = baseline_method(runs, args.baseline)
        floors, source = (None, "--no-floors") if args.no_floors else (
            (load_floors(args.floors, args.runs, runs, files_read), args.floors) if args.floors else
            floors_of_runs(args.runs, runs, args.floors_cache, files_read))
    except (FileNotFoundError, ValueError) as e:  # OutputPathError is a ValueError
        report("compare", e)
        return 2
    for warning in split_warnings(args.runs, runs):
        print(f"muse-rec compare: WARNING: {warning}", file=sys.stderr)
    if floors is None and not args.no_floors:
        print(f"muse-rec compare: model-free floors not shown: {source}", file=sys.stderr)
    model_rows, bases = summarise(runs, baseline, floors)
    first = baseline_row(runs, model_rows, baseline)
    rows = model_rows + floor_rows(floors, first) if floors else model_rows
    # Every metric with its spread over seeds: the logloss column had none, though summarise measures it (the
    # JSON held logloss_std), and a logloss gap could not be read against the noise.
    cols = [c for c in ["method", "setting", "seeds", "gauc", "gauc_std", "auc", "auc_std", "logloss", "logloss_std",
                        "train_samples_per_s", "wall_seconds"] + [k for k in rows[0] if k.startswith("gauc_vs_")]
            if any(c in r for r in rows)]
    formats = {c: f for c, f in (("train_samples_per_s", ",.0f"), ("wall_seconds", ".1f")) if c in cols}
    table = metrics_table(rows, cols, formats=formats)  # `muse-rec evaluate`'s metrics.json has neither
    print(table)
    verdicts = []
    # At a low click rate few users have both labels (782 of 2,600 on an outside check at 3%): the margins
    # below are read against that many users, and neither the table nor the verdicts said how many.
    users_line = gauc_users_line(runs)
    if users_line is not None:
        verdicts.append(users_line)
    if first is not None and "gauc" not in first:  # every run of it has an undefined GAUC: no margin to measure
        verdicts.append(f"{row_name(first)}: no run has a GAUC (undefined on its split), so no margin against it")
        first = None
    for r, base in zip(model_rows, bases):
        if first is None or base is None or r is base or "gauc" not in r or "gauc" not in base:
            continue
        measured = [x for x in (r, base) if x.get("gauc_std") is not None]
        margin = r["gauc"] - base["gauc"]
        # The spread `muse-rec reproduce` reads its gaps against, of the same runs (it was the larger of
        # the two rows' stds here: one set of runs showed two spreads, and two margin-to-spread ratios).
        spread = pooled_std(metric_stats(runs, r, "gauc"), metric_stats(runs, base, "gauc"))
        if spread is not None:
            whose = (f"pooled std, {r['seeds']} and {base['seeds']} seeds" if len(measured) == 2 else
                     f"std, {row_name(measured[0])}'s, {measured[0]['seeds']} seeds; the other has one")
            # Seeds with equal GAUCs (a model that scores every sample alike reaches 0.5 at every seed) have
            # no spread to divide by: the ratio was margin / 1e-12, "50000000000.0 x spread".
            ratio = (f"margin = {margin / spread:.1f} x spread" if spread > 0 else
                     "no margin-to-spread ratio (the seeds' GAUCs are equal)")
            verdicts.append(f"{row_name(r)} - {row_name(base)}: {margin:+.4f} GAUC; seed-to-seed spread ({whose}) "
                            f"{spread:.4f}; {ratio}")
        else:
            verdicts.append(f"{row_name(r)} - {row_name(base)}: {margin:+.4f} GAUC (one seed each: no spread measured)")
    if floors:
        verdicts.append(floor_verdict(model_rows, floors) + f" (floors {source})")
    for v in verdicts:
        print(v)
    if args.out:
        out = Path(args.out)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            # Both or neither: a failed write leaves the earlier pair, never one of each run.
            markdown, as_json = _written_files(args.out)
            replace_texts({markdown: table + "\n\n" + "\n".join(verdicts) + "\n",
                           as_json: metrics_json_text({"rows": rows, "verdicts": verdicts, "floors": floors})})
        except OSError as e:
            return report("compare", e, f"--out {args.out}: cannot write: ")
    return 0

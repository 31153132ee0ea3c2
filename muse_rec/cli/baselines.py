"""`muse-rec baselines PREPARED [--split test]`: the model-free floors of a prepared data set.

Prints one row per floor (GAUC, AUC, logloss; see `muse_rec.metrics.floors`) and, with
``--out``, writes the same as strict JSON. Exit 2 with one line on bad input (not a prepared
directory, unknown split, a split where GAUC is undefined); floors that cannot be computed on
this data (no SCL vectors) are skipped with a warning, the others still reported.
"""
from __future__ import annotations

import argparse
import sys
from typing import Dict

from muse_rec.cli.errors import report
from muse_rec.cli.flags import int64, local_data_path, nonempty_path
from muse_rec.wording import count

HELP = ("model-free floors (popularity, share of the history in the target's category, SCL cosines, top-K similarity, "
        "logistic regression) with exact GAUC/AUC/logloss")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from muse_rec.metrics.floor_options import FloorOptions

    d = FloorOptions()
    p.add_argument("prepared", type=local_data_path, help="output directory of `muse-rec prepare` (a local path or file:// URI)")
    p.add_argument("--split", default="test", help="split to score (default test)")
    p.add_argument("--train-split", default="train", help="split the popularity and regression learn from")
    p.add_argument("--seq-len", type=int64, default=d.seq_len,
                   help="newest behaviours per user the history floors see; 0 = whole history (default); "
                        "a run's own check uses its data.seq_len")
    p.add_argument("--top-k", type=int64, default=d.top_k, help=f"K of the mean top-K similarity (default {d.top_k})")
    p.add_argument("--recent", type=int64, default=d.recent,
                   help=f"window of the recent-mean cosine (default {d.recent})")
    p.add_argument("--prior-strength", type=float, default=d.prior_strength,
                   help=f"pseudo-impressions of the popularity smoothing (default {d.prior_strength:g})")
    p.add_argument("--lr-train-samples", type=int64, default=d.lr_train_samples,
                   help=f"train samples the logistic regression is fitted on (default {d.lr_train_samples:,})")
    p.add_argument("--out", type=nonempty_path, default=None, help="also write the floors as JSON to this file")


def floors_table(result: Dict) -> str:
    """The floors of `compute_floors` as a Markdown table (best floor marked)."""
    from muse_rec.metrics import metrics_table

    rows = [{"floor": name + (" (best)" if name == result["best"]["name"] else ""), "what": f["description"],
             "gauc": f["gauc"], "auc": f["auc"], "logloss": f["logloss"]} for name, f in result["floors"].items()]
    return metrics_table(rows, ["floor", "what", "gauc", "auc", "logloss"])


def _without_user(samples: int) -> str:
    """The clause of the summary line naming the samples without a user id GAUC left out ('' for none)."""
    return f"; {count(samples, 'sample')} without a user id in no user" if samples else ""


def run(args: argparse.Namespace) -> int:
    from muse_rec.data.prepared import PreparedData, PreparedDataError
    from muse_rec.metrics.floor_options import FloorOptions, FloorsError
    from muse_rec.metrics.report import save_metrics_json
    from muse_rec.output_paths import OutputPathError, check_output_path

    opts = FloorOptions(seq_len=args.seq_len, recent=args.recent, top_k=args.top_k,
                        prior_strength=args.prior_strength, lr_train_samples=args.lr_train_samples)
    try:
        # The options, --out and the data's layout first: the scoring code imports torch (seconds).
        # Named as the flag that set it (--top-k, --prior-strength, ...); the options no flag sets keep defaults.
        opts.check(name=lambda key: "--" + key.replace("_", "-"))
        if args.out:
            args.out = check_output_path(args.out, "--out", directory=False)
        data = PreparedData(args.prepared)
        for split, flag in ((args.split, "--split"), (args.train_split, "--train-split")):
            data.require_split(split, flag)
        from muse_rec.metrics.floors import compute_floors

        result = compute_floors(data, args.split, opts, args.train_split,
                                say=lambda line: print(line, file=sys.stderr, flush=True))
    except (PreparedDataError, FloorsError, FileNotFoundError, OutputPathError) as e:
        report("baselines", e)
        return 2
    for name, why in result["skipped"].items():
        print(f"muse-rec baselines: WARNING: floor {name} skipped: {why}", file=sys.stderr)
    if args.split == args.train_split:  # the item CTRs include each scored sample's own label
        # The regression scores with the same in-sample CTR (its fit alone is leave-one-out): on an outside check's
        # train split at a 3% click rate it read 0.833 GAUC against 0.670 on test, and the warning named popularity only.
        print(f"muse-rec baselines: WARNING: --split and --train-split are both {args.split!r}: the popularity floor, "
              "and the logistic regression that reads it, count each scored sample's own click (in-sample), so they "
              "read higher than any model can score honestly; fit on another split for floors to compare models with",
              file=sys.stderr)
    print(f"{result['prepared']}, split {result['split']}: {count(result['samples'], 'sample')}, "
          f"{count(result['users'], 'user')} (GAUC over the {count(result['gauc_users'], 'user')} with both labels"
          f"{_without_user(result.get('samples_without_user', 0))}), "
          f"train CTR {result['prior_ctr']:.4f}, "
          f"{100 * result['targets_with_scl']:.1f}% of targets have an SCL vector")
    print(floors_table(result))
    print("logloss '-': the score is a similarity or a share, not a probability (only popularity and the regression "
          "are).")
    missing = 1.0 - result["targets_with_scl"]
    if missing > 0 and "cos_mean_history" in result["floors"]:
        # Said because it can dominate: where targets without a vector are the popular ones, the cosine
        # floors fall below 0.5 on data whose vectors do carry signal (the regression sees popularity too).
        from muse_rec.modules.selection import NO_VECTOR_SCORE

        print(f"the cosine floors rank the {100 * missing:.1f}% of targets without an SCL vector below every target "
              f"with one (score {NO_VECTOR_SCORE}, the GSU's rule for behaviours without a vector)")
    unknown = 1.0 - result.get("targets_with_category", 1.0)
    if unknown > 0 and "category_share" in result["floors"]:
        from muse_rec.metrics.floor_scores import NO_CATEGORY_SCORE

        print(f"the category floor ranks the {100 * unknown:.1f}% of targets of unknown category below every target "
              f"of a known one (score {NO_CATEGORY_SCORE:g}, SIM-hard's rule: an unknown category matches nothing)")
    if args.out:
        try:
            print(f"wrote {save_metrics_json(args.out, result)}")
        except OSError as e:
            return report("baselines", e, f"--out {args.out}: cannot write: ")
    return 0

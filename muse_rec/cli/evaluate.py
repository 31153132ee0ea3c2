"""`muse-rec evaluate --spec FILE [--checkpoint DIR] --out DIR`: metrics of a checkpoint.

Works at any world size (launch several ranks with torchrun / TorchX): the checkpoint is
resharded on load and the metrics are exact over the whole split.
"""
from __future__ import annotations

import argparse
import sys

HELP = "evaluate a checkpoint (exact GAUC / AUC / logloss, grouped GAUC, predictions) at any world size"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", required=True, help="the spec the checkpoint was trained with")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a spec key (repeatable)")
    p.add_argument("--checkpoint", default=None, help="checkpoint directory (default: the run's latest)")
    p.add_argument("--out", required=True, help="where metrics.json and predictions.parquet go")
    p.add_argument("--max-batches", type=int, default=0, help="per rank; 0 = the whole split")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)


def run(args: argparse.Namespace) -> int:
    from muse_rec.spec import SpecError, load_spec
    from muse_rec.training.trainer import RunError, evaluate_checkpoint

    try:
        spec = load_spec(args.spec, args.set)
        evaluate_checkpoint(spec, args.checkpoint, args.out, device_type=args.device, max_batches=args.max_batches)
    except (SpecError, RunError) as e:
        print(f"muse-rec evaluate: {e}", file=sys.stderr)
        return 2
    return 0

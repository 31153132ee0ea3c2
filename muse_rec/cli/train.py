"""`muse-rec train --spec FILE`: train and evaluate one spec on this process's rank.

Launch several ranks through TorchX (`torchx run components/train.py:train`) or torchrun; a
plain call is a one-rank job.
"""
from __future__ import annotations

import argparse
import sys

HELP = "train and evaluate a spec (one rank; launch many with torchx run components/train.py:train)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", required=True, help="spec file, e.g. specs/demo/muse.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec key, e.g. --set train.max_steps=20 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")


def run(args: argparse.Namespace) -> int:
    from muse_rec.spec import SpecError, load_spec
    from muse_rec.training.trainer import RunError, train

    try:
        spec = load_spec(args.spec, args.set)
        train(spec, resume=args.resume, device_type=args.device)
    except (SpecError, RunError) as e:
        print(f"muse-rec train: {e}", file=sys.stderr)
        return 2
    return 0

"""`muse-rec train --spec FILE`: train and evaluate one spec on this process's rank.

Launch several ranks through TorchX (`torchx run components/train.py:train`) or torchrun; a
plain call is a one-rank job. The run directory belongs to one run: a fresh run into a used
one is refused (exit 2) unless ``--resume`` (continue it) or ``--overwrite`` (move it aside).
"""
from __future__ import annotations

import argparse

from muse_rec.cli.flags import input_file

HELP = "train and evaluate a spec (one rank; launch many with torchx run components/train.py:train)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", type=input_file, required=True, help="spec file, e.g. specs/demo/muse.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec key, e.g. --set train.max_steps=20 (repeatable)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")
    how.add_argument("--overwrite", action="store_true",
                     help="the run directory holds an earlier run: move it to <dir>.old-<time> and start fresh")
    p.add_argument("--allow-data-mismatch", action="store_true",
                   help="--resume even though the checkpoint was trained on other prepared data")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")


def run(args: argparse.Namespace) -> int:
    from muse_rec.cli.errors import report
    from muse_rec.spec import SpecError, load_spec

    from muse_rec.training.run_dir import RunDirError, check_spec_names_its_run

    try:
        spec = load_spec(args.spec, args.set)  # before torch's and TorchRec's imports (seconds): a typo fails at once
        check_spec_names_its_run(args.spec, spec.run_dir)
    except (SpecError, RunDirError) as e:
        return report("train", e)
    from muse_rec.cli.errors import bad_input_errors
    from muse_rec.data.files import OutputWriteError
    from muse_rec.training.trainer import train

    try:
        train(spec, resume=args.resume, device_type=args.device, overwrite=args.overwrite,
              allow_data_mismatch=args.allow_data_mismatch)
    except bad_input_errors() + (OutputWriteError,) as e:  # the OS refused to write the run record (a full disk)
        return report("train", e)
    return 0

"""`muse-rec evaluate --spec FILE [--checkpoint DIR] --out DIR`: metrics of a checkpoint.

Works at any world size (launch several ranks with torchrun / TorchX): the checkpoint is
resharded on load and the metrics are exact over the whole split. The checkpoint is checked
against its SHA-256 manifest before anything in it is unpickled (README "Trust model").
"""
from __future__ import annotations

import argparse
from pathlib import Path

from muse_rec.cli.flags import input_file, input_path, int64, nonempty_path

HELP = "evaluate a checkpoint (exact GAUC / AUC / logloss, grouped GAUC, predictions) at any world size"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", type=input_file, required=True, help="the spec the checkpoint was trained with")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a spec key (repeatable)")
    p.add_argument("--checkpoint", type=input_path, default=None,
                   help="checkpoint directory (default: the run's latest)")
    p.add_argument("--out", type=nonempty_path, required=True,
                   help="where metrics.json and predictions.parquet go: a new or empty "
                   "directory, or an earlier evaluation's (replaced)")
    p.add_argument("--max-batches", type=int64, default=0, help="per rank; 0 = the whole split")
    p.add_argument("--expect-sha256", default=None, metavar="DIGEST",
                   help="refuse the checkpoint unless its SHA-256 digest (logged when it was saved) is this")
    p.add_argument("--allow-data-mismatch", action="store_true",
                   help="evaluate even though the checkpoint was trained on other prepared data")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)


# What an evaluation writes into --out: an --out holding only these (the lock an evaluation holds
# while it writes, and metrics.json's temporary file, left by an evaluation killed while writing it)
# is an earlier evaluation, replaced; anything else (a run directory, say) is refused.
EVALUATION_FILES = ("metrics.json", "predictions.parquet")


def _is_evaluation_file(name: str) -> bool:
    from muse_rec.data.files import tmp_of
    from muse_rec.dirlock import LOCK_FILE

    return name in EVALUATION_FILES or name == LOCK_FILE or tmp_of(name) == "metrics.json"


def run(args: argparse.Namespace) -> int:
    from muse_rec.cli.errors import report
    from muse_rec.cli.recorded_run import spec_of_own_run
    from muse_rec.output_paths import OutputPathError, check_output_path
    from muse_rec.spec import SpecError, load_spec

    if args.max_batches < 0:
        return report("evaluate", ValueError(f"--max-batches {args.max_batches}: must be >= 0 (0 = the whole split)"))
    try:  # before torch's and TorchRec's imports (seconds): a bad --out or spec fails at once
        args.out = check_output_path(args.out, "--out", replaces=_is_evaluation_file, own_marker="predictions.parquet")
        spec = load_spec(args.spec, args.set)
    except (OutputPathError, SpecError) as e:
        return report("evaluate", e)
    if not args.checkpoint:
        spec = spec_of_own_run("evaluate", "scoring", args.spec, args.set, spec)
    from muse_rec.training.checkpoint_position import CheckpointError
    from muse_rec.training.run_record import RunError, check_scored_model

    try:  # before torch's import: another model's checkpoint is refused at once
        check_scored_model(Path(spec.run_dir), args.checkpoint, spec)
    except (RunError, CheckpointError) as e:
        return report("evaluate", e)
    from muse_rec.cli.errors import bad_input_errors
    from muse_rec.training.trainer import evaluate_checkpoint

    try:
        evaluate_checkpoint(spec, args.checkpoint, args.out, device_type=args.device, max_batches=args.max_batches,
                            allow_data_mismatch=args.allow_data_mismatch, expect_sha256=args.expect_sha256)
    except bad_input_errors() + (OSError,) as e:  # OSError: the OS refused to write --out
        return report("evaluate", e)
    return 0

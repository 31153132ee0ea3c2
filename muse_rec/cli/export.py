"""`muse-rec export --spec FILE [--checkpoint DIR] --out DIR`: a quantized, torch.export'ed ranker.

Loads a training checkpoint (any world size) into an unsharded CPU model, reloads the frozen SCL
table from the prepared data, quantizes the tables to TorchRec int8 inference tables (the SCL
table losslessly) and saves a `torch.export` program whose signature is the ranker's: one
user's history and B candidates -> B click probabilities. See docs/serving.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from muse_rec.cli.flags import input_file, input_path, int64, nonempty_path

HELP = "export a checkpoint as a quantized torch.export ranking program (one user, B candidates)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", type=input_file, required=True, help="the spec the checkpoint was trained with")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a spec key (repeatable)")
    p.add_argument("--checkpoint", type=input_path, default=None,
                   help="checkpoint directory (default: the run's latest)")
    p.add_argument("--out", type=nonempty_path, required=True, help="output directory (ranker.pt2 + manifest.json)")
    p.add_argument("--seq-len", type=int64, default=None, help="the program's history length L (default: data.seq_len)")
    p.add_argument("--scl-dtype", choices=["int8", "fp16"], default="int8",
                   help="frozen SCL table storage (int8 is lossless for the int8 release vectors)")
    p.add_argument("--row-alignment", type=int64, default=16,
                   help="bytes each quantized row is padded to, a power of two "
                        "(16 = TorchRec default; 4 is tighter on CPU)")
    p.add_argument("--max-candidates", type=int64, default=4096, help="largest B the program accepts")
    p.add_argument("--float", dest="quantize", action="store_false", help="export without quantizing (comparison)")
    p.add_argument("--expect-sha256", default=None, metavar="DIGEST",
                   help="refuse the checkpoint unless its SHA-256 digest (logged when it was saved) is this")
    p.add_argument("--allow-data-mismatch", action="store_true",
                   help="export even though the checkpoint was trained on other prepared data")


# manifest.json's int8_check keys the command prints.
_INT8_CHECK_SHOWN = ("max_abs_dp", "p99_abs_dp", "samples", "users", "split")


def run(args: argparse.Namespace) -> int:
    from muse_rec.cli.errors import report
    from muse_rec.cli.recorded_run import spec_of_own_run
    from muse_rec.data.prepared import PreparedData, PreparedDataError
    from muse_rec.output_paths import OutputPathError, check_output_path
    from muse_rec.serving.export_layout import (EXPORT_FILES, ExportError, check_checkpoint_present, check_max_candidates,
                                               check_row_alignment)
    from muse_rec.spec import SpecError, load_spec
    from muse_rec.training.checkpoint_position import CheckpointError
    from muse_rec.training.run_record import RunError, check_scored_model

    if args.seq_len is not None and args.seq_len < 1:
        return report("export", ValueError(f"--seq-len {args.seq_len}: must be >= 1 (omit it for data.seq_len)"))
    try:
        check_row_alignment(args.row_alignment)
        check_max_candidates(args.max_candidates)
    except ValueError as e:
        return report("export", e)
    try:  # before torch's and TorchRec's imports (~4 s): a typo, a bad --out, no data or no checkpoint fails at once
        spec = load_spec(args.spec, args.set)
        if not args.checkpoint:
            spec = spec_of_own_run("export", "exporting", args.spec, args.set, spec)
        args.out = check_output_path(args.out, "--out", replaces=EXPORT_FILES)  # `export_model` checks again when it writes
        PreparedData(spec.data.prepared)  # opened again, and checked whole, by `export_model`
        check_checkpoint_present(spec.run_dir, args.checkpoint)
        check_scored_model(Path(spec.run_dir), args.checkpoint, spec)
    except (SpecError, OutputPathError, PreparedDataError, ExportError, RunError, CheckpointError) as e:
        return report("export", e)
    from muse_rec.cli.errors import bad_input_errors
    from muse_rec.quiet import quiet_known_warnings

    quiet_known_warnings()  # before FBGEMM's import-time notes
    from muse_rec.serving.export import export_model

    from muse_rec.phase_heartbeat import PhaseHeartbeat

    try:  # a line every PROGRESS_EVERY_S naming the phase: nothing for a short export, no silent minutes at scale
        with PhaseHeartbeat(lambda line: print(f"[export] {line}", file=sys.stderr, flush=True)) as beat:
            manifest = export_model(spec, args.out, checkpoint=args.checkpoint, seq_len=args.seq_len,
                                    scl_dtype=args.scl_dtype, row_alignment=args.row_alignment,
                                    max_candidates=args.max_candidates, quantize=args.quantize,
                                    allow_data_mismatch=args.allow_data_mismatch, expect_sha256=args.expect_sha256,
                                    say=beat.phase)
    except bad_input_errors() + (ValueError, OSError) as e:  # OSError: the OS refused to write --out
        return report("export", e)
    tables = manifest.get("tables") or {}
    # The int8 check's figures too (null for --float): they are a sample of the split's first users, and a
    # model whose GSU retrieves by ID-embedding scores can move more elsewhere (docs/serving.md), so a user
    # sees the measured size even where it stayed under the warning's threshold.
    check = manifest.get("int8_check")
    shown = None if check is None else {k: check[k] for k in _INT8_CHECK_SHOWN if k in check}
    print(json.dumps({"out": args.out, "seq_len": manifest["seq_len"], "quantized": manifest["quantized"],
                      "bytes_per_row": tables.get("bytes_per_row"), "export_seconds": manifest["export_seconds"],
                      "int8_check": shown, "sha256": manifest.get("sha256")}))
    return 0

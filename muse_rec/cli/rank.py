"""`muse-rec rank --spec FILE [--checkpoint DIR | --exported DIR] --request req.json`: score candidates.

The request file holds ``{"user": <int>, "candidates": [<int>, ...]}`` or a list of them (raw
ids; ``-`` reads stdin). Prints one JSON document: a response object per request (scores in
candidate order, ``has_history_row``, ``user_seen_in_train``, ``unknown_candidates``; ``known_user``,
the older name of ``has_history_row``); see docs/serving.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import statistics
import time
from pathlib import Path
from typing import List, Sequence

from muse_rec.cli.errors import report
from muse_rec.cli.flags import input_file, input_path, int64, nonempty

MS = 1000.0  # milliseconds per second

HELP = "rank candidates for users from a checkpoint or an exported program (JSON request -> JSON scores)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", type=input_file, required=True,
                   help="the spec the model was trained with (data paths, model)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a spec key (repeatable)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", type=input_path, default=None,
                     help="checkpoint directory (default: the run's latest)")
    src.add_argument("--exported", type=input_path, default=None, help="directory written by `muse-rec export`")
    p.add_argument("--request", type=input_file, required=True, help="JSON request file ('-' = stdin)")
    p.add_argument("--split", type=nonempty, default=None,
                   help="prepared split whose user table holds histories (default: eval split)")
    p.add_argument("--seq-len", type=int64, default=None, help="serving history length (default: spec / exported)")
    p.add_argument("--expect-sha256", default=None, metavar="DIGEST",
                   help="refuse the checkpoint / exported program unless its SHA-256 digest is this")
    p.add_argument("--allow-data-mismatch", action="store_true",
                   help="serve even though the model was made from other prepared data")


def run(args: argparse.Namespace) -> int:
    from muse_rec.serving.request import RequestError, parse_requests

    # What every error about the request names it by: the project's bad-input line names the file.
    source = "stdin" if args.request == "-" else args.request
    try:
        # Bytes: parse_requests decodes them and names a non-UTF-8 file as a RequestError.
        if args.request == "-":
            text = sys.stdin.buffer.read()
        else:
            with open(args.request, "rb") as f:
                text = f.read()
        requests = parse_requests(text, source=source)  # before the heavy imports: fails fast
    except OSError as e:
        return report("rank", e, f"cannot read request {source}: ")
    except RequestError as e:
        return report("rank", e)

    from muse_rec.cli.recorded_run import spec_of_own_run
    from muse_rec.spec import SpecError, load_spec

    if args.seq_len is not None and args.seq_len < 1:
        return report("rank", ValueError(f"--seq-len {args.seq_len}: must be >= 1 (omit it for the spec's / program's)"))
    try:
        spec = load_spec(args.spec, args.set)  # before torch's and TorchRec's imports (seconds): a typo fails at once
    except SpecError as e:
        return report("rank", e)
    if args.seq_len is not None:
        from muse_rec.serving.export import ExportError, check_history_fits

        # Each user's context holds the program's [1, L] inputs: a length beyond memory was numpy's "array is
        # too big" (naming nothing) or an allocation failure, after the model had loaded.
        try:
            check_history_fits(args.seq_len, spec.model.reads_scl, advice="serve a shorter history")
        except ExportError as e:
            return report("rank", e)
    if not args.exported:  # a program (--exported) reads no checkpoint
        from muse_rec.training.checkpoint_position import CheckpointError
        from muse_rec.training.run_record import RunError, check_scored_model

        if not args.checkpoint:
            spec = spec_of_own_run("rank", "ranking with", args.spec, args.set, spec)
        try:  # before torch's and TorchRec's imports: another model's checkpoint is refused at once
            check_scored_model(Path(spec.run_dir), args.checkpoint, spec)
        except (RunError, CheckpointError) as e:
            return report("rank", e)
    from muse_rec.cli.errors import bad_input_errors
    from muse_rec.quiet import quiet_known_warnings
    from muse_rec.serving.ranker import NonFiniteScoresError, Ranker, rank_all

    quiet_known_warnings()
    started = time.perf_counter()
    latencies: List[float] = []
    try:
        if args.split is not None:  # named by its flag (the Ranker names its argument), before the model loads
            from muse_rec.data.prepared import PreparedData

            PreparedData(spec.data.prepared).require_split(args.split, "--split")
        if args.exported:
            ranker = Ranker.from_exported(spec, args.exported, seq_len=args.seq_len, split=args.split,
                                          allow_data_mismatch=args.allow_data_mismatch,
                                          expect_sha256=args.expect_sha256)
        else:
            ranker = Ranker.from_checkpoint(spec, args.checkpoint, seq_len=args.seq_len, split=args.split,
                                            allow_data_mismatch=args.allow_data_mismatch,
                                            expect_sha256=args.expect_sha256)
        loaded = time.perf_counter()
        with ranker:
            responses = rank_all(ranker, requests, latencies)
    except bad_input_errors() + (ValueError,) as e:
        return report("rank", e)
    except NonFiniteScoresError as e:  # weights that match their manifest but overflow: the model is unusable
        model = args.exported or args.checkpoint or "the run's latest checkpoint"
        return report("rank", ValueError(f"{model}: {e}; serve another checkpoint (e.g. an earlier step)"))
    single = not text.lstrip().startswith(b"[")
    print(json.dumps(responses[0] if single else responses))
    # stdout is the JSON document alone (callers parse it); how fast it went goes to stderr.
    print(f"muse-rec rank: {timing_summary(latencies, sum(len(r.candidates) for r in requests), loaded - started)}",
          file=sys.stderr)
    return 0


def timing_summary(latencies: Sequence[float], candidates: int, load_seconds: float) -> str:
    """One line: requests and candidates scored, in how long (per request: median and slowest, in
    ms, each from its turn to its response), after how long loading the model and its data."""
    n = len(latencies)
    per = (f"{latencies[0] * MS:.1f} ms" if n == 1 else
           f"{sum(latencies):.2f} s (per request: median {statistics.median(latencies) * MS:.1f} ms, "
           f"slowest {max(latencies) * MS:.1f} ms)")
    return (f"{n} request{'s' if n != 1 else ''}, {candidates} candidate{'s' if candidates != 1 else ''} "
            f"scored in {per}, after {load_seconds:.1f} s loading the model and its data")

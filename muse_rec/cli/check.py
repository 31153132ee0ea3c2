"""`muse-rec check PREPARED`: scan every value of a prepared directory (ids in range, offsets, SCL rows).

Exit 0 when clean; 2 with one line per problem (each naming the file) when not. Opening the
data for training checks only headers and sizes; run this once after copying or
hand-editing a prepared directory. See `muse_rec.data.check` for the list of checks.
"""
from __future__ import annotations

import argparse
import sys
import time

from muse_rec.cli.errors import report
from muse_rec.cli.flags import local_data_path

HELP = "scan a prepared directory: ids within vocabularies, offsets monotone, SCL rows, labels"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prepared", type=local_data_path, help="directory written by `muse-rec prepare`")


def run(args: argparse.Namespace) -> int:
    from muse_rec.data.check import check_prepared
    from muse_rec.data.prepared import PreparedDataError

    start = time.perf_counter()
    try:
        found = check_prepared(args.prepared)
    except PreparedDataError as e:
        report("check", e)
        return 2
    seconds = time.perf_counter() - start
    if not found.ok:
        for p in found.problems:
            print(f"muse-rec check: {p}", file=sys.stderr)
        # --overwrite: without it, prepare of the same release returns a directory that opens as it is.
        print(f"muse-rec check: {args.prepared}: {len(found.problems)} problem(s); prepare it again: "
              f"`muse-rec prepare RAW {args.prepared} --overwrite`", file=sys.stderr)
        return 2
    # Its fingerprint, as runs and checkpoints record it (`data_fingerprint` in run.json); meta.json's
    # own `fingerprint` is of the raw files it was prepared from.
    print(f"{args.prepared}: ok ({found.arrays} arrays, {found.values:,} values checked in {seconds:.1f} s); "
          f"data fingerprint {found.fingerprint} (run.json's data_fingerprint)")
    if not found.content_verified:  # a change that keeps every value in range (swapped labels) went unseen
        print(f"muse-rec check: WARNING: {args.prepared}: contents not compared with meta.json's content_sha256 "
              "(none recorded: prepared by an earlier version, the entry removed, or a remote path); only ranges "
              "and structure were checked; prepare again for a full check", file=sys.stderr)
    return 0

"""Checkpoint integrity hashing: one SHA-256 stream at a time vs one thread per file, side by side.

    .venv/bin/python benchmarks/bench_integrity.py [--files 8] [--mb 256] [--reps 3] [--dir /tmp]

A DCP checkpoint is one large file per rank; `muse_rec.integrity` hashes every file of it at
each save (`write_manifest`) and before each load (`verify`). This writes ``--files`` random files
of ``--mb`` MiB (the shape of a ``--files``-rank checkpoint), then hashes them serially
(`file_sha256` in a loop: what the manifest code did before) and concurrently (`hash_files`),
alternating which goes first so both see the same machine load, and checks both give the same
hashes. Prints the median throughput of each, their ratio, and the load average before and
after (these machines are shared: read the ratio, not the MB/s). The page cache holds the files
after the first pass, so this measures hashing, not the disk.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

from muse_rec.integrity import hash_files, file_sha256


def _timed(fn: Callable[[], Dict[str, str]]) -> tuple:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main(argv: List[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--files", type=int, default=8, help="files (checkpoint shards) to hash")
    p.add_argument("--mb", type=int, default=256, help="MiB per file")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions of each method")
    p.add_argument("--dir", default=None, help="where to write the files (default: the temp dir)")
    a = p.parse_args(argv)
    if a.files < 1 or a.mb < 1 or a.reps < 1:
        p.error("--files, --mb and --reps must be >= 1")
    if a.dir is not None and not Path(a.dir).is_dir():
        p.error(f"--dir {a.dir}: no such directory")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        root = Path(d)
        rels = [f"__{i}_0.distcp" for i in range(a.files)]
        for rel in rels:
            with open(root / rel, "wb") as f:
                for _ in range(a.mb):
                    f.write(os.urandom(1 << 20))
        serial = lambda: {rel: file_sha256(root / rel) for rel in rels}  # noqa: E731
        threaded = lambda: hash_files(root, rels)  # noqa: E731
        serial()  # warm the page cache
        times: Dict[str, list] = {"serial": [], "threaded": []}
        for rep in range(a.reps):
            order = [("serial", serial), ("threaded", threaded)]
            results = {}
            for name, fn in (order if rep % 2 == 0 else order[::-1]):
                dt, results[name] = _timed(fn)
                times[name].append(dt)
            assert results["serial"] == results["threaded"], "threaded hashes differ from serial ones"
    mb = a.files * a.mb * (1 << 20) / 1e6
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{a.files} files x {a.mb} MiB, {a.reps} reps, {len(os.sched_getaffinity(0))} usable cores")
    for k in ("serial", "threaded"):
        print(f"  {k:8s} {mb / med[k]:8.0f} MB/s  (median {med[k]:.2f} s)")
    print(f"  threaded / serial throughput: {med['serial'] / med['threaded']:.2f}x")
    print(f"  load average before {load_before[0]:.2f} / after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

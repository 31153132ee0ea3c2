"""Data pipeline benchmark: `muse-rec prepare` rows/s and peak RSS, loader samples/s.

    .venv/bin/python benchmarks/bench_data.py --out results/

Raw data comes from `muse_rec.data.synth` (the synthetic release in the exact raw layout) when
it is importable, else from a small pyarrow generator in this file. Generation and `prepare` each
run in a child process; the prepare child reports its own peak RSS (ru_maxrss). The loader is timed in
steady state (the first batch, which pays for worker start-up and cold page cache, is excluded
and reported separately). Writes ``bench_data.md`` and ``bench_data.json`` to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks.args import at_least, output_dir  # noqa: E402
from muse_rec.data import schema as S  # noqa: E402
from muse_rec.data.synth_config import SynthConfig  # noqa: E402


def write_raw_fallback(root: str, users: int, max_len: int, samples_per_user: int, seed: int = 0) -> None:
    """Uniform random raw tables in the release layout (used only when synth.py is unavailable)."""
    rng = np.random.default_rng(seed)
    n_items, n_cats = users * 20, 300
    items = rng.integers(-(2**62), 2**62, n_items)
    cat_of = rng.integers(-(2**62), 2**62, n_cats)[rng.integers(0, n_cats, n_items)]
    lens = rng.integers(0, max_len + 1, users)
    idx = rng.integers(0, n_items, int(lens.sum()))
    offsets = np.concatenate([[0], np.cumsum(lens)])
    user_keys = rng.integers(-(2**62), 2**62, users)

    def lists(values: np.ndarray) -> pa.Array:
        return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.int64()))

    def write(name: str, cols: Dict[str, pa.Array]) -> None:
        pq.write_table(pa.table(cols), os.path.join(root, S.TABLES[name].file), row_group_size=4096)

    for split in S.SPLITS:
        write(f"{split}_user_features", {S.USER: pa.array(user_keys), **{f: pa.array(rng.integers(1, 50, users))
              for f in S.USER_FIELDS}, S.SEQ_ITEMS: lists(items[idx]), S.SEQ_CATS: lists(cat_of[idx])})
        n = users * samples_per_user
        y = (rng.random(n) < 0.137).astype(np.int8)
        write(f"{split}_samples", {S.LABEL: pa.array(np.stack([1 - y, y], 1).tolist(), pa.list_(pa.int8())),
                                   S.USER: pa.array(np.repeat(user_keys, samples_per_user)),
                                   S.ITEM: pa.array(items[rng.integers(0, n_items, n)])})
    write("item_features", {S.ITEM: pa.array(items), S.ITEM_CAT: pa.array(cat_of),
                            "213": pa.array(rng.integers(1, 99, n_items)), "214": pa.array(rng.integers(1, 9, n_items))})
    scl = items[: n_items // 2]
    write("scl", {S.ITEM: pa.array(scl), S.SCL_VECTOR: pa.array(
        rng.integers(-127, 128, (scl.size, S.SCL_DIM), dtype=np.int8).tolist(), pa.list_(pa.int8()))})


def make_raw(root: str, preset: str, users: int) -> str:
    try:
        from muse_rec.data.synth import SynthConfig, write_synthetic_release
    except ImportError:
        write_raw_fallback(root, users or 4500, 1000, 11)
        return "pyarrow fallback generator"
    cfg = SynthConfig.preset(preset).replace(diagnostics_max_users=0, **({"users": users} if users else {}))
    write_synthetic_release(root, cfg)
    return f"muse_rec.data.synth preset {preset}" + (f", users={users}" if users else "")


# Runs `muse-rec prepare` and reports the child's own peak RSS. Linux carries a parent's RSS
# high-water mark into a forked child (even across exec), so RUSAGE_CHILDREN would count this
# process's memory too; the parent therefore stays small (raw data is generated in another child).
_PREPARE_CHILD = """
import resource, sys
from muse_rec.cli import main
rc = main(["prepare", sys.argv[1], sys.argv[2], "--no-progress"])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=open(sys.argv[3], "w"))
sys.exit(rc)
"""


def bench_prepare(raw: str, out: str) -> Dict[str, float]:
    rows = sum(pq.ParquetFile(os.path.join(raw, t.file)).metadata.num_rows for t in S.TABLES.values())
    rss_file = out + ".maxrss"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", _PREPARE_CHILD, raw, out, rss_file], check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    with open(rss_file, encoding="utf-8") as f:
        peak_kib = int(f.read())  # Linux: KiB
    with open(os.path.join(out, "meta.json"), encoding="utf-8") as f:
        meta = json.load(f)
    behaviours = sum(meta["splits"][s]["behaviours"] for s in S.SPLITS)
    samples = sum(meta["splits"][s]["samples"] for s in S.SPLITS)
    return {"raw_rows": rows, "samples": samples, "behaviours": behaviours, "seconds": seconds,
            "rows_per_s": rows / seconds, "behaviours_per_s": behaviours / seconds,
            "peak_rss_mib": peak_kib / 1024}


def make_raw_in_child(root: str, preset: str, users: int) -> str:
    """`make_raw` in a child process (keeps this process small, see `_PREPARE_CHILD`)."""
    done = subprocess.run([sys.executable, os.path.abspath(__file__), "--make-raw-only", root, "--preset", preset,
                           "--users", str(users)], check=True, cwd=REPO, capture_output=True, text=True)
    return done.stdout.strip().splitlines()[-1]


def bench_loader(out: str, batch: int, seq_len: int, workers: int, epochs: int) -> Dict[str, float]:
    from muse_rec.data.loader import make_loader

    loader = make_loader(out, "train", batch, seq_len, num_workers=workers)
    samples, steady_s, first_s = 0, 0.0, 0.0
    for _ in range(epochs):
        t0 = time.perf_counter()
        it = iter(loader)
        next(it)
        t1 = time.perf_counter()
        first_s += t1 - t0
        for b in it:
            samples += int(b.weights.sum())
        steady_s += time.perf_counter() - t1
    return {"workers": workers, "batch": batch, "seq_len": seq_len, "batches": len(loader) * epochs,
            "steady_samples_per_s": samples / max(steady_s, 1e-9), "first_batch_s": first_s / epochs}


def markdown(res: Dict[str, object]) -> str:
    p = res["prepare"]
    lines = [f"# Data pipeline benchmark ({res['host']})", "", f"Raw data: {res['raw_source']}", "",
             "| step | rows | seconds | rows/s | behaviours/s | peak RSS (MiB) |", "|---|---|---|---|---|---|",
             f"| prepare | {p['raw_rows']:,} | {p['seconds']:.1f} | {p['rows_per_s']:,.0f} | "
             f"{p['behaviours_per_s']:,.0f} | {p['peak_rss_mib']:.0f} |", "",
             "| loader | workers | batch | L | batches | samples/s (steady) | first batch (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in res["loader"]:  # type: ignore[union-attr]
        lines.append(f"| train | {r['workers']} | {r['batch']} | {r['seq_len']} | {r['batches']} | "
                     f"{r['steady_samples_per_s']:,.0f} | {r['first_batch_s']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/", help="directory for bench_data.md / bench_data.json")
    ap.add_argument("--preset", default="demo", choices=SynthConfig.PRESETS, help="synth preset for the raw data")
    ap.add_argument("--users", type=at_least(0), default=0, help="override the number of train users (0 = preset)")
    ap.add_argument("--batch", type=at_least(1), default=1000)
    ap.add_argument("--seq-len", type=at_least(1), default=1000)
    ap.add_argument("--workers", type=at_least(0), nargs="+", default=[0, 2])
    ap.add_argument("--epochs", type=at_least(1), default=2, help="loader epochs timed per worker setting")
    ap.add_argument("--make-raw-only", metavar="DIR", help=argparse.SUPPRESS)  # internal: child of this script
    args = ap.parse_args(argv)
    if args.make_raw_only:
        os.makedirs(args.make_raw_only, exist_ok=True)
        print(make_raw(args.make_raw_only, args.preset, args.users))
        return 0
    output_dir(ap, "--out", args.out)
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        raw, prepared = os.path.join(tmp, "raw"), os.path.join(tmp, "prepared")
        os.makedirs(raw)
        source = make_raw_in_child(raw, args.preset, args.users)
        res: Dict[str, object] = {
            "host": f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "raw_source": source, "prepare": bench_prepare(raw, prepared),
            "loader": [bench_loader(prepared, args.batch, args.seq_len, w, args.epochs) for w in args.workers],
        }
    md = markdown(res)
    with open(os.path.join(args.out, "bench_data.json"), "w", encoding="utf-8") as f:
        json.dump(res, f, indent=2)
    with open(os.path.join(args.out, "bench_data.md"), "w", encoding="utf-8") as f:
        f.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

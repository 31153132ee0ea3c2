"""Per-sample predictions as a Parquet dataset directory: one part file per rank.

Layout: ``<dir>/part-<rank>-of-<world>.parquet`` (5-digit numbers). Each rank writes only the
rows it evaluated, so nothing is gathered and no rank holds the whole set; ``pandas`` /
``pyarrow.dataset`` read the directory as one table, and `read_predictions` also checks that
every part of one run is present. Each part is written to a hidden temporary name and renamed,
so a reader never sees a half-written file (readers skip names starting with ``.``).

Columns: ``user_key`` int64, ``item_key`` int64, ``label`` int8, ``score`` float64 (predicted
click probability) and, when known, ``seq_length`` int64, ``item_popularity`` float64.
Padding rows (weight 0) are not written.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, List

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from muse_rec.data.files import OutputWriteError, local_parquet_file
from muse_rec.json_files import refuse_special_file

PART_PATTERN = re.compile(r"^part-(\d{5})-of-(\d{5})\.parquet$")
COLUMN_ORDER = ["user_key", "item_key", "label", "score", "seq_length", "item_popularity"]


def part_name(rank: int, world: int) -> str:
    """File name of one rank's part."""
    return f"part-{rank:05d}-of-{world:05d}.parquet"


def remove_stale_parts(directory: str | os.PathLike, world: int) -> List[Path]:
    """Delete parts left by an earlier run with a different world size; returns them.

    Call on one rank, before any rank writes (the caller holds a barrier after it).
    """
    removed = []
    d = Path(directory)
    if d.is_dir():
        for f in d.iterdir():
            m = PART_PATTERN.match(f.name)
            if m and int(m.group(2)) != world:
                f.unlink()
                removed.append(f)
    return removed


def write_part(directory: str | os.PathLike, columns: Dict[str, np.ndarray], rank: int, world: int) -> Path:
    """Write one rank's rows atomically; returns the part's path.

    Args:
        directory: the dataset directory (created if missing).
        columns: name -> ``[n]`` arrays, names from `COLUMN_ORDER` (``user_key``, ``item_key``,
            ``label``, ``score`` required).
    """
    missing = [c for c in COLUMN_ORDER[:4] if c not in columns]
    unknown = [c for c in columns if c not in COLUMN_ORDER]
    if missing or unknown:
        raise ValueError(f"prediction columns: missing {missing}, unknown {unknown} (allowed {COLUMN_ORDER})")
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise ValueError(f"predictions path {d} exists and is not a directory (it is a Parquet dataset dir)")
    d.mkdir(parents=True, exist_ok=True)
    table = pa.table({c: columns[c] for c in COLUMN_ORDER if c in columns})
    final = d / part_name(rank, world)
    tmp = d / f".{final.name}.tmp-{os.getpid()}"
    try:
        with local_parquet_file(tmp, "wb") as sink:
            pq.write_table(table, sink)
        os.replace(tmp, final)
    except OSError as e:  # pyarrow's "Error writing bytes to file" names no file (a full disk)
        raise OutputWriteError.naming(e, final) from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return final


def read_predictions(path: str | os.PathLike) -> pd.DataFrame:
    """All rows of a prediction dataset directory (parts in rank order), or of one Parquet file.

    Raises ValueError naming the directory when parts of different runs are mixed or a rank's
    part is missing, naming the file where it (or a part) is a FIFO, device or socket.
    """
    p = Path(path)
    refuse_special_file(p)  # else "no predictions at" a file that is there
    if p.is_file():
        return _read_part(p)
    if not p.is_dir():
        raise FileNotFoundError(f"no predictions at {p}")
    parts = sorted((int(m.group(1)), int(m.group(2)), f) for f in p.iterdir() if (m := PART_PATTERN.match(f.name)))
    if not parts:
        raise ValueError(f"{p} holds no part-XXXXX-of-XXXXX.parquet files")
    worlds = {w for _, w, _ in parts}
    if len(worlds) != 1:
        raise ValueError(f"{p} mixes parts of runs with world sizes {sorted(worlds)}")
    world = worlds.pop()
    ranks = [r for r, _, _ in parts]
    if ranks != list(range(world)):
        raise ValueError(f"{p}: expected parts of ranks 0..{world - 1}, found ranks {ranks}")
    return pd.concat([_read_part(f) for _, _, f in parts], ignore_index=True)


def _read_part(path: Path) -> pd.DataFrame:
    refuse_special_file(path)  # opening a FIFO to read it waited for a writer forever
    with local_parquet_file(path) as source:
        return pq.read_table(source).to_pandas()

"""`muse-rec prepare RAW OUT`: raw Taobao-MM tables -> compact memory-mapped training data."""
from __future__ import annotations

import argparse
import errno
import json
import sys
from typing import Any, Dict, Optional

from muse_rec.cli.errors import report
from muse_rec.cli.flags import int64, local_data_path, nonempty_path
from muse_rec.wording import count

HELP = "build vocabularies, remap ids and pack SCL vectors + per-user sequences from the raw Taobao-MM tables (resumable)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from muse_rec.data.prepare import PrepareConfig, VOCAB_MODES

    d = PrepareConfig()
    p.add_argument("raw", type=local_data_path,
                   help="directory (a local path or file:// URI) holding the six raw Parquet tables, each one file "
                   "or a directory / NAME-*.parquet files of parts (docs/data.md)")
    p.add_argument("out", type=nonempty_path, help="local output directory; re-running resumes / skips finished steps")
    p.add_argument("--vocab", choices=VOCAB_MODES, default=d.vocab,
                   help="item vocabulary: full = SCL items + all targets + item_features items + train "
                   "history items (items seen only in test histories map to row 0); p90 = SCL items + all targets "
                   "(docs/data.md)")
    p.add_argument("--batch-rows", type=int64, default=d.batch_rows, help="rows per decoded record batch")
    p.add_argument("--partition-bits", type=int64, default=d.partition_bits,
                   help="external sort uses 2**bits spill partitions (more = less memory per partition)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace what OUT holds: a different prepared dataset (otherwise refused), or this "
                   "release's, prepared again (otherwise returned unread: what `muse-rec check` asks for)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress report (bars on a terminal, one line per step in a log)")
    p.add_argument("--json", action="store_true", help="print meta.json to stdout when done")


def _os_error(e: OSError, out: str) -> str:
    """One line for an OS error while preparing: what failed, on which path."""
    where = e.filename or out
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"no space left on the device writing {where}; the previous output in {out} (if any) is "
                "untouched, free space and run again (finished steps are kept)")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {where}: {e.strerror} (OUT must be a writable directory)"
    return f"{where}: {e.strerror or e}"


def run(args: argparse.Namespace) -> int:
    from muse_rec.data.prepare import DifferentDatasetError, PrepareConfig, PrepareFileError, prepare
    from muse_rec.data.schema import RawDataError
    from muse_rec.dirlock import DirLockError
    from muse_rec.output_paths import OutputPathError

    try:
        cfg = PrepareConfig(vocab=args.vocab, batch_rows=args.batch_rows, partition_bits=args.partition_bits,
                            progress=not args.no_progress)
        cfg.validate()
    except ValueError as e:
        report("prepare", e)
        return 2
    try:
        meta = prepare(args.raw, args.out, cfg, overwrite=args.overwrite)
    except RawDataError as e:
        report("prepare", e, "bad input: ")
        return 2
    except (DifferentDatasetError, PrepareFileError, OutputPathError, DirLockError) as e:
        report("prepare", e)
        return 2
    except OSError as e:
        print(f"muse-rec prepare: {_os_error(e, args.out)}", file=sys.stderr)
        return 2
    except MemoryError as e:  # said as such: a failed allocation while decoding read as a corrupt raw file
        detail = f" ({' '.join(str(e).split())[:200]})" if str(e) else ""
        print(f"muse-rec prepare: out of memory{detail}: a smaller --batch-rows (now {args.batch_rows:,}) holds fewer "
              f"rows at once, a larger --partition-bits (now {args.partition_bits}) smaller spill partitions; "
              "run again: finished steps are kept", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(meta, indent=2, sort_keys=True))
    else:
        print(summary_line(args.out, meta))
    return 0


def _split_counts(split: Dict[str, Any], unseen_users: Optional[int] = None) -> str:
    """One split's counts for `summary_line`; ``unseen_users``: its user rows not in the train vocabulary."""
    unseen = "" if unseen_users is None else f" ({unseen_users:,} unseen in train)"
    on_row_0, without_id = split["behaviours_unknown_item"], split.get("behaviours_without_item_id")
    if without_id is None:  # a meta.json written before the missing ids were counted apart
        behaviours = f"{on_row_0:,} of {count(split['behaviours'], 'behaviour')} on unknown items"
    else:  # row 0 holds both; a missing id (raw 0, padding in the raw lists) is no item absent from the vocabulary
        behaviours = (f"{on_row_0 - without_id:,} of {count(split['behaviours'], 'behaviour')} on items outside the "
                      f"vocabulary, {without_id:,} with no item id (raw id 0)")
    return f"{count(split['samples'], 'sample')}, {count(split['user_rows'], 'user row')}{unseen}, {behaviours}"


def summary_line(out: str, meta: Dict[str, Any]) -> str:
    """The line `prepare` ends with, read from its meta.json (nothing is counted again).

    Vocabulary rows count row 0 (unknown / padding): the distinct ids are one fewer. User rows are
    the user table's rows; a sample's user may have none (`prepare` warns). Unseen test users and
    behaviours on items outside the vocabulary all share row 0 of their vocabulary: said here, not only in
    meta.json; behaviours with no item id (raw id 0) are on row 0 too, and counted apart."""
    tr, te = meta["splits"]["train"], meta["splits"]["test"]
    vs = meta["vocab_sizes"]
    return (f"prepared {out}: train {_split_counts(tr)}; "
            f"test {_split_counts(te, meta['test_users_unseen_in_train'])}; "
            f"vocabularies ({meta['vocab_mode']}): {count(vs['item'] - 1, 'item')}, "
            f"{count(vs['category'] - 1, 'category', 'categories')} "
            f"(+ row 0 each); click rate train {tr['positive_rate']:.4f}{_scl_coverage(tr)}")


def _scl_coverage(train: Dict[str, Any]) -> str:
    """The train split's SCL coverage for `summary_line` (empty for a meta.json without it). The multimodal
    GSUs rank only behaviours with a vector and find nothing for a target without one: an outside check's
    release with 40% of its items absent from the SCL table prepared with no word of it (only meta.json had it)."""
    if "scl_coverage_targets" not in train or "scl_coverage_behaviours" not in train:
        return ""
    return (f"; SCL vectors for {100 * train['scl_coverage_targets']:.1f}% of train targets and "
            f"{100 * train['scl_coverage_behaviours']:.1f}% of train behaviours")

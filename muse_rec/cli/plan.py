"""`muse-rec plan --spec FILE`: the sharding plan of a spec's model for any topology, on a CPU box.

Builds the spec's model on the ``meta`` device (nothing is allocated), runs TorchRec's planner
as training does, and prints per table rows, dim, dtype, sharding type, kernel, ranks, weight
and fused-optimizer bytes; per rank HBM and DDR; totals; optionally a what-if table over world
sizes. When nothing fits it says which tables, how big, and what would fit (exit status 1).

Table sizes come from ``--prepared PATH`` (the counts `muse-rec prepare` recorded in its
meta.json), else ``data.vocab_sizes`` of the spec, else the prepared data at ``data.prepared``.
See docs/plan.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from typing import Dict, List, Mapping, Tuple

from muse_rec.cli.errors import report
from muse_rec.cli.flags import input_file, int64, local_data_path, nonempty_path
from muse_rec.distributed import MAX_PLAN_RANKS
from muse_rec.json_files import read_json_object

HELP = "show the sharding plan (per table, per rank, what-if over world sizes) of a spec for any GPU/CPU topology"

DEFAULT_WORLD_SIZE = 8
DEFAULT_HBM_GIB = 80.0  # one H100/A100-80GB
DEFAULT_DDR_GIB = 512.0  # host memory per rank
# Memory per rank the plan takes (1 PiB): far above any machine, and its bytes still an integer the
# planner's arithmetic handles (1e300 GiB overflowed `int`).
MAX_GIB_PER_RANK = 2.0 ** 20
DEFAULT_SEARCH_LIMIT = 128  # largest world size the "what would fit" search tries


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", type=input_file, required=True, help="spec file, e.g. specs/taobao_mm_full/muse.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec key, e.g. --set train.sparse_optimizer.name=exact_row_wise_adagrad")
    p.add_argument("--prepared", type=local_data_path, metavar="PATH", default=None,
                   help="take every table's rows from this prepared set's meta.json (overrides data.vocab_sizes)")
    p.add_argument("--world-size", type=int64, default=DEFAULT_WORLD_SIZE, help=f"ranks (default {DEFAULT_WORLD_SIZE})")
    p.add_argument("--local-world-size", type=int64, default=None, metavar="N",
                   help="ranks per host, dividing --world-size (default: cuda equal hosts of up to 8 GPUs, cpu one "
                        "host; what-if rows: equal hosts of at most N); the planner costs traffic inside a host and "
                        "between hosts differently, and shards table_row_wise tables over one host's ranks")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                   help="compute device of the planned job (default cuda; planning itself runs on CPU)")
    p.add_argument("--hbm-gib", type=float, default=DEFAULT_HBM_GIB,
                   help=f"device memory per rank in GiB (default {DEFAULT_HBM_GIB:g}; ignored with --device cpu)")
    p.add_argument("--ddr-gib", type=float, default=DEFAULT_DDR_GIB,
                   help=f"host memory per rank in GiB (default {DEFAULT_DDR_GIB:g})")
    p.add_argument("--no-uvm", action="store_true",
                   help="only the 'fused' kernel (all rows in HBM): no fused_uvm / fused_uvm_caching")
    p.add_argument("--what-if", metavar="RANGE", default=None,
                   help="also plan these world sizes, e.g. 1-16 or 1,2,4,8")
    p.add_argument("--max-world-size", type=int64, default=DEFAULT_SEARCH_LIMIT,
                   help=f"largest world size tried when searching what would fit (default {DEFAULT_SEARCH_LIMIT})")
    p.add_argument("--json", type=nonempty_path, metavar="PATH", default=None,
                   help="also write the plan as JSON to PATH ('-' = stdout)")
    p.add_argument("--verbose", action="store_true", help="also log TorchRec's own planner tables")


def parse_world_sizes(text: str) -> List[int]:
    """``"1-16"`` / ``"1,2,4,8"`` / ``"1-4,8"`` -> sorted distinct world sizes (each >= 1)."""
    sizes = set()
    for part in text.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        try:
            a, b = (int(lo), int(hi)) if sep else (int(part), int(part))
        except ValueError:
            raise ValueError(f"--what-if {text!r}: {part!r} is not N or N-M") from None
        if a < 1 or b < a:
            raise ValueError(f"--what-if {text!r}: {part!r} must be N >= 1 or N-M with 1 <= N <= M")
        if b > MAX_PLAN_RANKS:
            raise ValueError(f"--what-if {text!r}: {part!r} goes past {MAX_PLAN_RANKS:,} ranks, the most one "
                             "command plans (TorchRec's planner: ~22 ms a rank)")
        sizes.update(range(a, b + 1))
        if sum(sizes) > MAX_PLAN_RANKS:
            raise ValueError(f"--what-if {text!r}: its rows add up to more than {MAX_PLAN_RANKS:,} ranks, the most "
                             "one command plans (TorchRec's planner: ~22 ms a rank); ask for fewer sizes, e.g. 1,2,4,8")
    return sorted(sizes)


def prepared_vocab_sizes(path: str) -> Dict[str, int]:
    """``vocab_sizes`` recorded by `muse-rec prepare` in PATH/meta.json (rows incl. row 0).

    Only meta.json is read: planning needs no array, so a prepared set can be planned from a copy
    of its meta.json alone. Raises ValueError naming the file."""
    import os

    from muse_rec.output_paths import strip_file_uri

    # A file:// URI names the local directory, as for every reader of prepared data (train, check).
    meta_path = os.path.join(strip_file_uri(path), "meta.json")
    try:  # the reader of every JSON file from outside: a FIFO, a list or broken JSON is one line naming it
        meta = read_json_object(meta_path, advice="; run `muse-rec prepare` first")
    except ValueError as e:
        raise ValueError(f"--prepared {path}: {e}") from None
    from muse_rec.spec.schema import MAX_TABLE_ROWS

    sizes = meta.get("vocab_sizes")
    if not isinstance(sizes, dict):
        raise ValueError(f"--prepared {path}: {meta_path} has no valid vocab_sizes")
    for name, rows in sizes.items():
        if isinstance(rows, bool) or not isinstance(rows, int) or not 1 <= rows <= MAX_TABLE_ROWS:
            raise ValueError(f"--prepared {path}: {meta_path}: vocab_sizes.{name} must be an integer in "
                             f"1..{MAX_TABLE_ROWS:,}, got {rows!r}")
    return dict(sizes)


def resolve_vocab_sizes(spec, spec_path: str, prepared: str = "") -> Tuple[Dict[str, int], str]:
    """Rows per table (row 0 included) and where they came from; raises ValueError naming the key."""
    from muse_rec.models.sparse_arch import REQUIRED_TABLES

    if prepared:
        sizes = prepared_vocab_sizes(prepared)
        missing = [t for t in REQUIRED_TABLES if t not in sizes]
        if missing:
            raise ValueError(f"--prepared {prepared}: meta.json vocab_sizes lacks {missing}")
        return sizes, f"{prepared}/meta.json (--prepared)"
    if spec.data.vocab_sizes:
        sizes, source = dict(spec.data.vocab_sizes), f"{spec_path}: data.vocab_sizes"
        missing = [t for t in REQUIRED_TABLES if t not in sizes]
        if missing:
            raise ValueError(f"{spec_path}: data.vocab_sizes lacks {missing} (needs {REQUIRED_TABLES})")
        return sizes, source
    from muse_rec.data.prepared import PreparedData, PreparedDataError

    try:
        data = PreparedData(spec.data.prepared)
    except (PreparedDataError, OSError) as e:
        raise ValueError(
            f"{spec_path}: no table sizes: data.vocab_sizes is empty and data.prepared "
            f"({spec.data.prepared!r}) is not readable prepared data ({e}). Set data.vocab_sizes "
            "(rows per table incl. row 0) or run `muse-rec prepare`."
        ) from None
    return dict(data.vocab_sizes), f"{spec.data.prepared}/meta.json"


def _quiet_planner(verbose: bool) -> None:
    # On meta, TorchRec warns about its dense-size estimate and its reservation policy at every
    # plan; the numbers we print already say what the reservation is.
    if not verbose:
        warnings.filterwarnings("ignore", category=FutureWarning)
        logging.getLogger("torchrec.distributed.planner").setLevel(logging.ERROR)


def run(args: argparse.Namespace) -> int:
    from muse_rec.data.files import replace_text
    from muse_rec.output_paths import check_not_an_input, check_output_path
    from muse_rec.spec import SpecError, load_spec

    try:  # the flags, --json and the spec before torch's and TorchRec's imports (seconds): a typo fails at once
        for flag, n in (("--world-size", args.world_size), ("--max-world-size", args.max_world_size)):
            if not 1 <= n <= MAX_PLAN_RANKS:
                raise ValueError(f"{flag} {n}: must be in 1..{MAX_PLAN_RANKS:,} (TorchRec's planner takes ~22 ms and "
                                 "~0.2 MB a rank: 89 s and 0.8 GB at 4,096)")
        if args.local_world_size is not None and not (
                1 <= args.local_world_size <= args.world_size and args.world_size % args.local_world_size == 0):
            raise ValueError(f"--local-world-size {args.local_world_size}: must divide --world-size "
                             f"{args.world_size} (equal hosts)")
        if args.device == "cuda" and (args.local_world_size or 0) > 128:  # planner.MAX_DEVICES_PER_HOST
            raise ValueError(f"--local-world-size {args.local_world_size}: torch numbers at most 128 CUDA devices "
                             "per host")
        for flag, gib in (("--hbm-gib", args.hbm_gib), ("--ddr-gib", args.ddr_gib)):
            if not 0 < gib <= MAX_GIB_PER_RANK:  # also refuses nan and inf
                raise ValueError(f"{flag} {gib}: must be a number > 0 and <= {MAX_GIB_PER_RANK:.0f} (GiB per rank: 1 PiB)")
        world_sizes = parse_world_sizes(args.what_if) if args.what_if is not None else []
        if args.json and args.json != "-":
            args.json = check_output_path(args.json, "--json", directory=False)
            check_not_an_input(args.json, "--json", {"--spec": args.spec})
        spec = load_spec(args.spec, args.set)
    except (SpecError, ValueError) as e:  # OutputPathError is a ValueError
        report("plan", e)
        return 2
    import torch

    from muse_rec.distributed.plan_fit import PlanSetup, attempt, diagnose, format_what_if, what_if
    from muse_rec.distributed.plan_report import format_report, report_to_dict
    from muse_rec.distributed.planner import GiB
    from muse_rec.distributed.rank_memory import planned_batch_size, planned_batch_source, spec_rank_overhead_bytes
    from muse_rec.distributed.sharders import FusedOptimizerConfig, make_sharders
    from muse_rec.models.ctr_model import build_train_model

    _quiet_planner(args.verbose)
    try:
        sizes, source = resolve_vocab_sizes(spec, args.spec, args.prepared or "")
        opt = spec.train.sparse_optimizer
        config = FusedOptimizerConfig(name=opt.name, learning_rate=opt.lr, eps=opt.eps, weight_decay=opt.weight_decay)
        problem = config.problem(args.device)
        if problem is not None:
            field, why = problem
            hint = " (override with --set train.sparse_optimizer.name=exact_row_wise_adagrad)" if field == "name" else ""
            raise ValueError(f"{args.spec}: train.sparse_optimizer.{field}: {why}{hint}")
        sharders = make_sharders(config, args.device)
    except (SpecError, ValueError) as e:
        report("plan", e)
        return 2

    def build(table_sizes: Mapping[str, int]) -> torch.nn.Module:
        return build_train_model(spec.model, table_sizes, seq_len=spec.data.seq_len, device=torch.device("meta"))

    model = build(sizes)
    setup = PlanSetup(
        compute_device=args.device,
        hbm_bytes_per_rank=int(args.hbm_gib * GiB) if args.device == "cuda" else None,
        ddr_bytes_per_rank=int(args.ddr_gib * GiB),
        allow_uvm=not args.no_uvm,
        ranks_per_host=args.local_world_size,
        # What a rank holds outside the tables (CPU: runtime, a step, loader workers, its share of a
        # checkpoint's copy of the trainable tables: rank_memory), as training reserves it, at each
        # world size a what-if row or a search tries.
        rank_overhead=(lambda module, world_size: spec_rank_overhead_bytes(spec, module, args.device, world_size))
        if args.device == "cpu" else None,
        # The run's largest batch per rank, as training sizes its plan: TorchRec's default of 512 sized
        # every plan's lookup buffers as if the spec's batch did not matter.
        batch_size=planned_batch_size(spec),
    )
    main = attempt(model, setup, args.world_size, sharders, verbose=args.verbose)
    out: Dict = {"spec": args.spec, "name": spec.name, "vocab_sizes": sizes, "vocab_source": source,
                 "setup": {"world_size": args.world_size, "ranks_per_host": setup.local_world_size(args.world_size),
                           "device": args.device, "hbm_gib": args.hbm_gib,
                           "ddr_gib": args.ddr_gib, "allow_uvm": setup.allow_uvm,
                           "batch_size_per_rank": setup.batch_size},
                 "fits": main.fits, "plan": None, "what_if": [], "diagnosis": None}
    to_stdout = args.json == "-"
    say = (lambda s: print(s, file=sys.stderr)) if to_stdout else print
    say(f"spec {args.spec} ({spec.name}); table sizes from {source}; batch {setup.batch_size:,} samples per rank "
        f"({planned_batch_source(spec)})")
    if main.report is not None:
        out["plan"] = report_to_dict(main.report)
        say(format_report(main.report))
    if world_sizes:
        rows = what_if(model, setup, world_sizes, sharders)
        out["what_if"] = [
            {"world_size": r.world_size, "ranks_per_host": r.ranks_per_host, "fits": r.fits,
             "max_hbm_bytes": r.max_hbm_bytes,
             "max_ddr_bytes": r.max_ddr_bytes, "reason": r.reason,
             "big_tables": [{"table": t, "sharding_type": s, "compute_kernel": k} for t, s, k in r.big_tables]}
            for r in rows
        ]
        say(f"\nwhat if ({args.device}, {setup.memory()}):")
        say(format_what_if(rows))
    if not main.fits:
        diagnosis = diagnose(build, sizes, setup, args.world_size, sharders, main, limit=args.max_world_size)
        out["diagnosis"] = {
            "message": diagnosis.message(),
            "min_world_size": diagnosis.min_fit.world_size if diagnosis.min_fit else None,
            "min_world_size_with_uvm": diagnosis.uvm_fit.world_size if diagnosis.uvm_fit else None,
            "max_rows": {diagnosis.scaled_table: diagnosis.max_rows},
        }
        print("muse-rec plan: " + diagnosis.message(), file=sys.stderr)
    if args.json:
        text = json.dumps(out, indent=2)
        if to_stdout:
            print(text)
        else:
            try:
                replace_text(args.json, text + "\n")  # an earlier plan stays whole if this write fails
            except OSError as e:
                return report("plan", e, f"--json {args.json}: cannot write: ")
    return 0 if main.fits else 1

"""`muse-rec synth OUT`: write a synthetic Taobao-MM release with planted semantics.

Every `SynthConfig` field is a flag (``--max-seq-len`` for ``max_seq_len``) whose help comes
from the field's documentation; flags override the chosen ``--preset``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from typing import Any, Dict

from muse_rec.cli.errors import report
from muse_rec.cli.flags import int64, nonempty_path
from muse_rec.wording import count

HELP = "write a synthetic Taobao-MM release (six raw tables) with planted long-term semantic interests"


_TYPES = {"int": int64, "float": float, "str": str}  # SynthConfig annotations are strings (PEP 563)


def _config_fields():
    from muse_rec.data.synth_config import SynthConfig

    return list(dataclasses.fields(SynthConfig))


def add_arguments(p: argparse.ArgumentParser) -> None:
    from muse_rec.data.synth_config import SynthConfig

    p.add_argument("out", type=nonempty_path, metavar="OUT",
                   help="output directory (created; a synthetic release in it is replaced, "
                                              "release tables synth did not write are not, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace release tables in OUT even if `muse-rec synth` did not write them")
    p.add_argument("--preset", choices=SynthConfig.PRESETS, default="demo",
                   help="size preset: tiny (unit tests), demo (README demo, ~50k train samples), medium (~5x demo), "
                        "scale (release-shaped, streamed in bounded memory: 30M items, 1M users, ~11M train samples)")
    p.add_argument("--samples", type=int64, default=None, metavar="N",
                   help="train impressions wanted: sets --samples-per-user to N / users (scale preset: ~11M)")
    p.add_argument("--no-diagnostics", action="store_true",
                   help="skip the oracle GAUC diagnostics written to the manifest")
    p.add_argument("--quiet", action="store_true",
                   help="no progress report (a bar on a terminal, one line per stage in a log)")
    p.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    knobs = p.add_argument_group("generator knobs (override the preset; defaults shown are the demo preset's)")
    for f in _config_fields():
        flag = "--" + f.name.replace("_", "-")
        typ = _TYPES[f.type] if isinstance(f.type, str) else f.type
        knobs.add_argument(flag, dest=f"knob_{f.name}", type=typ, default=None,
                           metavar="N" if typ is int64 else "X",
                           help=f"{f.metadata.get('help', '')} (demo: {f.default})".replace("%", "%%"))


def config_from_args(args: argparse.Namespace):
    """The preset named by ``--preset`` with every given knob flag applied."""
    from muse_rec.data.synth_config import SynthConfig

    overrides: Dict[str, Any] = {}
    for f in _config_fields():
        v = getattr(args, f"knob_{f.name}", None)
        if v is not None:
            overrides[f.name] = v
    cfg = SynthConfig.preset(args.preset).replace(**overrides)
    samples = getattr(args, "samples", None)
    if samples is not None:
        if samples < cfg.users:
            raise ValueError(f"--samples {samples} must be >= --users {cfg.users} (every user has an impression)")
        cfg = cfg.replace(samples_per_user=samples / cfg.users)
    return cfg


def as_flags(message: str) -> str:
    """`SynthConfig.validate`'s message in the command line's words: each ``knob=value`` it names is the
    flag that sets it (``items=50000 must be >= clusters=250000`` -> ``--items 50000 must be >= --clusters
    250000``), as a user who gave only ``--items`` (the other from ``--preset``) can act on it."""
    knobs = {f.name for f in _config_fields()}

    def flag(m: "re.Match[str]") -> str:
        return f"--{m.group(1).replace('_', '-')} " if m.group(1) in knobs else m.group(0)

    return re.sub(r"\b([a-z][a-z0-9_]*)=", flag, message.removeprefix("invalid SynthConfig: "))


def run(args: argparse.Namespace) -> int:
    from muse_rec.data.synth import MANIFEST_NAME, write_synthetic_release
    from muse_rec.dirlock import DirLockError
    from muse_rec.output_paths import OutputPathError

    try:
        cfg = config_from_args(args)
        cfg.validate()
    except (ValueError, KeyError) as e:
        print(f"muse-rec synth: {as_flags(str(e))}", file=sys.stderr)
        return 2
    try:
        m = write_synthetic_release(args.out, cfg, progress=not args.quiet,
                                    diagnostics=False if args.no_diagnostics else None, overwrite=args.overwrite)
    except (NotADirectoryError, PermissionError, FileExistsError, DirLockError, OutputPathError) as e:
        report("synth", e)
        return 2
    except OSError as e:  # a full disk: nothing was published (tables are staged, then renamed)
        return report("synth", e, f"cannot write {args.out} (nothing was published): ")
    except MemoryError as e:
        # Sized by the knobs, not by a spec: the generic line named model.* and train.batch_size. The
        # memory writer holds every user's history at once; the stream writer is bounded by a row group.
        hint = ("pass --writer stream (bounded memory) or lower --users / --max-seq-len" if cfg.writer == "memory"
                else "lower these sizes or --user-row-group-rows (users per row group)")
        print(f"muse-rec synth: out of memory ({' '.join(str(e).split())[:200]}) with --writer {cfg.writer}, "
              f"--users {cfg.users:,}, --items {cfg.items:,}, --max-seq-len {cfg.max_seq_len:,}: {hint} "
              "(nothing was published)", file=sys.stderr)
        return 2
    if cfg.writer == "stream" and not args.json:
        st = m["stats"]
        print(f"synthetic Taobao-MM ({args.preset}, streamed, seed {cfg.seed}) -> {args.out}  [{m['seconds']:.1f} s]")
        print(f"  train: {count(st['train_samples'], 'sample')}, {count(st['train_user_rows'], 'user')}, "
              f"{count(st['train_behaviours'], 'behaviour')} (longest {st['max_seq_len_written']})")
        print(f"  test:  {count(st['test_samples'], 'sample')}, {count(st['test_user_rows'], 'user')}, "
              f"{count(st['test_behaviours'], 'behaviour')}")
        print(f"  items: {count(st['item_features_rows'], 'item_features row')}, {count(st['scl_rows'], 'SCL row')}")
        print(f"  ceiling test GAUC (true click model): {m['truth']['test']['gauc']:.4f}")
        print(f"next: muse-rec prepare {args.out} PREPARED")
        return 0
    if args.json:
        print(json.dumps(m, indent=2, sort_keys=True))
        return 0
    st = m["stats"]
    print(f"synthetic Taobao-MM ({args.preset}, seed {cfg.seed}) -> {args.out}  [{m['seconds']:.1f} s]")
    print(f"  train: {count(st['train_samples'], 'sample')}, {count(st['train_users'], 'user')}, "
          f"{st['train_positive_rate']:.1%} positives, sequence length mean {st['train_seq_len']['mean']:.0f} "
          f"(max {st['train_seq_len']['max']})")
    print(f"  test:  {count(st['test_samples'], 'sample')}, {count(st['test_users'], 'user')} "
          f"({st['test_users_unseen_in_train']:,} unseen in train), {st['test_positive_rate']:.1%} positives")
    print(f"  items: {st['items_occurring']:,} ({st['item_features_rows']:,} with item_features, "
          f"{st['scl_rows']:,} with SCL vectors covering {st['scl_behaviour_coverage']:.0%} of behaviours), "
          f"{count(st['categories_used'], 'category', 'categories')}")
    print(f"  ceiling test GAUC (true click model): {m['truth']['test']['gauc']:.4f}")
    d = m.get("diagnostics")
    if d:
        print(f"  oracle test GAUC: SCL top-{d['top_k']} whole history {d['scl_topk_whole']['gauc']:.4f} | "
              f"newest {d['recent']} only {d['scl_topk_recent']['gauc']:.4f} | "
              f"category match {d['category_whole']['gauc']:.4f}")
    print(f"  manifest: {args.out.rstrip('/')}/{MANIFEST_NAME}")
    print(f"next: muse-rec prepare {args.out} PREPARED")
    return 0

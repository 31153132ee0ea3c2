"""`muse-rec`: one console script, one sub-command per module of this package.

Each sub-command lives in ``muse_rec/cli/<name>.py`` and defines ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only when their
command runs, so `muse-rec info` stays fast and works even when a heavy dependency is broken.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from typing import List, Optional

# Order shown in --help: the flow of a run.
COMMANDS = ["info", "synth", "prepare", "baselines", "train", "evaluate", "plan", "export", "rank", "compare",
            "reproduce"]


def _available() -> List[str]:
    return [c for c in COMMANDS if importlib.util.find_spec(f"muse_rec.cli.{c}") is not None]


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="muse-rec",
        description="MUSE lifelong user-interest CTR models on TorchRec. "
        "Typical flow: synth|prepare -> train -> evaluate -> export/rank.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name in _available():
        # Import only the chosen command's module; the others show a one-line help.
        if name == chosen:
            mod = importlib.import_module(f"muse_rec.cli.{name}")
            p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
        else:
            sub.add_parser(name, help=_help_line(name), add_help=False)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0 if args.command is None else 2
    return int(args._run(args) or 0)


def _help_line(name: str) -> str:
    """The HELP line of a command module, read from its source without importing it."""
    spec = importlib.util.find_spec(f"muse_rec.cli.{name}")
    try:
        for line in open(spec.origin, encoding="utf-8"):  # type: ignore[union-attr]
            if line.startswith("HELP = "):
                return line[len("HELP = ") :].strip().strip("\"'")
    except OSError:
        pass
    return ""


if __name__ == "__main__":
    sys.exit(main())

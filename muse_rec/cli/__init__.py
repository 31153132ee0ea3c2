"""`muse-rec`: one console script, one sub-command per module of this package.

Each sub-command lives in ``muse_rec/cli/<name>.py`` and defines ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only when their
command runs, so `muse-rec info` stays fast and works even when a heavy dependency is broken.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import os
import select
import signal
import sys
import threading
import warnings
from typing import List, NoReturn, Optional

# Order shown in --help: the flow of a run.
COMMANDS = ["info", "synth", "prepare", "check", "baselines", "train", "launch", "evaluate", "plan", "export", "rank",
            "compare", "reproduce"]


def _available() -> List[str]:
    return [c for c in COMMANDS if importlib.util.find_spec(f"muse_rec.cli.{c}") is not None]


class _OneLineParser(argparse.ArgumentParser):
    """argparse with its usage errors as every other bad input here: one line naming the flag,
    ``muse-rec <command>: <what> (see muse-rec <command> --help)``, exit 2 (not the usage block)."""

    def error(self, message: str) -> "NoReturn":  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: {' '.join(message.split())} (see {self.prog} --help)\n")
        sys.exit(2)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _OneLineParser(
        prog="muse-rec",
        description="MUSE lifelong user-interest CTR models on TorchRec. "
        "Typical flow: synth|prepare -> train -> evaluate -> export/rank.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    argv = _end_of_options(argv, parser)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    command_parser: argparse.ArgumentParser = parser
    for name in _available():
        # Import only the chosen command's module; the others show a one-line help.
        if name == chosen:
            mod = importlib.import_module(f"muse_rec.cli.{name}")
            command_parser = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
            mod.add_arguments(command_parser)
            command_parser.set_defaults(_run=mod.run)
        else:
            sub.add_parser(name, help=_help_line(name), add_help=False)
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # named by the command they were given to (argparse names only "muse-rec")
        command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if not getattr(args, "_run", None):
        # No command is a usage error (argparse's exit 2), not a request for help (`--help`, exit 0):
        # a script whose command word went missing (an empty variable) ran nothing and looked successful.
        parser.print_help(sys.stderr)
        return 2
    previous, warnings.formatwarning = warnings.formatwarning, _one_line_warning(args.command)
    previous_term = _terminate_as_interrupt()
    try:
        return int(args._run(args) or 0)
    except (MemoryError, RuntimeError) as e:
        from muse_rec.cli.errors import lost_a_peer, report_lost_peer, report_waited_past_timeout, waited_past_timeout

        if lost_a_peer(e):  # another rank ended (bad data only it read, a kill): its own line says why
            return report_lost_peer(args.command, e)
        if waited_past_timeout(e):  # another rank hung: it cannot say why, so this rank names it
            return report_waited_past_timeout(args.command, e)
        # What runs out is what the spec or the input sized (a spec's model.esu.num_tiers = 1e9
        # asked for tens of GB, export --seq-len 1e12 for 8 TB): a line saying so, not a traceback.
        if not _out_of_memory(e):
            raise
        detail = f" ({' '.join(str(e).split())[:200]})" if str(e) else ""
        sys.stderr.write(f"muse-rec {args.command}: out of memory{detail}: the spec or its input asks for more than "
                         "this machine holds; check their sizes (model.*, data.seq_len, train.batch_size, a flag such as "
                         "--seq-len)\n")
        return 2
    except FileNotFoundError as e:
        # torch (and TorchRec through it) picks its cache directory at import: with no writable
        # temporary directory (a full disk, a read-only /tmp) Python's tempfile raises this, before
        # the command has done anything. The environment, not a bug: say what to change.
        if "No usable temporary directory" not in str(e):
            raise
        sys.stderr.write(f"muse-rec {args.command}: {' '.join(str(e).split())}: torch needs one to start; free space "
                         "there or point TMPDIR at a writable directory with free space\n")
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C is the user's choice, not a bug: a line saying what to do, not a traceback
        sys.stderr.write(f"\nmuse-rec {args.command}: interrupted{_AFTER_AN_INTERRUPT.get(args.command, '')}\n")
        return 128 + (signal.SIGTERM if isinstance(e, _Terminated) else signal.SIGINT)  # the shell's convention
    except BrokenPipeError:
        # The reader of the output went away (`muse-rec rank ... | head`): end quietly, as a Unix
        # tool killed by SIGPIPE does. Any other broken pipe (a worker's, a peer's) is a real error.
        closed = [fd for fd in (1, 2) if _pipe_closed(fd)]
        if not closed:
            raise
        devnull = os.open(os.devnull, os.O_WRONLY)
        for fd in closed:  # else Python reports the failed flush of the closed stream at exit
            os.dup2(devnull, fd)
        return 141  # 128 + SIGPIPE, the shell's convention
    finally:  # main() also runs in-process (tests, notebooks): leave the caller's format and handler as they were
        warnings.formatwarning = previous
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)


def _end_of_options(argv: List[str], parser: argparse.ArgumentParser) -> List[str]:
    """``argv`` without a ``--`` given before the command word: it ends muse-rec's own options, so the
    word after it is the command (``muse-rec -- info`` runs `info`, as POSIX utilities read ``--``);
    argparse took the ``--`` itself for the command ("invalid choice: '--'"). A ``--`` after the command
    word is the command's own. A word after ``--`` is a command even where it starts with a dash:
    ``muse-rec -- --help`` names no command (a usage error) and asks for no help."""
    for i, arg in enumerate(argv):
        if arg == "--":
            rest = argv[i + 1:]
            if rest and rest[0].startswith("-"):
                parser.error(f"argument COMMAND: invalid choice: {rest[0]!r} (choose from "
                             f"{', '.join(map(repr, _available()))})")
            return argv[:i] + rest
        if not arg.startswith("-"):
            break  # the command word
    return argv


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a cluster's preemption, ``kill PID``), raised where Python was and handled as Ctrl-C is."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated()


def _terminate_as_interrupt() -> Optional[object]:
    """Make SIGTERM end the command as Ctrl-C does (its cleanup, then one line saying how to go on,
    exit 143): it ended silently. Not in a torchrun rank, whose torchrun sends SIGTERM to stop it and
    escalates to SIGKILL only after a wait, which a rank blocked in a collective would then cost; not
    off the main thread (no handler can be set there). Returns the previous handler (None: unchanged)."""
    from muse_rec.lifetime import TORCHRUN_WORKER_ENV

    if TORCHRUN_WORKER_ENV in os.environ or threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


# torch's RuntimeErrors for a tensor larger than any machine holds: a failed CPU allocation, and a
# size whose bytes overflow int64 before any allocation (export --seq-len 2**62 was a traceback).
_TORCH_TOO_LARGE = ("DefaultCPUAllocator: can't allocate memory", "Storage size calculation overflowed")


def _out_of_memory(e: BaseException) -> bool:
    """Python's MemoryError, or torch's: a failed CPU allocation (or one too large to size) is a
    RuntimeError that says so, a CUDA one a ``torch.OutOfMemoryError`` (named, not imported: torch
    may not be loaded)."""
    return (isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError"
            or (type(e) is RuntimeError and any(m in str(e) for m in _TORCH_TOO_LARGE)))


def _pipe_closed(fd: int) -> bool:
    """Whether `fd` is a pipe whose reading end is closed (poll reports an error on it)."""
    try:
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no poll() (not Linux/macOS) or no such fd
        return False


# What an interrupted command leaves and how to go on (docs/data.md, docs/reproduce.md, run_dir.py).
_AFTER_AN_INTERRUPT = {
    "train": ("; --resume continues it from its last checkpoint (one every train.checkpoint_every steps; "
              "without one, from step 0), --overwrite starts over"),
    "prepare": "; run the same command again: it skips the steps already done",
    "reproduce": "; run the same command again: it skips the runs already done and resumes the others",
}


def _one_line_warning(command: str):
    """A warning as one line: muse_rec's own say what happened to the user's data and need no
    source location; a library's keep ``file:line`` but not the echoed source line."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def format_warning(message, category, filename, lineno, line=None) -> str:
        if os.path.abspath(filename).startswith(package + os.sep):
            return f"muse-rec {command}: warning: {message}\n"
        return f"{filename}:{lineno}: {category.__name__}: {' '.join(str(message).split())}\n"

    return format_warning


def _help_line(name: str) -> str:
    """The HELP line of a command module, read from its source without importing it.

    The assignment is parsed, not cut out of its first line: a HELP written over several
    lines (a parenthesised concatenation) is one string, shown whole.
    """
    spec = importlib.util.find_spec(f"muse_rec.cli.{name}")
    try:
        with open(spec.origin, encoding="utf-8") as f:  # type: ignore[union-attr]
            tree = ast.parse(f.read(), filename=spec.origin)  # type: ignore[union-attr]
    except (OSError, SyntaxError, ValueError):
        return ""
    for node in tree.body:
        if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "HELP" for t in node.targets)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            return node.value.value
    return ""


if __name__ == "__main__":
    sys.exit(main())

"""argparse value types and checks shared by the benchmark scripts.

A bad flag value (0 timed repetitions, a negative size, a file where the output folder goes, a
prepared directory that is not one, CUDA on a machine without it) is argparse's one-line error
naming the flag, exit 2, before anything is measured: it was a traceback, sometimes minutes into
a run whose results were then lost.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, List


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:  # argparse's own wording for type=int
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None


def at_least(minimum: int) -> Callable[[str], int]:
    """Type of an integer flag whose value must be >= ``minimum``."""
    def parse(text: str) -> int:
        value = _int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value}: must be >= {minimum}")
        return value
    return parse


def int_list(minimum: int) -> Callable[[str], List[int]]:
    """Type of a comma-separated list of integers, each >= ``minimum`` (``--world-sizes 1,2``)."""
    def parse(text: str) -> List[int]:
        values = [_int(x.strip()) for x in text.split(",") if x.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"{text!r}: give at least one integer (comma-separated)")
        low = [v for v in values if v < minimum]
        if low:
            raise argparse.ArgumentTypeError(f"{low[0]}: must be >= {minimum}")
        return values
    return parse


def prepared_dir(text: str) -> str:
    """Type of a flag naming `muse-rec prepare`'s output: a directory holding meta.json."""
    if not (Path(text) / "meta.json").is_file():
        raise argparse.ArgumentTypeError(f"{text}: no meta.json there, not a prepared directory "
                                         "(run `muse-rec prepare RAW PREPARED` first)")
    return text


def prepared_dir_flag(parser: argparse.ArgumentParser, path: str) -> None:
    """parser.error unless ``--prepared`` names prepared data (`prepared_dir`), checked after parsing, not as
    the flag's type: a job's own ranks are started with the same flag and check nothing."""
    try:
        prepared_dir(path)
    except argparse.ArgumentTypeError as e:
        parser.error(f"argument --prepared: {e}")


def same_length(parser: argparse.ArgumentParser, a: str, a_values: List[int], b: str, b_values: List[int]) -> None:
    """parser.error unless the per-entry flag ``b`` gives one value per entry of ``a``."""
    if len(a_values) != len(b_values):
        parser.error(f"{b} needs one count per {a} entry: {len(b_values)} given for {len(a_values)}")


def output_dir(parser: argparse.ArgumentParser, flag: str, path: Path) -> Path:
    """Create the folder ``path`` (``flag``'s value) before any measurement; parser.error if it
    cannot be one (a file there, no permission): found at the end, the run's figures were lost."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        parser.error(f"{flag} {path}: a file is there, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        parser.error(f"{flag} {path}: cannot create the directory ({e.strerror})")
    return path


def require_cuda(parser: argparse.ArgumentParser, device: str) -> None:
    """parser.error when ``--device cuda`` is asked for on a machine where torch sees no GPU."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device on this machine "
                     "(torch.cuda.is_available() is False); use --device cpu")

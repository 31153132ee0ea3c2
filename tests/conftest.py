"""Shared test fixtures: paths to the licensed Taobao-MM fixtures (never committed) and helpers."""
from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Callable, Type

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures" / "taobao_mm_demo"


@pytest.fixture
def taobao_fixtures() -> Path:
    """The six raw 10-row Taobao-MM tables (licensed data that lives beside the repo, not in it)."""
    if not (FIXTURES / "train_samples.parquet").exists():
        pytest.skip(f"Taobao-MM fixtures not found at {FIXTURES} (they live in ../shared/fixtures, present in CI)")
    return FIXTURES


def venv_bin(name: str) -> str:
    """A console script of the interpreter running the tests (the project's .venv)."""
    return str(Path(sys.executable).parent / name)


def subprocess_env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra)
    return env


FIFO_WAIT_S = 10  # seconds: far longer than any call below takes when it does not block


def error_of_call_unblocking_fifos(call: Callable[[], object], root: Path, error: Type[BaseException]) -> str:
    """The text of the ``error`` that ``call()`` raises ("" if none). A call still blocked after a wait (it
    opened a FIFO under ``root`` to read it, and a FIFO's reader waits for a writer) is released by opening
    every FIFO there for writing, and the test fails: the code under test read a FIFO it should refuse."""
    result: dict = {}

    def run() -> None:
        try:
            call()
        except error as e:
            result["error"] = str(e)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(FIFO_WAIT_S)
    if worker.is_alive():
        for fifo in (p for p in root.rglob("*") if p.is_fifo()):
            with open(fifo, "w"):
                pass
        worker.join(FIFO_WAIT_S)
        pytest.fail(f"blocked reading a FIFO under {root} ({result})")
    return result.get("error", "")


def memory_mapped_scl(tmp_path: Path, rows: int = 1 << 14):
    """``(scl, table, mapped)``: a fresh `FrozenSCL` of ``rows`` rows, random int8 SCL rows ``table [rows, dim]``
    (row 0 zero, as prepare writes the padding row) and the same rows memory-mapped read-only from an .npy file
    in ``tmp_path``, as `PreparedData.scl()` hands them to loading and export."""
    import numpy as np

    from muse_rec.models.frozen_scl import FrozenSCL

    scl = FrozenSCL(num_rows=rows)
    table = np.random.default_rng(0).integers(-127, 128, size=(rows, scl.dim), dtype=np.int8)
    table[0] = 0
    np.save(tmp_path / "scl.npy", table)
    return scl, table, np.load(tmp_path / "scl.npy", mmap_mode="r")

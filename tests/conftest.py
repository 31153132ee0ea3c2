"""Shared test fixtures: paths to the licensed Taobao-MM fixtures (never committed) and helpers."""
from __future__ import annotations

import os
import sys
from pathlib import Path

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

"""Robustness fixtures: one tiny prepared dataset and one short trained run (+ export) per session.

Every test here feeds a CLI a bad input or a fault and checks: exit code 2, one line naming
the culprit, no traceback, nothing already written changed.
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

import pytest

from tests.conftest import REPO, subprocess_env
from tests.fast_cli import fast_cli

SPEC = "specs/demo/din.yaml"  # the cheapest method: every test here is about files, not modelling
FAST = ["data.seq_len=50", "train.batch_size=64", "train.eval_batch_size=512", "train.log_every=1",
        "model.tower_hidden=[16]", "train.eval_at_end=false"]


TIMEOUT_S = 300


def cli(*args: str, timeout: int = TIMEOUT_S, **env: str) -> subprocess.CompletedProcess:
    """`muse-rec <args>` as the user sees it: exit code, stdout, stderr. Unless the call sets environment
    variables, a command that only reads runs in this process (tests/in_process.py: what that keeps of a
    subprocess, and why: ~3.5 s of imports a call; given no timeout of its own) and `train` in a process forked
    from one that did the imports (tests/forked_cli.py), both chosen by tests/fast_cli.py; the others in a
    subprocess."""
    fast = None if env else fast_cli(args, timeout, TIMEOUT_S)
    return fast if fast is not None else _python(["-m", "muse_rec.cli", *args], timeout, env)


# A fresh interpreter where importing torch fails: a command that reaches torch's (or TorchRec's)
# import before it refuses a bad input raises ImportError instead of its one line.
_WITHOUT_TORCH = "import sys; sys.modules['torch'] = None; from muse_rec.cli import main; sys.exit(main(sys.argv[1:]))"


def cli_without_torch(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """`muse-rec <args>` in a subprocess that cannot import torch."""
    return _python(["-c", _WITHOUT_TORCH, *args], timeout, {})


def _python(argv: Sequence[str], timeout: int, env: Dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=subprocess_env(**env))


def assert_bad_input(out: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit 2, no traceback, and the one-line message names every needle."""
    assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    msg = [ln for ln in out.stderr.splitlines() if ln.startswith("muse-rec ")]
    assert any(all(n in ln for n in needles) for ln in msg), (needles, msg, out.stderr[-2000:])


def snapshot(root: Path) -> Dict[str, str]:
    """{relative path: sha256} of every file under ``root`` (to prove nothing changed).

    The run directory's lock file is left out: each run that takes the lock writes its holder
    info there, by design."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def sets(prepared: Path, runs: Path, extra: Sequence[str] = ()) -> List[str]:
    out: List[str] = []
    for ov in [f"data.prepared={prepared}", f"output_dir={runs}/{{name}}", *FAST, *extra]:
        out += ["--set", ov]
    return out


@dataclass
class Trained:
    prepared: Path
    runs: Path
    exported: Path

    @property
    def run_dir(self) -> Path:
        return self.runs / "din"

    def sets(self, extra: Sequence[str] = ()) -> List[str]:
        return sets(self.prepared, self.runs, extra)

    def copy_run(self, dest: Path) -> Path:
        """A private copy of the trained run root (tests that change it must not share it)."""
        shutil.copytree(self.runs, dest)
        return dest


@pytest.fixture(scope="session")
def prepared_tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("robust_data")
    for args in (["synth", str(root / "raw"), "--preset", "tiny", "--quiet", "--no-diagnostics"],
                 ["prepare", str(root / "raw"), str(root / "prepared"), "--no-progress"]):
        out = cli(*args)
        assert out.returncode == 0, out.stderr[-3000:]
    return root / "prepared"


@pytest.fixture(scope="session")
def trained(prepared_tiny, tmp_path_factory) -> Trained:
    root = tmp_path_factory.mktemp("robust_run")
    t = Trained(prepared=prepared_tiny, runs=root / "runs", exported=root / "exported")
    out = cli("train", "--spec", SPEC, *t.sets(["train.max_steps=2"]), "--device", "cpu")
    assert out.returncode == 0, out.stderr[-3000:]
    out = cli("export", "--spec", SPEC, *t.sets(), "--out", str(t.exported))
    assert out.returncode == 0, out.stderr[-3000:]
    return t

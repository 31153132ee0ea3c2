"""A tiny synthetic release, prepared once per session, and helpers to run training jobs."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import List, Sequence

import pytest
import torch

from muse_rec.data.prepared import PreparedData
from muse_rec.distributed.env import free_port
from muse_rec.models.ctr_model import LifelongCTRModel
from muse_rec.spec import load_spec
from tests.conftest import REPO, subprocess_env, venv_bin
from tests.fast_cli import fast_cli

# Small enough that a 2-rank job takes seconds: L = 100, batch 64.
FAST = ["data.seq_len=100", "train.batch_size=64", "train.eval_batch_size=256", "train.log_every=2",
        "model.tower_hidden=[64,32]"]


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    raw, prep = root / "raw", root / "prepared"
    for cmd in (["synth", str(raw), "--preset", "tiny", "--quiet", "--no-diagnostics"],
                ["prepare", str(raw), str(prep), "--no-progress"]):
        out = subprocess.run([venv_bin("muse-rec"), *cmd], capture_output=True, text=True, env=subprocess_env())
        assert out.returncode == 0, out.stderr[-3000:]
    return prep


def overrides(prepared: Path, out_dir: Path, extra: Sequence[str] = ()) -> List[str]:
    return [f"data.prepared={prepared}", f"output_dir={out_dir}/{{name}}", *FAST, *extra]


TIMEOUT_S = 600


def run_ranks(args: Sequence[str], nproc: int, env_extra: dict | None = None, check: bool = True,
              timeout: int = TIMEOUT_S, torchrun_args: Sequence[str] = ()) -> subprocess.CompletedProcess:
    """`muse-rec <args>` on `nproc` gloo ranks through torchrun, with ``torchrun_args`` (e.g. ``--max-restarts
    1``) before torchrun's own. One rank given no environment of its own is this process for a command that
    only reads a run (tests/in_process.py; given no timeout either) or, for `train`, a process forked from one
    that did the imports (tests/forked_cli.py), as tests/fast_cli.py chooses; else a plain process."""
    fast = fast_cli(args, timeout, TIMEOUT_S) if nproc == 1 and not env_extra else None
    if fast is not None:
        out = fast
    elif nproc == 1:
        out = _run([venv_bin("muse-rec"), *args], timeout, env_extra)
    else:
        cmd = [venv_bin("torchrun"), *torchrun_args, "--nnodes", "1", "--nproc_per_node", str(nproc),
               "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{free_port()}",
               "-m", "muse_rec.cli", *args]
        out = _run(cmd, timeout, env_extra)
    if check:
        assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-4000:])
    return out


def _run(cmd: Sequence[str], timeout: int, env_extra: dict | None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=timeout,
                          env=subprocess_env(**(env_extra or {})))


def train_args(spec: str, prepared: Path, out_dir: Path, extra: Sequence[str] = ()) -> List[str]:
    args = ["train", "--spec", spec]
    for ov in overrides(prepared, out_dir, extra):
        args += ["--set", ov]
    return args


def metrics(path: Path) -> dict:
    return json.loads((path / "metrics.json").read_text())


def build_model(spec_file: str, prepared: Path, extra: Sequence[str] = (), seq_len: int = 100,
                seed: int = 0) -> LifelongCTRModel:
    """`LifelongCTRModel` of ``specs/<spec_file>`` (plus ``extra`` overrides) over ``prepared``'s
    vocabularies, with the init drawn after ``torch.manual_seed(seed)``."""
    spec = load_spec(REPO / "specs" / spec_file, [f"data.seq_len={seq_len}", *extra])
    torch.manual_seed(seed)
    return LifelongCTRModel(spec.model, PreparedData(str(prepared)).vocab_sizes, seq_len=seq_len)

"""Run a worker module on N gloo ranks as separate processes (what torchrun would start)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from muse_rec.distributed.env import free_port

REPO = Path(__file__).resolve().parents[2]


def run_worker_ranks(module: str, out_dir: Path, world: int = 2, timeout: int = 300) -> None:
    """``python -m module out_dir`` on ranks 0..world-1 with the rendezvous variables set; fails
    the test with the rank's output tail when one exits non-zero or times out."""
    port = str(free_port())
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                   LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                   OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
        procs.append(subprocess.Popen([sys.executable, "-m", module, str(out_dir)], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = []
    for p in procs:
        try:
            outputs.append(p.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"{world}-rank {module} timed out")
    for rank, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"rank {rank} failed:\n{out[-4000:]}"

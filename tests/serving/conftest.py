"""Session fixtures: one tiny trained run (synth -> prepare -> train 5 steps) and its export.

Built once per test session under pytest's tmp dir (~40 s on a 2-core box); every serving
test reads it.
"""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, subprocess_env

SPEC = REPO / "specs" / "demo" / "muse.yaml"
SEQ_LEN = 200


@dataclass
class TrainedRun:
    prepared: Path
    run_root: Path
    exported: Path

    @property
    def overrides(self) -> list:
        return [f"data.prepared={self.prepared}", f"output_dir={self.run_root}/{{name}}", f"data.seq_len={SEQ_LEN}"]

    def spec(self):
        from muse_rec.spec import load_spec

        return load_spec(SPEC, self.overrides)

    def cli_sets(self) -> list:
        out = []
        for o in self.overrides:
            out += ["--set", o]
        return out


def _cli(*args: str) -> None:
    cmd = [sys.executable, "-m", "muse_rec.cli", *args]
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> TrainedRun:
    root = tmp_path_factory.mktemp("serving_run")
    run = TrainedRun(prepared=root / "prep", run_root=root / "runs", exported=root / "exported")
    _cli("synth", str(root / "raw"), "--preset", "tiny")
    _cli("prepare", str(root / "raw"), str(run.prepared))
    _cli("train", "--spec", str(SPEC), *run.cli_sets(), "--set", "train.batch_size=128", "--set", "train.max_steps=5",
         "--set", "train.eval_at_end=false", "--device", "cpu")
    _cli("export", "--spec", str(SPEC), *run.cli_sets(), "--out", str(run.exported))
    return run


@pytest.fixture(scope="session")
def trained_model(trained_run):
    """The trained `LifelongCTRModel` (CPU, eval, SCL loaded) and the prepared data."""
    from muse_rec.data.prepared import PreparedData
    from muse_rec.serving.export import load_trained_model

    data = PreparedData(str(trained_run.prepared))
    model, _ = load_trained_model(trained_run.spec(), data)
    return model, data

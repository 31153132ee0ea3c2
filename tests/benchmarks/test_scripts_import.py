"""Every benchmark script imports: docs cite their figures and tell users to re-run them, and a
renamed function left `bench_integrity.py` failing on its first line (`_hash_files`, since renamed
`hash_files`) while no test imported it."""
from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import subprocess_env

SCRIPTS = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "benchmarks").glob("*.py")
                 if p.stem != "__init__")


def test_the_scripts_are_found():
    assert {"bench_integrity", "accuracy_study", "run_all"} <= set(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_script_imports(name):
    module = importlib.import_module(f"benchmarks.{name}")
    assert callable(getattr(module, "main", None)) or name in ("plain_torch_muse", "args"), \
        f"benchmarks/{name}.py has no main()"


def test_bench_integrity_names_a_missing_dir(tmp_path, capsys):
    """`--dir` that does not exist ended in tempfile's FileNotFoundError traceback."""
    bench = importlib.import_module("benchmarks.bench_integrity")
    with pytest.raises(SystemExit) as e:
        bench.main(["--dir", str(tmp_path / "absent"), "--files", "1", "--mb", "1", "--reps", "1"])
    assert e.value.code == 2
    assert f"--dir {tmp_path / 'absent'}: no such directory" in capsys.readouterr().err


def test_bench_export_exports_loads_and_scores(tmp_path):
    """The benchmark writes its program as `muse-rec export` does: its own hand-written manifest had
    drifted from what the loader requires (no `format`, no SHA256SUMS.json), and the script failed
    before timing anything while only its import was tested."""
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, str(repo / "benchmarks" / "bench_export.py"), "--out", str(tmp_path),
                          "--candidates", "3", "--reps", "1", "--seq-len", "64", "--items", "300"],
                         capture_output=True, text=True, cwd=repo, env=subprocess_env(OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-2000:]
    (row,) = json.loads((tmp_path / "bench_export.json").read_text())["rows"]
    assert row["candidates"] == 3 and row["float_ms"] > 0 and row["exported_ms"] > 0

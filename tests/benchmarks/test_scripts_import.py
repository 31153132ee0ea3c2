"""Every benchmark script imports: docs cite their figures and tell users to re-run them, and a
renamed function left `bench_integrity.py` failing on its first line (`_hash_files`, since renamed
`hash_files`) while no test imported it."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest

SCRIPTS = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "benchmarks").glob("*.py")
                 if p.stem != "__init__")


def test_the_scripts_are_found():
    assert {"bench_integrity", "accuracy_study", "run_all"} <= set(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_script_imports(name):
    module = importlib.import_module(f"benchmarks.{name}")
    assert callable(getattr(module, "main", None)) or name in ("plain_torch_muse", "report_md"), \
        f"benchmarks/{name}.py has no main()"


def test_bench_integrity_names_a_missing_dir(tmp_path, capsys):
    """`--dir` that does not exist ended in tempfile's FileNotFoundError traceback."""
    bench = importlib.import_module("benchmarks.bench_integrity")
    with pytest.raises(SystemExit) as e:
        bench.main(["--dir", str(tmp_path / "absent"), "--files", "1", "--mb", "1", "--reps", "1"])
    assert e.value.code == 2
    assert f"--dir {tmp_path / 'absent'}: no such directory" in capsys.readouterr().err

"""bench_sparse_optimizer on a tiny synthetic release: both optimizers timed side by side in one job."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import bench_sparse_optimizer


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> str:
    from muse_rec.data.prepare import PrepareConfig, prepare
    from muse_rec.data.synth import SynthConfig, write_synthetic_release

    root = tmp_path_factory.mktemp("bench_sparse_tiny")
    write_synthetic_release(str(root / "raw"), SynthConfig.preset("tiny"))
    prepare(str(root / "raw"), str(root / "prepared"), PrepareConfig(progress=False))
    return str(root / "prepared")


def test_rows_for_both_optimizers(prepared: str, tmp_path: Path, capsys) -> None:
    assert bench_sparse_optimizer.main(["--prepared", prepared, "--out", str(tmp_path), "--world-sizes", "1",
                                        "--batch-size", "64", "--seq-len", "100", "--warmup", "1", "--steps", "2",
                                        "--rounds", "2", "--prebuilt", "2"]) == 0
    rows = json.loads((tmp_path / "bench_sparse_optimizer.json").read_text())
    by = {r["optimizer"]: r for r in rows}
    assert set(by) == {"adam", "exact_row_wise_adagrad"}
    for r in rows:
        assert r["steps_timed"] == 4 and r["samples_per_s"] == pytest.approx(64e3 / r["step_ms_median"])
        assert len(r["loadavg_before"]) == 3
    assert by["exact_row_wise_adagrad"]["step_time_vs_exact_row_wise_adagrad"] == 1.0
    # Only the Adam job runs RowSparseAdam, and its step() is part of the step it was timed in.
    assert 0 < by["adam"]["row_sparse_adam_step_ms_median"] < by["adam"]["step_ms_median"]
    assert "row_sparse_adam_step_ms_median" not in by["exact_row_wise_adagrad"]
    assert "W=1 adam" in capsys.readouterr().out


def test_bad_flags_are_one_line_errors(tmp_path: Path, capsys) -> None:
    """An unknown --method, --steps 0 (the median of no steps) or a --prepared that is not prepared
    data failed inside the first job's ranks, a BenchError traceback; each is refused in one line
    naming the flag (exit 2) before a job starts."""
    from tests.benchmarks.test_bench_bad_flags import refused, refuses_unprepared

    ok = refuses_unprepared(capsys, "bench_sparse_optimizer", tmp_path)
    assert "--method: invalid choice: 'dien'" in refused(capsys, "bench_sparse_optimizer", ["--method", "dien", *ok])
    assert "--steps: 0: must be >= 1" in refused(capsys, "bench_sparse_optimizer", ["--steps", "0", *ok])
    assert "--world-sizes: 0: must be >= 1" in refused(capsys, "bench_sparse_optimizer", ["--world-sizes", "0", *ok])
    assert not (tmp_path / "o").exists()


def test_a_split_too_small_is_refused_before_the_job(prepared: str, tmp_path: Path, capsys) -> None:
    """Fewer train batches per rank than --prebuilt + 1 was a BenchError traceback from inside the
    job's rank ('only 3 train batches per rank, need 5')."""
    from tests.benchmarks.test_bench_bad_flags import refused

    err = refused(capsys, "bench_sparse_optimizer", ["--prepared", prepared, "--out", str(tmp_path / "o"),
                                                     "--world-sizes", "1", "--batch-size", "2000", "--seq-len", "50",
                                                     "--prebuilt", "4"])
    assert "train batches per rank at --batch-size 2000 on 1 process(es), --prebuilt 4 needs 5" in err
    assert not (tmp_path / "o").exists()

"""A benchmark given a bad flag value says which flag and why in one line and exits 2, before it
measures anything: each was a traceback (ZeroDivisionError, ValueError, FileExistsError, an
UnboundLocalError), some only after minutes of measuring, whose figures were then lost."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import List

import pytest


def refused(capsys, script: str, argv: List[str]) -> str:
    """The one error line of ``benchmarks/<script>.py argv`` (it must exit 2 through argparse)."""
    module = importlib.import_module(f"benchmarks.{script}")
    with pytest.raises(SystemExit) as e:
        module.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err)
    return err[-1]


def refuses_unprepared(capsys, script: str, tmp_path: Path) -> List[str]:
    """Checks that ``script`` refuses a --prepared without meta.json; returns the flags of a directory
    that passes that check (a bare meta.json: the flags checked next are refused before it is read)."""
    missing = ["--prepared", str(tmp_path / "none"), "--out", str(tmp_path / "o")]
    assert f"--prepared: {tmp_path / 'none'}: no meta.json there" in refused(capsys, script, missing)
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "meta.json").write_text("{}")
    return ["--prepared", str(tmp_path / "p"), "--out", str(tmp_path / "o")]


def test_bench_scale_bad_flags(tmp_path: Path, capsys) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    d = ["--data", str(tmp_path / "d"), "--out", str(tmp_path / "o")]
    assert "--sizes: 0: must be >= 1" in refused(capsys, "bench_scale", ["--sizes", "0", *d])  # ZeroDivisionError
    assert "--sizes: invalid int value: 'abc'" in refused(capsys, "bench_scale", ["--sizes", "abc", *d])
    assert "--batch-rows: 0: must be >= 1" in refused(capsys, "bench_scale", ["--quick", "--batch-rows", "0", *d])
    assert "--plan-check: -5: must be >= 0" in refused(capsys, "bench_scale", ["--plan-check", "-5", *d])
    assert "--world-sizes: 0: must be >= 1" in refused(capsys, "bench_scale",
                                                         ["--plan-check", "1000", "--world-sizes", "0", *d])
    assert f"--train-check: {tmp_path / 'none'}: no meta.json there" in refused(
        capsys, "bench_scale", ["--train-check", str(tmp_path / "none"), *d])
    assert f"--out {a_file}: a file is there, not a directory" in refused(
        capsys, "bench_scale", ["--quick", "--data", str(tmp_path / "d"), "--out", str(a_file)])
    assert not (tmp_path / "d").exists()  # nothing generated before the refusal


def test_bench_ranker_bad_flags(tmp_path: Path, capsys) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    o = ["--out", str(tmp_path / "o")]
    # --reps 0: UnboundLocalError after building the model; --lengths 0 was timed (a 31,810x "ratio").
    assert "--reps: 0: must be >= 1" in refused(capsys, "bench_ranker", ["--lengths", "100", "--reps", "0", *o])
    assert "--lengths: 0: must be >= 1" in refused(capsys, "bench_ranker", ["--lengths", "0", "--reps", "3", *o])
    assert "--candidates: 0: must be >= 1" in refused(capsys, "bench_ranker", ["--candidates", "0", *o])
    assert "--items: 1: must be >= 2" in refused(capsys, "bench_ranker", ["--items", "1", *o])
    assert "--reps needs one count per --lengths entry: 1 given for 2" in refused(
        capsys, "bench_ranker", ["--lengths", "100,200", "--reps", "3", *o])
    # The output folder was created after every length had been timed: a file there lost them all.
    assert f"--out {a_file}: a file is there, not a directory" in refused(
        capsys, "bench_ranker", ["--lengths", "100", "--reps", "2", "--out", str(a_file)])


def test_bench_export_bad_flags(tmp_path: Path, capsys) -> None:
    o = ["--out", str(tmp_path / "o")]
    # --reps 0 wrote a table of nan medians (exit 0); --seq-len 0 and a missing --spec were SpecError tracebacks.
    assert "--reps: 0: must be >= 1" in refused(capsys, "bench_export", ["--candidates", "3", "--reps", "0", *o])
    assert "--seq-len: 0: must be >= 1" in refused(capsys, "bench_export", ["--seq-len", "0", *o])
    assert "--max-batch: 0: must be >= 1" in refused(capsys, "bench_export", ["--max-batch", "0", *o])
    assert "--reps needs one count per --candidates entry: 2 given for 3" in refused(
        capsys, "bench_export", ["--reps", "1,1", *o])
    missing = tmp_path / "none.yaml"
    assert f"--spec: {missing}: spec file not found" in refused(
        capsys, "bench_export", ["--spec", str(missing), "--candidates", "3", "--reps", "1", "--seq-len", "64",
                                 "--items", "300", *o])
    assert not list((tmp_path / "o").iterdir())


def test_bench_gsu_bad_flags(tmp_path: Path, capsys) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    # --reps 0 was a StatisticsError traceback (median of no timings); a file at --out failed after every case.
    assert "--reps: 0: must be >= 1" in refused(capsys, "bench_gsu", ["--reps", "0", "--out", str(tmp_path)])
    assert "--static-reps: -1: must be >= 0" in refused(capsys, "bench_gsu", ["--static-reps", "-1"])
    assert f"--out {a_file}: a file is there, not a directory" in refused(capsys, "bench_gsu", ["--out", str(a_file)])


def test_bench_data_bad_flags(tmp_path: Path, capsys) -> None:
    o = ["--out", str(tmp_path / "o")]
    # --epochs 0 was a ZeroDivisionError after generating and preparing the data; an unknown preset
    # the child's ValueError inside a CalledProcessError traceback.
    assert "--epochs: 0: must be >= 1" in refused(capsys, "bench_data", ["--epochs", "0", *o])
    assert "--preset: invalid choice: 'huge'" in refused(capsys, "bench_data", ["--preset", "huge", *o])
    assert "--workers: -1: must be >= 0" in refused(capsys, "bench_data", ["--workers", "0", "-1", *o])
    assert "--batch: 0: must be >= 1" in refused(capsys, "bench_data", ["--batch", "0", *o])
    assert "--users: -5: must be >= 0" in refused(capsys, "bench_data", ["--users", "-5", *o])


def test_run_all_bad_flags(tmp_path: Path, capsys) -> None:
    import torch

    o = ["--out", str(tmp_path / "o"), "--work", str(tmp_path / "w")]
    # A misspelt section ran nothing and wrote an empty report (exit 0).
    assert "--only: 'trainng': not a section" in refused(capsys, "run_all", ["--only", "trainng", *o])
    assert "--threads: -2: must be >= -1" in refused(capsys, "run_all", ["--threads", "-2", *o])
    # Training alone on a --work without prepared data failed in its section (exit 1) after the rest ran.
    assert "--only training without data" in refused(capsys, "run_all", ["--only", "training,plan", *o])
    if not torch.cuda.is_available():  # torch's AssertionError traceback ('Torch not compiled with CUDA')
        assert "--device cuda: torch sees no CUDA device" in refused(
            capsys, "run_all", ["--device", "cuda", "--only", "gsu", *o])
    assert not (tmp_path / "o").exists() and not (tmp_path / "w").exists()


def test_bench_scale_one_mode_per_run(tmp_path: Path, capsys) -> None:
    """--train-check with --plan-check ran the train check alone, --quick with --sizes the quick
    sizes: the other flag was dropped without a word."""
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "meta.json").write_text("{}")
    d = ["--data", str(tmp_path / "d"), "--out", str(tmp_path / "o")]
    assert "--plan-check: not allowed with argument --train-check" in refused(
        capsys, "bench_scale", ["--train-check", str(tmp_path / "p"), "--plan-check", "1000", *d])
    assert "--sizes: not allowed with argument --quick" in refused(capsys, "bench_scale", ["--quick", "--sizes", "8", *d])


def test_bench_scale_bad_set(tmp_path: Path, capsys) -> None:
    """--train-check with an unknown or malformed --set was a SpecError traceback from the plan;
    --set without --train-check was ignored without a word."""
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "meta.json").write_text("{}")
    d = ["--data", str(tmp_path / "d"), "--out", str(tmp_path / "o")]
    tc = ["--train-check", str(tmp_path / "p"), *d]
    assert "--set: --set train.nosuch=1: train.nosuch: unknown key" in refused(
        capsys, "bench_scale", [*tc, "--set", "train.nosuch=1"])
    assert "--set: override 'garbage': expected key.path=value" in refused(capsys, "bench_scale", [*tc, "--set", "garbage"])
    assert "--set: spec overrides apply to --train-check only" in refused(
        capsys, "bench_scale", ["--quick", "--set", "train.batch_size=8", *d])
    assert not (tmp_path / "o").exists()


def test_run_all_keeps_a_work_folder_it_did_not_write(tmp_path: Path, capsys) -> None:
    """--work naming a folder with the user's raw/ and prepared/ data deleted both (the data section
    regenerates raw/ unless its raw.complete is there, and re-prepares into prepared/)."""
    from benchmarks import run_all

    work = tmp_path / "data"
    (work / "raw").mkdir(parents=True)
    (work / "raw" / "train_samples.parquet").write_text("the user's")
    (work / "prepared").mkdir()
    (work / "prepared" / "meta.json").write_text("{}")
    err = refused(capsys, "run_all", ["--only", "data,gsu", "--work", str(work), "--out", str(tmp_path / "o")])
    assert f"--work {work}: holds raw/ and prepared/ that run_all.py did not write" in err
    assert (work / "raw" / "train_samples.parquet").read_text() == "the user's"
    assert (work / "prepared" / "meta.json").exists() and not (tmp_path / "o").exists()
    # Its own folders pass: marked, or left by a run before the mark (raw.complete).
    (work / "raw.complete").write_text("synth")
    run_all.check_work(None, work)  # type: ignore[arg-type]  # returns before using the parser
    (work / "raw.complete").unlink()
    (work / run_all.WORK_MARK).touch()
    run_all.check_work(None, work)  # type: ignore[arg-type]

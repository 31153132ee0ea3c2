"""bench_train end to end on a tiny synthetic release: real `muse-rec train` and real model-step jobs."""
from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from benchmarks import bench_train
from benchmarks.report_md import render

B, L = 64, 200


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> str:
    from muse_rec.data.prepare import PrepareConfig, prepare
    from muse_rec.data.synth import SynthConfig, write_synthetic_release

    root = tmp_path_factory.mktemp("bench_tiny")
    write_synthetic_release(str(root / "raw"), SynthConfig.preset("tiny"))
    prepare(str(root / "raw"), str(root / "prepared"), PrepareConfig(progress=False))
    return str(root / "prepared")


def test_end_to_end_and_model_step_rows(prepared: str, tmp_path: Path) -> None:
    e2e = bench_train.run_end_to_end("muse", 1, prepared, tmp_path, batch_size=B, seq_len=L, window=2, windows=1,
                                     threads=1, timeout_s=300)
    assert e2e["steps"] == 4 and len(e2e["window_rates"]) == 2
    assert e2e["samples_per_s"] == e2e["window_rates"][1] > 0 and e2e["per_process"] == e2e["samples_per_s"]
    assert not (tmp_path / "muse_w1" / "checkpoints").exists()

    rows = bench_train.run_model_step(["muse"], 1, prepared, tmp_path / "step.json", plain=True, batch_size=B,
                                      seq_len=L, warmup=1, steps=3, threads=1, timeout_s=300)
    assert [(r["impl"].split(" ")[0], r["method"]) for r in rows] == [("torchrec", "muse"), ("plain", "muse")]
    for r in rows:
        assert len(r["step_ms"]) == 3 and r["world_size"] == 1
        assert r["samples_per_s"] == pytest.approx(B * 1e3 / statistics.median(r["step_ms"]))

    training = {"rows": [{"kind": "end_to_end", **e2e}] + [{"kind": "model_step", **r} for r in rows],
                "skipped": [], "batch_size": B, "seq_len": L, "window": 2, "windows": 1, "warmup": 1, "steps": 3,
                "wall_s": 1.0, "load_after": [0, 0, 0]}
    md = render({"command": "t", "host": {"node": "n", "cpus": 2, "machine": "m"}, "device": "cpu", "torch": "t",
                 "threads": 1, "started": "s", "wall_s": 1.0, "load_start": [0], "load_end": [0],
                 "sections": {"training": training}})
    line = next(x for x in md.splitlines() if x.startswith("- MUSE model step, 1 process"))
    assert "TorchRec / plain = **" in line and "n/a" not in line


def test_unknown_method_is_named() -> None:
    with pytest.raises(bench_train.BenchError, match="'dlrm'"):
        bench_train.spec_path("dlrm")


def test_bad_flags_are_one_line_errors(tmp_path: Path, capsys) -> None:
    """--device cuda on a machine without CUDA was the training child's error inside a BenchError
    traceback; an unknown method, --world-sizes 0 or a --prepared that is not prepared data a
    traceback from the first child; each is refused in one line naming the flag (exit 2)."""
    import torch

    from tests.benchmarks.test_bench_bad_flags import refused, refuses_unprepared

    ok = refuses_unprepared(capsys, "bench_train", tmp_path)
    assert "--methods: dien: no such demo spec" in refused(capsys, "bench_train", ["--methods", "muse,dien", *ok])
    assert "--world-sizes: 0: must be >= 1" in refused(capsys, "bench_train", ["--world-sizes", "0", *ok])
    assert "--steps: 0: must be >= 1" in refused(capsys, "bench_train", ["--steps", "0", *ok])
    if not torch.cuda.is_available():
        assert "--device cuda: torch sees no CUDA device" in refused(capsys, "bench_train", ["--device", "cuda", *ok])
    assert not (tmp_path / "o").exists()


def test_a_split_too_small_is_refused_before_training(prepared: str, tmp_path: Path, capsys) -> None:
    """A train split with fewer batches per rank than the end-to-end run's window x (1 + windows)
    steps trained one epoch and then ended in a BenchError traceback ('ran 3 steps, wanted 4')."""
    from tests.benchmarks.test_bench_bad_flags import refused

    have = bench_train.batches_per_rank(prepared, 2000, 50, 1)
    err = refused(capsys, "bench_train", ["--prepared", prepared, "--out", str(tmp_path / "o"), "--methods", "din",
                                          "--world-sizes", "1", "--batch-size", "2000", "--seq-len", "50",
                                          "--window", str(have), "--windows", "1"])
    assert f"{have} train batches per rank at --batch-size 2000 on 1 process(es), this run needs {2 * have}" in err
    assert not (tmp_path / "o").exists()


def test_plain_on_several_cuda_ranks_is_refused(tmp_path: Path, capsys) -> None:
    """--plain --device cuda on 2 processes started the plain-torch job, whose DDP all-reduces sparse
    gradients over NCCL, which cannot (run_all.py skips that job for this reason)."""
    from tests.benchmarks.test_bench_bad_flags import refused

    err = refused(capsys, "bench_train", ["--prepared", str(tmp_path), "--out", str(tmp_path / "o"), "--plain",
                                          "--device", "cuda", "--world-sizes", "1,2"])
    assert "--plain with --device cuda: the plain-torch model's sparse gradients cannot be all-reduced" in err

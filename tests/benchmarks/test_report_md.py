"""benchmarks.md rendering: the ratios and verdicts come out of the numbers, failures are visible."""
from __future__ import annotations

from benchmarks.report_md import render, summary_lines


def step(impl: str, method: str, w: int, rate: float) -> dict:
    return {"kind": "model_step", "impl": impl, "method": method, "world_size": w, "batch_size": 1000,
            "step_ms_median": 1000 * 1000 * w / rate, "step_ms": [], "samples_per_s": rate, "per_process": rate / w}


def e2e(method: str, w: int, rate: float) -> dict:
    return {"kind": "end_to_end", "method": method, "world_size": w, "samples_per_s": rate, "per_process": rate / w,
            "whole_run_samples_per_s": rate / 2, "window_rates": [1.0, rate]}


def results(**sections) -> dict:
    return {"command": "run_all.py --quick", "host": {"node": "box", "cpus": 2, "machine": "x86_64", "gpu": None},
            "device": "cpu", "torch": "2.13", "threads": 1, "started": "now", "wall_s": 10.0,
            "load_start": [1.0, 1.0, 1.0], "load_end": [2.0, 2.0, 2.0], "sections": sections}


TRAINING = {"rows": [e2e("muse", 1, 3000.0), e2e("muse", 2, 4000.0),
                     step("torchrec (sparse_dist pipeline)", "muse", 1, 6000.0),
                     step("plain torch (sparse_adam)", "muse", 1, 4000.0),
                     step("torchrec (sparse_dist pipeline)", "muse", 2, 9000.0),
                     step("plain torch (sparse_adam, DDP)", "muse", 2, 10000.0),
                     {**step("torchrec (sparse_dist pipeline)", "din", 1, 20000.0), "threads": 2}],
            "skipped": [], "batch_size": 1000, "seq_len": 1000, "window": 3, "windows": 2, "warmup": 2, "steps": 5,
            "wall_s": 5.0, "load_after": [1.0, 1.0, 1.0]}


def test_summary_ratios_and_target_verdicts() -> None:
    text = "\n".join(summary_lines(results(training=TRAINING)))
    assert "1 process(es): **3,000 samples/s per process** vs target 2,500 -> 1.20x (met)" in text
    assert "2 process(es): **2,000 samples/s per process** vs target 2,500 -> 0.80x (NOT met)" in text
    assert "TorchRec / plain = **1.50x**" in text and "TorchRec / plain = **0.90x**" in text
    assert "end to end 1.33x, model step 1.50x" in text
    assert "end to end / model step, 1 process: 0.50x" in text


def test_tables_failures_and_unavailable_sections() -> None:
    md = render(results(training=TRAINING,
                        gsu={"error": "RuntimeError: boom", "wall_s": 1.0, "load_after": [1, 1, 1]},
                        ranker={"available": False, "reason": "benchmarks/bench_ranker.py not present",
                                "wall_s": 0.0, "load_after": [1, 1, 1]}))
    assert "| muse | 2 | default | 4,000 | 2,000 | 2,000 | 9,000 | 0.44x | 1.33x |" in md
    assert "| din | 1 | 2 | torchrec (sparse_dist pipeline) | 50 | 20,000 | 20,000 |  |" in md
    assert "| muse | 1 | default | plain torch (sparse_adam) | 250 | 4,000 | 4,000 | 1.00x |" in md
    assert "**section failed**: `RuntimeError: boom`" in md
    assert "not available: benchmarks/bench_ranker.py not present" in md
    assert "start [1.0, 1.0, 1.0], end [2.0, 2.0, 2.0]" in md


def test_ranker_latency_reaches_the_summary() -> None:
    ranker = {"available": True, "command": "bench_ranker.py", "markdown": "# Ranker\n| L |", "wall_s": 1.0,
              "load_after": [1, 1, 1], "json": {"bench_ranker.json": {"rows": [
                  {"L": 1000, "candidates": 1000, "score_ms_p50": 12.34, "score_ms_p99": 20.0, "reps": 30}]}}}
    md = render(results(ranker=ranker))
    assert "- ranker (L=1,000, candidates=1,000): score_ms_p50 12.3, score_ms_p99 20.0" in md
    assert "\n# Ranker\n" not in md and "\n| L |" in md


def test_missing_numbers_render_as_na() -> None:
    text = "\n".join(summary_lines(results()))
    assert "n/a" in text and "met)" not in text


def test_gsu_roofline_and_ranker_bound_reach_the_summary() -> None:
    gsu = {"markdown": "table", "wall_s": 1.0, "load_after": [1, 1, 1], "machine": {}, "cases": [
        {"shape": "training", "B": 1000, "L": 1000, "of_roofline_cpu": 0.5, "of_roofline_wall": 0.25,
         "bound_cpu": "compute"}]}
    ranker = {"available": True, "command": "bench_ranker.py", "markdown": "| L |", "wall_s": 1.0,
              "load_after": [1, 1, 1], "json": {"bench_ranker.json": {"rows": [
                  {"L": 100000, "candidates": 1000, "score_ms_p50": 300.0, "score_ms_p99": 400.0,
                   "p50_over_gemm_wall": 3.0, "p99_over_gemm_wall": 4.0, "p50_over_gemm_cpu": 1.5,
                   "p99_over_gemm_cpu": 2.0}]}}}
    text = "\n".join(summary_lines(results(gsu=gsu, ranker=ranker)))
    assert "- GSU training B=1000 L=1,000: 50% of the compute roofline (CPU time; wall 25%)" in text
    assert ("- ranker (L=100,000, candidates=1,000): p50 / p99 300.0 / 400.0 ms = 3.00x / 4.00x the bf16 GEMM "
            "of the same shape (CPU time: 1.50x / 2.00x)") in text


def test_script_renders_a_saved_run_and_refuses_other_files(tmp_path, capsys) -> None:
    """`python benchmarks/report_md.py --help` printed nothing and exited 0 (the module had no
    entry point); it renders a saved benchmarks.json, and names a file it cannot use (exit 2)."""
    import json

    import pytest

    from benchmarks.report_md import main

    saved = tmp_path / "benchmarks.json"
    saved.write_text(json.dumps(results(training=TRAINING)))
    assert main([str(saved), "--out", str(tmp_path / "b.md")]) == 0
    assert (tmp_path / "b.md").read_text() == render(results(training=TRAINING))
    (tmp_path / "bad.json").write_text("{}")
    for path, why in ((tmp_path / "none.json", "cannot read"), (tmp_path / "bad.json", "not a run_all.py")):
        with pytest.raises(SystemExit) as e:
            main([str(path)])
        assert e.value.code == 2 and f"{path}: {why}" in capsys.readouterr().err

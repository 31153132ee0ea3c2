"""The runner: overrides, resume bookkeeping, and one tiny end-to-end reproduction (~30-60 s)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest

from muse_rec.cli import main
from muse_rec.reproduce.plan import Config, Run, build_plan
from muse_rec.reproduce.report import write_report
from muse_rec.reproduce.results import load_metrics
from muse_rec.reproduce.runner import (
    Execution, ReproduceError, _read_events, check_manifest, execute, is_done, prepare_data, run_overrides,
)
from tests.conftest import REPO, subprocess_env


def test_run_overrides_put_name_seed_and_data_last(tmp_path: Path):
    run = Run(Config("muse_len50", "specs/demo/muse.yaml", ("data.seq_len=50",)), seed=2)
    ov = run_overrides(tmp_path, run, "/data/prep", extra=("train.max_steps=3",))
    assert ov[0] == "data.seq_len=50"
    assert "name=muse_len50-s2" in ov and "train.seed=2" in ov and "data.prepared=/data/prep" in ov
    assert f"output_dir={(tmp_path / 'runs').resolve()}/{{name}}" in ov
    assert ov[-1] == "train.max_steps=3"  # the user's --set wins over the plan


def test_manifest_refuses_to_mix_data_sources(tmp_path: Path):
    check_manifest(tmp_path, {"data": "synthetic", "synth_args": ["--preset", "demo"]})
    check_manifest(tmp_path, {"data": "synthetic", "synth_args": ["--preset", "demo"]})  # same: fine
    with pytest.raises(ReproduceError, match="reproduce.json.*synth_args"):
        check_manifest(tmp_path, {"data": "synthetic", "synth_args": ["--preset", "demo", "--users", "1200"]})


def test_progress_reader_keeps_a_partial_line_for_later(tmp_path: Path):
    f = tmp_path / "progress.jsonl"
    f.write_text('{"event": "start", "name": "a"}\n{"event": "do')
    events, offset = _read_events(f, 0)
    assert events == [{"event": "start", "name": "a"}]
    with open(f, "a") as fh:
        fh.write('ne", "name": "a", "seconds": 1.0}\n')
    events, offset2 = _read_events(f, offset)
    assert events == [{"event": "done", "name": "a", "seconds": 1.0}] and offset2 == f.stat().st_size


def test_tiny_end_to_end_with_a_failing_run_and_resume(tmp_path: Path):
    """synth tiny -> prepare -> a broken run + DIN + MUSE (2 steps each) in one job -> report."""
    out = tmp_path / "out"
    prepared = prepare_data(out, None, None, ["--preset", "tiny"], say=lambda s: None)
    plan = build_plan(("fig6",), seeds=1, prepared=prepared)
    broken = Run(Config("broken", plan.runs[0].config.spec_path, ("model.gsu.top_k=0",)), seed=0)
    plan.runs.insert(0, broken)
    lines = []
    ex = Execution(nproc=1, device="cpu", extra_overrides=("train.max_steps=2", "train.log_every=1"), poll_seconds=0.2)
    log = execute(plan, out, prepared, ex, say=lines.append)
    assert log.failed == ["broken-s0"]
    assert sorted(log.seconds) == ["din-s0", "muse-s0"]
    assert all(is_done(out, r) for r in plan.runs[1:])
    assert any("FAILED" in line for line in lines) and any("left, ~" in line for line in lines)
    # Resume: finished runs are skipped without launching anything.
    plan.runs.pop(0)
    again = execute(plan, out, prepared, ex, say=lines.append)
    assert again.skipped == ["din-s0", "muse-s0"] and not again.seconds
    metrics = load_metrics(out, plan)
    assert set(metrics) == {"din", "muse"}
    report = write_report(plan, metrics, out)
    assert "fig6" in report.figures and report.figures["fig6"].stat().st_size > 10_000
    assert "## Fig. 6" in (out / "report.md").read_text()
    assert json.loads((out / "runs" / "muse-s0" / "metrics.json").read_text())["steps"] == 2


def test_floors_are_ready_before_the_job_starts(tmp_path: Path, monkeypatch):
    """In the job rank 0 computed the floors after its first run while the other ranks waited in the
    next run's first collective: past the process group's 10-minute timeout on a release-sized split.
    `execute` now computes them into the runs' cache before it launches anything; a run that does not
    check floors adds nothing."""
    from muse_rec.data.prepared import PreparedData
    from muse_rec.metrics.floor_options import FloorOptions
    from muse_rec.metrics.floors import cache_name
    from muse_rec.reproduce import runner

    out = tmp_path / "out"
    prepared = prepare_data(out, None, None, ["--preset", "tiny"], say=lambda s: None)
    plan = build_plan(("fig6",), seeds=1, prepared=prepared)
    cache = out / "runs" / ".floors"
    data = PreparedData(prepared)
    at_launch = {}

    def launch(plan_, out_, prepared_, runs, ex, attempt, log, say):
        at_launch.update({p.name: p.stat().st_size for p in cache.glob("*.json")} if cache.exists() else {})
        return [r.name for r in runs], [r.name for r in runs]

    monkeypatch.setattr(runner, "_launch", launch)
    lines = []
    ex = Execution(nproc=2, device="cpu", extra_overrides=("data.seq_len=100",))
    execute(plan, out, prepared, ex, say=lines.append)
    assert list(at_launch) == [cache_name(data, "test", FloorOptions(seq_len=100), "train")]  # one set for both runs
    assert [ln for ln in lines if "model-free floors of test at seq_len 100: ready in" in ln], lines
    at_launch.clear()
    lines.clear()
    shutil.rmtree(cache)
    execute(plan, out, prepared, Execution(nproc=2, extra_overrides=("train.check_floors=false",)), say=lines.append)
    assert not at_launch and not cache.exists() and not [ln for ln in lines if "floors" in ln]


def test_a_relative_out_is_prepared_where_the_user_stands_not_in_the_repository(tmp_path, monkeypatch):
    """The synth and prepare subprocesses run in the repository: `reproduce run1 --quick` from
    another directory wrote REPO/run1/data/{raw,prepared}, then failed to find them."""
    from muse_rec.reproduce.plan import REPO_ROOT

    monkeypatch.chdir(tmp_path)
    name = f"rel-{tmp_path.name}"
    try:
        prepared = prepare_data(Path(name), None, None, ["--preset", "tiny", "--no-diagnostics"], say=lambda s: None)
        assert prepared == str(tmp_path / name / "data" / "prepared")
        assert (tmp_path / name / "data" / "prepared" / "meta.json").exists()
    finally:
        stray = REPO_ROOT / name
        found = stray.exists()
        shutil.rmtree(stray, ignore_errors=True)
    assert not found, f"wrote into the repository: {stray}"


def _processes_naming(path: Path) -> List[int]:
    """Pids of the processes whose command line names ``path`` (Linux /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(path).encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:  # ended meanwhile
            pass
    return pids


def kill_and_expect_processes_naming_gone(proc: subprocess.Popen, path: Path, within_s: float = 60.0) -> None:
    """SIGKILL ``proc``, then assert that every process naming ``path`` (its children: torchrun, the
    ranks) ends within ``within_s`` seconds: a parent-death signal reaches them, the kill does not."""
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + within_s
    while _processes_naming(path) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _processes_naming(path)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's prctl")
def test_a_killed_reproduce_leaves_no_training_job_running(tmp_path: Path):
    """SIGKILL (or a SIGTERM) of `muse-rec reproduce` left its torchrun job training OUT's runs in the
    background: the next reproduce then failed those runs on their run-directory locks."""
    raw, prepared, out = tmp_path / "raw", tmp_path / "prepared", tmp_path / "out"
    assert main(["synth", str(raw), "--preset", "tiny", "--quiet", "--no-diagnostics"]) == 0
    assert main(["prepare", str(raw), str(prepared), "--no-progress"]) == 0
    cmd = [sys.executable, "-m", "muse_rec.cli", "reproduce", str(out), "--prepared", str(prepared), "--what", "table1",
           "--seeds", "1", "--nproc", "1", "--set", "train.epochs=1000"]  # trains far longer than the test waits
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while '"start"' not in ((out / "progress.jsonl").read_text() if (out / "progress.jsonl").exists() else ""):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        assert _processes_naming(out)  # the job (torchrun and its rank) is running
        kill_and_expect_processes_naming_gone(proc, out)  # torchrun stops its rank on SIGTERM within seconds
    finally:
        proc.kill()
        for pid in _processes_naming(out):  # the job this test started, where it outlived its parent
            os.kill(pid, signal.SIGKILL)

"""Execute a reproduction plan: get the data ready, train every pending run, print progress.

Layout of ``OUT``::

    OUT/reproduce.json        what was asked (data source, quick, seeds); a re-run must agree
    OUT/data/raw, data/prepared   the synthetic release and its prepared copy (synthetic only)
    OUT/runs/<config>-s<seed>/    one training each (metrics.json = finished)
    OUT/logs/train-<n>.log        the full output of each distributed job
    OUT/progress.jsonl            start/done events written by the worker

Runs whose ``metrics.json`` exists are skipped, so an interrupted reproduction resumes. All
pending runs go to ONE distributed job (see worker.py); if a run fails, it is recorded, the job
is relaunched for the runs after it, and the report marks its cells as missing.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from muse_rec.data.files import replace_text
from muse_rec.json_files import read_json_object, refuse_special_file
from muse_rec.lifetime import ending_with_this_process
from muse_rec.output_paths import REPRODUCE_MANIFEST
from muse_rec.reproduce.plan import REPO_ROOT, Plan, Run

Printer = Callable[[str], None]
PROGRESS_FILE = "progress.jsonl"  # in OUT: the worker's start/done events, read by the launcher


def say_now(message: str) -> None:
    """Print a progress line at once (stdout is block-buffered when redirected to a file)."""
    print(message, flush=True)


class ReproduceError(RuntimeError):
    """The reproduction cannot go on as asked; the message says why and what to do."""


@dataclass
class Execution:
    """How trainings are launched.

    Args:
        nproc: ranks per job (torchrun --nproc_per_node). On the 2-core CPU box 2 ranks x 1
            thread train ~4x faster than 1 process x 2 threads (measured: docs/reproduce.md).
        device: ``cpu``, ``cuda`` or None (cuda when available).
        threads_per_rank: OMP_NUM_THREADS of each rank.
        extra_overrides: ``key=value`` overrides applied to every run (after the plan's).
        poll_seconds: how often the launcher reads the progress file.
    """

    nproc: int = 2
    device: Optional[str] = "cpu"
    threads_per_rank: int = 1
    extra_overrides: Sequence[str] = ()
    poll_seconds: float = 1.0


@dataclass
class RunLog:
    """What happened: seconds per trained run, runs skipped (already done) and failed."""

    seconds: Dict[str, float] = field(default_factory=dict)
    skipped: List[str] = field(default_factory=list)
    failed: List[str] = field(default_factory=list)


def run_dir(out: Path, run: Run) -> Path:
    return out / "runs" / run.name


def is_done(out: Path, run: Run) -> bool:
    return (run_dir(out, run) / "metrics.json").exists()


def _per_run_keys(out: Path, run: Run, prepared: str) -> Dict[str, str]:
    """What reproduce sets itself for each run: where its results are found and which seed it is."""
    return {"name": run.name, "output_dir": f"{(out / 'runs').resolve()}/{{name}}", "train.seed": str(run.seed),
            "data.prepared": prepared}


def run_overrides(out: Path, run: Run, prepared: str, extra: Sequence[str] = ()) -> List[str]:
    """The full override list of one run: the plan's, then name / output dir / seed / data."""
    return list(run.config.overrides) + [f"{k}={v}" for k, v in _per_run_keys(out, run, prepared).items()] + list(extra)


def check_manifest(out: Path, wanted: Dict, record: bool = True) -> None:
    """Record what OUT was made from (unless ``record`` is False: a dry run only checks); refuse to mix
    data sources or sizes in one OUT."""
    path = out / REPRODUCE_MANIFEST
    if path.exists():
        have = read_json_object(path, ReproduceError, advice="; pass another OUT directory")
        diff = {k: (have.get(k), v) for k, v in wanted.items() if have.get(k) != v}
        if diff:
            raise ReproduceError(
                f"{path}: {out} was started with other settings (key: (before, now)) {diff}; "
                "finish it with the same options or pass another OUT directory")
        return
    if record:
        out.mkdir(parents=True, exist_ok=True)
        replace_text(path, json.dumps(wanted, indent=2) + "\n")  # names the file it cannot write


def _cli(*args: str) -> List[str]:
    return [sys.executable, "-m", "muse_rec.cli", *args]


def local_absolute(path: str) -> str:
    """``path`` made absolute where it is local (a URI of another filesystem as given).

    Every subprocess here runs in the repository (the specs are relative to it), so a relative
    path handed to one as typed named a directory there, not where the user stood."""
    return path if "://" in path else os.path.abspath(path)


def prepare_data(out: Path, raw: Optional[str], prepared: Optional[str], synth_args: Sequence[str],
                 say: Printer = say_now) -> str:
    """Return the prepared-data path the runs read: given, prepared from ``raw``, or synthesised;
    local paths absolute (`local_absolute`).

    ``synth_args`` are extra `muse-rec synth` flags (the size of the synthetic release).
    """
    if prepared:
        return local_absolute(prepared)
    out = Path(local_absolute(str(out)))
    raw = local_absolute(raw) if raw else None
    target = out / "data" / "prepared"
    if raw is None:
        raw_dir = out / "data" / "raw"
        if not (raw_dir / "_synth_manifest.json").exists():
            say(f"[reproduce] writing a synthetic release: muse-rec synth {raw_dir} {' '.join(synth_args)}")
            _check_call(_cli("synth", str(raw_dir), "--quiet", *synth_args), "synth")
        raw = str(raw_dir)
        vocab = "full"
    else:
        # The taobao_mm_p90 specs are sized for the reference's p90 item vocabulary.
        vocab = "p90"
    if not (target / "meta.json").exists():
        say(f"[reproduce] preparing {raw} -> {target} (vocab {vocab})")
        _check_call(_cli("prepare", raw, str(target), "--vocab", vocab, "--no-progress"), "prepare")
    return str(target)


def _check_call(cmd: List[str], what: str) -> None:
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, preexec_fn=ending_with_this_process())
    if proc.returncode != 0:
        raise ReproduceError(f"muse-rec {what} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    print(f"[reproduce] {what} done in {time.perf_counter() - started:.0f} s", flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fmt_s(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def _read_events(path: Path, offset: int) -> Tuple[List[Dict], int]:
    """New complete JSON lines of ``path`` after byte ``offset``, and the next offset."""
    if not path.exists():
        return [], offset
    with open(path, encoding="utf-8") as f:
        f.seek(offset)
        chunk = f.read()
    lines = chunk.split("\n")
    complete, rest = lines[:-1], lines[-1]
    return [json.loads(line) for line in complete if line.strip()], offset + len(chunk) - len(rest)


def execute(plan: Plan, out: Path, prepared: str, execution: Execution = Execution(),
            say: Printer = say_now) -> RunLog:
    """Train every run of ``plan`` that has no metrics.json yet; returns what happened."""
    prepared = local_absolute(prepared)  # the training job runs in the repository
    log = RunLog()
    pending = [r for r in plan.runs if not is_done(out, r)]
    _preflight(out, prepared, pending, execution.extra_overrides)
    log.skipped = [r.name for r in plan.runs if is_done(out, r)]
    say(f"[reproduce] {len(plan.runs)} runs in the plan: {len(log.skipped)} already done, {len(pending)} to train "
        f"({execution.nproc} rank(s) x {execution.threads_per_rank} thread(s), device {execution.device or 'auto'})")
    precompute_floors(out, prepared, pending, execution.extra_overrides, say)
    attempt = 0
    while pending:
        attempt += 1
        finished, started = _launch(plan, out, prepared, pending, execution, attempt, log, say)
        started_not_done = [r for r in pending if r.name not in finished]
        if not started_not_done:
            break
        if started_not_done[0].name not in started:
            # The job died before its next run began (launcher, imports, process group): no
            # run is to blame, and relaunching would fail the same way.
            raise ReproduceError(f"the training job failed before run {started_not_done[0].name} started; "
                                 f"see {out / 'logs' / f'train-{attempt}.log'}")
        # The first unfinished run is the one that failed: record it, carry on after it.
        bad = started_not_done[0]
        log.failed.append(bad.name)
        say(f"[reproduce] run {bad.name} FAILED; see {out / 'logs' / f'train-{attempt}.log'}; continuing with the rest")
        pending = started_not_done[1:]
    return log


def precompute_floors(out: Path, prepared: str, runs: Sequence[Run], extra: Sequence[str], say: Printer) -> None:
    """The model-free floors the runs check after training (`train.check_floors`), computed here
    into the cache they read (`<run dir's parent>/.floors/`), before the job starts.

    Why here: in the job, rank 0 would compute them after its first run while the other ranks wait
    in the next run's first collective, which fails at the process group's timeout (10 minutes) on
    a split the size of the release's (~20-40 min on one core, docs/metrics.md). Here, before any
    rank starts, they use every core. Runs whose spec does not load are left to fail in the job.
    """
    from muse_rec.data.prepared import PreparedData
    from muse_rec.metrics.floors import FloorsError, floors_of_run, run_floors_cache
    from muse_rec.spec import SpecError, load_spec

    wanted = {}
    for r in runs:
        try:
            spec = load_spec(r.config.spec_path, run_overrides(out, r, prepared, extra))
        except SpecError:
            continue
        if spec.train.check_floors and spec.train.eval_at_end:
            key = (spec.data.prepared, spec.data.eval_split, spec.data.seq_len, spec.data.train_split)
            wanted.setdefault(key, run_floors_cache(spec.run_dir))
    for (path, split, seq_len, train_split), cache in wanted.items():
        start = time.perf_counter()
        try:
            # With the per-user AUCs: a run's check scores the split again for a cache without them.
            floors_of_run(PreparedData(path), split, seq_len, cache, train_split, with_users=True)
        except FloorsError as e:  # each run records floors_error itself; the runs go on
            say(f"[reproduce] model-free floors of {split} at seq_len {seq_len} not computed: {e}")
            continue
        say(f"[reproduce] model-free floors of {split} at seq_len {seq_len}: ready in "
            f"{_fmt_s(time.perf_counter() - start)} (cached in {cache})")


def check_prepared(prepared: str) -> str:
    """ReproduceError unless ``prepared`` opens as prepared data (meta.json and array headers);
    returns its item vocabulary mode (``meta.json``'s ``vocab_mode``: "full", "p90", or "?")."""
    from muse_rec.data.prepared import PreparedData, PreparedDataError

    try:
        data = PreparedData(prepared)
    except (PreparedDataError, FileNotFoundError) as e:
        raise ReproduceError(f"prepared data {prepared}: {e}") from None
    mode = data.meta.get("vocab_mode")
    return mode if isinstance(mode, str) else "?"


def vocab_warning(prepared: str, mode: str) -> Optional[str]:
    """The line said when real data given as ``--prepared`` was not prepared with ``--vocab p90``: the
    real profile (specs/taobao_mm_p90) and the paper's columns are the reference's p90 item vocabulary,
    and training sizes its tables from the data whatever the spec says, so nothing else tells."""
    if mode == "p90":
        return None
    return (f"{prepared} was prepared with --vocab {mode}, not the reference's p90 (`muse-rec prepare RAW OUT "
            "--vocab p90`): the runs train on another item vocabulary than the paper's, whose numbers the report "
            "sets beside them")


def check_raw(raw: str) -> None:
    """ReproduceError unless ``raw`` opens as a raw release: its six tables found, every footer and
    schema read (what `muse-rec prepare` checks before any work), so a wrong --raw costs nothing."""
    from muse_rec.data.reader import RawRelease
    from muse_rec.data.schema import RawDataError

    try:
        with RawRelease(raw):
            pass
    except RawDataError as e:  # "<file or table>: <why>"
        raise ReproduceError(f"--raw: {e}") from None


def _preflight(out: Path, prepared: str, runs: List[Run], extra: Sequence[str]) -> None:
    """Refuse, before any training, what would fail every run the same way: prepared data that
    does not open, a ``--set`` override that a run's spec does not accept, a progress file that is a
    FIFO, device or socket (the launcher's read of a FIFO waited for a writer forever, or failed naming
    no file). A run whose own configuration is broken still fails alone (the worker records it and the
    job goes on)."""
    refuse_special_file(out / PROGRESS_FILE, ReproduceError, "; reproduce writes its own progress there: remove it")
    check_prepared(prepared)
    check_overrides(out, prepared, runs, extra)


def check_overrides(out: Path, prepared: str, runs: Sequence[Run], extra: Sequence[str]) -> None:
    """ReproduceError naming the first run whose spec refuses the ``--set`` overrides ``extra``
    (runs that fail without them are left to fail alone). Needs no data: `muse-rec reproduce`
    calls it before it makes any, so a typo costs no synth."""
    from muse_rec.spec import SpecError, dotted_items, load_spec

    if not extra:
        return
    for r in runs:
        own = run_overrides(out, r, prepared)
        try:
            planned = dict(dotted_items(load_spec(r.config.spec_path, own).to_dict()))
        except SpecError:
            continue
        try:
            resolved = dict(dotted_items(load_spec(r.config.spec_path, own + list(extra)).to_dict()))
        except SpecError as e:
            raise ReproduceError(f"run {r.name}: {e}") from None
        # A --set of these silently broke the report: train.seed=3 trained every seed alike (a spread of 0),
        # name / output_dir wrote every run to one directory, data.prepared trained on other data than OUT's.
        changed = [k for k in _per_run_keys(out, r, prepared) if planned[k] != resolved[k]]
        if changed:
            raise ReproduceError(f"--set {changed[0]}: reproduce sets it for each run itself (--seeds for the seeds, "
                                 "--prepared for the data, OUT for the run directories)")


def _launch(plan: Plan, out: Path, prepared: str, runs: List[Run], ex: Execution, attempt: int,
            log: RunLog, say: Printer) -> Tuple[List[str], List[str]]:
    """One distributed job over ``runs``; returns the names that finished and that started."""
    (out / "logs").mkdir(parents=True, exist_ok=True)
    progress = out / PROGRESS_FILE
    job = {
        "device": ex.device,
        "progress": str(progress.resolve()),
        "runs": [{"name": r.name, "spec": r.config.spec_path,
                  "overrides": run_overrides(out, r, prepared, ex.extra_overrides)} for r in runs],
    }
    job_path, log_path = out / "logs" / f"job-{attempt}.json", out / "logs" / f"train-{attempt}.log"
    for path in (job_path, log_path):  # opening a FIFO to write it waited for a reader forever
        refuse_special_file(path, ReproduceError, "; reproduce writes its own log there: remove it")
    job_path.write_text(json.dumps(job, indent=1))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ex.nproc),
           "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{_free_port()}",
           "-m", "muse_rec.reproduce.worker", str(job_path.resolve())]
    env = dict(os.environ, OMP_NUM_THREADS=str(ex.threads_per_rank))
    offset = progress.stat().st_size if progress.exists() else 0
    finished: List[str] = []
    started: List[str] = []
    total, done_before = len(plan.runs), len(plan.runs) - len(runs)
    job_start = time.perf_counter()
    with open(log_path, "w") as logf:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=logf, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=ending_with_this_process())
        try:
            while True:
                rc = proc.poll()
                events, offset = _read_events(progress, offset)
                for e in events:
                    if e["event"] == "start":
                        started.append(e["name"])
                        say(f"[reproduce] [{done_before + len(finished) + 1}/{total}] training {e['name']} ...")
                    elif e["event"] == "done":
                        finished.append(e["name"])
                        log.seconds[e["name"]] = e["seconds"]
                        left = len(runs) - len(finished)
                        # Per-run mean over this job, start-up included, so the estimate is honest.
                        per_run = (time.perf_counter() - job_start) / len(finished)
                        gauc = e.get("gauc")
                        say(f"[reproduce]   {e['name']} done in {_fmt_s(e['seconds'])}"
                            + (f" (GAUC {gauc:.4f})" if isinstance(gauc, float) else "")
                            + f"; {left} left, ~{_fmt_s(per_run * left)} to go")
                if rc is not None:
                    break
                time.sleep(ex.poll_seconds)
        finally:
            if proc.poll() is None:  # interrupted here (Ctrl-C sent to this process alone): the job stops too
                proc.terminate()
                proc.wait()
    if rc != 0:
        say(f"[reproduce] training job exited with {rc}")
    return finished, started

"""A write that fails part-way (a full disk, simulated by a file-size limit) leaves what was written
before as it was: `plan --json` and `compare --out` over an earlier result, and a `train --resume`
that cannot rewrite its run record (it left spec.yaml cut at the limit, so every later --resume was
refused as "other training settings" against the cut file, and exited 1 with a traceback)."""
from __future__ import annotations

import json
import resource
import shutil
import signal
import subprocess
import sys

from tests.conftest import REPO, subprocess_env
from tests.robustness.conftest import SPEC, assert_bad_input, cli, snapshot

LIMIT_BYTES = 1024  # smaller than each file rewritten here, larger than nothing


def full_disk_cli(*args: str, limit_bytes: int = LIMIT_BYTES) -> subprocess.CompletedProcess:
    """`muse-rec <args>` where no file may grow past ``limit_bytes``: a write beyond fails with EFBIG,
    as on a full disk (SIGXFSZ ignored, as a shell's `trap '' XFSZ; ulimit -f` does)."""
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    env = subprocess_env()
    # torch records its cache directory in this process's environment once it has picked one (after
    # another test imported it here); a user's shell has none, so the command picks its own.
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    return subprocess.run([sys.executable, "-m", "muse_rec.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=env, preexec_fn=limit)


def test_plan_and_compare_keep_their_earlier_output_when_a_write_fails(tmp_path, trained):
    plan_json = tmp_path / "plan.json"
    args = ["plan", "--spec", "specs/taobao_mm_full/muse.yaml", "--world-size", "8", "--json", str(plan_json)]
    assert cli(*args).returncode == 0
    before = plan_json.read_bytes()
    assert len(before) > LIMIT_BYTES
    out = full_disk_cli(*args, "--world-size", "16")
    assert_bad_input(out, "--json", str(plan_json), "cannot write")
    assert plan_json.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]

    table = tmp_path / "cmp"
    assert cli("compare", str(trained.run_dir), "--no-floors", "--out", str(table)).returncode == 0
    md = table.with_suffix(".md")
    earlier = md.read_bytes()
    assert len(earlier) > 64
    out = full_disk_cli("compare", str(trained.run_dir), "--no-floors", "--out", str(table), limit_bytes=64)
    assert_bad_input(out, "--out", str(table), "cannot write")
    assert md.read_bytes() == earlier  # was left empty


def test_compare_replaces_its_table_and_its_json_together_or_neither(tmp_path, trained):
    """compare wrote its .md, then its .json: a disk that took the first and not the second left the
    new table beside the earlier JSON, two runs' results presented as one."""
    table = tmp_path / "cmp"
    assert cli("compare", str(trained.run_dir), "--no-floors", "--out", str(table)).returncode == 0
    md, js = table.with_suffix(".md"), table.with_suffix(".json")
    fits = len(md.read_bytes())  # room for the new table, not for its JSON
    assert fits < len(js.read_bytes())
    md.write_text("earlier table\n")
    js.write_text('{"rows": []}\n')
    out = full_disk_cli("compare", str(trained.run_dir), "--no-floors", "--out", str(table), limit_bytes=fits)
    assert_bad_input(out, "--out", str(table), "cannot write", str(js))
    assert md.read_text() == "earlier table\n" and js.read_text() == '{"rows": []}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmp.json", "cmp.md"]


def test_evaluate_names_the_file_a_full_disk_refused(tmp_path, trained):
    """pyarrow's "Error writing bytes to file" named no file; the line now does."""
    ev = tmp_path / "ev"
    out = full_disk_cli("evaluate", "--spec", SPEC, *trained.sets(), "--out", str(ev), "--max-batches", "1")
    assert_bad_input(out, "File too large", str(ev / "predictions.parquet" / "part-00000-of-00001.parquet"))
    assert not (ev / "metrics.json").exists()


def test_a_resume_that_cannot_write_its_run_record_keeps_it_and_resumes_later(tmp_path, trained):
    runs = trained.copy_run(tmp_path / "runs")
    run = runs / "din"
    sets = []
    for ov in trained.sets(["train.max_steps=3"]):
        sets.append(ov.replace(str(trained.runs), str(runs)))
    before = snapshot(run)
    assert len((run / "spec.yaml").read_bytes()) > LIMIT_BYTES
    out = full_disk_cli("train", "--spec", SPEC, *sets, "--device", "cpu", "--resume")
    assert_bad_input(out, "File too large", str(run / "spec.yaml"))
    after = snapshot(run)
    assert {k: after.get(k) for k in before if not k.startswith("tensorboard")} == \
        {k: v for k, v in before.items() if not k.startswith("tensorboard")}
    out = cli("train", "--spec", SPEC, *sets, "--device", "cpu", "--resume")
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((run / "run.json").read_text())["total_steps"] == 3


def test_a_disk_too_full_for_torch_to_start_is_one_line():
    """torch picks its cache directory at import; with no file writable anywhere Python's tempfile
    raised, and every command that imports torch showed that traceback and exited 1."""
    out = full_disk_cli("plan", "--spec", "specs/taobao_mm_full/muse.yaml", "--world-size", "8", limit_bytes=0)
    assert_bad_input(out, "muse-rec plan: ", "No usable temporary directory", "TMPDIR")


def test_export_on_a_full_disk_is_one_line_and_keeps_the_earlier_export(tmp_path, trained):
    """torch.export.save writes again from its writer's destructor after a refused write: the
    process aborted (std::terminate, exit 134, a native stack dump) instead of one line."""
    exported = tmp_path / "exported"
    shutil.copytree(trained.exported, exported)
    before = snapshot(exported)
    out = full_disk_cli("export", "--spec", SPEC, *trained.sets(), "--out", str(exported))
    assert_bad_input(out, "File too large", "ranker.pt2")
    assert snapshot(exported) == before and sorted(p.name for p in exported.iterdir()) == sorted(
        p.name for p in trained.exported.iterdir())


def test_a_checkpoint_the_disk_refuses_is_said_as_such_and_the_run_resumes_later(tmp_path, trained):
    """A refused checkpoint write reached the user as DCP's "unexpected pos" under a load's words:
    "checkpoint does not fit this model", as if the spec were wrong."""
    runs = trained.copy_run(tmp_path / "runs")
    run = runs / "din"
    sets = [ov.replace(str(trained.runs), str(runs)) for ov in trained.sets(["train.max_steps=3"])]
    before = snapshot(run / "checkpoints")
    shard_bytes = max(p.stat().st_size for p in (run / "checkpoints").rglob("*.distcp"))
    record_bytes = max(len((run / name).read_bytes()) for name in ("spec.yaml", "run.json"))
    assert record_bytes < shard_bytes // 2  # a limit between them fails the checkpoint, not the run record
    out = full_disk_cli("train", "--spec", SPEC, *sets, "--device", "cpu", "--resume", limit_bytes=shard_bytes // 2)
    assert_bad_input(out, str(run / "checkpoints" / "step-00000003.tmp"), "cannot write this checkpoint", "--resume")
    assert "does not fit" not in out.stderr
    # the saved checkpoints as they were; the refused one only in its staging directory, never read
    assert {k: v for k, v in snapshot(run / "checkpoints").items() if not k.startswith("step-00000003.tmp/")} == before
    out = cli("train", "--spec", SPEC, *sets, "--device", "cpu", "--resume")
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((run / "run.json").read_text())["total_steps"] == 3

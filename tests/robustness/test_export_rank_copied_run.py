"""`export` and `rank --spec COPY/spec.yaml` of a copied run read the copy's checkpoints, as `evaluate` does."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.robustness.conftest import Trained, cli


def _copy_of_a_gone_run(trained: Trained, tmp_path: Path) -> Path:
    """COPY, a ``cp -r`` of a run ORIG whose spec.yaml names ORIG, ORIG then deleted: what only COPY's own
    checkpoints can serve."""
    orig, copy = tmp_path / "orig", tmp_path / "copy"
    shutil.copytree(trained.run_dir, orig)
    spec_file = orig / "spec.yaml"
    recorded = spec_file.read_text()
    assert str(trained.run_dir) in recorded  # output_dir: the run's absolute directory
    spec_file.write_text(recorded.replace(str(trained.run_dir), str(orig)))
    shutil.copytree(orig, copy)
    shutil.rmtree(orig)
    return copy


def _note(command: str, doing: str, copy: Path) -> str:
    return (f"muse-rec {command}: --spec {copy / 'spec.yaml'} is the record of run {copy}: {doing} its checkpoints, "
            f"not those of its output_dir {copy.parent / 'orig'}")


def test_exporting_a_copied_run_exports_the_copy_s_checkpoint(trained, tmp_path):
    """`export --spec COPY/spec.yaml` read the checkpoints of spec.yaml's output_dir, silently (with that run gone:
    'no complete checkpoint at ORIG/checkpoints'). Now the copy's, with one line saying so; an output_dir the user
    sets is read as before, without that line."""
    copy = _copy_of_a_gone_run(trained, tmp_path)
    cases = [([], copy), (["--set", f"output_dir={trained.run_dir}"], trained.run_dir)]
    for i, (sets, exported) in enumerate(cases):
        out = tmp_path / f"exported{i}"
        done = cli("export", "--spec", str(copy / "spec.yaml"), *sets, "--out", str(out))
        assert done.returncode == 0, done.stderr[-3000:]
        checkpoint = json.loads((out / "manifest.json").read_text())["checkpoint"]
        assert checkpoint.startswith(str(exported.resolve() / "checkpoints")), (sets, checkpoint)
        assert (_note("export", "exporting", copy) in done.stderr) == (exported == copy), done.stderr[-3000:]


def test_ranking_with_a_copied_run_reads_the_copy_s_checkpoint(trained, tmp_path):
    """`rank --spec COPY/spec.yaml` read the checkpoints of spec.yaml's output_dir, silently. Now the copy's, with
    one line saying so, and the scores of the original run's (the same checkpoint's bytes); with --exported (no
    checkpoint read) no such line."""
    copy = _copy_of_a_gone_run(trained, tmp_path)
    request = tmp_path / "req.json"
    request.write_text(json.dumps({"user": 1, "candidates": [1, 2, 3]}))
    done = cli("rank", "--spec", str(copy / "spec.yaml"), "--request", str(request))
    assert done.returncode == 0, done.stderr[-3000:]
    assert _note("rank", "ranking with", copy) in done.stderr, done.stderr[-3000:]
    original = cli("rank", "--spec", str(trained.run_dir / "spec.yaml"), "--request", str(request))
    assert original.returncode == 0 and "is the record of run" not in original.stderr, original.stderr[-3000:]
    assert json.loads(done.stdout) == json.loads(original.stdout)
    program = cli("rank", "--spec", str(copy / "spec.yaml"), "--exported", str(trained.exported), "--request",
                  str(request))
    assert program.returncode == 0 and "is the record of run" not in program.stderr, program.stderr[-3000:]

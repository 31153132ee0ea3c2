"""`evaluate --spec COPY/spec.yaml` of a copied run directory scores the copy's checkpoints, and says so."""
from __future__ import annotations

import json
import shutil

from tests.robustness.conftest import cli


def test_evaluating_a_copied_run_scores_the_copy_s_checkpoint(trained, tmp_path):
    """`cp -r RUN COPY; evaluate --spec COPY/spec.yaml` silently scored RUN's checkpoint (spec.yaml's output_dir
    names RUN). Now the copy's, with one line saying so; RUN's own spec.yaml, or an output_dir the user sets,
    scores RUN's as before, without that line."""
    copy = tmp_path / "copy"
    shutil.copytree(trained.run_dir, copy)
    cases = [(["--spec", str(copy / "spec.yaml")], copy),
             (["--spec", str(trained.run_dir / "spec.yaml")], trained.run_dir),
             (["--spec", str(copy / "spec.yaml"), "--set", f"output_dir={trained.run_dir}"], trained.run_dir)]
    for i, (args, scored) in enumerate(cases):
        out = tmp_path / f"eval{i}"
        done = cli("evaluate", *args, "--out", str(out), "--max-batches", "1", "--device", "cpu")
        assert done.returncode == 0, done.stderr[-3000:]
        checkpoint = json.loads((out / "metrics.json").read_text())["checkpoint"]
        assert checkpoint.startswith(str(scored.resolve() / "checkpoints")), (args, checkpoint)
        note = (f"muse-rec evaluate: --spec {copy / 'spec.yaml'} is the record of run {copy}: scoring its checkpoints, "
                f"not those of its output_dir {trained.run_dir}")
        assert (note in done.stderr) == (scored == copy), done.stderr[-3000:]

"""The training and evaluation log lines count as the other printed lines do (`muse_rec.wording.count`)."""
from __future__ import annotations

from tests.robustness.conftest import SPEC, cli


def test_one_batch_and_one_step_are_singular_in_the_logs(trained, tmp_path):
    """`evaluate --max-batches 1` logged "scored 1 batches of test"; a one-step run "1 steps of 1 x 64 samples"."""
    done = cli("evaluate", "--spec", SPEC, *trained.sets(), "--out", str(tmp_path / "ev"), "--max-batches", "1",
               "--device", "cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "] scored 1 batch of test in " in done.stderr, done.stderr[-3000:]
    done = cli("train", "--spec", SPEC, *trained.sets([f"output_dir={tmp_path / 'run'}", "train.max_steps=1"]),
               "--device", "cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    assert ": 1 rank(s) on cpu, 1 step of 1 x 64 samples, seq_len 50; split train: " in done.stderr, done.stderr[-3000:]

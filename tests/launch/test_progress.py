"""Progress lines for cluster logs and the loss monitor: first non-finite step, no per-step host sync."""
from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import pytest
import torch
import yaml

from muse_rec.training.progress import (ADVISED_DENSE_LR, ADVISED_BATCH_SIZE, LossMonitor, NonFiniteLoss,
                                        ProgressLog, few_clicks_warning)

REPO = Path(__file__).resolve().parents[2]


def test_loss_monitor_means_and_names_the_first_non_finite_step():
    m = LossMonitor(start_step=10, device=torch.device("cpu"))
    for v in (0.5, 0.75):
        m.add(torch.tensor(v))
    assert m.check(12) == pytest.approx(0.625, abs=0)  # exact in binary
    assert m.check(12) is None  # nothing since the last check
    for v in (0.25, math.nan, 0.5, math.inf, math.nan):  # steps 13..17: the first bad one is 14
        m.add(torch.tensor(v, dtype=torch.float32))
    with pytest.raises(NonFiniteLoss, match=r"from step 14 on; stopped at step 17.*no checkpoint was written after step 13"):
        m.check(17)


def test_loss_monitor_means_per_sample_not_per_rank_step():
    """An epoch's last step on 2 ranks: rank 0 holds 200 real rows (loss 0.375), rank 1 only padding (its
    loss 0 over 0 rows). That step weighs 200 samples, not half the logged mean: a mean over the ranks'
    steps logged 0.1875 for it. Summing the two ranks' monitors is what `check`'s all-reduce does (values
    exact in binary)."""
    rank0, rank1 = LossMonitor(0, torch.device("cpu")), LossMonitor(0, torch.device("cpu"))
    rank0.add(torch.tensor(0.5), 1000)
    rank1.add(torch.tensor(0.25), 1000)
    rank0.add(torch.tensor(0.375), 200)
    rank1.add(torch.tensor(0.0), 0)
    total = rank0._sum + rank1._sum
    assert float(total) / (rank0._count + rank1._count) == (500 + 250 + 75) / 2200
    assert rank1.check(2) == pytest.approx(0.25, rel=1e-15)  # one rank alone: its own samples only


def test_loss_monitor_add_never_syncs_with_the_host(monkeypatch):
    m = LossMonitor(start_step=0, device=torch.device("cpu"))

    def sync(*_a, **_k):
        raise AssertionError("host sync in LossMonitor.add")

    for name in ("item", "tolist", "__float__", "__int__", "__bool__", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, sync)
    for v in (0.1, math.nan, 0.2):
        m.add(torch.tensor(v))
    monkeypatch.undo()
    with pytest.raises(NonFiniteLoss, match="from step 2 on"):
        m.check(3)


def test_few_clicks_warning_counts_the_clicks_the_run_trains_on():
    # Clicks of one epoch x the epochs run (a fraction when train.max_steps stops it early).
    assert few_clicks_warning(6797, 1.0, 20000, 1000, 2e-4).startswith(
        "this run trains on 6,797 clicks (1,000 samples per step, dense lr 0.0002), fewer than "
        "train.warn_below_clicks = 20,000:")
    assert "specs/profiles/demo.yaml" in few_clicks_warning(6797, 1.0, 20000, 1000, 2e-4)
    assert "trains on 3,398 clicks" in few_clicks_warning(6797, 0.5, 20000, 1000, 2e-4)  # round(3398.5)
    assert few_clicks_warning(10000, 2.0, 20000, 1000, 2e-4) is None  # two epochs: 20,000, not fewer
    assert "trains on 19,999 clicks" in few_clicks_warning(19999, 1.0, 20000, 1000, 2e-4)
    assert few_clicks_warning(20000, 1.0, 20000, 1000, 2e-4) is None
    assert few_clicks_warning(1, 1.0, 0, 1000, 2e-4) is None  # 0 = never


def test_few_clicks_warning_names_max_steps_when_it_cuts_the_run_short():
    # 40,932 clicks in the epoch, max_steps stopping it after 10 of 166 steps: the warning advised a
    # smaller batch or a higher lr, as if the data were too small.
    w = few_clicks_warning(40932, 10 / 166, 20000, 2000, 2e-4, 1000, full_epochs=1.0)
    assert w == ("this run trains on 2,466 clicks, fewer than train.warn_below_clicks = 20,000, because "
                 "train.max_steps stops it after 0.06 of its 1 epoch(s) (40,932 clicks): a model trained this "
                 "briefly is far from its best; lift train.max_steps for one")
    # Too few clicks even without the cap: the data's advice, as before.
    assert "use a smaller batch or a higher dense lr" in few_clicks_warning(6797, 0.5, 20000, 1000, 2e-4, full_epochs=1.0)
    assert few_clicks_warning(40932, 1.0, 20000, 1000, 2e-4, full_epochs=1.0) is None


def test_few_clicks_warning_advises_only_what_the_run_does_not_already_do():
    both = few_clicks_warning(6797, 1.0, 20000, 1000, 2e-4)
    assert "use a smaller batch or a higher dense lr, e.g. specs/profiles/demo.yaml (batch 256, dense lr 0.001)" in both
    at_1e3 = few_clicks_warning(6797, 1.0, 20000, 1000, 1e-3)
    assert "use a smaller batch, e.g." in at_1e3 and "or a higher dense lr" not in at_1e3
    small_batch = few_clicks_warning(6797, 1.0, 20000, 256, 2e-4)
    assert "use a higher dense lr, e.g." in small_batch and "smaller batch" not in small_batch
    assert few_clicks_warning(6797, 1.0, 20000, 256, 1e-3) is None  # already the advice: nothing to say
    assert few_clicks_warning(6797, 1.0, 20000, 128, 2e-3) is None
    # The batch advised is per rank: 2 ranks x 256 already have it.
    two_ranks = few_clicks_warning(6797, 1.0, 20000, 512, 2e-4, batch_size=256)
    assert "use a higher dense lr, e.g." in two_ranks and "smaller batch" not in two_ranks
    assert few_clicks_warning(6797, 1.0, 20000, 512, 1e-3, batch_size=256) is None


def test_the_advised_settings_are_the_demo_profiles():
    profile = yaml.safe_load((REPO / "specs" / "profiles" / "demo.yaml").read_text())["train"]
    assert profile["batch_size"] == ADVISED_BATCH_SIZE
    assert profile["dense_optimizer"]["lr"] == ADVISED_DENSE_LR


def test_the_samples_per_s_of_an_interval_count_its_real_samples(monkeypatch):
    """An epoch's last step is short (padding rows are not samples): the interval's rate counts
    what each step reported, not steps x batch."""
    import muse_rec.training.progress as progress

    clock = iter([100.0, 100.0, 104.0])  # made at t = 100 s (run and window start), the interval at 104 s
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))

    class Writer:
        def __init__(self):
            self.values = {}

        def add_scalar(self, tag, value, step):
            self.values[tag] = value

    w = Writer()
    p = ProgressLog(total_steps=4, start_step=0, is_main=True, writer=w, tty=False)
    for samples in (128, 128, 128, 40):
        p.step(samples)
    p.interval(4, None)
    assert w.values["train/samples_per_s"] == (3 * 128 + 40) / 4.0  # was 4 * 128 / 4


def test_progress_lines_without_a_terminal(caplog):
    class Writer:
        def __init__(self):
            self.scalars = []

        def add_scalar(self, tag, value, step):
            self.scalars.append((tag, step))

    w = Writer()
    p = ProgressLog(total_steps=8, start_step=0, is_main=True, writer=w, tty=False)
    with caplog.at_level(logging.INFO, logger="muse_rec"):
        for step in range(1, 9):
            p.step(128)
            if step % 4 == 0:
                p.interval(step, 0.5)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert re.fullmatch(r"step 4/8 \(50%\) \| [\d,]+ samples/s \| loss 0\.5000 \| ETA \d+:\d\d:\d\d", lines[0])
    assert lines[1].startswith("step 8/8 (100%)") and lines[1].endswith("ETA 0:00:00")
    assert w.scalars == [("train/loss", 4), ("train/samples_per_s", 4), ("train/loss", 8), ("train/samples_per_s", 8)]
    # Other ranks print nothing and write no scalars.
    caplog.clear()
    q = ProgressLog(total_steps=8, start_step=0, is_main=False, writer=None, tty=False)
    q.interval(4, 0.5)
    assert not caplog.records


def test_the_share_done_counts_steps_of_another_size_behind_a_resume(caplog):
    """15 steps of 2 ranks resumed on 1 rank: 30 of its steps are done, 36 left (66 in all). The line
    said "step 20/51 (39%)" after 5 more steps, going back from the 45% logged before the resume."""
    p = ProgressLog(total_steps=51, start_step=15, is_main=True, tty=False, done_before=30)
    with caplog.at_level(logging.INFO, logger="muse_rec"):
        for step in range(16, 21):
            p.step(500)
        p.interval(20, 0.4)
    assert caplog.records[0].getMessage().startswith("step 20/51 (53%)")  # 35 of 66


@pytest.mark.multiprocess
def test_non_finite_loss_stops_the_run_before_any_later_checkpoint(prepared, tmp_path):
    from tests.training.conftest import run_ranks, train_args

    # A learning rate of 1e30 sends the dense weights to overflow within a few steps.
    out = run_ranks(train_args("specs/demo/din.yaml", prepared, tmp_path,
                               ["train.max_steps=12", "train.log_every=4", "train.checkpoint_every=1",
                                "train.dense_optimizer.lr=1e30"]), nproc=1, check=False)
    assert out.returncode == 2, (out.stdout[-2000:], out.stderr[-3000:])
    lines = [line for line in out.stderr.splitlines() if "not finite" in line]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    m = re.search(r"from step (\d+) on; stopped at step (\d+)", lines[0])
    first, stopped = int(m.group(1)), int(m.group(2))
    # checkpoint_every=1 forces a check before every save, so it stops at the bad step itself.
    assert stopped == first, lines[0]
    run = tmp_path / "din"
    steps = sorted(int(p.name.split("-")[1]) for p in (run / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert steps and max(steps) == first - 1, (steps, first)
    assert not (run / "metrics.json").exists()


@pytest.mark.parametrize("start, values, advice", [
    (0, (math.nan,), "No update had been applied yet, so it is not the learning rate: check the model's "
                     "initialisation (model.init_std, model.parametrization.*) or the data."),
    (10, (math.inf,), "No update had been applied since the step-10 checkpoint this run resumed from, so it is not "
                      "the learning rate: check that checkpoint's weights or the data."),
    (0, (0.5, math.nan), "Lower the learning rate or check the data."),
])
def test_a_loss_not_finite_before_any_update_does_not_blame_the_learning_rate(start, values, advice):
    """`train --set model.init_std=1e30` failed at step 1 with "Lower the learning rate": no update had
    been applied, so the starting weights (or the data) were the cause."""
    m = LossMonitor(start_step=start, device=torch.device("cpu"))
    for v in values:
        m.add(torch.tensor(v))
    with pytest.raises(NonFiniteLoss) as e:
        m.check(start + len(values))
    assert str(e.value).endswith(advice), str(e.value)

"""The run's training time and samples/s (metrics.json) against the wall clock of its training loop."""
from __future__ import annotations

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.training.conftest import metrics, run_ranks, train_args


def test_wall_seconds_cover_the_loop_with_its_checkpoints(prepared, tmp_path):
    """``wall_seconds`` / ``train_samples_per_s`` are the loop's wall time, checkpoints and loss checks
    included (docs/benchmarks.md: everything a run does but evaluation and the final checkpoint). They
    timed only the steps: at a checkpoint every step, 2x the wall rate."""
    run_ranks(train_args("specs/demo/muse.yaml", prepared, tmp_path,
                         ["train.max_steps=8", "train.checkpoint_every=1", "train.log_every=1",
                          "train.check_floors=false"]), nproc=1)
    run = tmp_path / "muse"
    m = metrics(run)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    rates = events.Scalars("train/samples_per_s")  # one per step, written inside that step's loop body
    assert [e.step for e in rates] == list(range(1, 9))
    # Steps 2..8 and the checkpoints of steps 1..7 ran between the first and the last event, all inside
    # the timed loop, so its time is at least their span. Tolerance: the events' clock (time.time) may
    # be slewed against perf_counter by NTP, at most 500 ppm, 1e-3 of the span bounds it.
    span = rates[-1].wall_time - rates[0].wall_time
    assert m["wall_seconds"] >= span * (1 - 1e-3), (m["wall_seconds"], span)

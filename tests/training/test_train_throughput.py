"""What a run records of its training: its time and samples/s against the wall clock, the samples it trained."""
from __future__ import annotations

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from muse_rec.data.loader import make_loader
from muse_rec.data.prepared import PreparedData
from muse_rec.training.checkpoint_latest import latest_checkpoint
from muse_rec.training.checkpoint_position import read_position
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


def test_samples_seen_of_a_shuffled_run_stopped_mid_epoch_are_the_rows_it_trained(prepared, tmp_path):
    """A seeded shuffle moves the split's short block to another step; the trainer counted step s as
    rows ``[s x B, (s + 1) x B)`` of the split, so a run stopped before the epoch's end (train.max_steps,
    or any mid-epoch checkpoint a resume continues from) recorded the short block's missing rows as trained."""
    batch, seed = 64, 3  # FAST's train.batch_size; epoch 0 reads with shuffle seed train.shuffle_seed + 0
    n = PreparedData(str(prepared)).num_samples("train")
    steps = -(-n // batch)
    last = make_loader(str(prepared), "train", batch, 100, shuffle_seed=seed).dataset.sample_indices(steps - 1)
    assert n % batch and last.size == batch  # the seed puts the short block before the last step
    run_ranks(train_args("specs/demo/muse.yaml", prepared, tmp_path,
                         [f"train.shuffle_seed={seed}", f"train.max_steps={steps - 1}", "train.eval_at_end=false"]),
              nproc=1)
    position = read_position(latest_checkpoint(str(tmp_path / "muse" / "checkpoints")))
    assert position.step == steps - 1
    assert position.samples_seen == n - batch  # every block but the last step's, which is a full one

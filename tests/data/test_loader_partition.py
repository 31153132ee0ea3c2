"""Loader partitioning: every sample exactly once across ranks x workers, equal batch counts, resume."""
from __future__ import annotations

from collections import Counter
from typing import List, Tuple

import numpy as np
import pytest
import torch

from muse_rec.data.batch import POOLED_FEATURES, history_groups
from muse_rec.data.epochs import resume_batch
from muse_rec.data.loader import make_loader
from muse_rec.data.prepare import PrepareConfig, prepare
from muse_rec.data.prepared import PreparedData, PreparedDataError
from tests.data.rawgen import write_raw_release

BATCH = 16
SEQ_LEN = 8


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> str:
    raw = tmp_path_factory.mktemp("raw")
    write_raw_release(str(raw), n_train_users=70, n_test_users=20, n_items=200, seed=7)
    out = str(raw.parent / "prepared")
    with pytest.warns(UserWarning):
        prepare(str(raw), out, PrepareConfig(progress=False))
    return out


def _sample_ids(out: str, rank: int, world: int, workers: int = 0, **kw) -> Tuple[List[Tuple[int, int]], int]:
    """(user key, item key, label) ... identify samples; returns delivered keys and batch count."""
    seen, count = [], 0
    loader = make_loader(out, "train", BATCH, SEQ_LEN, rank=rank, world_size=world, num_workers=workers, **kw)
    for b in loader:
        count += 1
        assert b.batch_size == BATCH and b.seq_len == SEQ_LEN
        assert b.pooled.keys() == POOLED_FEATURES
        real = b.weights.bool()
        # Padding rows carry nothing: no label, no ids, no history.
        assert not b.labels[~real].any() and not b.seq_lengths[~real].any() and not b.target_item[~real].any()
        seen += list(zip(b.user_keys[real].tolist(), b.item_keys[real].tolist(), b.labels[real].tolist()))
    assert count == len(loader)
    return seen, count


def _all_samples(out: str) -> Counter:
    data = PreparedData(out)
    keys = zip(data.array("train/sample_user_keys.npy").tolist(), data.array("train/sample_item_keys.npy").tolist(),
               data.array("train/labels.npy").astype(float).tolist())
    return Counter(keys)


@pytest.mark.parametrize("world", range(1, 9))
def test_every_sample_once_and_equal_batch_counts(prepared: str, world: int) -> None:
    delivered: Counter = Counter()
    counts = set()
    for rank in range(world):
        seen, n = _sample_ids(prepared, rank, world)
        delivered.update(seen)
        counts.add(n)
    assert len(counts) == 1, f"ranks got different batch counts {counts}"
    assert delivered == _all_samples(prepared)


def test_two_ranks_two_workers(prepared: str) -> None:
    delivered: Counter = Counter()
    for rank in range(2):
        with_workers, n = _sample_ids(prepared, rank, 2, workers=2)
        in_process, m = _sample_ids(prepared, rank, 2, workers=0)
        assert with_workers == in_process and n == m  # workers keep the exact order
        delivered.update(with_workers)
    assert delivered == _all_samples(prepared)


def test_start_batch_resumes_exactly(prepared: str) -> None:
    full, n = _sample_ids(prepared, 1, 3)
    per_batch = [full[i * BATCH:(i + 1) * BATCH] for i in range(n)]
    for workers in (0, 2):
        tail, m = _sample_ids(prepared, 1, 3, workers=workers, start_batch=2)
        assert m == n - 2
        assert tail == [s for b in per_batch[2:] for s in b]


@pytest.mark.parametrize("shuffle", [None, 5])
@pytest.mark.parametrize("saved_world,steps,world", [(1, 4, 2), (2, 3, 3), (4, 3, 2), (3, 2, 1), (2, 0, 3)])
def test_an_epoch_resumed_on_another_world_size_trains_every_sample_once(prepared: str, shuffle, saved_world: int,
                                                                        steps: int, world: int) -> None:
    """A checkpoint `steps` into an epoch on `saved_world` ranks, resumed on `world`: the steps before
    and after hold every sample exactly once. The trainer passed the saved per-rank count on as the
    new start (4 steps of 1 rank resumed on 2 ranks skipped global batches 4-7 and re-read none)."""
    before: Counter = Counter()
    for rank in range(saved_world):
        loader = make_loader(prepared, "train", BATCH, SEQ_LEN, rank=rank, world_size=saved_world,
                             shuffle_seed=shuffle)
        for j, b in enumerate(loader):
            if j == steps:
                break
            real = b.weights.bool()
            before.update(zip(b.user_keys[real].tolist(), b.item_keys[real].tolist(), b.labels[real].tolist()))
    start = resume_batch(steps, BATCH, saved_world, BATCH, world)
    after: Counter = Counter()
    for rank in range(world):
        after.update(_sample_ids(prepared, rank, world, start_batch=start, shuffle_seed=shuffle)[0])
    assert before + after == _all_samples(prepared) and not (set(before) & set(after))


def test_resume_refuses_what_cannot_continue_the_epoch_exactly() -> None:
    assert resume_batch(0, 64, 3, 32, 2) == 0  # an epoch's end: any batch size and world size
    assert resume_batch(5, 0, 1, 64, 1) == 5  # batch size not recorded (older checkpoints): taken as equal
    with pytest.raises(ValueError, match=r"train.batch_size 64; at 32 .* resume with train.batch_size=64"):
        resume_batch(5, 64, 1, 32, 1)
    with pytest.raises(ValueError, match=r"saved by 1 rank\(s\) 3 step\(s\) into an epoch, after 3 global batches, "
                                         r"where 2 ranks cannot continue evenly: .* divides 3, e.g. 1"):
        resume_batch(3, 64, 1, 64, 2)


def test_shuffle_is_deterministic_and_complete(prepared: str) -> None:
    a, _ = _sample_ids(prepared, 0, 1, shuffle_seed=5)
    b, _ = _sample_ids(prepared, 0, 1, shuffle_seed=5)
    c, _ = _sample_ids(prepared, 0, 1, shuffle_seed=6)
    plain, _ = _sample_ids(prepared, 0, 1)
    assert a == b and a != c and a != plain
    assert Counter(a) == Counter(plain) == _all_samples(prepared)


def test_sequences_keep_newest_right_aligned(prepared: str) -> None:
    data = PreparedData(prepared)
    for b in make_loader(prepared, "train", BATCH, SEQ_LEN):
        mask = b.seq_mask()
        assert (mask.sum(1) == b.seq_lengths).all()
        for i in np.flatnonzero(b.weights.numpy()):
            hist = data.user_history("train", int(b.user_keys[i]))
            expect = [] if hist is None else hist[0][-SEQ_LEN:].tolist()
            n = int(b.seq_lengths[i])
            assert b.seq_items[i, SEQ_LEN - n:].tolist() == expect


def test_bad_arguments(prepared: str) -> None:
    with pytest.raises(ValueError, match="rank"):
        make_loader(prepared, "train", BATCH, SEQ_LEN, rank=2, world_size=2)
    with pytest.raises(ValueError, match="start_batch"):
        make_loader(prepared, "train", BATCH, SEQ_LEN, start_batch=10**6)
    with pytest.raises(PreparedDataError, match="split = .valid.: .* has no such split"):
        make_loader(prepared, "valid", BATCH, SEQ_LEN)


def _check_groups(b) -> None:
    """The batch's history grouping: each row's members are samples of one user with one
    history; each sample is listed exactly once, in the row `hist_index` names."""
    B = b.batch_size
    index, members = b.hist_index, b.hist_members
    assert index.dtype == members.dtype == torch.int64 and index.shape == (B,)
    listed = members[members < B]
    assert sorted(listed.tolist()) == list(range(B))
    for u in range(members.shape[0]):
        row = members[u][members[u] < B]
        assert row.numel() >= 1 and (index[row] == u).all()
        assert (b.user_keys[row] == b.user_keys[row[0]]).all()
        assert (b.seq_items[row] == b.seq_items[row[0]]).all() and (b.seq_lengths[row] == b.seq_lengths[row[0]]).all()


@pytest.mark.parametrize("workers,shuffle", [(0, None), (1, 3)])
def test_batches_carry_the_history_grouping(prepared: str, workers: int, shuffle) -> None:
    loader = make_loader(prepared, "train", BATCH, SEQ_LEN, num_workers=workers, shuffle_seed=shuffle)
    for b in loader:
        _check_groups(b)
        # The same grouping a hand-built batch gets (computed from user_keys).
        again = history_groups(b.user_keys.numpy())
        assert torch.equal(torch.from_numpy(again[0]), b.hist_index)
        assert torch.equal(torch.from_numpy(again[1]), b.hist_members)


def test_history_groups_split_large_users() -> None:
    """One user with 40 samples among 30 singletons: its samples are split over several rows
    of P (trading duplicate history rows for padding), and every sample is kept."""
    keys = np.concatenate([np.full(40, 7), np.arange(100, 130)])
    np.random.default_rng(0).shuffle(keys)
    index, members = history_groups(keys)
    U, P = members.shape
    assert P < 40 and U > 31
    assert sorted(members[members < keys.size].tolist()) == list(range(keys.size))
    for u in range(U):
        row = members[u][members[u] < keys.size]
        assert len(set(keys[row].tolist())) == 1 and (index[row] == u).all()
    assert history_groups(np.zeros(0, np.int64))[1].shape == (0, 1)


@pytest.mark.parametrize("world,shuffle", [(1, None), (3, None), (8, None), (1, 5), (3, 5)])
def test_step_rows_counts_the_real_rows_each_step_delivers(prepared: str, world: int, shuffle) -> None:
    """What training counts as a step's samples (samples/s, position.samples_seen) is the rows the
    ranks' batches of that step hold without padding; it counted batch x world, padding included, and
    then the rows from the split's start, which a shuffle's short block, moved to another step, is not."""
    n = PreparedData(prepared).num_samples("train")
    loaders = [make_loader(prepared, "train", BATCH, SEQ_LEN, rank=r, world_size=world, shuffle_seed=shuffle)
               for r in range(world)]
    per_rank = [[int(b.weights.bool().sum()) for b in loader] for loader in loaders]
    steps = len(per_rank[0])
    delivered = [sum(rows[s] for rows in per_rank) for s in range(steps)]
    assert delivered == [loaders[0].dataset.step_rows(s) for s in range(steps)]
    assert sum(delivered) == n and min(delivered) < BATCH * world  # the fixture has a short block


def test_each_epoch_of_a_seeded_shuffle_reads_a_new_order_and_a_resume_the_same(prepared: str) -> None:
    """The trainer's loader (`epoch_loader`): epoch e reads with seed shuffle_seed + e, so epochs 0 and 1
    differ in order while each holds every sample once; a resume inside epoch 1 continues its order; and
    no seed is file order every epoch."""
    from muse_rec.spec import load_spec
    from muse_rec.training.checkpoint_position import Position
    from muse_rec.training.train_loop import epoch_loader
    from tests.conftest import REPO

    data = PreparedData(prepared)

    def order(spec, epoch: int, batch: int = 0) -> List[int]:
        loader = epoch_loader(data, spec, 0, 1, Position(epoch=epoch, batch_in_epoch=batch))
        return [i for j in range(loader.dataset.start_batch, loader.dataset.batches_per_rank)
                for i in loader.dataset.sample_indices(j).tolist()]

    seeded = load_spec(REPO / "specs" / "demo" / "din.yaml",
                       [f"data.prepared={prepared}", f"train.batch_size={BATCH}", "data.seq_len=100",
                        "train.shuffle_seed=7"])
    n = data.num_samples("train")
    e0, e1 = order(seeded, 0), order(seeded, 1)
    assert sorted(e0) == sorted(e1) == list(range(n)) and e0 != e1
    shuffled = make_loader(prepared, "train", BATCH, SEQ_LEN, shuffle_seed=8).dataset
    assert e1 == [i for j in range(shuffled.batches_per_rank) for i in shuffled.sample_indices(j).tolist()]
    assert order(seeded, 1, batch=2) == e1[2 * BATCH:]  # a resume inside epoch 1 continues its order
    plain = load_spec(REPO / "specs" / "demo" / "din.yaml",
                      [f"data.prepared={prepared}", f"train.batch_size={BATCH}", "data.seq_len=100"])
    assert order(plain, 0) == order(plain, 1) == list(range(n))


@pytest.mark.parametrize("world,shuffle", [(1, None), (3, None), (3, 5)])
def test_batch_rows_counts_each_batchs_real_rows_without_building_it(prepared: str, world: int, shuffle) -> None:
    """What the trainer weights a rank's logged loss by: its batch's real rows, the size of the batch's
    sample positions, including the short block and the padding batches of an epoch's last step."""
    for rank in range(world):
        ds = make_loader(prepared, "train", BATCH, SEQ_LEN, rank=rank, world_size=world, shuffle_seed=shuffle).dataset
        rows = [ds.batch_rows(j) for j in range(ds.batches_per_rank)]
        assert rows == [ds.sample_indices(j).size for j in range(ds.batches_per_rank)]
    n = PreparedData(prepared).num_samples("train")
    assert n % BATCH and sum(make_loader(prepared, "train", BATCH, SEQ_LEN, rank=r, world_size=world,
                                         shuffle_seed=shuffle).dataset.batch_rows(j)
                             for r in range(world) for j in range(ds.batches_per_rank)) == n


def test_more_workers_than_cpus_start_one_per_cpu_with_the_same_batches(prepared: str, caplog) -> None:
    """`data.num_workers: 1000` forked 1000 loader processes (a 2-CPU host: ~27 MiB and a fork each, none
    of them able to run at once); a rank now starts one per CPU it may use, says so naming the key, and
    delivers the same batches in the same order."""
    import os

    cpus = len(os.sched_getaffinity(0))
    loader = make_loader(prepared, "train", BATCH, SEQ_LEN, num_workers=1000)
    assert loader.num_workers == cpus
    assert f"data.num_workers 1000: more than the {cpus} CPUs this process may use" in caplog.text
    assert _sample_ids(prepared, 0, 1, workers=1000) == _sample_ids(prepared, 0, 1, workers=0)

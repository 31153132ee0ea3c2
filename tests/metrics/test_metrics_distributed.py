"""Two gloo ranks give exactly the metrics of one rank on the same predictions."""
from __future__ import annotations

import pickle
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tests.metrics.metrics_reference import random_predictions

from muse_rec.metrics import PredictionAccumulator, read_predictions

COLS = ("user_keys", "item_keys", "labels", "scores", "weights", "seq_lengths", "item_popularity")
WORLD = 2
# name -> fraction of the (shuffled) samples on rank 0; users end up split across ranks.
SPLITS = {"uneven": 0.6, "rank1_empty": 1.0}
BATCH = 29  # small and odd so that users are also split across batches


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        d = random_predictions(11, n_users=300)
        n = d["scores"].size
        results = {}
        for name, frac in SPLITS.items():
            cut = int(n * frac)
            lo, hi = (0, cut) if rank == 0 else (cut, n)
            acc = PredictionAccumulator()
            for b in range(lo, hi, BATCH):
                e = min(b + BATCH, hi)
                acc.update(*(torch.from_numpy(np.ascontiguousarray(d[c][b:e])) for c in COLS))
            results[name] = acc.compute()
            acc.write_parquet(Path(out_dir) / f"preds_{name}")
        with open(Path(out_dir) / f"rank{rank}.pkl", "wb") as f:
            pickle.dump(results, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.multiprocess
@pytest.mark.timeout(300)
def test_two_ranks_equal_one_rank(tmp_path):
    mp.spawn(_rank_main, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)

    d = random_predictions(11, n_users=300)
    single = PredictionAccumulator()
    single.update(*(torch.from_numpy(d[c]) for c in COLS))
    want = single.compute()
    want.pop("world_size")

    per_rank = [pickle.loads((tmp_path / f"rank{r}.pkl").read_bytes()) for r in range(WORLD)]
    keep = d["weights"] == 1
    for name in SPLITS:
        for r in range(WORLD):
            got = dict(per_rank[r][name])
            assert got.pop("world_size") == WORLD
            # Bit-identical, including the grouped breakdowns and NaNs of empty groups.
            assert repr(got) == repr(want), f"split {name}, rank {r}"
        df = read_predictions(tmp_path / f"preds_{name}")
        assert sorted(p.name for p in (tmp_path / f"preds_{name}").iterdir()) == [
            "part-00000-of-00002.parquet",
            "part-00001-of-00002.parquet",
        ]
        # Parts in rank order hold exactly the real samples, in input order.
        np.testing.assert_array_equal(df["user_key"].to_numpy(), d["user_keys"][keep])
        np.testing.assert_array_equal(df["score"].to_numpy(), d["scores"][keep].astype(np.float64))
    # The data do split users across the ranks in the uneven split.
    cut = int(d["scores"].size * SPLITS["uneven"])
    assert set(d["user_keys"][:cut]) & set(d["user_keys"][cut:])

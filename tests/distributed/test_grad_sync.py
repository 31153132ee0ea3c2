"""3 gloo ranks: DDP's dense gradient mean sums alike before and after DDP rebuilds its buckets
(`muse_rec.distributed.grad_sync`), and is the ranks' mean to fp32 rounding."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.distributed.spawn import run_worker_ranks

WORLD = 3  # 2 ranks' sum has one order whatever the layout: 3 is the least that can show it


@pytest.mark.multiprocess
def test_gradients_sum_alike_after_ddp_rebuilds_its_buckets(tmp_path: Path) -> None:
    run_worker_ranks("tests.distributed.grad_sync_worker", tmp_path, WORLD, timeout=240)
    for rank in range(WORLD):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert report["second_equals_fresh_first"], (rank, report)
        assert max(report["excess"]) <= 0.0, (rank, report)

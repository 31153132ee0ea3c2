"""`adam` on CUDA: FBGEMM's fused Adam, through the same DMP route as CPU's RowSparseAdam, against
torch SparseAdam on the same rows (needs a CUDA device; skipped elsewhere).

Tolerance: FBGEMM's kernel folds bias correction into the moments (m / (1 - b1^t) over
sqrt(v / (1 - b2^t)) + eps) where SparseAdam scales the step, and uses fused multiply-adds: each
step's update (at most lr x ~1 = 2e-2 here) differs by a few fp32 roundings, ~1e-7 relative,
plus the eps placement, eps / sqrt(v) <= 1e-8 / (1/16 x sqrt(1 - 0.999)) ~ 5e-6 relative at the
first step. Over 4 steps that is below 4 x 2e-2 x 6e-6 ~ 5e-7; `ATOL` = 2e-6 leaves a 4x margin and
is 10^4 below one Adam step (2e-2): a missed or doubled update, a moment of an untouched row or a
lost rank contribution all show.
"""
from __future__ import annotations

import pytest
import torch

from muse_rec.distributed.env import DistEnv, destroy_distributed, init_distributed
from tests.distributed.row_sparse_adam_worker import LR, run_case

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (FBGEMM's fused Adam)")]

ATOL = 2e-6


@pytest.fixture(scope="module")
def env():
    e = init_distributed(DistEnv.from_environ({}, device_type="cuda"))
    yield e
    destroy_distributed()


@pytest.mark.parametrize("sharding", ["table_wise", "row_wise", "column_wise"])
def test_fused_adam_matches_sparse_adam(env, sharding: str) -> None:
    report = run_case(env, sharding, atol=ATOL)
    assert report["mismatch"] == {}, report
    assert 0.0 < report["max_abs_diff"] <= ATOL or report["max_abs_diff"] == 0.0
    # FBGEMM knows no padding_idx: the padding row trains on CUDA (RowSparseAdam keeps it still).
    print(sharding, "max |diff|", report["max_abs_diff"], "padding row trained:", report["padding_row_trained"])


@pytest.mark.parametrize("sharding", ["table_wise", "row_wise"])
def test_fused_adam_weight_decay_is_decoupled_as_on_cpu(env, sharding: str) -> None:
    """The same reference as CPU's RowSparseAdam test: SparseAdam, then w -= lr * wd * w_before on touched rows."""
    report = run_case(env, sharding, weight_decay=0.25, atol=ATOL)
    assert report["mismatch"] == {}, report
    print(sharding, "wd max |diff|", report["max_abs_diff"])


def test_the_comparison_would_catch_a_wrong_lr(env) -> None:
    """The tolerance is far below one update: a reference at 1.01 x lr (a 2e-4 step difference) fails."""
    report = run_case(env, "table_wise", atol=ATOL, ref_lr=LR * 1.01)
    assert report["mismatch"], report

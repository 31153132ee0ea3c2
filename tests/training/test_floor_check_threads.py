"""Rank 0's floor check runs after every rank has evaluated: it may use the process's cores, not the
one thread torchrun gives each rank (measured on the demo's test split: 2.27 s on 1 thread, 1.48 s
on 2), and gives them back after, also when the check fails."""
from __future__ import annotations

import os

import pytest
import torch

from muse_rec.training.trainer import _all_cores


def test_the_floor_check_gets_the_cores_and_gives_them_back() -> None:
    before = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(1)  # as under torchrun (OMP_NUM_THREADS=1)
    try:
        with _all_cores():
            assert torch.get_num_threads() == cores
        assert torch.get_num_threads() == 1
        with pytest.raises(RuntimeError, match="floors failed"):
            with _all_cores():
                raise RuntimeError("floors failed")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)

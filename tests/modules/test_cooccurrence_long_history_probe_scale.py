"""MISS's co-occurrence counts stay exact when the history's prefix sums pass 2^24.

The window sums were differences of fp32 prefix sums, which reach (item_weight + 1) x L; past 2^24 they are
no longer exact integers. At the default item_weight 2 that is ~5.6M positions (measured at L = 6M, every
behaviour the target's item: 10 or 12 for a window of 11 category hits, 34 where at most 33 is possible);
item_weight 100 reaches it at L = 166K, which keeps this test small.
"""
from __future__ import annotations

import torch

from muse_rec.modules.gsu_baselines import CooccurrenceGSU


def test_window_counts_are_exact_past_two_to_the_24_in_the_prefix_sum():
    L, window, weight = 400_000, 5, 100.0
    items = torch.full((1, L), 5, dtype=torch.int64)
    cats = torch.full((1, L), 2, dtype=torch.int64)
    mask = torch.ones(1, L, dtype=torch.bool)
    gsu = CooccurrenceGSU(8, window=window, item_weight=weight)
    scores = gsu.scores(torch.tensor([5]), torch.tensor([2]), items, cats, mask)[0]
    pos = torch.arange(L)
    in_window = (pos + window).clamp(max=L - 1) - (pos - window).clamp(min=0) + 1  # behaviours within the window
    assert torch.equal(scores, in_window.to(torch.float32) * (weight + 1.0))

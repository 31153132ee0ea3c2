"""SIM-hard's GSU keeps the K newest matching behaviours, newest first, at histories past 2^24 positions.

Its recency score was the fp32 position, exact only below 2^24 = 16,777,216: beyond, two neighbours round to
one value, tie, and the tie rule (lowest position first) put the older one first. At L = 2^24 + 64 with every
behaviour matching, the 8 "newest" were [..79, ..78, ..75, ..76, ..77, ..74, ..71, ..72]: out of order, and
..71 picked over ..73. `--seq-len` accepts such a length where memory allows (~2.4 GB for one user's history).
"""
from __future__ import annotations

import torch

from muse_rec.modules.gsu_baselines import CategoryGSU


def test_the_newest_matches_past_two_to_the_24_positions():
    L, K = (1 << 24) + 64, 8
    cats = torch.ones(1, L, dtype=torch.int64)
    cats[0, -5] = 2  # one newer behaviour of another category is skipped, not counted
    mask = torch.ones(1, L, dtype=torch.bool)
    res = CategoryGSU(K)(torch.tensor([1]), cats, mask)
    expected = [p for p in range(L - 1, L - K - 2, -1) if p != L - 5]
    assert res.indices[0].tolist() == expected
    assert bool(res.valid.all()) and bool(res.has_score.all())
    assert res.scores[0].tolist() == [1.0] * K

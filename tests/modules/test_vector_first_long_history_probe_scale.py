"""`vector_first_topk` (the ID-score ablations, the SCL attention GSU, fusion) takes behaviours without an SCL
vector newest first past 2^24 positions.

Their order came from fp32 positions, exact only below 2^24: past it neighbours tied and the tie rule (lowest
position first) put the older one first, at L = 2^24 + 64 the picks ..79, ..78, ..75, ..76, ..77, ..74, ..71,
..72 for the newest eight.
"""
from __future__ import annotations

import torch

from muse_rec.modules.selection import vector_first_topk


def test_the_newest_behaviours_without_a_vector_past_two_to_the_24_positions():
    L, K = (1 << 24) + 64, 8
    score = torch.zeros(1, L)
    no_vector = torch.zeros(1, L, dtype=torch.bool)
    eligible = torch.ones(1, L, dtype=torch.bool)
    eligible[0, -3] = False  # padding inside the history is skipped
    res = vector_first_topk(score, no_vector, eligible, K)
    assert res.indices[0].tolist() == [p for p in range(L - 1, L - K - 2, -1) if p != L - 3]
    assert bool(res.valid.all()) and not bool(res.has_score.any())
    assert res.scores[0].tolist() == [0.0] * K

"""Behaviours without an SCL vector are picked newest first at histories past ~420K positions, by every
top-K path of the cosine GSU alike.

Their selection score was -1.1 + 0.05 x position / L in fp32, whose steps (0.05 / L) fall below fp32's
spacing near -1.1 (2^-23) past L ~ 420K: neighbours rounded to one value and tied, and the tie rule (lowest
position first) put older ones first. At L = 1M, a history with no vector at all: training's grouped path
and the exported static path picked [..98, ..99, ..96, ..97, ..94, ..95, ..91, ..92], the Ranker's
certified path [..99, ..98, ..97, ..96, ..95, ..94, ..92, ..91], where the rule says ..99 down to ..92.
"""
from __future__ import annotations

import torch

from muse_rec.modules.gsu import CosineGSU
from muse_rec.modules.selection import decode_cosine_selection
from muse_rec.modules.shared_keys_cosine import static_shared_keys_cosine_topk


def test_the_newest_behaviours_without_a_vector_at_a_million_positions():
    L, K, D = 1_000_000, 8, 8  # a small D: the rule is about positions, not about the vectors' width
    keys = torch.zeros(1, L, D, dtype=torch.int8)  # no behaviour has a vector
    mask = torch.ones(1, L, dtype=torch.bool)
    query = torch.randint(-127, 128, (2, D), generator=torch.Generator().manual_seed(0)).to(torch.int8)
    query[:, 0] = 1  # non-zero
    expected = [list(range(L - 1, L - 1 - K, -1))] * 2
    gsu = CosineGSU(K)
    grouped = gsu(query, keys.expand(2, -1, -1).contiguous(), mask.expand(2, -1).contiguous(), torch.tensor([0, 1]))
    shared = gsu(query, keys, mask, torch.zeros(2, dtype=torch.int64))
    static = decode_cosine_selection(*static_shared_keys_cosine_topk(query, keys[0], mask[0], K), K)
    for name, res in (("grouped (training)", grouped), ("shared (Ranker)", shared), ("static (export)", static)):
        assert res.indices.tolist() == expected, name
        assert bool(res.valid.all()) and not bool(res.has_score.any()), name

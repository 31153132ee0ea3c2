"""Every GSU's selection against a plain loop written from its definition (docs/modules.md, MUSE.md).

Random small cases cover what the hand examples do not all reach at once: empty and length-1
histories, histories shorter than K, users of only padding, repeated behaviours (equal scores),
a target equal or opposite to a behaviour (cosine exactly +1 / -1), targets and behaviours
without an SCL vector, batches of one, and each call shape (grouped ``[U, L]`` with ``index``,
one sequence per sample, one history shared by every candidate).
"""
from __future__ import annotations

import math
import random
from typing import List, Tuple

import pytest
import torch

from muse_rec.modules import CategoryGSU, CosineGSU
from muse_rec.modules.gsu_baselines import CooccurrenceGSU, merge_gsu_results
from muse_rec.modules.selection import GSUResult

# A slot as the loops produce it: (position, has_score, score).
Slot = Tuple[int, bool, float]


def _right_aligned_mask(lengths: torch.Tensor, L: int) -> torch.Tensor:
    return torch.arange(L).unsqueeze(0) >= (L - lengths).unsqueeze(1)


def _assert_slots(res: GSUResult, b: int, expected: List[Slot], K: int, score_tol: float, what: str) -> None:
    """Row ``b`` of ``res`` holds ``expected`` best first, then invalid slots (position 0, score 0)."""
    n = len(expected)
    assert res.valid[b].tolist() == [True] * n + [False] * (K - n), what
    assert res.indices[b].tolist() == [p for p, _, _ in expected] + [0] * (K - n), what
    assert res.has_score[b].tolist() == [h for _, h, _ in expected] + [False] * (K - n), what
    got = res.scores[b].tolist()
    want = [s for _, _, s in expected] + [0.0] * (K - n)
    assert all(abs(g - w) <= score_tol for g, w in zip(got, want)), (what, got, want)


def _cosine_slots(q: List[int], keys: List[List[int]], mask: List[bool], K: int) -> List[Slot]:
    """MUSE's GSU rule: behaviours with a cosine first (highest first, equal ones lowest position
    first), then real behaviours without one (either vector all-zero), newest first; padding never."""
    norm = lambda v: math.sqrt(sum(x * x for x in v))  # noqa: E731
    scored, unscored = [], []
    for pos, (k, real) in enumerate(zip(keys, mask)):
        if not real:
            continue
        if norm(q) > 0 and norm(k) > 0:
            scored.append((sum(a * b for a, b in zip(q, k)) / (norm(q) * norm(k)), pos))
        else:
            unscored.append(pos)
    scored.sort(key=lambda t: (-t[0], t[1]))
    unscored.sort(reverse=True)
    return ([(p, True, c) for c, p in scored] + [(p, False, 0.0) for p in unscored])[:K]


# int8 values: dot products and norms are exact in fp32, only the normalisation rounds
# (`cosine.INT8_COSINE_BOUND` = 4 ulps of |cos| <= 1): 1e-6 bounds the fp32 cosine's error.
COS_TOL = 1e-6


def test_cosine_gsu_matches_the_rule_in_every_call_shape():
    g = torch.Generator().manual_seed(0)
    D = 6
    checked = {"grouped": 0, "per-sample": 0, "shared": 0}
    for trial in range(120):
        U, L, K, B = (int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in ((1, 4), (0, 11), (1, 7), (1, 5)))
        keys = torch.randint(-127, 128, (U, L, D), generator=g, dtype=torch.int8)
        keys[torch.rand(U, L, generator=g) < 0.25] = 0  # behaviours without a vector
        if L >= 3:  # a repeated behaviour (equal cosines) and its opposite (cosine -1 to the first)
            keys[:, 1] = keys[:, 0]
            keys[:, 2] = -keys[:, 0].clamp(min=-127)
        mask = _right_aligned_mask(torch.randint(0, L + 1, (U,), generator=g), L)
        keys[~mask] = 0
        index = torch.randint(0, U, (B,), generator=g)
        q = torch.randint(-127, 128, (B, D), generator=g, dtype=torch.int8)
        q[torch.rand(B, generator=g) < 0.15] = 0  # targets without a vector
        if L >= 1:  # a target equal to its user's newest behaviour: cosine exactly 1
            q[0] = keys[index[0], L - 1]
        gsu = CosineGSU(top_k=K, chunk_size=3)  # chunks of 3 rows: several per history
        calls = [("grouped", gsu(q, keys, mask, index), keys, mask, index),
                 ("per-sample", gsu(q, keys[index], mask[index]), keys[index], mask[index], torch.arange(B)),
                 ("shared", gsu(q, keys[:1], mask[:1], torch.zeros(B, dtype=torch.int64)), keys[:1], mask[:1],
                  torch.zeros(B, dtype=torch.int64))]
        for name, res, k_u, m_u, idx in calls:
            assert res.indices.shape == (B, K)
            for b in range(B):
                u = int(idx[b])
                expected = _cosine_slots(q[b].tolist(), k_u[u].tolist(), m_u[u].tolist(), K)
                _assert_slots(res, b, expected, K, COS_TOL, f"{name} trial {trial} sample {b}")
                checked[name] += len(expected)
    assert min(checked.values()) > 300  # the cases hold selections, not only empty rows


def test_category_gsu_is_the_newest_k_of_the_targets_known_category():
    rng, g = random.Random(1), torch.Generator().manual_seed(1)
    for trial in range(150):
        B, L, K = rng.randint(1, 4), rng.randint(0, 12), rng.randint(1, 8)
        cats = torch.randint(0, 4, (B, L), generator=g)  # 0 = unknown: matches nothing, not even an unknown target
        mask = _right_aligned_mask(torch.randint(0, L + 1, (B,), generator=g), L)
        target = torch.randint(0, 4, (B,), generator=g)
        res = CategoryGSU(K)(target, cats, mask)
        for b in range(B):
            c = int(target[b])
            newest = [p for p in range(L - 1, -1, -1) if mask[b, p] and int(cats[b, p]) == c and c != 0][:K]
            _assert_slots(res, b, [(p, True, 1.0) for p in newest], K, 0.0, f"trial {trial} sample {b}")


def test_cooccurrence_gsu_counts_anchors_in_the_window_highest_then_newest():
    rng, g = random.Random(2), torch.Generator().manual_seed(2)
    for trial in range(150):
        B, L, K, W = rng.randint(1, 4), rng.randint(0, 12), rng.randint(1, 8), rng.randint(0, 3)
        items, cats = torch.randint(0, 5, (B, L), generator=g), torch.randint(0, 4, (B, L), generator=g)
        mask = _right_aligned_mask(torch.randint(0, L + 1, (B,), generator=g), L)
        items[~mask] = 0
        t_item, t_cat = torch.randint(0, 5, (B,), generator=g), torch.randint(0, 4, (B,), generator=g)
        res = CooccurrenceGSU(K, window=W, item_weight=2.0)(t_item, t_cat, items, cats, mask)
        for b in range(B):
            anchor = [float(bool(mask[b, j])) * (2.0 * (int(items[b, j]) == int(t_item[b]) != 0)
                                                 + (int(cats[b, j]) == int(t_cat[b]) != 0)) for j in range(L)]
            score = [sum(anchor[max(0, i - W):i + W + 1]) if mask[b, i] else 0.0 for i in range(L)]
            best = sorted((i for i in range(L) if score[i] > 0), key=lambda i: (-score[i], -i))[:K]
            _assert_slots(res, b, [(i, True, score[i]) for i in best], K, 0.0, f"trial {trial} sample {b}")


def _random_result(B: int, K: int, L: int, rng: random.Random, g: torch.Generator) -> GSUResult:
    """A GSU result: a prefix of valid slots (positions may repeat across results), then invalid ones."""
    n = [rng.randint(0, K) for _ in range(B)]
    valid = torch.tensor([[k < n[b] for k in range(K)] for b in range(B)])
    idx = torch.where(valid, torch.randint(0, max(L, 1), (B, K), generator=g), 0)
    return GSUResult(idx, torch.where(valid, torch.rand(B, K, generator=g), 0.0), valid,
                     valid & (torch.rand(B, K, generator=g) < 0.8))


@pytest.mark.parametrize("top_k", [1, 3, 7, 12])
def test_merge_interleaves_by_rank_and_keeps_each_position_once(top_k):
    rng, g = random.Random(top_k), torch.Generator().manual_seed(top_k)
    for trial in range(60):
        B, K, L = rng.randint(1, 4), rng.randint(1, 6), rng.randint(1, 8)
        a, c = _random_result(B, K, L, rng, g), _random_result(B, K, L, rng, g)
        merged = merge_gsu_results(a, c, top_k)
        for b in range(B):
            slots: List[Slot] = []
            for k in range(K):  # a[0], c[0], a[1], c[1], ...: a position already taken is skipped
                for r in (a, c):
                    p = int(r.indices[b, k])
                    if r.valid[b, k] and p not in [s[0] for s in slots]:
                        slots.append((p, bool(r.has_score[b, k]), float(r.scores[b, k])))
            _assert_slots(merged, b, slots[:top_k], top_k, 0.0, f"trial {trial} sample {b}")

"""Baseline GSUs: SIM-hard (category), TWIN (attention), MISS (co-occurrence + merge)."""
from __future__ import annotations

import pytest
import torch

from muse_rec.modules import (
    AttentionGSU,
    CategoryGSU,
    CooccurrenceGSU,
    GSUResult,
    TargetAttention,
    merge_gsu_results,
)


def right_aligned_mask(lengths, L: int) -> torch.Tensor:
    return torch.arange(L).unsqueeze(0) >= (L - torch.as_tensor(lengths)).unsqueeze(1)


def test_category_gsu_most_recent_matches_hand_example():
    #            pos: 0  1  2  3  4  5  6  7
    cats = torch.tensor([[5, 5, 3, 5, 7, 5, 3, 5],
                         [5, 5, 5, 5, 5, 5, 5, 5],
                         [0, 0, 0, 0, 0, 0, 0, 0]])
    mask = right_aligned_mask([7, 2, 8], 8)  # row 0: position 0 is padding (holding a 5)
    res = CategoryGSU(top_k=3)(torch.tensor([5, 5, 0]), cats, mask)
    assert res.indices.tolist() == [[7, 5, 3], [7, 6, 0], [0, 0, 0]]
    assert res.valid.tolist() == [[True] * 3, [True, True, False], [False] * 3]
    assert res.scores.tolist() == [[1.0] * 3, [1.0, 1.0, 0.0], [0.0] * 3]  # unknown category matches nothing
    # K > L pads with invalid slots; asking for more returns the older matches too.
    res = CategoryGSU(top_k=10)(torch.tensor([5, 5, 0]), cats, mask)
    assert res.indices.shape == (3, 10)
    assert res.indices[0, :4].tolist() == [7, 5, 3, 1] and res.valid[0].sum() == 4


def test_category_gsu_rejects_bad_shapes():
    with pytest.raises(ValueError, match="seq_cats"):
        CategoryGSU(2)(torch.tensor([1]), torch.ones(1, 4, 1, dtype=torch.long), torch.ones(1, 4, dtype=torch.bool))


def test_attention_gsu_uses_esu_logits_and_no_grad():
    torch.manual_seed(0)
    ta = TargetAttention(16, 16, 8)
    gsu = AttentionGSU(ta, top_k=5, chunk_size=7)  # L not a multiple of the chunk
    q = torch.randn(3, 16, requires_grad=True)
    k = torch.randn(3, 30, 16, requires_grad=True)
    mask = right_aligned_mask([30, 12, 2], 30)
    res = gsu(q, k, mask)
    with torch.no_grad():
        logits = ta.logits(q, k).masked_fill(~mask, float("-inf"))
    ref_vals, ref_idx = logits.topk(5, dim=1)
    valid = torch.isfinite(ref_vals)
    assert torch.equal(res.valid, valid)
    assert torch.equal(res.indices[valid], ref_idx[valid])
    torch.testing.assert_close(res.scores[valid], ref_vals[valid])
    assert not res.scores.requires_grad
    # Shared parameters, registered once.
    names = [n for n, _ in torch.nn.ModuleDict({"esu": ta, "gsu": gsu}).named_parameters()]
    assert len(names) == len(list(ta.parameters()))


def test_cooccurrence_scores_hand_example():
    items = torch.tensor([[9, 1, 2, 4, 1, 8, 6, 5]])
    cats = torch.tensor([[3, 7, 3, 4, 7, 4, 4, 4]])
    mask = torch.ones(1, 8, dtype=torch.bool)
    gsu = CooccurrenceGSU(top_k=4, window=1, item_weight=2.0)
    # target item 1 (cat 7): anchors = 2*[item==1] + [cat==7] = [0,3,0,0,3,0,0,0]
    score = gsu.scores(torch.tensor([1]), torch.tensor([7]), items, cats, mask)
    assert score.tolist() == [[3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 0.0, 0.0]]
    res = gsu(torch.tensor([1]), torch.tensor([7]), items, cats, mask)
    assert res.indices.tolist() == [[5, 4, 3, 2]]  # equal counts -> newest first
    assert res.valid.all() and res.scores.tolist() == [[3.0] * 4]
    res = CooccurrenceGSU(top_k=8, window=0)(torch.tensor([1]), torch.tensor([7]), items, cats, mask)
    assert res.indices[0, :2].tolist() == [4, 1] and res.valid[0].sum() == 2  # zero counts not eligible


def test_cooccurrence_ignores_padding_and_unknown():
    items = torch.tensor([[1, 1, 0, 3]])
    cats = torch.tensor([[7, 7, 0, 2]])
    mask = right_aligned_mask([2], 4)
    res = CooccurrenceGSU(top_k=3, window=5)(torch.tensor([0]), torch.tensor([0]), items, cats, mask)
    assert not res.valid.any()  # unknown target: nothing co-occurs
    res = CooccurrenceGSU(top_k=3, window=5)(torch.tensor([1]), torch.tensor([7]), items, cats, mask)
    assert not res.valid.any()  # the matches are padding


def _result(indices, valid, scores=None) -> GSUResult:
    idx = torch.tensor(indices)
    v = torch.tensor(valid)
    s = torch.tensor(scores, dtype=torch.float32) if scores is not None else v.float()
    return GSUResult(indices=idx, scores=s, valid=v, has_score=v.clone())


def test_merge_interleaves_dedupes_and_pads():
    a = _result([[4, 2, 9, 0]], [[True, True, True, False]], [[0.9, 0.5, 0.1, 0.0]])
    b = _result([[2, 7, 0]], [[True, True, False]], [[3.0, 2.0, 0.0]])
    m = merge_gsu_results(a, b, top_k=6)
    # a4, b2, a2 (dup of b2), b7, a9 -> 4, 2, 7, 9
    assert m.indices.tolist() == [[4, 2, 7, 9, 0, 0]]
    assert m.valid.tolist() == [[True] * 4 + [False] * 2]
    assert m.scores.tolist() == [[pytest.approx(0.9), 3.0, 2.0, pytest.approx(0.1), 0.0, 0.0]]
    m = merge_gsu_results(a, b, top_k=2)
    assert m.indices.tolist() == [[4, 2]] and m.valid.all()


def test_scl_attention_gsu_reads_unit_vectors():
    """Issue 10 item 5: the multimodal-attention GSU fed raw int8-scale SCL values (norm ~127) to its
    projections, so logits were ~127^2 times those of unit vectors and the softmax one-hot at init.
    Its logits must not depend on the storage scale of the vectors."""
    from muse_rec.modules import Histories, SCLAttentionGSU, SearchInputs
    from muse_rec.modules.attention import masked_softmax

    torch.manual_seed(0)
    B, L, D, K = 4, 60, 128, 50
    unit = torch.nn.functional.normalize(torch.randn(B + L, D), dim=1)
    as_int8 = torch.trunc(127 * unit).to(torch.int8)
    mask = torch.ones(1, L, dtype=torch.bool)
    hist = Histories(torch.arange(L).view(1, L), torch.zeros(1, L, dtype=torch.long), mask, torch.zeros(B, dtype=torch.long))
    gsu = SCLAttentionGSU(TargetAttention(D, D, 32), top_k=K)

    def logits(vectors):
        s = SearchInputs(hist, torch.arange(B), torch.zeros(B, dtype=torch.long), vectors[:B], vectors[B:].unsqueeze(0))
        q, k = gsu.keys_of(s)
        return gsu.full_logits(q, k, mask, hist.index)

    # int8 storage and unit vectors give the same logits (up to the int8 truncation of the vectors).
    torch.testing.assert_close(logits(as_int8), logits(unit), atol=2e-2, rtol=0)
    # At init the attention over the K retrieved is spread out, not one-hot: with default Linear
    # init and unit inputs |logit| << 1, so every weight is within a factor 2 of uniform 1/K.
    res = gsu.retrieve(SearchInputs(hist, torch.arange(B), torch.zeros(B, dtype=torch.long), as_int8[:B],
                                    as_int8[B:].unsqueeze(0)))
    w = masked_softmax(res.scores, res.valid)
    assert float(w.max()) < 2.0 / K, float(w.max())


@pytest.mark.parametrize("pad", [0, 7, 846])
def test_topk_eligible_keeps_equal_scores_lowest_position_first_whatever_the_padding(pad):
    """`torch.topk` kept any of the equal scores at the K-th place, and which ones depended on the row's
    length: the same 154 behaviours left-padded by 0, 7 or 846 positions kept different ones."""
    from muse_rec.modules.selection import topk_eligible

    n, K = 154, 50
    score = torch.cat([torch.zeros(2, pad), torch.full((2, n), 0.25)], dim=1)
    score[1, pad + 100] = 1.0  # one clear winner, then the ties
    eligible = torch.arange(pad + n).unsqueeze(0).expand(2, -1) >= pad
    res = topk_eligible(score, eligible, K)
    assert res.valid.all()
    assert (res.indices[0] - pad).tolist() == list(range(K))
    assert (res.indices[1] - pad).tolist() == [100] + list(range(K - 1))


def test_scl_attention_gsu_picks_the_same_behaviours_at_any_history_length():
    """Every behaviour without an SCL vector has the same logit under the SCL attention GSU (its unit
    vector is 0). Where they tie at the K-th place the Ranker's history (L = the user's behaviours) kept
    other behaviours than the training shape (L = data.seq_len, U users), and served a trained
    `gsu_score_mm_attention` model up to 4e-4 in probability from its evaluation."""
    from muse_rec.modules import Histories, SCLAttentionGSU, SearchInputs

    torch.manual_seed(0)
    n, L, B, D, K = 154, 1000, 5, 128, 50
    unit = torch.nn.functional.normalize(torch.randn(B + n, D), dim=1)
    vectors = torch.trunc(127 * unit).to(torch.int8)
    seq = vectors[B:].clone()
    seq[::2] = 0  # half the behaviours have no SCL vector: more than K of them tie
    gsu = SCLAttentionGSU(TargetAttention(D, D, 32, bias=True), top_k=K)
    # A no-vector behaviour's projected key is the bias: about half the behaviours with a vector score
    # above it, fewer than K, so the K-th place falls among the tied no-vector behaviours.
    torch.nn.init.constant_(gsu.attention.w_k.bias, 1.0)

    def picks(length: int, users: int) -> list:
        items = torch.zeros(users, length, dtype=torch.long)
        items[:, length - n:] = torch.arange(1, n + 1)
        keys = torch.zeros(users, length, D, dtype=torch.int8)
        keys[:, length - n:] = seq
        mask = items > 0
        index = torch.zeros(B, dtype=torch.long)  # every target reads user 0's history
        hist = Histories(items, torch.zeros_like(items), mask, index)
        res = gsu.retrieve(SearchInputs(hist, torch.arange(B), torch.zeros(B, dtype=torch.long), vectors[:B], keys))
        assert res.valid.all()
        return sorted(map(tuple, (res.indices - (length - n)).sort(dim=1).values.tolist()))

    serving = picks(n, 1)  # the Ranker: one user, L = its behaviours
    assert picks(L, 1) == serving  # the exported program: L = data.seq_len
    assert picks(L, 3) == serving  # training and evaluation: U users, L = data.seq_len


@pytest.mark.parametrize("extra", [0, 6])
def test_scl_attention_gsu_ranks_behaviours_without_a_vector_below_every_one_with(extra):
    """Issue 10 item 5's one rule, for the multimodal-attention GSU too: a behaviour without an SCL vector has
    a zero unit vector, so its logit is the key bias's alone, and it outranked every behaviour with a vector
    whose projection points away from the query (a trained `gsu_score_mm_attention` picked 373 of 28,094
    such behaviours where the cosine GSU's rule allows 248). With K = the behaviours that have a vector they
    are exactly the picks; with ``extra`` more slots, the behaviours without one follow, newest first."""
    from muse_rec.modules import Histories, SCLAttentionGSU, SearchInputs

    torch.manual_seed(0)
    L, B, D = 40, 3, 128
    vectors = torch.trunc(127 * torch.nn.functional.normalize(torch.randn(B + L, D), dim=1)).to(torch.int8)
    seq = vectors[B:].clone()
    without = torch.arange(1, L, 3)  # 13 behaviours without an SCL vector, 27 with
    seq[without] = 0
    with_vector = sorted(set(range(L)) - set(without.tolist()))
    gsu = SCLAttentionGSU(TargetAttention(D, D, 32, bias=True), top_k=len(with_vector) + extra)
    torch.nn.init.constant_(gsu.attention.w_k.bias, 1.0)  # the no-vector logit beats about half the others
    items = torch.arange(1, L + 1).unsqueeze(0)
    hist = Histories(items, torch.zeros_like(items), items > 0, torch.zeros(B, dtype=torch.long))
    search = SearchInputs(hist, torch.arange(B), torch.zeros(B, dtype=torch.long), vectors[:B], seq.unsqueeze(0))
    logits = gsu.full_logits(*gsu.keys_of(search), hist.mask, hist.index)
    # The premise: some no-vector logit outranks some behaviour with a vector, for every target.
    assert (logits[:, without].max(1).values > logits[:, with_vector].min(1).values).all()

    res = gsu.retrieve(search)
    assert res.valid.all()
    n = len(with_vector)
    for b in range(B):
        assert sorted(res.indices[b, :n].tolist()) == with_vector
        assert res.has_score[b, :n].all() and not res.has_score[b, n:].any()
        assert res.indices[b, n:].tolist() == without.flip(0)[:extra].tolist()  # newest first

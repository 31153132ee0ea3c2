"""ID + multimodal fusion (muse_rec/modules/fusion.py): reference vs fast path, the extremes of the
gate (MUSE's and SIM-soft's selections), the union rule, gradients of the gates, spec errors."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from muse_rec.modules import CosineGSU, EmbeddingCosineGSU, Histories, SearchInputs, SemanticAwareTargetAttention
from muse_rec.modules.fusion import (
    FusionGSU,
    FusionSemanticAttention,
    FusionSimilarity,
    FusionSimTier,
    FusionGate,
    behaviour_rows,
    branch_slices,
    fused_scores,
    reference_fused_scores,
    union_of,
)
from muse_rec.modules.search import history_cosine
from muse_rec.modules.selection import GSUResult
from muse_rec.spec import SpecError, load_spec

SPECS = Path(__file__).resolve().parents[2] / "specs"
# fp32 standardised scores are O(1-5); fp32 rounding of mean/std/cosine gives errors ~1e-6.
FP32_TOL = 1e-4


def _search(U: int = 3, B: int = 7, L: int = 40, D: int = 16, seed: int = 0, no_vector: float = 0.2):
    """Random histories with padding (left) and behaviours without an SCL vector (all-zero int8)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(L // 3, L + 1, (U,), generator=g)
    lengths[0] = L
    mask = torch.arange(L).unsqueeze(0) >= (L - lengths).unsqueeze(1)  # right-aligned
    scl_seq = torch.randint(-127, 128, (U, L, 128), generator=g, dtype=torch.int64).to(torch.int8)
    scl_seq[torch.rand(U, L, generator=g) < no_vector] = 0
    scl_seq[~mask] = 0
    scl_target = torch.randint(-127, 128, (B, 128), generator=g, dtype=torch.int64).to(torch.int8)
    seq_tok = torch.randn(U, L, D, generator=g)
    target_tok = torch.randn(B, D, generator=g)
    index = torch.randint(0, U, (B,), generator=g)
    index[:U] = torch.arange(U)
    items = torch.randint(1, 1000, (U, L), generator=g)
    hist = Histories(items, items % 7, mask, index)
    return SearchInputs(hist, torch.randint(1, 1000, (B,), generator=g), torch.randint(1, 7, (B,), generator=g),
                        scl_target, scl_seq, id_token_fn=lambda: (seq_tok, target_tok))


def _gated(top_k: int, lam: float) -> FusionGSU:
    gate = FusionGate(0.5)
    with torch.no_grad():  # sigmoid(+-inf) is exactly 1 / 0
        gate.theta.fill_(float("inf") if lam == 1.0 else float("-inf") if lam == 0.0 else float(torch.logit(torch.tensor(lam))))
    return FusionGSU(top_k, "gated", gate)


def _picks(res):
    return [[int(i) for i, v in zip(row_i, row_v) if v] for row_i, row_v in zip(res.indices, res.valid)]


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.5, 1.0])
def test_fused_scores_match_the_reference_loop(lam):
    s = _search()
    h = s.hist
    mm, has_vec = history_cosine(*s.scl(), h.index)
    seq_tok, target_tok = s.id_tokens()
    ids, _ = history_cosine(target_tok, seq_tok, h.index)
    eligible = h.per_sample(h.mask)
    fast = fused_scores(mm, has_vec, ids, eligible, torch.tensor(lam))
    ref = reference_fused_scores(mm, has_vec, ids, eligible, lam)
    assert (fast.double() - ref)[eligible].abs().max() < FP32_TOL


@pytest.mark.parametrize("U,B", [(3, 7), (1, 5)])  # grouped training batch; serving (one user, B candidates)
def test_gate_fully_on_multimodal_is_muse_and_fully_on_ids_is_sim_soft(U, B):
    s = _search(U=U, B=B)
    K = 12
    assert _picks(_gated(K, 1.0).retrieve(s)) == _picks(CosineGSU(K).retrieve(s))
    assert _picks(_gated(K, 0.0).retrieve(s)) == _picks(EmbeddingCosineGSU(K).retrieve(s))
    # In between it is neither (the test above is not vacuous: the two selections differ).
    mid = _picks(_gated(K, 0.5).retrieve(s))
    assert _picks(CosineGSU(K).retrieve(s)) != _picks(EmbeddingCosineGSU(K).retrieve(s))
    assert mid != _picks(CosineGSU(K).retrieve(s)) and mid != _picks(EmbeddingCosineGSU(K).retrieve(s))


def _rows(s, b, picks):
    """(item, category) rows of sample b's picked positions."""
    h = s.hist
    u = int(h.index[b])
    return [(int(h.items[u, p]), int(h.cats[u, p])) for p in picks]


def test_union_is_muses_and_sim_softs_picks_each_behaviour_once():
    s = _search()
    K = 10
    res = FusionGSU(K, "union").retrieve(s)
    assert res.indices.shape[1] == 2 * K
    mm, ids = _picks(CosineGSU(K).retrieve(s)), _picks(EmbeddingCosineGSU(K).retrieve(s))
    for b, picks in enumerate(_picks(res)):
        assert len(picks) == len(set(picks))  # a position picked by both is attended once
        assert picks[: len(mm[b])] == mm[b]  # MUSE's slots first, unchanged (scores, has_score too)
        # SIM-soft's picks follow, less the behaviours (item, category) MUSE already holds.
        muse_rows = set(_rows(s, b, mm[b]))
        assert picks[len(mm[b]):] == [p for p, r in zip(ids[b], _rows(s, b, ids[b])) if r not in muse_rows]
    muse = CosineGSU(K).retrieve(s)
    assert torch.equal(res.scores[:, :K], muse.scores) and torch.equal(res.has_score[:, :K], muse.has_score)


def test_union_counts_a_repeated_item_once_whichever_position_each_side_returned():
    """The same item at two positions ties exactly in both cosines; the training and serving kernels
    may return different positions of it (float ID cosines of equal tokens round differently per
    GEMM column). The union must not depend on which: deduplicated by (item, category), not position."""
    def res(positions):
        p = torch.tensor([positions])
        return GSUResult(p, torch.full(p.shape, 0.5), torch.ones(p.shape, dtype=torch.bool),
                         torch.ones(p.shape, dtype=torch.bool))
    items = torch.tensor([[5, 9, 7, 9, 3]])  # item 9 at positions 1 and 3
    hist = Histories(items, items % 4, torch.ones(1, 5, dtype=torch.bool), torch.zeros(1, dtype=torch.int64))
    s = SearchInputs(hist, torch.tensor([1]), torch.tensor([1]), None, None)
    for a_pos, b_pos in (([1, 0], [1, 2]), ([1, 0], [3, 2]), ([3, 0], [1, 2])):
        a, b = res(a_pos), res(b_pos)
        u = union_of(a, b, behaviour_rows(s, a), behaviour_rows(s, b))
        assert sorted(int(items[0, i]) for i in u.indices[0][u.valid[0]]) == [5, 7, 9]


@pytest.mark.parametrize("U,B", [(3, 7), (1, 5)])
def test_branches_are_muses_and_sim_softs_picks_side_by_side(U, B):
    s = _search(U=U, B=B)
    K = 10
    mm, ids = branch_slices(FusionGSU(K, "branches").retrieve(s), 2)
    for got, want in ((mm, CosineGSU(K).retrieve(s)), (ids, EmbeddingCosineGSU(K).retrieve(s))):
        for field in ("indices", "scores", "valid", "has_score"):
            assert torch.equal(getattr(got, field), getattr(want, field)), field
    assert _picks(mm) != _picks(ids)  # the two branches differ: the comparison is not vacuous
    with pytest.raises(ValueError, match="equal branches"):
        branch_slices(mm, 3)


def _over_arch(spec_file: str, esu_attention, P: int, D: int):
    from muse_rec.models.over_arch import OverArch, make_similarity
    from muse_rec.models.ctr_model import build_gsu

    spec = load_spec(SPECS / spec_file).model
    gsu = build_gsu(spec, spec.gsu.top_k, esu_attention, None)
    return OverArch(spec, P, D, True, True, esu_attention, None, make_similarity(spec, gsu)), gsu


def test_branches_tower_input_is_muses_esu_features_then_sim_softs():
    """With shared attention and the same SimTier weights, the `branches` fusion's tower input holds
    MUSE's ESU features of MUSE's picks and SIM-soft's of SIM-soft's picks, nothing mixed."""
    torch.manual_seed(0)
    B, P, D, R = 7, 5, 16, 6
    K = load_spec(SPECS / "methods" / "muse.yaml").model.gsu.top_k
    s = _search(L=2 * K, no_vector=0.1)
    spec = load_spec(SPECS / "methods" / "muse.yaml").model
    sata = SemanticAwareTargetAttention(D, D, spec.esu.attention_hidden, variant=spec.esu.sa_ta_variant)
    fusion, fusion_gsu = _over_arch("methods/muse_fusion.yaml", sata, P, D)
    muse, muse_gsu = _over_arch("methods/muse.yaml", sata, P, D)
    soft, soft_gsu = _over_arch("methods/sim_soft.yaml", sata, P, D)
    muse.simtier.load_state_dict(fusion.simtier.state_dict())
    soft.simtier.load_state_dict(fusion.branch_simtier.state_dict())
    for other in (muse, soft):
        other.recent_simtier.load_state_dict(fusion.recent_simtier.state_dict())
        other.recent_attention.load_state_dict(fusion.recent_attention.state_dict())
    pooled, target_tok = torch.randn(B, P), s.id_tokens()[1]
    recent_tok, recent_mask = torch.randn(B, R, D), torch.rand(B, R) < 0.8

    def feats(arch, gsu):
        res = gsu.retrieve(s)
        tok = torch.where(res.valid.unsqueeze(2), s.hist.at(s.id_tokens()[0], res.indices), 0.0)
        return arch.features(pooled, target_tok, tok, recent_tok, recent_mask, res, s)

    f, m, o = feats(fusion, fusion_gsu), feats(muse, muse_gsu), feats(soft, soft_gsu)
    T = spec.esu.num_tiers
    esu = T + D  # SimTier + SA-TA per branch
    head = P + D
    assert f.shape[1] == m.shape[1] + esu + D == o.shape[1] + esu + D
    # [pooled, target | MUSE's ESU | SIM-soft's ESU | recent SimTier, recent TA, recent mean | picks means]
    # MUSE's SA-TA reads its GSU's cosines, the fusion's recomputes them from the picks' vectors:
    # fp32 dot products of int8 vectors in another order, ~1e-7 apart, through one softmax.
    torch.testing.assert_close(f[:, :head + esu], m[:, :head + esu], rtol=0, atol=1e-5)
    torch.testing.assert_close(f[:, head + esu:head + 2 * esu], o[:, head:head + esu], rtol=0, atol=1e-5)
    tail = T + 2 * D
    torch.testing.assert_close(f[:, head + 2 * esu:head + 2 * esu + tail], m[:, head + esu:head + esu + tail])
    torch.testing.assert_close(f[:, -2 * D:-D], m[:, -D:])
    torch.testing.assert_close(f[:, -D:], o[:, -D:])


def test_half_holds_each_similaritys_best_half_and_nothing_else():
    s = _search(no_vector=0.0)
    K = 10
    res = FusionGSU(K, "half").retrieve(s)
    mm, ids = _picks(CosineGSU(K).retrieve(s)), _picks(EmbeddingCosineGSU(K).retrieve(s))
    for b, picks in enumerate(_picks(res)):
        assert len(picks) == len(set(picks)) == min(K, int(s.hist.per_sample(s.hist.mask)[b].sum()))
        assert set(mm[b][: K // 2]) <= set(picks) and set(ids[b][: K // 2]) <= set(picks)
        assert set(picks) <= set(mm[b]) | set(ids[b])


def test_short_history_gives_invalid_slots_not_padding():
    s = _search(U=2, B=2, L=8)
    s.hist.mask[1, :6] = False
    for gsu in (FusionGSU(6, "branches"), FusionGSU(6, "union"), FusionGSU(6, "half"), _gated(6, 0.5)):
        res = gsu.retrieve(s)
        rows = s.hist.index
        for b in range(2):
            n_real = int(s.hist.mask[rows[b]].sum())
            assert int(res.valid[b].sum()) == min(6, n_real) if gsu.rule in ("half", "gated") else \
                min(6, n_real) <= int(res.valid[b].sum()) <= 2 * min(6, n_real)
            assert s.hist.mask[rows[b], res.indices[b][res.valid[b]]].all()


def _sata_inputs(B=4, K=6, D=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(B, D, generator=g), torch.randn(B, K, D, generator=g)
    sim = torch.rand(B, K, 2, generator=g) * 2 - 1
    mask = torch.rand(B, K, generator=g) < 0.8
    mask[:, 0] = True
    return q, k, sim, mask


@pytest.mark.parametrize("variant", ["paper", "reference"])
def test_fused_sata_at_the_extremes_is_sata_on_one_similarity(variant):
    q, k, sim, mask = _sata_inputs()
    torch.manual_seed(0)
    fused = FusionSemanticAttention(8, 8, 8, variant=variant)
    plain = SemanticAwareTargetAttention(8, 8, 8, variant=variant)
    plain.load_state_dict({n: p for n, p in fused.state_dict().items() if not n.startswith("fusion_gate")})
    for theta, col in ((float("inf"), 0), (float("-inf"), 1)):
        with torch.no_grad():
            fused.fusion_gate.theta.fill_(theta)
        assert torch.allclose(fused(q, k, sim, mask), plain(q, k, sim[..., col], mask), atol=1e-6)


def test_gates_receive_gradient():
    q, k, sim, mask = _sata_inputs()
    att = FusionSemanticAttention(8, 8, 8, variant="reference")
    att(q, k, sim, mask).pow(2).sum().backward()
    g = att.fusion_gate.theta.grad
    assert g is not None and torch.isfinite(g) and g.abs() > 0
    tiers = FusionSimTier()
    ok = torch.ones_like(sim, dtype=torch.bool)
    tiers(sim, ok).sum().backward()
    assert tiers.multimodal.weight.grad.abs().sum() > 0 and tiers.ids.weight.grad.abs().sum() > 0
    # The similarities are inputs: no gradient flows into them.
    sim_req = sim.clone().requires_grad_(True)
    att(q, k, sim_req, mask).sum().backward()
    assert sim_req.grad is None


def test_fusion_similarity_is_both_cosines_of_the_picks():
    s = _search()
    res = FusionGSU(8, "union").retrieve(s)
    seq_tok, target_tok = s.id_tokens()
    gsu_tok = s.hist.at(seq_tok, res.indices)
    sim, ok = FusionSimilarity()(res, s, target_tok, gsu_tok)
    scl_t, scl_s = s.scl()
    picked = s.hist.at(scl_s, res.indices).double()
    want_mm = torch.nn.functional.cosine_similarity(picked, scl_t.double().unsqueeze(1), dim=-1)
    want_id = torch.nn.functional.cosine_similarity(gsu_tok.double(), target_tok.double().unsqueeze(1), dim=-1)
    assert (sim[..., 0].double() - want_mm)[ok[..., 0]].abs().max() < FP32_TOL
    assert (sim[..., 1].double() - want_id)[ok[..., 1]].abs().max() < FP32_TOL
    assert torch.equal(ok[..., 1], res.valid)
    assert not ok[..., 0][(picked == 0).all(-1)].any()  # no SCL vector -> no multimodal similarity


def test_bad_arguments():
    with pytest.raises(ValueError, match="rule"):
        FusionGSU(5, "sum")
    with pytest.raises(ValueError, match="gate"):
        FusionGSU(5, "gated")
    with pytest.raises(ValueError, match="gate init"):
        FusionGate(1.0)


@pytest.mark.parametrize("overrides,key", [
    (["model.gsu.fusion=gated", "model.esu.similarity=scl"], "model.gsu.fusion"),
    (["model.gsu.fusion=sum"], "model.gsu.fusion"),
    (["model.esu.fusion_gate_init=1.5"], "model.esu.fusion_gate_init"),
])
def test_bad_fusion_specs_name_the_key(overrides, key):
    with pytest.raises(SpecError, match=key.replace(".", r"\.")):
        load_spec(SPECS / "methods" / "muse_fusion.yaml", overrides)

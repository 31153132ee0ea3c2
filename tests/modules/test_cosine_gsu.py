"""CosineGSU (MUSE's multimodal GSU) and SIM-soft's EmbeddingCosineGSU against the fp64 reference."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from muse_rec.modules import CosineGSU, EmbeddingCosineGSU, GSUResult, cosine_at, reference_cosine_topk

FIXTURES = Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures" / "taobao_mm_demo"
D = 128


def int8_scl(*shape: int, gen: torch.Generator) -> torch.Tensor:
    """Random SCL-like int8 vectors: trunc(127 * unit vector)."""
    v = torch.randn(*shape, D, generator=gen, dtype=torch.float64)
    v = v / v.norm(dim=-1, keepdim=True)
    return torch.trunc(127 * v.clamp(-1, 1)).to(torch.int8)


def right_aligned_mask(lengths: torch.Tensor, L: int) -> torch.Tensor:
    return torch.arange(L).unsqueeze(0) >= (L - lengths).unsqueeze(1)


def assert_agrees(fast: GSUResult, ref: GSUResult, atol: float = 1e-6) -> None:
    """Equal up to ties: same validity pattern, same scores, and each fast pick's reference
    score equals the score the fast path reports for it."""
    assert fast.indices.dtype == torch.int64 and fast.scores.dtype == torch.float32
    assert torch.equal(fast.valid, ref.valid)
    assert torch.equal(fast.has_score, ref.has_score)
    torch.testing.assert_close(fast.scores.double(), ref.scores.double(), atol=atol, rtol=0)
    # No position picked twice among valid slots.
    for b in range(fast.indices.shape[0]):
        picked = fast.indices[b][fast.valid[b]]
        assert picked.unique().numel() == picked.numel()
    # Where the reference has no near-tie the indices must be identical.
    gaps = (ref.scores[:, :-1] - ref.scores[:, 1:]).abs()
    distinct = torch.ones_like(ref.valid)
    distinct[:, :-1] &= gaps > 1e-5
    distinct[:, 1:] &= gaps > 1e-5
    sel = distinct & ref.has_score
    assert torch.equal(fast.indices[sel], ref.indices[sel])


def make_case(B: int, L: int, seed: int, key_dtype=torch.int8):
    gen = torch.Generator().manual_seed(seed)
    keys = int8_scl(B, L, gen=gen)
    query = int8_scl(B, gen=gen)
    # Some behaviours have no SCL vector (all-zero rows).
    no_vec = torch.rand(B, L, generator=gen) < 0.1
    keys[no_vec] = 0
    lengths = torch.randint(0, L + 1, (B,), generator=gen)
    lengths[0] = L
    mask = right_aligned_mask(lengths, L)
    if key_dtype != torch.int8:
        keys, query = keys.to(key_dtype), query.to(key_dtype)
    return query, keys, mask


@pytest.mark.parametrize("dtype", [torch.int8, torch.float16, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("L,chunk", [(300, 64), (1000, 2048), (257, 100)])
def test_fast_matches_reference(dtype, L, chunk):
    query, keys, mask = make_case(B=6, L=L, seed=L + chunk, key_dtype=dtype)
    fast = CosineGSU(top_k=50, chunk_size=chunk)(query, keys, mask)
    ref = reference_cosine_topk(query, keys, mask, top_k=50)
    assert fast.indices.shape == (6, 50)
    assert_agrees(fast, ref)


@pytest.mark.parametrize("chunk", [37, 4096])
def test_serving_shape_shared_keys(chunk):
    """One user's sequence [1, L, D] shared by many candidates uses the running top-K path."""
    gen = torch.Generator().manual_seed(7)
    L = 500
    keys = int8_scl(1, L, gen=gen)
    keys[0, ::9] = 0
    query = int8_scl(40, gen=gen)
    query[3] = 0  # a candidate without an SCL vector
    mask = right_aligned_mask(torch.tensor([420]), L)
    fast = CosineGSU(top_k=50, chunk_size=chunk)(query, keys, mask)
    ref = reference_cosine_topk(query, keys, mask, top_k=50)
    assert fast.indices.shape == (40, 50)
    assert_agrees(fast, ref)
    # Same answer as the per-query (training) path on the broadcast sequence.
    per_query = CosineGSU(top_k=50, chunk_size=chunk)(query, keys.expand(40, -1, -1), mask.expand(40, -1))
    assert_agrees(per_query, ref)


def test_padding_and_no_vector_rules():
    """4 real behaviours (2 with vectors), K = 6: vectors first, then no-vector newest first,
    then invalid slots; padding is never valid."""
    L = 8
    keys = torch.zeros(1, L, D, dtype=torch.int8)
    query = torch.zeros(1, D, dtype=torch.int8)
    query[0, 0] = 127
    keys[0, 0, 0] = 127  # padding position with a perfect match: must not be selected
    keys[0, 4, 1] = 127  # cos 0 (orthogonal) but has a vector
    keys[0, 6, 0] = 100
    keys[0, 6, 1] = 100  # cos = 1/sqrt(2)
    # positions 5 and 7: real, no vector
    mask = right_aligned_mask(torch.tensor([4]), L)
    res = CosineGSU(top_k=6)(query, keys, mask)
    assert res.indices[0].tolist() == [6, 4, 7, 5, 0, 0]
    assert res.valid[0].tolist() == [True] * 4 + [False] * 2
    assert res.has_score[0].tolist() == [True, True, False, False, False, False]
    torch.testing.assert_close(res.scores[0], torch.tensor([2**-0.5, 0, 0, 0, 0, 0]), atol=1e-6, rtol=0)


def test_query_without_vector_returns_newest_real():
    L = 10
    gen = torch.Generator().manual_seed(3)
    keys = int8_scl(1, L, gen=gen)
    query = torch.zeros(1, D, dtype=torch.int8)
    mask = right_aligned_mask(torch.tensor([5]), L)
    res = CosineGSU(top_k=3)(query, keys, mask)
    assert res.indices[0].tolist() == [9, 8, 7]
    assert res.valid.all() and not res.has_score.any()


def test_k_greater_than_l_and_short_users():
    query, keys, mask = make_case(B=3, L=20, seed=1)
    mask[1] = False  # a user without behaviours
    res = CosineGSU(top_k=50)(query, keys, mask)
    assert res.indices.shape == (3, 50)
    assert res.valid.sum(1).tolist() == mask.sum(1).tolist()
    assert not res.valid[:, 20:].any()
    assert (res.indices[~res.valid] == 0).all() and (res.scores[~res.valid] == 0).all()
    assert_agrees(res, reference_cosine_topk(query, keys, mask, 50))


def test_empty_sequence():
    res = CosineGSU(top_k=4)(torch.ones(2, D), torch.ones(2, 0, D), torch.ones(2, 0, dtype=torch.bool))
    assert res.indices.shape == (2, 4) and not res.valid.any()


def test_full_scores_and_cosine_at():
    query, keys, mask = make_case(B=4, L=60, seed=5)
    gsu = CosineGSU(top_k=10, chunk_size=16)
    full, has = gsu.full_scores_with_validity(query, keys, mask)
    ref = reference_cosine_topk(query, keys, mask, top_k=60)
    expected = torch.zeros(4, 60, dtype=torch.float64)
    expected.scatter_(1, ref.indices, torch.where(ref.has_score, ref.scores, 0.0))
    torch.testing.assert_close(full.double(), expected, atol=1e-6, rtol=0)
    assert torch.equal(gsu.full_scores(query, keys, mask), full)
    res = gsu(query, keys, mask)
    cos, has_vec = cosine_at(query, keys, res.indices)
    torch.testing.assert_close(cos[res.has_score], res.scores[res.has_score])


def test_bad_input_names_the_argument():
    gsu = CosineGSU(top_k=5)
    with pytest.raises(ValueError, match="mask must be bool"):
        gsu(torch.ones(2, D), torch.ones(2, 3, D), torch.ones(2, 3))
    with pytest.raises(ValueError, match="keys have dim"):
        gsu(torch.ones(2, D), torch.ones(2, 3, 64), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="top_k"):
        CosineGSU(top_k=0)


def test_embedding_cosine_gsu_has_no_gradient_through_selection():
    gen = torch.Generator().manual_seed(11)
    query = torch.randn(3, 32, generator=gen, requires_grad=True)
    keys = torch.randn(3, 40, 32, generator=gen, requires_grad=True)
    mask = right_aligned_mask(torch.tensor([40, 12, 3]), 40)
    res = EmbeddingCosineGSU(top_k=8)(query, keys, mask)
    assert not res.scores.requires_grad
    assert_agrees(res, reference_cosine_topk(query.detach(), keys.detach(), mask, 8))
    # The model re-reads the picks with gradient: only the selected positions get one.
    res.gather(keys).sum().backward()
    touched = keys.grad.abs().sum(-1) > 0
    expected = torch.zeros_like(touched)
    expected.scatter_(1, res.indices, res.valid)
    assert torch.equal(touched & mask, expected & mask)
    with pytest.raises(ValueError, match="float embeddings"):
        EmbeddingCosineGSU(4)(torch.ones(1, 8, dtype=torch.int8), torch.ones(1, 2, 8, dtype=torch.int8),
                              torch.ones(1, 2, dtype=torch.bool))


def test_real_scl_vectors_from_fixture():
    pq = pytest.importorskip("pyarrow.parquet")
    path = FIXTURES / "scl_embedding_int8_p90.parquet"
    if not path.exists():
        pytest.skip(f"Taobao-MM demo fixture not found at {path}")
    table = pq.read_table(path)
    vecs = torch.tensor(table.column("205_c").to_pylist(), dtype=torch.int8)  # [N, 128]
    assert vecs.shape[1] == D
    # The fixture's vectors are trunc(127 * unit vector): norms a little below 127.
    norms = vecs.double().norm(dim=1)
    assert ((norms > 100) & (norms <= 127.0 + 1e-9)).all()
    gen = torch.Generator().manual_seed(0)
    seq = vecs[torch.randint(0, vecs.shape[0], (4, 90), generator=gen)]  # duplicates -> exact ties
    query = vecs[:4]
    mask = right_aligned_mask(torch.tensor([90, 50, 10, 1]), 90)
    assert_agrees(CosineGSU(top_k=20, chunk_size=32)(query, seq, mask),
                  reference_cosine_topk(query, seq, mask, 20))


@pytest.mark.parametrize("chunk_rows", [64, 200])  # a slice of one user / several users per chunk
@pytest.mark.parametrize("gemv", [True, False])
def test_batched_cosine_paths_agree(gemv, chunk_rows):
    """The per-user gemv (CPU) and batched bmm (accelerator) paths give the reference cosines."""
    from muse_rec.modules.cosine import batched_cosine, reference_cosine

    query, keys, _ = make_case(B=5, L=70, seed=13)
    cos, has = batched_cosine(query, keys, chunk_rows=chunk_rows, per_user_gemv=gemv)
    ref, ref_has = reference_cosine(query, keys)
    assert torch.equal(has, ref_has)
    torch.testing.assert_close(cos.double(), ref, atol=1e-6, rtol=0)


# ---- the GSU interface: one `retrieve` for training (U histories) and serving (U = 1) -------------
def _search(query, keys, mask, index, tokens=None):
    """`SearchInputs` over SCL ``keys [U, L, D]`` and optional ID tokens ``(seq [U, L, d], target [B, d])``."""
    from muse_rec.modules import Histories, SearchInputs

    U, L = mask.shape
    items = torch.arange(1, U * L + 1).view(U, L) * mask
    hist = Histories(items, items % 7, mask, index)
    B = index.shape[0]
    return SearchInputs(hist, torch.arange(B), torch.arange(B) % 7, query, keys, id_token_fn=(lambda: tokens))


@pytest.mark.parametrize("id_score", ["cosine", "attention"])
def test_score_sum_gsu_ranks_no_vector_behaviours_last(id_score):
    """Issue 10 item 5: "MM cosine + ID score" used cosine 0 for a behaviour without an SCL vector,
    ranking it above every real negative cosine. It now follows the cosine GSU's rule."""
    from muse_rec.modules import ScoreSumGSU, TargetAttention

    gen = torch.Generator().manual_seed(0)
    L, d = 6, 8
    query = int8_scl(1, gen=gen)
    keys = (-query.float()).to(torch.int8).unsqueeze(1).repeat(1, L, 1)  # every cosine is -1 ...
    keys[0, 4] = 0  # ... except two behaviours without a vector (the newest: position 5 not)
    keys[0, 1] = 0
    mask = torch.ones(1, L, dtype=torch.bool)
    # The ID relevance strongly favours the no-vector behaviours.
    seq_tok = torch.randn(1, L, d, generator=gen)
    tgt_tok = seq_tok[:, 4].clone()
    scorer = TargetAttention(d, d, d) if id_score == "attention" else None
    gsu = ScoreSumGSU(top_k=L, id_weight=1.0, id_scorer=scorer)
    res = gsu.retrieve(_search(query, keys, mask, torch.zeros(1, dtype=torch.int64), (seq_tok, tgt_tok)))
    # Behaviours with a vector first; then the two without, newest first, valid but without a score.
    assert set(res.indices[0, :4].tolist()) == {0, 2, 3, 5}
    assert res.indices[0, 4:].tolist() == [4, 1]
    assert res.valid.all() and res.has_score[0].tolist() == [True] * 4 + [False] * 2
    assert res.scores[0, 4:].tolist() == [0.0, 0.0]


def test_score_sum_gsu_with_zero_id_weight_is_the_cosine_gsu():
    """One rule for both: with the ID term weighted 0 the ablation's GSU equals MUSE's."""
    from muse_rec.modules import ScoreSumGSU

    query, keys, mask = make_case(6, 40, seed=5)
    index = torch.arange(6)
    tokens = (torch.randn(6, 40, 8), torch.randn(6, 8))
    search = _search(query, keys, mask, index, tokens)
    got = ScoreSumGSU(top_k=12, id_weight=0.0).retrieve(search)
    want = CosineGSU(top_k=12).retrieve(search)
    assert_agrees(got, want)


@pytest.mark.parametrize("gsu_name", ["cosine", "id_cosine", "score_sum"])
def test_retrieve_shared_history_equals_grouped(gsu_name):
    """The serving shape (U = 1, index = zeros(B)) retrieves what the grouped training shape does."""
    from muse_rec.modules import ScoreSumGSU

    gen = torch.Generator().manual_seed(1)
    U, L, B = 3, 50, 7
    keys = int8_scl(U, L, gen=gen)
    keys[:, ::9] = 0
    mask = right_aligned_mask(torch.tensor([50, 31, 4]), L)
    query = int8_scl(B, gen=gen)
    index = torch.tensor([0, 1, 1, 2, 0, 2, 2])
    tok = (torch.randn(U, L, 8, generator=gen) * mask.unsqueeze(2), torch.randn(B, 8, generator=gen))
    gsu = {"cosine": CosineGSU(10), "id_cosine": EmbeddingCosineGSU(10), "score_sum": ScoreSumGSU(10)}[gsu_name]
    grouped = gsu.retrieve(_search(query, keys, mask, index, tok))
    for u in range(U):
        rows = (index == u).nonzero().squeeze(1)
        one = gsu.retrieve(_search(query[rows], keys[u:u + 1], mask[u:u + 1], torch.zeros(len(rows), dtype=torch.int64),
                                   (tok[0][u:u + 1], tok[1][rows])))
        assert_agrees(one, GSUResult(*(getattr(grouped, f)[rows] for f in ("indices", "scores", "valid", "has_score"))))

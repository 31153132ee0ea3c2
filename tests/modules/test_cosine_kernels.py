"""The GSU kernels against their plain references: grouped (training) and certified (serving).

Tolerances are the derived bounds, not guesses: `INT8_COSINE_BOUND` (exact integer dot
products, only the fp32 normalisation rounds) and `approx_cosine_bound` (the bf16 shortlist).
"""
from __future__ import annotations

import pytest
import torch

from muse_rec.modules import cosine as C
from muse_rec.modules import shared_keys_cosine as SK
from muse_rec.modules.cosine import (
    INT8_COSINE_BOUND,
    group_members,
    grouped_cosine,
    grouped_cosine_topk,
    grouped_dot,
    member_positions,
    reference_cosine,
)
from muse_rec.modules.shared_keys_cosine import (
    approx_cosine_bound,
    certified_shared_keys_cosine_topk,
    static_shared_keys_cosine_topk,
)
from muse_rec.modules.gsu import reference_cosine_topk
from muse_rec.modules.native_kernels import native_library
from muse_rec.modules.selection import cosine_selection_scores, decode_cosine_selection

D = 128
needs_native = pytest.mark.skipif(native_library() is None, reason="no C compiler for the native top-K")


def int8_scl(*shape: int, gen: torch.Generator) -> torch.Tensor:
    v = torch.randn(*shape, D, generator=gen, dtype=torch.float64)
    return torch.trunc(127 * v / v.norm(dim=-1, keepdim=True)).to(torch.int8)


def grouped_case(U: int, L: int, seed: int):
    """U histories, B samples pointing at them in shuffled order with uneven group sizes."""
    gen = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 7, (U,), generator=gen)
    index = torch.repeat_interleave(torch.arange(U), sizes)
    index = index[torch.randperm(index.numel(), generator=gen)]
    keys = int8_scl(U, L, gen=gen)
    keys[torch.rand(U, L, generator=gen) < 0.1] = 0  # behaviours without an SCL vector
    query = int8_scl(index.numel(), gen=gen)
    query[1] = 0  # a target without a vector
    lengths = torch.randint(0, L + 1, (U,), generator=gen)
    mask = torch.arange(L).unsqueeze(0) >= (L - lengths).unsqueeze(1)
    return query, keys, mask, index


def shared_keys_case(L: int, seed: int):
    """One history of L behaviours (every 7th without an SCL vector, the oldest tenth padding)
    and 64 targets (one without a vector): the serving shape."""
    gen = torch.Generator().manual_seed(seed)
    keys = int8_scl(L, gen=gen)
    keys[:: 7] = 0
    query = int8_scl(64, gen=gen)
    query[5] = 0
    mask = torch.arange(L) >= L // 10
    return query, keys, mask


def assert_same_topk(values, indices, ref, top_k: int, tie_gap: float = 1e-5, abs_bound: float = 0.0) -> None:
    """Same selection as the fp64 reference up to ties, scores within the int8 bound (or within
    ``abs_bound`` when given, for a path that is not exact on int8)."""
    fast = decode_cosine_selection(values, indices, top_k)
    assert torch.equal(fast.valid, ref.valid) and torch.equal(fast.has_score, ref.has_score)
    bound = abs_bound if abs_bound else INT8_COSINE_BOUND * ref.scores.abs() + 1e-12
    assert ((fast.scores.double() - ref.scores).abs() <= bound).all()
    gaps = (ref.scores[:, :-1] - ref.scores[:, 1:]).abs()
    distinct = torch.ones_like(ref.valid)
    distinct[:, :-1] &= gaps > tie_gap
    distinct[:, 1:] &= gaps > tie_gap
    sel = distinct & ref.has_score
    assert torch.equal(fast.indices[sel], ref.indices[sel])


def test_group_members_and_positions():
    index = torch.tensor([2, 0, 2, 1, 2, 0])
    members = group_members(index, 3)
    assert members.tolist() == [[1, 5, 6], [3, 6, 6], [0, 2, 4]]
    flat = member_positions(members, 6)
    assert torch.equal(members.view(-1)[flat], torch.arange(6))


@pytest.mark.parametrize("L,chunk_rows", [(70, 64), (300, 100_000)])
def test_grouped_cosine_within_int8_bound(L, chunk_rows):
    query, keys, mask, index = grouped_case(U=9, L=L, seed=L)
    cos, has = grouped_cosine(query, keys, index, chunk_rows=chunk_rows)
    ref, ref_has = reference_cosine(query, keys[index])
    assert torch.equal(has, ref_has)
    assert ((cos.double() - ref).abs() <= INT8_COSINE_BOUND * ref.abs() + 1e-12).all()
    # Same result with the loader's precomputed grouping (any padding width P).
    members = group_members(index, keys.shape[0])
    wide = torch.cat([members, torch.full((members.shape[0], 3), index.numel())], 1)
    assert torch.equal(grouped_cosine(query, keys, index, chunk_rows=chunk_rows, members=wide)[0], cos)


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("L,chunk", [(300, 64), (90, 4096)])
def test_grouped_cosine_topk_matches_reference(native, L, chunk, monkeypatch):
    if native and native_library() is None:
        pytest.skip("no native top-K")
    if not native:
        monkeypatch.setattr(C, "native_library", lambda: None)
    query, keys, mask, index = grouped_case(U=7, L=L, seed=3 * L + chunk)
    vals, idx = grouped_cosine_topk(query, keys, mask, index, top_k=50, chunk_positions=chunk)
    ref = reference_cosine_topk(query, keys[index], mask[index], 50)
    assert_same_topk(vals, idx, ref, 50)


def test_grouped_dot_is_differentiable_and_exact():
    gen = torch.Generator().manual_seed(5)
    index = torch.tensor([1, 0, 1, 1, 2])
    q = torch.randn(5, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.randn(3, 11, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    out = grouped_dot(q, k, index)
    ref = torch.einsum("bh,blh->bl", q, k[index])
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    (out * torch.arange(11.0, dtype=torch.float64)).sum().backward()
    gq, gk = q.grad.clone(), k.grad.clone()
    q.grad = k.grad = None
    (ref * torch.arange(11.0, dtype=torch.float64)).sum().backward()
    torch.testing.assert_close(gq, q.grad)
    torch.testing.assert_close(gk, k.grad)


def test_approx_bound_holds_and_is_tight():
    """The bf16 shortlist score stays within `approx_cosine_bound` of the exact cosine, and the
    bound is within 8x of the error actually seen on near-parallel pairs (where bf16's
    output rounding is largest): it is a worst case, not a loose guess."""
    gen = torch.Generator().manual_seed(0)
    q = int8_scl(400, gen=gen)
    jitter = torch.randint(-3, 4, (5000, D), generator=gen, dtype=torch.int16)
    near = (q[torch.arange(5000) % 400].to(torch.int16) + jitter).clamp(-127, 127).to(torch.int8)
    k = torch.cat([int8_scl(5000, gen=gen), near])
    qf, kf = q.double(), k.double()
    exact = (qf / qf.norm(dim=1, keepdim=True)) @ (kf / kf.norm(dim=1, keepdim=True)).t()
    q_hat = (q.float() / q.float().norm(dim=1, keepdim=True)).bfloat16()
    k_hat = (k.float() / k.float().norm(dim=1, keepdim=True)).bfloat16()
    err = ((q_hat @ k_hat.t()).double() - exact).abs().max().item()
    bound = approx_cosine_bound(D)
    assert err <= bound
    assert err > bound / 8


@needs_native
@pytest.mark.parametrize("L,chunk", [(5000, 512), (333, 100), (40, 2048)])
def test_certified_matches_reference(L, chunk):
    query, keys, mask = shared_keys_case(L, seed=L)
    vals, idx = certified_shared_keys_cosine_topk(query, keys, mask, 50, chunk)
    ref = reference_cosine_topk(query, keys.unsqueeze(0), mask.unsqueeze(0), 50)
    assert_same_topk(vals, idx, ref, 50)


@needs_native
def test_shortlist_gemm_shapes_are_bounded_whatever_the_history_length_and_candidates(monkeypatch):
    """The shortlist's bf16 GEMMs come in multiples of `SHORTLIST_SHAPE_QUANTUM` rows and columns.

    oneDNN keeps ~0.6 MB of state per GEMM shape it has run; with the exact shapes, every history
    length (and candidate count) a Ranker served was a new one, and a Ranker over the medium synthetic
    release grew by 1.2 GB over its first 1,200 users. The selection stays the reference's."""
    shapes = set()
    real_mm = torch.mm

    def recording_mm(a, b, *args, **kwargs):
        if a.dtype == torch.bfloat16:
            shapes.add((a.shape[0], b.shape[1]))
        return real_mm(a, b, *args, **kwargs)

    monkeypatch.setattr(torch, "mm", recording_mm)
    q_all, keys_all, _ = shared_keys_case(1100, seed=5)
    for i, L in enumerate(range(60, 1100, 37)):  # 29 lengths, each chunk's tail another width
        query = q_all[: 10 + i]  # and 29 candidate counts
        keys, mask = keys_all[:L], torch.ones(L, dtype=torch.bool)
        vals, idx = certified_shared_keys_cosine_topk(query, keys, mask, 20, 512)
        ref = reference_cosine_topk(query, keys.unsqueeze(0), mask.unsqueeze(0), 20)
        assert_same_topk(vals, idx, ref, 20)
    # 29 lengths x 29 candidate counts, rows <= 64 and columns <= 512: at most 1 x 8 shapes of 64.
    assert 0 < len(shapes) <= 8, sorted(shapes)
    quantum = SK.SHORTLIST_SHAPE_QUANTUM
    assert all(r % quantum == 0 and c % quantum == 0 for r, c in shapes), sorted(shapes)


@pytest.mark.parametrize("L,chunk", [(5000, 512), (333, 100)])
def test_static_path_matches_reference_across_chunks(L, chunk):
    """The static (exportable) path merges its chunks into the reference's selection, its scores
    within the int8 bound (exact dot products, only the normalisation rounds)."""
    query, keys, mask = shared_keys_case(L, seed=L + 1)
    vals, idx = static_shared_keys_cosine_topk(query, keys, mask, 50, chunk)
    ref = reference_cosine_topk(query, keys.unsqueeze(0), mask.unsqueeze(0), 50)
    assert_same_topk(vals, idx, ref, 50)


@pytest.mark.parametrize("chunk", [4096, 37])
def test_static_path_scores_bit_for_bit_as_the_training_path(chunk):
    """What the exported serving program selects is what training selected: the same fp32 scores,
    bit for bit, and the same positions (among exactly tied cosines in another order: `torch.topk`
    orders ties as it likes, the native top-K lowest position first). Here every key set holds, per
    query, an int8 vector orthogonal to it (pairs of coordinates rotated: dot exactly 0, the SimTier
    tier edge) and a copy of it (cosine 1, repeated). A GEMM of unit vectors gave the orthogonal ones
    +-1e-8, and the exported MUSE put them in another tier than training (probability off by 1e-3)."""
    gen = torch.Generator().manual_seed(12)
    query = int8_scl(24, gen=gen)
    query[3] = 0
    rotated = torch.stack([query[:, 1::2], -query[:, 0::2]], dim=2).reshape(query.shape)  # q . r = 0
    keys = torch.cat([rotated, query, int8_scl(60, gen=gen), query[:5]])  # L = 113, with duplicates
    keys[::9] = 0
    mask = torch.arange(keys.shape[0]) >= 4
    L = keys.shape[0]
    vals, idx = static_shared_keys_cosine_topk(query, keys, mask, L, chunk)
    train_vals, train_idx = grouped_cosine_topk(query, keys.unsqueeze(0), mask.unsqueeze(0),
                                                torch.zeros(query.shape[0], dtype=torch.long), top_k=L)
    assert torch.equal(vals, train_vals)
    for row in range(query.shape[0]):  # k = L: every position, so compare (score, position) pairs
        assert sorted(zip(vals[row].tolist(), idx[row].tolist())) == \
            sorted(zip(train_vals[row].tolist(), train_idx[row].tolist()))
    orthogonal = [(b, b) for b in range(query.shape[0]) if b != 3 and b % 9 != 0 and b >= 4]
    assert len(orthogonal) > 10
    for b, pos in orthogonal:
        assert vals[b][idx[b] == pos].item() == 0.0


@pytest.mark.parametrize("chunk", [4096, 37])
def test_every_path_keeps_the_same_positions_among_tied_cosines(chunk):
    """K smaller than the number of exact ties (each query's own vector repeated 3K times among
    other vectors): training's grouped path, the exported (static) path and the certified eager
    path keep the same K positions, the lowest ones. Before, each kept its own subset of the
    copies; MISS's merge reads positions, and the same trained MISS scored a sample 7e-4 apart
    served and evaluated (and 1e-4 apart between two evaluation batch sizes)."""
    gen = torch.Generator().manual_seed(5)
    K = 8
    query = int8_scl(6, gen=gen)
    keys = int8_scl(400, gen=gen)
    copies = torch.arange(3 * K) * 13 + 7  # scattered positions, all inside L = 400
    keys[copies] = query[0]
    keys[copies[::2] + 1] = query[1]
    mask = torch.ones(400, dtype=torch.bool)
    index = torch.zeros(query.shape[0], dtype=torch.long)
    train_vals, train_idx = grouped_cosine_topk(query, keys.unsqueeze(0), mask.unsqueeze(0), index, top_k=K)
    static_vals, static_idx = static_shared_keys_cosine_topk(query, keys, mask, K, chunk)
    assert torch.equal(train_vals, static_vals) and torch.equal(train_idx, static_idx)
    assert torch.equal(train_idx[0], copies[:K])  # cosine 1 at every copy: the K lowest positions
    assert torch.equal(train_idx[1], (copies[::2] + 1)[:K])
    if native_library() is not None:
        cert_vals, cert_idx = certified_shared_keys_cosine_topk(query, keys, mask, K, chunk)
        assert torch.equal(cert_vals, train_vals) and torch.equal(cert_idx, train_idx)


@needs_native
def test_certificate_sends_tied_rows_to_the_exact_path(monkeypatch):
    """A history of near-duplicates around the K-th score: the shortlist cannot be certified,
    those rows are recomputed exactly, and the result still equals the reference."""
    gen = torch.Generator().manual_seed(1)
    base = int8_scl(1, gen=gen)[0].to(torch.int16)
    L = 6000
    keys = int8_scl(L, gen=gen)
    # 1500 copies of `base` with +-1 jitter in a few coordinates (cosines within ~1e-4): more
    # than even the retry's longer shortlist holds.
    near = base.repeat(1500, 1)
    near[:, :4] += torch.randint(-1, 2, (1500, 4), generator=gen, dtype=torch.int16)
    keys[::4] = near.clamp(-127, 127).to(torch.int8)
    query = torch.cat([base.to(torch.int8).unsqueeze(0), int8_scl(7, gen=gen)])
    mask = torch.ones(L, dtype=torch.bool)
    calls = []

    def spy(q, *args):
        calls.append(q.shape[0])
        return static_shared_keys_cosine_topk(q, *args)

    monkeypatch.setattr(SK, "static_shared_keys_cosine_topk", spy)
    vals, idx = certified_shared_keys_cosine_topk(query, keys, mask, 50, 512)
    assert calls and calls[0] >= 1  # row 0 (the near-duplicates' own vector) was not certifiable
    ref = reference_cosine_topk(query, keys.unsqueeze(0), mask.unsqueeze(0), 50)
    fast = decode_cosine_selection(vals, idx, 50)
    torch.testing.assert_close(fast.scores.double(), ref.scores, atol=1e-6, rtol=0)


def test_static_and_dispatching_paths_agree():
    gen = torch.Generator().manual_seed(9)
    keys = int8_scl(700, gen=gen)
    query = int8_scl(20, gen=gen)
    mask = torch.arange(700) >= 100
    a = SK.shared_keys_cosine_topk(query, keys, mask, 30, 128)
    b = static_shared_keys_cosine_topk(query, keys, mask, 30, 128)
    torch.testing.assert_close(a[0], b[0], atol=2e-6, rtol=0)


@needs_native
def test_certified_without_any_cosine():
    """No position has a cosine (no vectors, or no real behaviour): sentinels only."""
    gen = torch.Generator().manual_seed(2)
    query = int8_scl(5, gen=gen)
    for keys, mask in [(torch.zeros(30, D, dtype=torch.int8), torch.arange(30) >= 10),
                       (int8_scl(30, gen=gen), torch.zeros(30, dtype=torch.bool))]:
        vals, idx = certified_shared_keys_cosine_topk(query, keys, mask, 8)
        ref = reference_cosine_topk(query, keys.unsqueeze(0), mask.unsqueeze(0), 8)
        assert_same_topk(vals, idx, ref, 8)


@pytest.mark.parametrize("L", [154, 1000])
def test_float_embeddings_are_served_with_the_training_paths_cosines(L):
    """SIM-soft's GSU scores float ID tokens, whose dot products are not exact: the certified serving
    path re-scored its shortlist in another summation order than training's GEMM (cosines up to
    ~1e-7 apart), so near-ties at the K-th place kept other behaviours, and a trained SIM-soft was
    served up to 1e-3 in probability from its evaluation. The serving shape must give the grouped
    training path's cosines and picks bit for bit."""
    gen = torch.Generator().manual_seed(3)
    B, dim = 40, 32  # D_tok = [item 16 | category 16]
    keys = torch.randn(2, L, dim, generator=gen) * 1e-2  # ID tables start at std 1e-3..1e-2
    keys[:, ::9] = 0  # padding-like zero tokens have no cosine
    mask = torch.arange(L).unsqueeze(0).expand(2, -1) >= L // 10
    query = torch.randn(B, dim, generator=gen) * 1e-2
    want = grouped_cosine_topk(query, keys, mask, torch.zeros(B, dtype=torch.long), 50)
    got = SK.shared_keys_cosine_topk(query, keys[0], mask[0], 50)
    torch.testing.assert_close(got[0], want[0], atol=0, rtol=0)
    torch.testing.assert_close(got[1], want[1], atol=0, rtol=0)


@needs_native
def test_int8_values_looked_up_as_fp32_take_the_certified_path(monkeypatch):
    """The SCL table's lookups return its int8 values as fp32 (MUSE's serving queries), while the
    Ranker's cached history is int8: the serving shape must take the certified bf16 path for them
    (judged by the query's values, not its dtype; ~10x faster than the static path at L = 100K), with
    the same picks; a query of other floats stays on the static path."""
    taken = []
    certified = SK.certified_shared_keys_cosine_topk
    monkeypatch.setattr(SK, "certified_shared_keys_cosine_topk",
                        lambda *a, **k: taken.append(a[0].dtype) or certified(*a, **k))
    gen = torch.Generator().manual_seed(11)
    B, L, K = 40, 1000, 50
    keys = int8_scl(L, gen=gen)
    mask = torch.arange(L) >= L // 10
    query = int8_scl(B, gen=gen).to(torch.float32)
    vals, idx = SK.shared_keys_cosine_topk(query, keys, mask, K)
    # handed over as int8 (the same values): re-scored by the native int8 dots, not a gathered fp32 copy
    assert taken == [torch.int8]
    assert_same_topk(vals, idx, reference_cosine_topk(query, keys.unsqueeze(0), mask.unsqueeze(0), K), K)
    SK.shared_keys_cosine_topk(query + 0.5, keys, mask, K)
    beyond = query.clone()
    beyond[0, 0] = torch.iinfo(torch.int8).max + 1  # integers, but one outside int8's range
    SK.shared_keys_cosine_topk(beyond, keys, mask, K)
    assert taken == [torch.int8]
    assert SK.int8_valued(query) and not SK.int8_valued(query + 0.5) and not SK.int8_valued(beyond)


def _old_selection_scores(dots, key_norms, query_norms, scored, fill):
    """What the static path computed before `int8_keys_selection_scores`: `finish_cosine`, then the sentinels."""
    cos, _ = C.finish_cosine(dots, key_norms.unsqueeze(0), query_norms)
    return torch.where(scored.unsqueeze(0), cos, fill.unsqueeze(0))


@pytest.mark.parametrize("query_kind", ["int8", "float"])
def test_int8_keys_selection_scores_are_finish_cosines_bit_for_bit(query_kind):
    """The static path's arithmetic for int8 keys gives `finish_cosine`'s fp32 bits and the sentinels at every
    position of every row whose query has a vector: keys without a vector, padding with and without one,
    a key parallel to a query (cosine rounded above 1, clamped), an orthogonal one (exactly 0), repeats, and
    queries of int8 values or of any floats (norms normal)."""
    gen = torch.Generator().manual_seed(3)
    L = 300
    keys = int8_scl(L, gen=gen)
    query = int8_scl(40, gen=gen).to(torch.float32) if query_kind == "int8" else torch.randn(40, D, generator=gen)
    query[0] = 0
    keys[::5] = 0
    keys[1::7] = keys[2]
    keys[3] = query[1].round().clamp(-127, 127).to(torch.int8)
    keys[4] = torch.stack([keys[3][1::2], -keys[3][0::2]], dim=1).reshape(D)  # orthogonal to keys[3]
    mask = torch.rand(L, generator=gen) > 0.2
    kf = keys.to(torch.float32)
    dots = query @ kf.t()
    key_norms = torch.linalg.vector_norm(kf, dim=1)
    query_norms = torch.linalg.vector_norm(query, dim=1, keepdim=True)
    scored = (key_norms > 0) & mask
    fill = cosine_selection_scores(torch.zeros(1, L), torch.zeros(1, L, dtype=torch.bool), mask.unsqueeze(0), 0, L)[0]
    old = _old_selection_scores(dots.clone(), key_norms, query_norms, scored, fill)
    new = SK.int8_keys_selection_scores(dots.clone(), key_norms, query_norms, scored, fill)
    rows = query_norms[:, 0] > 0  # a row without a vector is replaced by the sentinels' top-K
    assert torch.equal(new[rows].view(torch.int32), old[rows].view(torch.int32))
    assert not new.isnan().any()


def test_the_exported_static_path_makes_three_passes_over_a_chunk_of_int8_keys():
    """Traced (what `muse-rec export` writes for MUSE: int8 history, candidates' SCL rows as fp32), each
    chunk of positions costs its GEMM and 3 elementwise ops over the ``[B, C]`` scores (``mul``, ``div``,
    ``clamp``) before the top-K, not `finish_cosine`'s 6 and the sentinels' ``where``: ~0.45 s of a 2.1 s
    call at L = 100K, 1,000 candidates."""
    B, chunk, chunks, K = 6, 2048, 2, 50

    class Static(torch.nn.Module):
        def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor):
            return static_shared_keys_cosine_topk(query, keys, mask, K, chunk)

    example = (torch.randn(B, D), torch.zeros(chunks * chunk, D, dtype=torch.int8),
               torch.ones(chunks * chunk, dtype=torch.bool))
    with torch.no_grad():
        program = torch.export.export(Static(), example)
    aten = torch.ops.aten
    # Not a pass of its own: the GEMM that makes the scores, a view, an alias, fp32 -> fp32 (the same tensor).
    not_passes = {aten.matmul.default, aten.mm.out, aten.alias.default, aten.to.dtype}
    passes = [n.target for n in program.graph.nodes if n.op == "call_function" and n.target not in not_passes
              and not (isinstance(n.target, torch._ops.OpOverload) and n.target.is_view)
              and tuple(getattr(n.meta.get("val"), "shape", ())) == (B, chunk)]
    assert len(passes) <= 3 * chunks, passes


def test_the_exported_static_path_allocates_no_scores_per_chunk_of_int8_keys():
    """Traced, the static path over int8 keys writes each chunk's ``[B, C]`` scores and denominators into two
    buffers allocated once per call (``mm.out``, ``mul.out``, then in place), not into new tensors: a fresh
    16 MB ``[1000, 4096]`` tensor per GEMM and per denominator cost the exported MUSE program its pages' first
    touch ~50 times a call at L = 100K (931 -> 674 ms a call). The scores are the same (`torch.equal` of the
    fp32 bits with the eager path, and `test_static_path_scores_bit_for_bit_as_the_training_path`)."""
    B, chunk, chunks, K = 6, 2048, 2, 50
    gen = torch.Generator().manual_seed(4)

    class Static(torch.nn.Module):
        def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor):
            return static_shared_keys_cosine_topk(query, keys, mask, K, chunk)

    query, keys = int8_scl(B, gen=gen).to(torch.float32), int8_scl(chunks * chunk - 100, gen=gen)  # a narrower last chunk
    keys[::5] = 0
    mask = torch.arange(keys.shape[0]) >= 30
    with torch.no_grad():
        program = torch.export.export(Static(), (query, keys, mask))
    # Ops that make a new [B, C'] tensor: neither a view nor an in-place / out= op (`is_mutable`).
    fresh = [n.target for n in program.graph.nodes if n.op == "call_function"
             and isinstance(n.target, torch._ops.OpOverload) and not n.target.is_view and not n.target._schema.is_mutable
             and len(getattr(n.meta.get("val"), "shape", ())) == 2 and n.meta["val"].shape[0] == B
             and n.meta["val"].shape[1] in (chunk, keys.shape[0] - chunk)]
    assert fresh == [], fresh
    vals, idx = program.module()(query, keys, mask)
    eager_vals, eager_idx = static_shared_keys_cosine_topk(query, keys, mask, K, chunk)
    assert torch.equal(vals.view(torch.int32), eager_vals.view(torch.int32)) and torch.equal(idx, eager_idx)

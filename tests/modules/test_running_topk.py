"""The native running top-K against `torch.topk` and its plain-PyTorch twin."""
from __future__ import annotations

import pytest
import torch

from muse_rec.modules import ordered_topk as OT
from muse_rec.modules import running_topk as RT
from muse_rec.modules.native_kernels import native_library

pytestmark = pytest.mark.skipif(native_library() is None, reason="no C compiler for the native top-K")


def stream(scores: torch.Tensor, chunk: int):
    return [(scores[:, c:c + chunk], c) for c in range(0, scores.shape[1], chunk)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
# (500, 64, 8) and (3000, 1000, 400): the buffer (4k) is a whole number of 32-blocks, so the
# first fill ends exactly full (a past overflow).
@pytest.mark.parametrize("cols,chunk,k", [(5000, 700, 50), (97, 33, 10), (1000, 1000, 1), (31, 31, 40),
                                          (500, 64, 8), (3000, 1000, 400)])
def test_matches_torch_topk(dtype, cols, chunk, k):
    gen = torch.Generator().manual_seed(cols + k)
    scores = torch.randn(37, cols, generator=gen).to(dtype)
    sel = RT.RunningTopK(37, k)
    for s, c0 in stream(scores, chunk):
        sel.update(s, c0)
    vals, idx = sel.result()
    kk = min(k, cols)
    ref_v, _ = torch.topk(scores.float(), kk, dim=1)
    assert torch.equal(vals[:, :kk], ref_v)
    assert torch.equal(scores.float().gather(1, idx[:, :kk]), vals[:, :kk])  # indices point at the values
    assert (idx[:, :kk].sort(1).values.diff(dim=1) > 0).all()  # no position twice
    assert (vals[:, kk:] == RT.EMPTY_VALUE).all() and (idx[:, kk:] == -1).all()
    tv, ti = RT.torch_running_topk(stream(scores, chunk), 37, k)
    assert torch.equal(tv, vals)


def test_ties_and_strided_rows():
    """Many equal values (bf16-like) and a chunk that is a strided view of a wider matrix."""
    gen = torch.Generator().manual_seed(0)
    wide = torch.randint(0, 5, (8, 3000), generator=gen).float()
    sel = RT.RunningTopK(8, 20)
    for c0 in range(0, 3000, 512):
        sel.update(wide[:, c0:c0 + 512], c0)
    vals, idx = sel.result()
    assert (vals == 4).all()
    assert torch.equal(wide.gather(1, idx), vals)
    # Ties come out lowest position first, deterministically.
    assert (idx.diff(dim=1) > 0).all()


@pytest.mark.parametrize("chunk", [512, 100, 3000])
def test_equal_values_at_the_kth_place_keep_the_lowest_positions(chunk):
    """WHICH of many equal values make the top-K is defined (lowest positions), in both the native
    kernel and `torch_running_topk`: a user's repeated item gives equal cosines at many positions,
    and the training path (native) and the exported serving path (torch) kept different ones, so
    MISS (whose merge drops positions the other GSU took) served other scores than it trained."""
    gen = torch.Generator().manual_seed(3)
    wide = torch.randint(0, 5, (8, 3000), generator=gen).float()
    k = 20
    # Exact expectation: the value is the row's maximum, the positions its first k occurrences.
    expected = torch.stack([(row == row.max()).nonzero().squeeze(1)[:k] for row in wide])
    sel = RT.RunningTopK(8, k)
    for s, c0 in stream(wide, chunk):
        sel.update(s, c0)
    vals, idx = sel.result()
    assert torch.equal(idx, expected)
    tv, ti = RT.torch_running_topk(stream(wide, chunk), 8, k)
    assert torch.equal(ti, expected) and torch.equal(tv, vals)


def test_lowest_position_first_orders_negative_values_and_zeros_as_floats():
    """The int64 key of `topk_lowest_position_first` orders negative values (the GSU's sentinels,
    negative cosines), -0.0 == +0.0 and -FLT_MAX as float comparison does: same picks as a stable
    descending sort (ties lowest column first), for every k."""
    gen = torch.Generator().manual_seed(4)
    pool = torch.tensor([-3.0, -1.1, -1.05, -0.5, -0.0, 0.0, 0.25, 1.0, RT.EMPTY_VALUE, -1e-30, 1e-30])
    scores = pool[torch.randint(0, pool.numel(), (16, 300), generator=gen)]
    ref_v, ref_j = torch.sort(scores, dim=1, descending=True, stable=True)
    for k in (1, 7, 150, 300):
        v, j = OT.topk_lowest_position_first(scores, k)
        assert torch.equal(j, ref_j[:, :k]) and torch.equal(v, ref_v[:, :k])


@pytest.mark.parametrize("cols,k", [(4096, 50), (805, 50), (300, 7), (16, 1), (1000, 3)])
def test_wide_rows_pick_the_same_columns_as_a_stable_sort(cols, k):
    """Rows wide enough for the block pre-selection (ties across blocks, -inf, -0.0, a tail after the
    last whole block): the same values, bit for bit, and columns as a stable descending sort."""
    gen = torch.Generator().manual_seed(cols + k)
    pool = torch.tensor([-3.0, -1.1, -0.5, -0.0, 0.0, 0.25, 1.0, float("-inf"), RT.EMPTY_VALUE])
    for scores in (pool[torch.randint(0, pool.numel(), (12, cols), generator=gen)],
                   torch.randint(0, 3, (12, cols), generator=gen).float(), torch.randn(12, cols, generator=gen)):
        ref_v, ref_j = torch.sort(scores, dim=1, descending=True, stable=True)
        v, j = OT.topk_lowest_position_first(scores, k)
        assert torch.equal(j, ref_j[:, :k])
        assert torch.equal(v.view(torch.int32), ref_v[:, :k].view(torch.int32))


def test_the_exported_top_k_keys_a_fraction_of_a_wide_row():
    """Traced (what `muse-rec export` writes), a top-50 of a 4,096-column chunk (the serving GSU's) runs
    its int64-key `torch.topk`s over a few hundred columns, not all of them: keying every column of
    every chunk was ~1.2 s of the exported MUSE program's 2.1 s at L = 100K and 1,000 candidates."""
    cols, k = 4096, 50

    class TopK(torch.nn.Module):
        def forward(self, scores: torch.Tensor):
            return OT.topk_lowest_position_first(scores, k)

    program = torch.export.export(TopK(), (torch.randn(4, cols),))
    widths = [n.args[0].meta["val"].shape[-1] for n in program.graph.nodes
              if n.op == "call_function" and n.target is torch.ops.aten.topk.default]
    # What the block pre-selection keys: the block maxima, then the picked blocks' columns.
    assert widths and sum(widths) <= cols // OT.TOPK_BLOCK + k * OT.TOPK_BLOCK, widths


def test_bad_input():
    sel = RT.RunningTopK(3, 2)
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        sel.update(torch.zeros(3, 4, dtype=torch.float64), 0)
    with pytest.raises(ValueError, match=r"\[r, C\]"):
        sel.update(torch.zeros(4, 4), 0)
    with pytest.raises(ValueError, match="k must be"):
        RT.RunningTopK(3, 0)

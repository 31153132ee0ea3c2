"""A Ranker pass that is not bounded by `FULL_SCORES_PER_PASS` holds no tensor of one element per candidate and
history position.

The Ranker scores up to 1,024 candidates per pass, and fewer (`2^24 // L`) only for a GSU that says it holds
``[B, L]`` tensors (``scores_whole_history``). SIM-hard's category match and MISS's co-occurrence count held
``[B, L]`` int64 ids, masks, fp32 scores and (MISS) a full sort while they said they did not: at L = 100K a pass
of 1,024 candidates added 1,763 MiB (SIM-hard) and 3,815 MiB (MISS) to the resident set, against MUSE's 72 and
the bounded TWIN's 286. The test records the largest storage any op of a one-user forward allocates.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from muse_rec.models.ctr_model import LifelongCTRModel
from muse_rec.models.sparse_arch import REQUIRED_TABLES
from muse_rec.modules import Histories
from muse_rec.serving.inference import FULL_SCORES_PER_PASS, InferenceModel
from muse_rec.spec import load_spec

SPECS = Path(__file__).resolve().parents[2] / "specs"
# L above every chunk of positions (4,096) and B above the SCL width (128), so that a [B, chunk] or [L, 128]
# tensor has fewer elements than B x L: only a tensor over every (candidate, position) pair reaches it.
L, B, ITEMS, CATS = 16384, 512, 300, 8


class LargestStorage(TorchDispatchMode):
    """Records the most elements of any storage an op returns (views of a smaller storage count as it)."""

    def __init__(self) -> None:
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.element_size() > 0:
                self.elements = max(self.elements, t.untyped_storage().nbytes() // t.element_size())
        return out


@pytest.mark.parametrize("spec_file", sorted(p.name for p in (SPECS / "methods").glob("*.yaml")))
def test_an_unbounded_pass_holds_nothing_per_candidate_and_position(spec_file):
    spec = load_spec(SPECS / "methods" / spec_file, [f"data.seq_len={L}"])
    sizes = {t: ITEMS if t == "item" else CATS if t == "category" else 50 for t in REQUIRED_TABLES}
    torch.manual_seed(0)
    model = LifelongCTRModel(spec.model, sizes, seq_len=L).eval()
    inf = InferenceModel(model)
    unbounded = 1 << 40
    if inf.candidates_per_pass(unbounded, L) <= FULL_SCORES_PER_PASS // L:
        return  # bounded: the Ranker's passes hold [B, L] tensors of at most 2^24 elements
    g = torch.Generator().manual_seed(1)
    items = torch.randint(1, ITEMS, (1, L), generator=g)
    cats = items % (CATS - 1) + 1  # rows 1..CATS-1
    mask = torch.ones(1, L, dtype=torch.bool)
    targets = torch.randint(1, ITEMS, (B,), generator=g)
    pooled = torch.randn(B, model.sparse_arch.pooled_dim, generator=g)
    with torch.no_grad(), LargestStorage() as largest:
        model.score(pooled, targets, targets % (CATS - 1) + 1, Histories.one_user(items, cats, mask, B))
    assert largest.elements < B * L, (
        f"{spec_file}: a pass of {B} candidates at L = {L} allocated {largest.elements} elements at once "
        f"(B x L = {B * L}) but its GSU does not say scores_whole_history")

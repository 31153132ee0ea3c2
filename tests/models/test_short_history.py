"""`LifelongCTRModel.score` on a history shorter than the recent window R (no left padding up to R)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from muse_rec.models.ctr_model import LifelongCTRModel
from muse_rec.models.sparse_arch import REQUIRED_TABLES
from muse_rec.modules import Histories
from muse_rec.spec import load_spec

SPECS = Path(__file__).resolve().parents[2] / "specs"
ITEMS, B = 60, 3


def _model(spec_file: str) -> LifelongCTRModel:
    spec = load_spec(SPECS / spec_file, ["data.seq_len=100"])
    sizes = {t: ITEMS if t in ("item", "category") else 50 for t in REQUIRED_TABLES}
    torch.manual_seed(0)
    model = LifelongCTRModel(spec.model, sizes, seq_len=100)
    scl = np.random.default_rng(0).integers(-127, 128, size=(ITEMS, 128), dtype=np.int8)
    scl[0] = 0
    if model.uses_scl:
        model.sparse_arch.load_scl_(scl)
    return model.eval()


@pytest.mark.parametrize("spec_file", ["methods/muse.yaml", "methods/din.yaml"])
def test_a_history_shorter_than_the_recent_window_scores_as_if_padded_to_it(spec_file):
    """n real behaviours with R/2 < n < R, given at L = n (InferenceModel's signature allows any L) and
    left-padded to L = R and to 100. Before, the recent slice started at L - R < 0, i.e. it kept only the
    newest R - n of them: at L = 30 the recent branch (SimTier, TA, mean pool) saw 20 of the 30."""
    model = _model(spec_file)
    R = model.recent
    n = 30
    assert R // 2 < n < R
    g = torch.Generator().manual_seed(1)
    pooled = torch.randn(B, model.sparse_arch.pooled_dim, generator=g)
    target_item, target_cat = torch.tensor([3, 4, 5]), torch.tensor([1, 2, 3])
    items = torch.randint(1, ITEMS, (1, n), generator=g)
    cats = torch.randint(1, ITEMS, (1, n), generator=g)

    def logits(L: int) -> torch.Tensor:
        it, ct = torch.zeros(1, L, dtype=torch.int64), torch.zeros(1, L, dtype=torch.int64)
        it[:, L - n:], ct[:, L - n:] = items, cats
        mask = torch.arange(L).unsqueeze(0) >= L - n
        with torch.no_grad():
            return model.score(pooled, target_item, target_cat, Histories.one_user(it, ct, mask, B))

    padded = logits(R)
    torch.testing.assert_close(logits(100), padded, rtol=0, atol=0)  # padding beyond R: the same program
    # At L = n the reductions (softmax, means) run over fewer padded slots, whose terms are exact zeros:
    # only the fp32 order of summation differs, a few ulps of logits of magnitude < 1 (measured 1.2e-7;
    # the old slice moved them by 5.7e-5 (DIN) and 0.055 (MUSE)).
    torch.testing.assert_close(logits(n), padded, rtol=0, atol=1e-6)

"""`IdCosineSimilarity` (R of TWIN's ESU): the ID-token cosine SimTier bins."""
from __future__ import annotations

import torch

from muse_rec.models.over_arch import IdCosineSimilarity
from muse_rec.modules import GSUResult, SimTier


def test_a_pick_whose_token_is_the_targets_has_cosine_one_in_one_tier():
    """Cosine 1 is tier 20 (ceil(1 / 0.1) + 10), as for the SCL cosines. F.cosine_similarity of a token with
    itself rounded to 1.0000001 for ~1 token in 5 (tier 21) and 0.99999994 for others (tier 20)."""
    g = torch.Generator().manual_seed(0)
    B, K, D = 2000, 3, 32
    target = torch.randn(B, D, generator=g) * 1e-3  # ID tables start at std 1e-3
    picks = torch.randn(B, K, D, generator=g) * 1e-3
    picks[:, 0] = target  # the target item in the user's history
    picks[:, 1] = -target
    picks[:, 2] = 0  # an all-zero token (item and category rows 0): cosine 0
    res = GSUResult(torch.zeros(B, K, dtype=torch.int64), torch.zeros(B, K), torch.ones(B, K, dtype=torch.bool),
                    torch.ones(B, K, dtype=torch.bool))
    cos, ok = IdCosineSimilarity()(res, None, target, picks)
    assert ok.all()
    assert cos.abs().max() <= 1.0
    # Within the fp32 rounding of a 32-term cosine (a few ulps) of +1, -1 and exactly 0.
    torch.testing.assert_close(cos, torch.tensor([1.0, -1.0, 0.0]).expand(B, K), rtol=0, atol=1e-6)
    assert (SimTier().tiers(cos[:, 0:1]) == 20).all()
    assert (SimTier().tiers(cos[:, 2:3]) == 10).all()

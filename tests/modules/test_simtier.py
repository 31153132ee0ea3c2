"""SimTier on hand-computed cosines."""
from __future__ import annotations

import math

import pytest
import torch

from muse_rec.modules import SimTier


def test_tiers_follow_reference_binning():
    st = SimTier()
    r = torch.tensor([[0.95, 0.93, 0.05, -0.25, -1.0, 0.0, 1.0, -0.95, 1.0000001]])
    # ceil(r / 0.1) + 10
    assert st.tiers(r).tolist() == [[20, 20, 11, 8, 0, 10, 20, 1, 21]]


def test_float32_inputs_at_the_tier_edges_go_where_their_exact_value_lies():
    """Tier t holds ((t - 11) / 10, (t - 10) / 10] of the input's exact value. float32 has no 0.3: the
    nearest float32 is 0.30000001192..., above the edge, so tier 14, not 13. An fp32 division (0.3f / 0.1f
    rounds to exactly 3.0) would put every one of these a tier lower, so this pins the fp64 division."""
    from fractions import Fraction

    edges = [0.1, 0.2, 0.3, 0.4, 0.6, 0.8, -0.7, -0.9, 0.5, -0.5]
    r = torch.tensor([edges], dtype=torch.float32)
    # Independent of the implementation: the smallest t with exact(r) <= (t - 10) / 10.
    expected = [math.ceil(Fraction(float(x)) * 10) + 10 for x in r[0].tolist()]
    assert expected[:8] == [12, 13, 14, 15, 17, 19, 4, 2]  # the float32 neighbours lie past the decimal edge
    assert expected[8:] == [15, 5]  # 0.5 is exact in float32: it is the edge itself, the upper end of tier 15
    assert SimTier().tiers(r).tolist() == [expected]


def test_counts_and_output_hand_computed():
    st = SimTier()
    with torch.no_grad():
        st.weight.copy_(torch.linspace(0.0, 1.0, 22))
    r = torch.tensor([[0.95, 0.93, 0.05, -0.25, -1.0, 0.0, 0.95],
                      [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]], requires_grad=True)
    mask = torch.tensor([[True, True, True, True, True, True, False],  # last slot: not counted
                         [False] * 7])
    counts = st.counts(r, mask)
    expected = torch.zeros(2, 22)
    for tier, n in {20: 2, 11: 1, 8: 1, 0: 1, 10: 1}.items():
        expected[0, tier] = n
    assert torch.equal(counts, expected)
    out = st(r, mask)
    assert out.shape == (2, 22)
    w = torch.linspace(0.0, 1.0, 22)
    assert out[0, 20].item() == pytest.approx(math.log(3.0) * w[20].item(), rel=1e-6)
    assert out[0, 11].item() == pytest.approx(math.log(2.0) * w[11].item(), rel=1e-6)
    assert torch.equal(out[1], torch.zeros(22))  # nothing to count
    # Gradient reaches w (= log1p(count)), never R.
    out.sum().backward()
    torch.testing.assert_close(st.weight.grad, torch.log1p(expected).sum(0))
    assert r.grad is None


def test_init_and_meta_and_errors():
    st = SimTier(num_tiers=22)
    assert st.weight.shape == (22,) and (st.weight >= 0).all() and (st.weight <= 1).all()
    meta = SimTier(device=torch.device("meta"))
    assert meta.weight.is_meta
    with pytest.raises(ValueError, match="mask must be bool"):
        st(torch.zeros(1, 3), torch.ones(1, 3))
    with pytest.raises(ValueError, match="similarities"):
        st(torch.zeros(1, 3), torch.ones(1, 4, dtype=torch.bool))


def test_weight_init_is_uniform_zero_one():
    torch.manual_seed(0)
    w = SimTier(num_tiers=20000, tier_width=0.1).weight.detach()
    assert w.min().item() >= 0.0 and w.max().item() <= 1.0
    # U(0,1): mean 1/2, std 1/sqrt(12); 20k draws -> standard errors 0.002 / 0.0015.
    assert abs(w.mean().item() - 0.5) < 0.01 and abs(w.std().item() - 12 ** -0.5) < 0.01

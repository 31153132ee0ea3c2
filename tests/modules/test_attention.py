"""Target attention, SA-TA (both variants) and DIN attention: hand examples, masking, gradients."""
from __future__ import annotations

import math

import pytest
import torch

from muse_rec.modules import DINAttention, SemanticAwareTargetAttention, TargetAttention, masked_softmax

KEYS = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
R = [0.5, -0.5, 0.0]


def identity_sata(variant: str) -> SemanticAwareTargetAttention:
    m = SemanticAwareTargetAttention(2, 2, 2, variant=variant)
    with torch.no_grad():
        for lin in (m.attention.w_q, m.attention.w_k, m.attention.w_v):
            lin.weight.copy_(torch.eye(2))
    return m


def softmax_list(xs):
    e = [math.exp(x - max(xs)) for x in xs]
    return [v / sum(e) for v in e]


def silu(x: float) -> float:
    return x / (1.0 + math.exp(-x))


@pytest.mark.parametrize("variant", ["paper", "reference"])
@pytest.mark.parametrize("gates,temperature", [((1.0, 1.0, 1.0), 0.1), ((2.0, 3.0, 5.0), 0.5)],
                         ids=["at_init", "distinct_gates"])  # distinct values: a swapped gate or R * tau fails
def test_sata_three_behaviour_hand_example(variant, gates, temperature):
    m = identity_sata(variant)
    with torch.no_grad():
        m.gates.copy_(torch.tensor(gates))
        if m.temperature is not None:
            m.temperature.fill_(temperature)
    q = torch.tensor([[1.0, 0.0]])
    k = torch.tensor([KEYS])
    out = m(q, k, torch.tensor([R]), torch.ones(1, 3, dtype=torch.bool))
    if variant == "paper":
        qp, kp, scale, r = [1.0, 0.0], KEYS, 1 / math.sqrt(2), R
        vals = KEYS
    else:  # SiLU after each projection, no sqrt(D), R / temperature
        qp = [silu(x) for x in (1.0, 0.0)]
        kp = [[silu(x) for x in row] for row in KEYS]
        scale, r = 1.0, [x / temperature for x in R]
        vals = kp
    a_id = [scale * sum(a * b for a, b in zip(row, qp)) for row in kp]
    g1, g2, g3 = gates
    alpha = [g1 * a + g2 * ri + g3 * a * ri for a, ri in zip(a_id, r)]
    w = softmax_list(alpha)
    expected = [sum(w[i] * vals[i][d] for i in range(3)) for d in range(2)]
    torch.testing.assert_close(out[0], torch.tensor(expected), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("variant", ["paper", "reference"])
def test_sata_gradients_reach_exactly_the_parameters(variant):
    torch.manual_seed(0)
    m = SemanticAwareTargetAttention(8, 8, 4, variant=variant)
    q = torch.randn(4, 8)
    k = torch.randn(4, 5, 8)
    r = torch.rand(4, 5, requires_grad=True)
    mask = torch.ones(4, 5, dtype=torch.bool)
    m(q, k, r, mask).pow(2).sum().backward()
    expected = {"gates", "attention.w_q.weight", "attention.w_k.weight", "attention.w_v.weight"}
    if variant == "reference":
        expected.add("temperature")
    got = {n for n, p in m.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert got == expected
    assert (m.gates.grad != 0).all()  # g1, g2, g3 each
    assert r.grad is None  # R (frozen cosines) gets no gradient


def test_padding_never_attended_and_empty_rows_are_zero():
    torch.manual_seed(1)
    for module in (TargetAttention(6, 6, 4, value_dim=3), SemanticAwareTargetAttention(6, 6, 4)):
        q = torch.randn(2, 6)
        k = torch.randn(2, 4, 6, requires_grad=True)
        r = torch.rand(2, 4)
        mask = torch.tensor([[False, True, True, True], [False] * 4])
        call = (lambda kk: module(q, kk, mask)) if isinstance(module, TargetAttention) else (
            lambda kk: module(q, kk, r, mask))
        out = call(k)
        k2 = k.detach().clone()
        k2[0, 0] = 1e4  # change the padding slot: output must not move
        torch.testing.assert_close(call(k2)[0], out[0])
        assert torch.equal(out[1], torch.zeros_like(out[1]))
        out.sum().backward()
        assert torch.isfinite(k.grad).all()
        assert (k.grad[0, 0] == 0).all() and (k.grad[1] == 0).all()


def test_masked_softmax():
    w = masked_softmax(torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]]),
                       torch.tensor([[True, False, True], [False, False, False]]))
    e1, e3 = math.exp(1.0), math.exp(3.0)
    torch.testing.assert_close(w[0], torch.tensor([e1 / (e1 + e3), 0.0, e3 / (e1 + e3)]))
    assert torch.equal(w[1], torch.zeros(3))


def test_target_attention_scaled_dot_product():
    ta = TargetAttention(2, 2, 2)
    with torch.no_grad():
        ta.w_q.weight.copy_(torch.eye(2))
        ta.w_k.weight.copy_(torch.eye(2))
    logits = ta.logits(torch.tensor([[1.0, 0.0]]), torch.tensor([KEYS]))
    torch.testing.assert_close(logits[0], torch.tensor([1.0, 0.0, 1.0]) / math.sqrt(2))
    with pytest.raises(ValueError, match="mask must be bool"):
        ta(torch.ones(1, 2), torch.ones(1, 3, 2), torch.ones(1, 3))


def test_din_attention_masks_and_is_unnormalised():
    torch.manual_seed(2)
    din = DINAttention(4, hidden=(8, 4))
    q = torch.randn(2, 4)
    k = torch.randn(2, 3, 4)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    w = din.weights(q, k, mask)
    assert (w[~mask] == 0).all()
    # Raw unit outputs on real slots (no softmax): equal to the MLP applied to one slot.
    qi, ki = q[0], k[0, 1]
    raw = din.unit(torch.cat([qi, ki, qi - ki, qi * ki]).unsqueeze(0).unsqueeze(0))
    torch.testing.assert_close(w[0, 1], raw.reshape(()))
    out = din(q, k, mask)
    torch.testing.assert_close(out[1], w[1, 0] * k[1, 0])
    soft = DINAttention(4, softmax=True).weights(q, k, mask)
    torch.testing.assert_close(soft.sum(1), torch.ones(2))


def test_modules_build_on_meta():
    meta = torch.device("meta")
    for m in (TargetAttention(32, 32, 16, value_dim=32, device=meta),
              SemanticAwareTargetAttention(32, 32, 16, variant="reference", device=meta),
              DINAttention(32, device=meta)):
        assert all(p.is_meta for p in m.parameters())
    with pytest.raises(ValueError, match="variant"):
        SemanticAwareTargetAttention(2, 2, 2, variant="other")


def test_projection_parametrization_knobs():
    """attention_bias / linear_bias / linear_init reach W_q, W_k, W_v (SA-TA's too)."""
    import dataclasses

    from muse_rec.modules.parametrization import REFERENCE_PARAMETRIZATION, TORCH_PARAMETRIZATION

    torch.manual_seed(0)
    ref = SemanticAwareTargetAttention(256, 256, 200, variant="reference", parametrization=REFERENCE_PARAMETRIZATION)
    for lin in (ref.attention.w_q, ref.attention.w_k, ref.attention.w_v):
        assert torch.equal(lin.bias, torch.full_like(lin.bias, 0.1))
        # N(0,1)/sqrt(256): sample std of 51k-65k weights within 3% (~10 standard errors).
        assert abs(lin.weight.std().item() * 16.0 - 1.0) < 0.03
    assert ref.gates.tolist() == [1.0, 1.0, 1.0] and ref.temperature.item() == pytest.approx(0.1)
    plain = TargetAttention(256, 256, 200, parametrization=TORCH_PARAMETRIZATION)
    assert plain.w_q.bias is None and plain.w_k.bias is None
    assert plain.w_q.weight.abs().max().item() <= 1 / 16.0  # torch's U(+-1/sqrt(fan_in))
    biased = TargetAttention(8, 8, 4, value_dim=8,
                             parametrization=dataclasses.replace(TORCH_PARAMETRIZATION, attention_bias=True))
    assert all(lin.bias is not None for lin in (biased.w_q, biased.w_k, biased.w_v))

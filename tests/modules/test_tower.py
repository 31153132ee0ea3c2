"""Dice, MLPTower, masked_mean."""
from __future__ import annotations

import pytest
import torch

from muse_rec.modules import Dice, MLPTower, masked_mean


def test_dice_formula():
    torch.manual_seed(0)
    d = Dice(5)
    with torch.no_grad():
        d.alpha.copy_(torch.tensor([0.0, 0.5, -1.0, 2.0, 0.25]))
    x = torch.randn(3, 5)
    mu, var = x.mean(1, keepdim=True), x.var(1, unbiased=False, keepdim=True)
    p = torch.sigmoid((x - mu) / torch.sqrt(var + 1e-5))
    torch.testing.assert_close(d(x), p * x + (1 - p) * d.alpha * x)


@pytest.mark.parametrize("activation", ["dice", "relu"])
def test_tower_shapes_and_gradients(activation):
    torch.manual_seed(0)
    tower = MLPTower(10, hidden=(8, 4), activation=activation, dropout=0.1)
    x = torch.randn(6, 10)
    logit = tower(x)
    assert logit.shape == (6,)
    torch.nn.functional.binary_cross_entropy_with_logits(logit, torch.ones(6)).backward()
    assert all(p.grad is not None for p in tower.parameters())
    with pytest.raises(ValueError, match=r"\[B, 10\]"):
        tower(torch.randn(6, 9))
    with pytest.raises(ValueError, match="activation"):
        MLPTower(10, activation="gelu")


def test_tower_on_meta():
    tower = MLPTower(200, device=torch.device("meta"))
    assert all(p.is_meta for p in tower.parameters())
    assert tower(torch.empty(3, 200, device="meta")).shape == (3,)


def test_masked_mean():
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 5.0], [6.0, 6.0], [7.0, 7.0]]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    torch.testing.assert_close(masked_mean(x, mask), torch.tensor([[2.0, 3.0], [0.0, 0.0]]))

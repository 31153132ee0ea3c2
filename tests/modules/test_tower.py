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


# --------------------------------------------------------------------------------------------
# Parametrization knobs (model.parametrization): each test reads the actual init statistics.
# --------------------------------------------------------------------------------------------
import dataclasses  # noqa: E402
import math  # noqa: E402

from muse_rec.modules.parametrization import (  # noqa: E402
    REFERENCE_PARAMETRIZATION,
    TORCH_PARAMETRIZATION,
    ParamLinear,
)
from muse_rec.modules.tower import Dice as _Dice  # noqa: E402

FAN_IN, FAN_OUT = 400, 300  # 120k weights: the sample std's relative error is ~1/sqrt(2n) = 0.2%


def _knobs(**kw):
    return dataclasses.replace(TORCH_PARAMETRIZATION, **kw)


def test_linear_normal_fan_in_has_std_one_over_sqrt_fan_in():
    torch.manual_seed(0)
    w = ParamLinear(FAN_IN, FAN_OUT, parametrization=_knobs(linear_init="normal_fan_in")).weight
    # 2% = 10 standard errors of the sample std; torch's init (std 1/sqrt(3 fan_in)) is 42% off.
    assert abs(w.std().item() * math.sqrt(FAN_IN) - 1.0) < 0.02
    assert abs(w.mean().item()) * math.sqrt(FAN_IN) < 0.02  # mean 0 (standard error 0.003)
    # Normal, not uniform: ~8% of N(0,1) lies beyond sqrt(3), where U(+-sqrt(3)) has nothing.
    assert (w.abs() * math.sqrt(FAN_IN) > math.sqrt(3.0)).float().mean().item() > 0.07


def test_linear_torch_init_is_uniform_bounded():
    torch.manual_seed(0)
    lin = ParamLinear(FAN_IN, FAN_OUT, parametrization=TORCH_PARAMETRIZATION)
    bound = 1.0 / math.sqrt(FAN_IN)
    assert lin.weight.abs().max().item() <= bound
    assert abs(lin.weight.std().item() * math.sqrt(3 * FAN_IN) - 1.0) < 0.02
    assert lin.bias.abs().max().item() <= bound and lin.bias.std().item() > 0  # torch's uniform bias


def test_linear_bias_constant():
    lin = ParamLinear(FAN_IN, FAN_OUT, parametrization=_knobs(linear_bias=0.1))
    assert torch.equal(lin.bias, torch.full((FAN_OUT,), 0.1))


def test_tower_applies_knobs_to_every_linear_and_survives_meta_materialisation():
    """DMP builds on meta, then calls reset_parameters of every submodule (children first)."""
    p = REFERENCE_PARAMETRIZATION
    tower = MLPTower(FAN_IN, hidden=(FAN_OUT, 64), parametrization=p, device=torch.device("meta"))
    tower.to_empty(device="cpu")
    torch.manual_seed(0)
    tower.apply(lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None)
    linears = [m for m in tower.modules() if isinstance(m, torch.nn.Linear)]
    assert [lin.out_features for lin in linears] == [FAN_OUT, 64, 2]
    for lin in linears:
        assert torch.equal(lin.bias, torch.full_like(lin.bias, 0.1))
    assert abs(linears[0].weight.std().item() * math.sqrt(FAN_IN) - 1.0) < 0.02


def test_dice_knobs():
    d = _Dice.of(7, _knobs(dice_alpha_init=-0.25, dice_norm_affine=False, dice_norm_eps=1e-12))
    assert torch.equal(d.alpha, torch.full((7,), -0.25))
    assert d.norm.weight is None and d.norm.bias is None and d.norm.eps == 1e-12
    torch.manual_seed(0)
    x = torch.randn(3, 7)
    mu, var = x.mean(1, keepdim=True), x.var(1, unbiased=False, keepdim=True)
    s = torch.sigmoid((x - mu) / torch.sqrt(var + 1e-12))
    torch.testing.assert_close(d(x), s * x + (1 - s) * -0.25 * x)
    default = _Dice.of(7, TORCH_PARAMETRIZATION)
    assert torch.equal(default.alpha, torch.zeros(7)) and default.norm.weight is not None
    assert default.norm.eps == 1e-5


def test_dice_on_the_two_output_logits_and_z1_minus_z0():
    torch.manual_seed(0)
    tower = MLPTower(10, hidden=(8,), parametrization=_knobs(output_head="two_logits_dice", dice_alpha_init=-0.25))
    head_linear, head_dice = tower.layers[-2], tower.layers[-1]
    assert isinstance(head_dice, _Dice) and head_linear.out_features == 2
    x = torch.randn(5, 10)
    z = tower.layers(x)  # [B, 2] = Dice(Linear(.)) of the hidden features
    torch.testing.assert_close(z, head_dice(head_linear(tower.layers[:-2](x))))
    torch.testing.assert_close(tower(x), z[:, 1] - z[:, 0])


def test_training_loss_on_the_two_logit_head_is_the_references_softmax_ce():
    """The trainer's loss (`LifelongCTRTrain`: weighted BCE on the model's one logit) with the
    two-logit head is the reference's softmax CE over its [z0, z1], weighted the same way (padding
    rows weigh 0): the head's sign and the loss wrapper together, not only the identity in torch."""
    from types import SimpleNamespace

    from muse_rec.models.ctr_model import LifelongCTRTrain

    torch.manual_seed(0)
    tower = MLPTower(10, hidden=(8,), parametrization=_knobs(output_head="two_logits_dice", dice_alpha_init=-0.25))
    x = torch.randn(64, 10)
    with torch.no_grad():  # spread the two logits so the loss is far from log 2 on most rows
        tower.layers[-2].weight.mul_(4)
    batch = SimpleNamespace(x=x, labels=(torch.rand(64) < 0.3).float(), weights=(torch.arange(64) < 60).float())

    class OnX(torch.nn.Module):
        def forward(self, b):
            return tower(b.x)

    loss, _ = LifelongCTRTrain(OnX())(batch)  # type: ignore[arg-type]
    z = tower.layers(x)  # [B, 2]
    ce = torch.nn.functional.cross_entropy(z, batch.labels.long(), reduction="none")
    expected = (ce * batch.weights).sum() / batch.weights.sum()
    # fp32: BCE on z1 - z0 and softmax CE round differently, by a few ulps of a loss ~0.7.
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-6)
    assert abs(float(expected) - math.log(2)) > 0.05  # the logits really differ: a z0 - z1 sign would show


def test_output_bias_starts_the_logit_at_the_prior_and_survives_meta_materialisation():
    """`output_bias` sets only the output logit's bias; DMP's reset on meta keeps it."""
    from muse_rec.modules.parametrization import prior_logit

    b = prior_logit(0.137)
    assert b == math.log(0.137 / 0.863)
    tower = MLPTower(FAN_IN, hidden=(FAN_OUT, 64), parametrization=TORCH_PARAMETRIZATION, output_bias=b,
                     device=torch.device("meta"))
    tower.to_empty(device="cpu")
    tower.apply(lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None)
    linears = [m for m in tower.modules() if isinstance(m, torch.nn.Linear)]
    assert torch.equal(linears[-1].bias, torch.full((1,), b))
    assert all(lin.bias.std() > 0 for lin in linears[:-1])  # the hidden layers keep their own init
    with pytest.raises(ValueError, match="output_bias"):
        MLPTower(4, hidden=(3,), parametrization=_knobs(output_head="two_logits_dice"), output_bias=b)
    for bad in (0.0, 1.0, float("nan")):
        with pytest.raises(ValueError, match="click rate"):
            prior_logit(bad)


# --- tower_gain: He's gain for the tower's activation ---------------------------------------
from muse_rec.modules.tower import activation_gain  # noqa: E402


def _dice_second_moment_sampled(alpha: float, n: int, width: int, seed: int = 0):
    """E[Dice(x)^2] of the real module on x ~ N(0,1) [n, width], and its standard error."""
    torch.manual_seed(seed)
    dice = _Dice.of(width, _knobs(dice_alpha_init=alpha, dice_norm_affine=False, dice_norm_eps=1e-12))
    with torch.no_grad():
        sq = dice(torch.randn(n, width, dtype=torch.float64).float()).double() ** 2
    return sq.mean().item(), sq.std().item() / math.sqrt(sq.numel())


def test_activation_gain_is_hes_rule_for_dice_and_relu():
    assert activation_gain("relu") == torch.nn.init.calculate_gain("relu")  # sqrt(2)
    reference = _knobs(dice_alpha_init=-0.25)
    gain = activation_gain("dice", reference)
    # The module itself, sampled: 4M values give a standard error of ~0.03% on E[Dice^2]; the
    # LayerNorm over 1,024 features standardises with the row's own mean/std, a relative bias of
    # ~1/width = 0.1%. 0.5% covers both (5x), and alpha 0 (gain 1.677, 7% off) is far outside.
    m2, se = _dice_second_moment_sampled(-0.25, 4096, 1024)
    assert abs(gain ** -2 / m2 - 1.0) < 0.005, (gain ** -2, m2, se)
    assert abs(gain - 1.8081) < 1e-4
    assert abs(activation_gain("dice", _knobs(dice_alpha_init=0.0)) - gain) > 0.1
    with pytest.raises(ValueError, match="activation must be one of"):
        activation_gain("gelu")


def _preactivation_second_moments(parametrization, width: int = 1024, depth: int = 3):
    torch.manual_seed(0)
    tower = MLPTower(width, hidden=(width,) * depth, parametrization=parametrization)
    moments, h = [], torch.randn(2048, width)
    with torch.no_grad():
        for layer in tower.layers:
            h = layer(h)
            if isinstance(layer, torch.nn.Linear) and layer.out_features == width:
                moments.append(h.pow(2).mean().item())
    return moments


def test_tower_gain_keeps_the_first_layers_scale_through_dice():
    """With `tower_gain: activation` every hidden pre-activation has the input's second moment;
    with `unit` (the reference) each Dice passes on 0.31 of it."""
    he = _preactivation_second_moments(dataclasses.replace(REFERENCE_PARAMETRIZATION, linear_bias=None,
                                                           tower_gain="activation"))
    unit = _preactivation_second_moments(dataclasses.replace(REFERENCE_PARAMETRIZATION, linear_bias=None,
                                                             tower_gain="unit"))
    # A 1024-wide Gaussian layer's realised gain varies by ~sqrt(2/1024) = 4% and the torch bias adds
    # ~1/(3 fan_in) = 0.03%: 12% bounds three layers of it; `unit` ends at 0.31^2 = 0.09.
    assert all(abs(m - 1.0) < 0.12 for m in he), he
    assert abs(unit[2] - 0.3059 ** 2) < 0.02 and unit[2] < 0.15, unit


def test_tower_gain_on_every_linear_after_an_activation_and_through_meta():
    p = dataclasses.replace(REFERENCE_PARAMETRIZATION, tower_gain="activation")
    tower = MLPTower(FAN_IN, hidden=(FAN_OUT, FAN_OUT), parametrization=p, device=torch.device("meta"))
    tower.to_empty(device="cpu")
    torch.manual_seed(0)
    tower.apply(lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None)
    linears = [m for m in tower.modules() if isinstance(m, torch.nn.Linear)]
    scales = [lin.weight.std().item() * math.sqrt(lin.in_features) for lin in linears]
    # 120k / 90k weights: sample std within 0.3% (1 standard error); 2% as the tests above. The
    # 2-logit head has 600 weights (standard error 3%): 15%.
    assert abs(scales[0] - 1.0) < 0.02 and abs(scales[1] - 1.8081) < 0.02 * 1.8081, scales
    assert abs(scales[2] - 1.8081) < 0.15 * 1.8081, scales
    assert [lin.gain for lin in linears] == [1.0, activation_gain("dice", p), activation_gain("dice", p)]
    unit = MLPTower(FAN_IN, hidden=(FAN_OUT,), parametrization=dataclasses.replace(p, tower_gain="unit"))
    assert [lin.gain for lin in unit.modules() if isinstance(lin, torch.nn.Linear)] == [1.0, 1.0]
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="init gain"):
            ParamLinear(3, 2, gain=bad)


# --- tower_fan_in: the first Linear's fan-in counts only the columns at unit scale ----------------
def test_fan_in_columns_start_at_lecun_for_their_count_and_keep_their_second_moment():
    """Weights reading `fan_in_columns` start at std 1/sqrt(len(columns)), the others at
    1/sqrt(in_features); with only those columns at unit scale (the rest ~1e-3, as ID embeddings
    start), the first pre-activations then have the columns' second moment instead of
    len(columns) / in_features of it."""
    p = dataclasses.replace(REFERENCE_PARAMETRIZATION, linear_bias=None)
    cols = tuple(range(3, FAN_IN, 8))  # 50 of 400
    torch.manual_seed(0)
    tower = MLPTower(FAN_IN, hidden=(FAN_OUT, FAN_OUT), parametrization=p, fan_in_columns=cols,
                     device=torch.device("meta"))
    tower.to_empty(device="cpu")  # as DistributedModelParallel materialises it
    tower.apply(lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None)
    first, second = [m for m in tower.modules() if isinstance(m, torch.nn.Linear)][:2]
    mask = torch.zeros(FAN_IN, dtype=torch.bool)
    mask[list(cols)] = True
    # 15k and 105k weights: the sample std's relative standard error is 0.6% and 0.2%; 3% and 2%.
    assert abs(first.weight[:, mask].std().item() * math.sqrt(len(cols)) - 1.0) < 0.03
    assert abs(first.weight[:, ~mask].std().item() * math.sqrt(FAN_IN) - 1.0) < 0.02
    assert second.fan_in_columns is None and abs(second.weight.std().item() * math.sqrt(FAN_OUT) - 1.0) < 0.02
    x = torch.randn(2048, FAN_IN) * 1e-3
    x[:, mask] = torch.randn(2048, len(cols))
    with torch.no_grad():
        moment = (x @ first.weight.t()).pow(2).mean().item()
        lecun = (x @ ParamLinear(FAN_IN, FAN_OUT, parametrization=p).weight.t()).pow(2).mean().item()
    # Each unit's squared weight norm over 50 columns is chi2(50)/50: the mean over 300 units is
    # within sqrt(2 / 15000) = 1.2%, the 2048 rows add ~1%; 10% bounds it. LeCun over all: 50/400.
    assert abs(moment - 1.0) < 0.1 and abs(lecun - len(cols) / FAN_IN) < 0.0125, (moment, lecun)


def test_fan_in_columns_are_checked():
    for bad in ((), (0, 0), (-1,), (FAN_IN,)):
        with pytest.raises(ValueError, match="fan_in_columns"):
            ParamLinear(FAN_IN, 2, fan_in_columns=bad)
    assert ParamLinear(FAN_IN, 2, fan_in_columns=(0, 1)).column_gain == math.sqrt(FAN_IN / 2)

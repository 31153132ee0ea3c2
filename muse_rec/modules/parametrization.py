"""The dense layers' parametrization: how every Linear of the tower and attentions starts.

`ParametrizationSpec` (``model.parametrization`` of a spec) names each choice; this file
turns it into layers, once, at construction. Two families:

* "torch" (``linear_init: torch``, ``linear_bias: null``): nn.Linear's default,
  W, b ~ U(+-1/sqrt(fan_in)) (weight std 1/sqrt(3 fan_in)).
* the MUSE reference (MUSE.md): W ~ N(0, 1)/sqrt(fan_in) (std 1/sqrt(fan_in), sqrt(3) larger)
  and a constant bias 0.1.

The init lives in `reset_parameters`, so a module built on ``meta`` and materialised by
TorchRec's DistributedModelParallel (``to_empty`` + ``reset_parameters`` of every submodule)
gets the same statistics as one built on a real device.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from muse_rec.spec import ParametrizationSpec

# What the modules use when built without a spec: plain torch layers (nn.Linear's init, no
# attention bias, Dice with alpha 0 and an affine LayerNorm, one logit). Specs default to the
# reference's parametrization instead (`ParametrizationSpec()`).
TORCH_PARAMETRIZATION = ParametrizationSpec(
    linear_init="torch", linear_bias=None, attention_bias=False, dice_alpha_init=0.0,
    dice_norm_affine=True, dice_norm_eps=1e-5, output_head="one_logit", output_bias="linear", tower_gain="unit")
REFERENCE_PARAMETRIZATION = ParametrizationSpec(linear_bias=0.1, output_head="two_logits_dice",
                                                output_bias="linear", tower_gain="unit")  # all of MUSE.md's list
DEFAULT_PARAMETRIZATION = TORCH_PARAMETRIZATION


class ParamLinear(nn.Linear):
    """`nn.Linear` initialised as ``parametrization`` says (state-dict keys unchanged).

    Args:
        in_features, out_features, bias: as `nn.Linear`.
        parametrization: ``linear_init`` ("torch" | "normal_fan_in") and ``linear_bias``
            (a constant, or None for torch's uniform bias).
        bias_init: a constant bias for this layer only, over ``linear_bias`` (the output
            logit's prior, `prior_logit`); None = ``linear_bias``.
        gain: multiplies the initial weights (the tower's activation gain, `activation_gain`;
            1 = the init ``linear_init`` names).
        device: where parameters live (``meta`` allowed).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 parametrization: ParametrizationSpec = DEFAULT_PARAMETRIZATION,
                 bias_init: Optional[float] = None, gain: float = 1.0,
                 device: Optional[torch.device] = None) -> None:
        if not (gain > 0 and math.isfinite(gain)):
            raise ValueError(f"a Linear's init gain must be a positive number, got {gain}")
        # nn.Linear.__init__ calls reset_parameters, which reads these three.
        self.parametrization = parametrization
        self.bias_init = bias_init
        self.gain = gain
        super().__init__(in_features, out_features, bias=bias, device=device)

    def reset_parameters(self) -> None:
        p = self.parametrization
        super().reset_parameters()  # torch's default for whatever the knobs leave alone
        with torch.no_grad():
            if p.linear_init == "normal_fan_in":
                nn.init.normal_(self.weight, mean=0.0, std=1.0 / math.sqrt(self.in_features))
            if self.gain != 1.0:
                self.weight.mul_(self.gain)
            if self.bias is not None and self.initial_bias is not None:
                nn.init.constant_(self.bias, self.initial_bias)

    @property
    def initial_bias(self) -> Optional[float]:
        """The constant the bias starts at: this layer's ``bias_init``, else ``linear_bias``
        (None = torch's uniform bias)."""
        return self.bias_init if self.bias_init is not None else self.parametrization.linear_bias

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, init={self.parametrization.linear_init}, gain={self.gain:.4g}, "
                f"bias_init={self.initial_bias}")


def prior_logit(positive_rate: float) -> float:
    """log(p / (1 - p)): the logit whose sigmoid is the click rate ``p`` (in (0, 1))."""
    if not 0.0 < positive_rate < 1.0:  # also rejects NaN
        raise ValueError(f"a click rate must be in (0, 1) for a prior logit, got {positive_rate}")
    return math.log(positive_rate / (1.0 - positive_rate))

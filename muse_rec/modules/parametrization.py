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
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from muse_rec.spec import ParametrizationSpec

# What the modules use when built without a spec: plain torch layers (nn.Linear's init, no
# attention bias, Dice with alpha 0 and an affine LayerNorm, one logit). Specs default to the
# reference's parametrization instead (`ParametrizationSpec()`).
TORCH_PARAMETRIZATION = ParametrizationSpec(
    linear_init="torch", linear_bias=None, attention_bias=False, dice_alpha_init=0.0,
    dice_norm_affine=True, dice_norm_eps=1e-5, output_head="one_logit", output_bias="linear", tower_gain="unit",
    tower_fan_in="all", simtier_init="uniform")
REFERENCE_PARAMETRIZATION = ParametrizationSpec(linear_bias=0.1, output_head="two_logits_dice", output_bias="linear",
                                                tower_gain="unit", tower_fan_in="all",
                                                simtier_init="uniform")  # all of MUSE.md's list
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
        fan_in_columns: the input columns that make this layer's fan-in (the tower's
            ``tower_fan_in``): their weights start at ``sqrt(in_features / len(fan_in_columns))``
            times the init, the others' as ``linear_init`` names; None = every column.
        device: where parameters live (``meta`` allowed).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 parametrization: ParametrizationSpec = DEFAULT_PARAMETRIZATION,
                 bias_init: Optional[float] = None, gain: float = 1.0,
                 fan_in_columns: Optional[Sequence[int]] = None,
                 device: Optional[torch.device] = None) -> None:
        if not (gain > 0 and math.isfinite(gain)):
            raise ValueError(f"a Linear's init gain must be a positive number, got {gain}")
        columns: Optional[Tuple[int, ...]] = None if fan_in_columns is None else tuple(int(c) for c in fan_in_columns)
        if columns is not None and (not columns or len(set(columns)) != len(columns)
                                    or min(columns) < 0 or max(columns) >= in_features):
            raise ValueError(f"fan_in_columns must be distinct columns in [0, {in_features}), got {fan_in_columns}")
        # nn.Linear.__init__ calls reset_parameters, which reads these four. A tuple, not a buffer:
        # the init of a module built on `meta` and materialised by DMP must see it.
        self.parametrization = parametrization
        self.bias_init = bias_init
        self.gain = gain
        self.fan_in_columns = columns
        super().__init__(in_features, out_features, bias=bias, device=device)

    def reset_parameters(self) -> None:
        p = self.parametrization
        super().reset_parameters()  # torch's default for whatever the knobs leave alone
        with torch.no_grad():
            if p.linear_init == "normal_fan_in":
                nn.init.normal_(self.weight, mean=0.0, std=1.0 / math.sqrt(self.in_features))
            if self.gain != 1.0:
                self.weight.mul_(self.gain)
            if self.fan_in_columns is not None:
                cols = torch.tensor(self.fan_in_columns, dtype=torch.long, device=self.weight.device)
                self.weight[:, cols] *= self.column_gain
            if self.bias is not None and self.initial_bias is not None:
                nn.init.constant_(self.bias, self.initial_bias)

    @property
    def column_gain(self) -> float:
        """What the weights of ``fan_in_columns`` are multiplied by: sqrt(in_features / their count)."""
        return 1.0 if self.fan_in_columns is None else math.sqrt(self.in_features / len(self.fan_in_columns))

    @property
    def initial_bias(self) -> Optional[float]:
        """The constant the bias starts at: this layer's ``bias_init``, else ``linear_bias``
        (None = torch's uniform bias)."""
        return self.bias_init if self.bias_init is not None else self.parametrization.linear_bias

    def extra_repr(self) -> str:
        fan_in = "" if self.fan_in_columns is None else f", fan_in_columns={len(self.fan_in_columns)}"
        return (f"{super().extra_repr()}, init={self.parametrization.linear_init}, gain={self.gain:.4g}{fan_in}, "
                f"bias_init={self.initial_bias}")


def prior_logit(positive_rate: float) -> float:
    """log(p / (1 - p)): the logit whose sigmoid is the click rate ``p`` (in (0, 1))."""
    if not 0.0 < positive_rate < 1.0:  # also rejects NaN
        raise ValueError(f"a click rate must be in (0, 1) for a prior logit, got {positive_rate}")
    return math.log(positive_rate / (1.0 - positive_rate))

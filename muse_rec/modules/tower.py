"""The prediction tower: Dice activation, the MLP that outputs one logit, masked mean pooling."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from muse_rec.modules.parametrization import DEFAULT_PARAMETRIZATION, ParamLinear
from muse_rec.spec import ModelSpec, ParametrizationSpec, literal_choices

TOWER_ACTIVATIONS = literal_choices(ModelSpec, "tower_activation")
OUTPUT_HEADS = literal_choices(ParametrizationSpec, "output_head")


class Dice(nn.Module):
    """Dice activation with LayerNorm inside (as the MUSE reference uses it).

    ``p = sigmoid(LN(x))``; ``out = p * x + (1 - p) * alpha * x``, alpha per feature.
    alpha init 0 starts Dice as a data-adaptive gate between x and 0; the reference starts it
    at -0.25 (a leaky, sign-flipping negative side) and uses a LayerNorm without affine, eps 1e-12.

    Args:
        dim: feature size (last axis of ``x [..., dim]``).
        eps: LayerNorm epsilon.
        alpha_init: initial alpha of every feature.
        affine: learnable LayerNorm scale/shift.
        device: where parameters live (``meta`` allowed).
    """

    def __init__(self, dim: int, eps: float = 1e-5, alpha_init: float = 0.0, affine: bool = True,
                 device: Optional[torch.device] = None) -> None:
        super().__init__()
        self.alpha_init = alpha_init
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=affine, device=device)
        self.alpha = nn.Parameter(torch.empty(dim, device=device))
        self.reset_parameters()

    @classmethod
    def of(cls, dim: int, parametrization: ParametrizationSpec, device: Optional[torch.device] = None) -> "Dice":
        """Dice as ``parametrization`` (``dice_*`` knobs) says."""
        p = parametrization
        return cls(dim, eps=p.dice_norm_eps, alpha_init=p.dice_alpha_init, affine=p.dice_norm_affine, device=device)

    def reset_parameters(self) -> None:
        nn.init.constant_(self.alpha, self.alpha_init)
        self.norm.reset_parameters()

    @staticmethod
    def gated(x: torch.Tensor, normalized: torch.Tensor, alpha) -> torch.Tensor:
        """Dice's output for ``x`` given its normalised copy (the gate's input) and ``alpha``."""
        p = torch.sigmoid(normalized)
        return p * x + (1.0 - p) * alpha * x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., dim]`` -> ``[..., dim]``."""
        return self.gated(x, self.norm(x), self.alpha)


def make_activation(name: str, dim: int, device: Optional[torch.device] = None,
                    parametrization: ParametrizationSpec = DEFAULT_PARAMETRIZATION) -> nn.Module:
    """"dice" -> `Dice.of(dim, parametrization)`, "relu" -> `nn.ReLU()`."""
    if name == "dice":
        return Dice.of(dim, parametrization, device=device)
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"activation must be one of {TOWER_ACTIVATIONS}, got {name!r}")


# Gauss-Hermite nodes for E[f(z)], z ~ N(0, 1): 64 nodes give Dice's second moment to ~1e-15 (the
# integrand is smooth; 32 nodes already agree to 1e-10).
_HERMITE_NODES = 64


def activation_gain(name: str, parametrization: ParametrizationSpec = DEFAULT_PARAMETRIZATION) -> float:
    """He's init gain for the tower activation ``name``: ``1 / sqrt(E[act(z)^2])``, z ~ N(0, 1).

    A Linear whose weights have std ``gain / sqrt(fan_in)`` and that reads ``act(z)`` then has
    pre-activations with the second moment of ``z``: the tower keeps its first layer's scale.
    ReLU: sqrt(2) (torch's ``calculate_gain``). Dice: its LayerNorm standardises the pre-activations,
    so the gate is ``s = sigmoid(z)`` and ``Dice(z) = z * (s + alpha * (1 - s))`` at the initial
    alpha (``dice_alpha_init``; -0.25 gives 1.808); the expectation is by Gauss-Hermite quadrature.
    """
    if name == "relu":
        return nn.init.calculate_gain("relu")
    if name == "dice":
        nodes, weights = np.polynomial.hermite_e.hermegauss(_HERMITE_NODES)
        z, w = torch.from_numpy(nodes), torch.from_numpy(weights)  # float64
        dice = Dice.gated(z, z, parametrization.dice_alpha_init)  # LN(x) = z for standardised inputs
        second_moment = float((w * dice ** 2).sum()) / math.sqrt(2.0 * math.pi)
        return 1.0 / math.sqrt(second_moment)
    raise ValueError(f"activation must be one of {TOWER_ACTIVATIONS}, got {name!r}")


class MLPTower(nn.Module):
    """MLP ending in ONE logit per sample (1 logit + BCE == 2 logits + softmax CE).

    With ``parametrization.output_head == "two_logits_dice"`` the last layer is the
    reference's ``Linear(., 2) -> Dice(2)`` giving ``[z0, z1]``, and the tower returns
    ``z1 - z0``: softmax CE over ``[z0, z1]`` equals BCE on ``z1 - z0`` exactly, so the loss,
    metrics and serving still see one logit per sample.

    Args:
        in_dim: width of the concatenated features ``[B, in_dim]``.
        hidden: hidden widths (the reference's 256-128-64).
        activation: "dice" (reference) or "relu".
        dropout: dropout after each hidden activation (0 = none).
        parametrization: Linear/Dice init, the Linears' gain after an activation
            (``tower_gain``: `activation_gain` or 1) and the output head (`ParametrizationSpec`).
        output_bias: constant initial bias of the one output logit (`prior_logit` of the
            train click rate); None = as every Linear. Not with the two-logit head.
        fan_in_columns: the input columns that make the first Linear's fan-in
            (``tower_fan_in``, chosen by `OverArch`); None = all ``in_dim``.
        device: where parameters live (``meta`` allowed).

    Example::

        tower = MLPTower(in_dim=200)
        logit = tower(features)   # [B]
    """

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int] = (256, 128, 64),
        activation: str = "dice",
        dropout: float = 0.0,
        parametrization: ParametrizationSpec = DEFAULT_PARAMETRIZATION,
        output_bias: Optional[float] = None,
        fan_in_columns: Optional[Sequence[int]] = None,
        device: Optional[torch.device] = None,
    ) -> None:
        super().__init__()
        p = parametrization
        if p.output_head not in OUTPUT_HEADS:
            raise ValueError(f"output_head must be one of {OUTPUT_HEADS}, got {p.output_head!r}")
        if output_bias is not None and p.output_head != "one_logit":
            # Dice's LayerNorm over [z0, z1] erases any constant put on the two logits.
            raise ValueError("model.parametrization.output_bias: 'train_prior' needs output_head 'one_logit' "
                             f"(got {p.output_head!r}); use output_bias: linear with it")
        if in_dim < 1 or any(h < 1 for h in hidden):
            raise ValueError(f"in_dim and hidden widths must be >= 1, got {in_dim}, {tuple(hidden)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        # Every Linear but the first reads an activation's output: He's gain keeps its scale.
        after_activation = activation_gain(activation, p) if p.tower_gain == "activation" else 1.0
        layers = []
        width, gain, columns = in_dim, 1.0, fan_in_columns
        for h in hidden:
            layers += [ParamLinear(width, h, parametrization=p, gain=gain, fan_in_columns=columns, device=device),
                       make_activation(activation, h, device, p)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width, gain, columns = h, after_activation, None
        self.two_logits = p.output_head == "two_logits_dice"
        if self.two_logits:
            layers += [ParamLinear(width, 2, parametrization=p, gain=gain, device=device),
                       Dice.of(2, p, device=device)]
        else:
            layers.append(ParamLinear(width, 1, parametrization=p, bias_init=output_bias, gain=gain, device=device))
        self.layers = nn.Sequential(*layers)
        self.in_dim = in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_dim]`` -> logit ``[B]`` (``z1 - z0`` with the two-logit head)."""
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"tower input must be [B, {self.in_dim}], got {tuple(x.shape)}")
        out = self.layers(x)
        return out[:, 1] - out[:, 0] if self.two_logits else out.squeeze(1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x [B, K, D]`` over the slots where ``mask [B, K]`` is True -> ``[B, D]``.

    Rows without a True slot give zeros (not NaN).
    """
    if x.dim() != 3 or mask.shape != x.shape[:2]:
        raise ValueError(f"expected x [B, K, D] and mask [B, K]; got {tuple(x.shape)}, {tuple(mask.shape)}")
    m = mask.to(x.dtype).unsqueeze(2)
    total = (x * m).sum(dim=1)
    count = m.sum(dim=1).clamp_min(1.0)
    return total / count

"""The prediction tower: Dice activation, the MLP that outputs one logit, masked mean pooling."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

TOWER_ACTIVATIONS = ("dice", "relu")


class Dice(nn.Module):
    """Dice activation with LayerNorm inside (as the MUSE reference uses it).

    ``p = sigmoid(LN(x))``; ``out = p * x + (1 - p) * alpha * x``, alpha per feature
    (init 0, so Dice starts as a data-adaptive gate between x and 0).

    Args:
        dim: feature size (last axis of ``x [..., dim]``).
        eps: LayerNorm epsilon.
        device: where parameters live (``meta`` allowed).
    """

    def __init__(self, dim: int, eps: float = 1e-5, device: Optional[torch.device] = None) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps, device=device)
        self.alpha = nn.Parameter(torch.empty(dim, device=device))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.alpha)
        self.norm.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., dim]`` -> ``[..., dim]``."""
        p = torch.sigmoid(self.norm(x))
        return p * x + (1.0 - p) * self.alpha * x


def make_activation(name: str, dim: int, device: Optional[torch.device] = None) -> nn.Module:
    """"dice" -> `Dice(dim)`, "relu" -> `nn.ReLU()`."""
    if name == "dice":
        return Dice(dim, device=device)
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"activation must be one of {TOWER_ACTIVATIONS}, got {name!r}")


class MLPTower(nn.Module):
    """MLP ending in ONE logit per sample (1 logit + BCE == 2 logits + softmax CE).

    Args:
        in_dim: width of the concatenated features ``[B, in_dim]``.
        hidden: hidden widths (the reference's 256-128-64).
        activation: "dice" (reference) or "relu".
        dropout: dropout after each hidden activation (0 = none).
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
        device: Optional[torch.device] = None,
    ) -> None:
        super().__init__()
        if in_dim < 1 or any(h < 1 for h in hidden):
            raise ValueError(f"in_dim and hidden widths must be >= 1, got {in_dim}, {tuple(hidden)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers = []
        width = in_dim
        for h in hidden:
            layers += [nn.Linear(width, h, device=device), make_activation(activation, h, device)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, 1, device=device))
        self.layers = nn.Sequential(*layers)
        self.in_dim = in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_dim]`` -> logit ``[B]``."""
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"tower input must be [B, {self.in_dim}], got {tuple(x.shape)}")
        return self.layers(x).squeeze(1)


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

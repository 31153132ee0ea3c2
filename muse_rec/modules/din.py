"""DIN's activation unit: attention weights from an MLP on ``[q, k, q - k, q * k]``.

Used for DIN (the recent-50 branch) and MISS's ID-only ESU. Unlike `TargetAttention`, the
weights are by default NOT softmax-normalised (DIN keeps the intensity of interest: a user
with many relevant behaviours gets a larger pooled vector); padding always gets weight 0.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from muse_rec.modules.attention import masked_softmax
from muse_rec.modules.tower import make_activation


class DINAttention(nn.Module):
    """DIN attention pooling over ``keys [B, K, D]`` for a target ``query [B, D]``.

    Args:
        dim: D, token width of query and keys (they must match for q - k and q * k).
        hidden: hidden widths of the activation unit (DIN's 80-40).
        activation: "dice" or "relu" inside the unit.
        softmax: normalise the weights with a masked softmax instead of DIN's raw weights.
        device: where parameters live (``meta`` allowed).

    Example::

        din = DINAttention(32)
        short_term = din(target_tok, recent_tok, recent_mask)   # [B, 32]
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (80, 40),
        activation: str = "dice",
        softmax: bool = False,
        device: Optional[torch.device] = None,
    ) -> None:
        super().__init__()
        layers = []
        width = 4 * dim
        for h in hidden:
            layers += [nn.Linear(width, h, device=device), make_activation(activation, h, device)]
            width = h
        layers.append(nn.Linear(width, 1, device=device))
        self.unit = nn.Sequential(*layers)
        self.dim = dim
        self.softmax = softmax

    def weights(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attention weights ``[B, K]``, exactly 0 on masked slots."""
        if query.dim() != 2 or keys.dim() != 3 or keys.shape[2] != self.dim or query.shape[1] != self.dim:
            raise ValueError(f"expected query [B, {self.dim}], keys [B, K, {self.dim}]; got "
                             f"{tuple(query.shape)}, {tuple(keys.shape)}")
        if mask.shape != keys.shape[:2] or mask.dtype != torch.bool:
            raise ValueError(f"mask must be bool [B, K] = {tuple(keys.shape[:2])}, got {mask.dtype} {tuple(mask.shape)}")
        q = query.unsqueeze(1).expand_as(keys)
        scores = self.unit(torch.cat([q, keys, q - keys, q * keys], dim=2)).squeeze(2)  # [B, K]
        if self.softmax:
            return masked_softmax(scores, mask)
        return scores * mask.to(scores.dtype)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``query [B, D]``, ``keys [B, K, D]``, ``mask [B, K]`` -> pooled ``[B, D]``."""
        w = self.weights(query, keys, mask)
        return torch.bmm(w.unsqueeze(1), keys).squeeze(1)

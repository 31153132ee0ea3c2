"""SimTier: a learnable histogram of the retrieved behaviours' multimodal similarities.

MUSE's first ESU path. R = cosines ``[B, K]`` of the K retrieved behaviours (frozen SCL
vectors). [-1, 1] is cut into tiers of width 0.1; the reference's bin of a cosine r is
``ceil(r / 0.1) + 10``, i.e. tier t holds ``((t - 11) * 0.1, (t - 10) * 0.1]`` (tier 0 holds
exactly -1, tier 20 holds (0.9, 1.0], tier 21 catches r a rounding error above 1), so 22
tiers. Counts are hard (R carries no gradient: it comes from frozen embeddings); the output
per tier is ``log(1 + count) * w_tier`` with learnable ``w`` initialised U(0, 1) (the
reference) or at 1/sqrt(3) everywhere, the RMS of U(0, 1) (``simtier_init: constant``).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from muse_rec.spec import ParametrizationSpec, literal_choices

SIMTIER_INITS = literal_choices(ParametrizationSpec, "simtier_init")
# sqrt(E[w^2]) for w ~ U(0, 1): the constant init keeps the uniform draw's second moment, so the
# histograms start at the scale the tower's fan-in rule assumes, only without the per-tier draw.
UNIFORM_RMS = 1.0 / math.sqrt(3.0)


class SimTier(nn.Module):
    """Tier histogram of similarities.

    Args:
        num_tiers: number of tiers (22 covers [-1, 1] at width 0.1 with the reference's
            binning); cosines outside the covered range are clamped into the end tiers.
        tier_width: width of a tier in cosine units.
        init: "uniform" (w ~ U(0, 1), the reference) or "constant" (w = 1/sqrt(3), the
            RMS of U(0, 1): every tier equally visible from the first step).
        device: where ``w`` lives (``meta`` allowed).

    Example::

        st = SimTier()
        feats = st(gsu.scores, gsu.has_score)   # [B, 22]
    """

    def __init__(self, num_tiers: int = 22, tier_width: float = 0.1, init: str = "uniform",
                 device: Optional[torch.device] = None) -> None:
        super().__init__()
        if num_tiers < 1 or tier_width <= 0:
            raise ValueError(f"num_tiers must be >= 1 and tier_width > 0, got {num_tiers}, {tier_width}")
        if init not in SIMTIER_INITS:
            raise ValueError(f"model.parametrization.simtier_init must be one of {SIMTIER_INITS}, got {init!r}")
        self.init = init
        self.num_tiers = num_tiers
        self.tier_width = tier_width
        # Tier of r = ceil(r / width) + offset, where offset puts r = -1 into tier 0.
        self.offset = int(round(1.0 / tier_width))
        self.weight = nn.Parameter(torch.empty(num_tiers, device=device))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.init == "constant":
            nn.init.constant_(self.weight, UNIFORM_RMS)
        else:
            nn.init.uniform_(self.weight, 0.0, 1.0)

    def tiers(self, similarities: torch.Tensor) -> torch.Tensor:
        """Tier index ``[B, K]`` int64 of each similarity."""
        # fp64 division so that e.g. 0.3 / 0.1 is not pushed across a boundary by fp32 noise
        # more than the input itself already is: float32 0.3 is 0.30000001192..., tier 14 as the
        # interval says; an fp32 division rounds it to exactly 3.0, tier 13 (tested at every edge).
        t = torch.ceil(similarities.detach().to(torch.float64) / self.tier_width).to(torch.int64)
        return (t + self.offset).clamp_(0, self.num_tiers - 1)

    def counts(self, similarities: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Behaviours per tier ``[B, num_tiers]`` float32, counting only ``mask`` slots."""
        if similarities.shape != mask.shape or similarities.dim() != 2:
            raise ValueError(
                f"similarities {tuple(similarities.shape)} and mask {tuple(mask.shape)} must both be [B, K]"
            )
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be bool, got {mask.dtype}")
        B = similarities.shape[0]
        out = torch.zeros(B, self.num_tiers, dtype=torch.float32, device=similarities.device)
        return out.scatter_add_(1, self.tiers(similarities), mask.to(torch.float32))

    def forward(self, similarities: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``similarities [B, K]``, ``mask [B, K]`` bool -> ``[B, num_tiers]``: log1p(count) * w."""
        return torch.log1p(self.counts(similarities, mask)) * self.weight

    @property
    def output_dim(self) -> int:
        return self.num_tiers

    def extra_repr(self) -> str:
        return f"num_tiers={self.num_tiers}, tier_width={self.tier_width}, init={self.init}"

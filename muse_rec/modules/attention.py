"""Target attentions of the ESU: ID target attention and MUSE's Semantic-Aware TA (SA-TA).

Both attend from the target (query ``[B, Dq]``) over the K retrieved behaviours
(keys ``[B, K, Dk]``, mask ``[B, K]``). Softmax never puts weight on a masked slot, and a
row with no real slot returns zeros (no NaN, finite gradients).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from muse_rec.modules.parametrization import DEFAULT_PARAMETRIZATION, ParamLinear
from muse_rec.spec import ESUSpec, ParametrizationSpec, literal_choices

ATTENTION_VARIANTS = literal_choices(ESUSpec, "sa_ta_variant")


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim of ``logits [B, K]`` restricted to ``mask [B, K]``.

    Masked slots get exactly 0; all-masked rows get all zeros. Filling with the dtype's
    most negative finite value (not -inf) keeps an all-masked row finite (a uniform softmax
    that the final ``* mask`` zeroes), so neither the output nor the gradient is NaN.
    """
    filled = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
    return torch.softmax(filled, dim=-1) * mask.to(logits.dtype)


def _check_qkm(query: torch.Tensor, keys: torch.Tensor, mask: Optional[torch.Tensor]) -> None:
    if query.dim() != 2 or keys.dim() != 3 or keys.shape[0] != query.shape[0]:
        raise ValueError(f"expected query [B, Dq] and keys [B, K, Dk]; got {tuple(query.shape)}, {tuple(keys.shape)}")
    if mask is not None and (mask.shape != keys.shape[:2] or mask.dtype != torch.bool):
        raise ValueError(f"mask must be bool [B, K] = {tuple(keys.shape[:2])}; got {mask.dtype} {tuple(mask.shape)}")


class TargetAttention(nn.Module):
    """ID target attention: ``softmax_K((k W_k) . (q W_q) / sqrt(H)) @ values``.

    Args:
        query_dim: Dq (target token, e.g. 32 = [item ‖ category]).
        key_dim: Dk (behaviour token).
        hidden_dim: H, width of the projected query/key.
        value_dim: if given, values are ``keys @ W_v`` (``[B, K, value_dim]``); if None the
            values are the raw keys (Dv = Dk), as in DIN-style pooling.
        activation: "none" or "silu", applied after each projection (the MUSE reference
            applies SiLU; the logits are then no longer bilinear).
        scaled: divide logits by sqrt(H).
        bias: bias terms in the projections (None: ``parametrization.attention_bias``).
        parametrization: projections' init (`ParametrizationSpec`).
        device: where parameters live (``meta`` allowed).

    Example::

        ta = TargetAttention(32, 32, 32)
        pooled = ta(target_tok, topk_tok, valid)   # [B, 32]
    """

    def __init__(
        self,
        query_dim: int,
        key_dim: int,
        hidden_dim: int,
        value_dim: Optional[int] = None,
        activation: str = "none",
        scaled: bool = True,
        bias: Optional[bool] = None,
        parametrization: ParametrizationSpec = DEFAULT_PARAMETRIZATION,
        device: Optional[torch.device] = None,
    ) -> None:
        super().__init__()
        if activation not in ("none", "silu"):
            raise ValueError(f"activation must be 'none' or 'silu', got {activation!r}")
        p = parametrization
        bias = p.attention_bias if bias is None else bias
        self.w_q = ParamLinear(query_dim, hidden_dim, bias=bias, parametrization=p, device=device)
        self.w_k = ParamLinear(key_dim, hidden_dim, bias=bias, parametrization=p, device=device)
        self.w_v = ParamLinear(key_dim, value_dim, bias=bias, parametrization=p, device=device) \
            if value_dim is not None else None
        self.act: nn.Module = nn.SiLU() if activation == "silu" else nn.Identity()
        self.scale = 1.0 / math.sqrt(hidden_dim) if scaled else 1.0
        self.output_dim = value_dim if value_dim is not None else key_dim

    def project_query(self, query: torch.Tensor) -> torch.Tensor:
        """``[B, Dq]`` -> ``[B, H]``."""
        return self.act(self.w_q(query))

    def project_keys(self, keys: torch.Tensor) -> torch.Tensor:
        """``[..., Dk]`` -> ``[..., H]``."""
        return self.act(self.w_k(keys))

    def logits(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Unmasked attention logits ``[B, K]`` of ``query [B, Dq]`` over ``keys [B, K, Dk]``."""
        _check_qkm(query, keys, None)
        q = self.project_query(query)  # [B, H]
        k = self.project_keys(keys)  # [B, K, H]
        return torch.bmm(k, q.unsqueeze(2)).squeeze(2) * self.scale

    def values(self, keys: torch.Tensor) -> torch.Tensor:
        """``[B, K, Dv]`` attended values."""
        return self.act(self.w_v(keys)) if self.w_v is not None else keys

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``query [B, Dq]``, ``keys [B, K, Dk]``, ``mask [B, K]`` -> ``[B, Dv]``."""
        _check_qkm(query, keys, mask)
        weights = masked_softmax(self.logits(query, keys), mask)
        return torch.bmm(weights.unsqueeze(1), self.values(keys)).squeeze(1)


class SemanticAwareTargetAttention(nn.Module):
    """MUSE's SA-TA: ID attention fused with the multimodal similarities R of the picks.

    ``alpha_ID = (E_u W_k)(e_a W_q)^T [/ sqrt(H)]``;
    ``alpha = g1 * alpha_ID + g2 * R' + g3 * (alpha_ID ⊙ R')``;
    ``u_ID = softmax_masked(alpha)^T (E_u W_v)``.

    Variants:
        * "paper": as written in the paper: linear projections, ``/ sqrt(H)``, ``R' = R``.
        * "reference": the published code: SiLU after each of W_q, W_k, W_v, no sqrt(H),
          ``R' = R / tau`` with a learnable temperature tau (init 0.1), one head.
    In both, g1..g3 are learnable scalars initialised to 1.0. R is an input: it comes from
    frozen SCL vectors and receives no gradient here (it is detached).

    Args:
        query_dim, key_dim, hidden_dim: Dq, Dk, H as in `TargetAttention`.
        value_dim: Dv of ``E_u W_v`` (default Dk).
        variant: "paper" or "reference".
        temperature_init: tau's initial value ("reference" only).
        gate_init: initial g1, g2, g3.
        parametrization: projections' init and bias (`ParametrizationSpec`).
        device: where parameters live (``meta`` allowed).

    Example::

        sata = SemanticAwareTargetAttention(32, 32, 32, variant="reference")
        u_id = sata(target_tok, topk_tok, gsu.scores, gsu.valid)   # [B, 32]
    """

    def __init__(
        self,
        query_dim: int,
        key_dim: int,
        hidden_dim: int,
        value_dim: Optional[int] = None,
        variant: str = "paper",
        temperature_init: float = 0.1,
        gate_init: float = 1.0,
        parametrization: ParametrizationSpec = DEFAULT_PARAMETRIZATION,
        device: Optional[torch.device] = None,
    ) -> None:
        super().__init__()
        if variant not in ATTENTION_VARIANTS:
            raise ValueError(f"variant must be one of {ATTENTION_VARIANTS}, got {variant!r}")
        self.variant = variant
        self.gate_init = gate_init
        self.temperature_init = temperature_init
        self.attention = TargetAttention(
            query_dim,
            key_dim,
            hidden_dim,
            value_dim=value_dim if value_dim is not None else key_dim,
            activation="silu" if variant == "reference" else "none",
            scaled=variant == "paper",
            parametrization=parametrization,
            device=device,
        )
        self.gates = nn.Parameter(torch.empty(3, device=device))  # g1, g2, g3
        self.temperature: Optional[nn.Parameter] = (
            nn.Parameter(torch.empty((), device=device)) if variant == "reference" else None
        )
        self.output_dim = self.attention.output_dim
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.gates.fill_(self.gate_init)
            if self.temperature is not None:
                self.temperature.fill_(self.temperature_init)

    def fused_logits(
        self, query: torch.Tensor, keys: torch.Tensor, similarities: torch.Tensor
    ) -> torch.Tensor:
        """``alpha [B, K]`` before masking (exposed for tests and analysis)."""
        alpha_id = self.attention.logits(query, keys)
        r = similarities.detach().to(alpha_id.dtype)
        if self.temperature is not None:
            r = r / self.temperature
        g1, g2, g3 = self.gates[0], self.gates[1], self.gates[2]
        return g1 * alpha_id + g2 * r + g3 * (alpha_id * r)

    def forward(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        similarities: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """Attend.

        Args:
            query: ``[B, Dq]`` target ID token.
            keys: ``[B, K, Dk]`` retrieved behaviours' ID tokens (E_u).
            similarities: ``[B, K]`` R, the GSU's cosines (0.0 where there is none).
            mask: ``[B, K]`` bool, the GSU's ``valid``.

        Returns:
            ``u_ID [B, Dv]``.
        """
        _check_qkm(query, keys, mask)
        if similarities.shape != mask.shape:
            raise ValueError(f"similarities {tuple(similarities.shape)} must match mask {tuple(mask.shape)}")
        weights = masked_softmax(self.fused_logits(query, keys, similarities), mask)
        return torch.bmm(weights.unsqueeze(1), self.attention.values(keys)).squeeze(1)

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}"

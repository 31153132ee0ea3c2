"""ID + multimodal fusion (beyond the paper): retrieve and attend with BOTH similarities.

MUSE retrieves by the cosine of frozen multimodal (SCL) vectors, SIM-soft by the cosine of the
trainable ID tokens ``[item ‖ category]``. Which is better depends on the SCL vectors' quality,
which a user cannot know in advance. The fusion reads both, everywhere:

* GSU (`FusionGSU`), one of four rules (``model.gsu.fusion``):

  - ``branches``: MUSE's K picks then SIM-soft's K picks, ``2K`` slots kept apart (`side_by_side`):
    the ESU runs once over each half (`OverArch`), so the tower reads MUSE's ESU features and
    SIM-soft's side by side and learns which to trust. A behaviour picked by both is in both
    halves, once per half: each half is exactly what that method's own ESU would read.
  - ``union``: MUSE's K picks (multimodal cosine; behaviours without an SCL vector last) and
    SIM-soft's K picks (ID cosine), ``2K`` slots, a behaviour (item, category) picked by both kept
    once (its second slot invalid; `union_of` says why not by position). The ESU sees everything
    either method's ESU sees; needs no learning to be robust.
  - ``half``: the K/2 best of each, interleaved by rank, duplicates replaced by the next best
    (`merge_gsu_results`), K slots (measured to lose to MUSE at informative vectors: docs/fusion.md).
  - ``gated``: top-K of ``lam * z_mm + (1 - lam) * z_id``, each score standardised per sample
    over its history (the cosines live on different scales), ``lam = sigmoid(theta)`` the gate
    of the ESU's fused SA-TA (TWIN-style consistency: the gate learns there, through the ESU,
    and the selection reuses it without gradient). ``lam = 1`` is MUSE's selection, ``lam = 0``
    SIM-soft's.

* ESU: R is ``[B, K, 2]`` (`FusionSimilarity`: SCL cosine and ID cosine of each pick);
  `FusionSimTier` keeps one learnable tier histogram per similarity (each tier weight is the
  learned gate of that similarity's counts); `FusionSemanticAttention` is SA-TA over the fused
  relevance ``R_f = lam * R_mm + (1 - lam) * R_id`` with the learned gate ``lam``
  (``alpha = g1 alpha_ID + g2 R_f / tau + g3 alpha_ID R_f / tau``), so the gate gets gradient.

The method's spec (`specs/methods/muse_fusion.yaml`) uses the ``branches`` GSU with MUSE's ESU
(SCL cosines of the picks) over each branch: it was the only rule that never lost to the better of
MUSE and SIM-soft by more than a standard error across SCL qualities (docs/fusion.md); the ESU
parts here are the ``esu.similarity: fusion`` option, measured weaker at the published settings. `reference_fused_scores` is the plain per-sample loop the fast path is tested against.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from muse_rec.modules.attention import SemanticAwareTargetAttention, _check_qkm, masked_softmax
from muse_rec.modules.cosine import DEFAULT_CHUNK_ROWS, cosine_of_rows
from muse_rec.modules.gsu import CosineGSU, EmbeddingCosineGSU
from muse_rec.modules.gsu_baselines import merge_gsu_results
from muse_rec.modules.search import SearchInputs, history_cosine
from muse_rec.modules.selection import GSUResult, topk_eligible
from muse_rec.modules.simtier import SimTier
from muse_rec.spec import GSUSpec, literal_choices

FUSION_RULES = literal_choices(GSUSpec, "fusion")
# Rules whose 2K slots are two K-slot branches, each read by its own ESU pass.
BRANCH_RULES = ("branches",)
# Standardisation floor: a history whose scores are all equal (std 0) keeps its order (all 0).
_STD_FLOOR = 1e-6
# Behaviours without an SCL vector sit this far (in standard deviations) below the sample's lowest
# standardised multimodal score, newest first inside a span of _RECENCY (MUSE's rule at lam = 1).
_NO_VECTOR_GAP = 1.0
_RECENCY = 0.05


class FusionGate(nn.Module):
    """``lam = sigmoid(theta)``, the share of the multimodal similarity (one learnable scalar).

    Args:
        init: initial ``lam`` in (0, 1) (0.5 = no prior on which similarity is better).
        device: where ``theta`` lives (``meta`` allowed).
    """

    def __init__(self, init: float = 0.5, device: Optional[torch.device] = None) -> None:
        super().__init__()
        if not 0.0 < init < 1.0:
            raise ValueError(f"gate init must be in (0, 1), got {init}")
        self.init = init
        self.theta = nn.Parameter(torch.empty((), device=device))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.theta.fill_(float(torch.logit(torch.tensor(self.init, dtype=torch.float64))))

    def forward(self) -> torch.Tensor:
        """``lam`` (0-d tensor, with gradient)."""
        return torch.sigmoid(self.theta)


def standardise(score: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """Per-row ``(score - mean) / std`` over the ``ok`` positions of ``score [B, L]`` (0 elsewhere)."""
    w = ok.to(score.dtype)
    n = w.sum(dim=1, keepdim=True).clamp_min(1.0)
    mean = (score * w).sum(dim=1, keepdim=True) / n
    var = (((score - mean) * w) ** 2).sum(dim=1, keepdim=True) / n
    return torch.where(ok, (score - mean) / var.sqrt().clamp_min(_STD_FLOOR), 0.0)


def fused_scores(mm: torch.Tensor, has_vec: torch.Tensor, ids: torch.Tensor, eligible: torch.Tensor,
                 lam: torch.Tensor) -> torch.Tensor:
    """The gated GSU's relevance ``[B, L]``: ``lam * z_mm + (1 - lam) * z_id``.

    Args:
        mm: ``[B, L]`` SCL cosines (read where ``has_vec``). has_vec: ``[B, L]`` bool.
        ids: ``[B, L]`` ID-token cosines. eligible: ``[B, L]`` bool, real behaviours.
        lam: 0-d gate in [0, 1].

    Behaviours without an SCL vector get a multimodal score below every behaviour with one,
    newest first (MUSE's rule), so ``lam = 1`` selects exactly as MUSE and ``lam = 0`` as SIM-soft.
    """
    scored = has_vec & eligible
    z_mm = standardise(mm, scored)
    low = torch.where(scored, z_mm, float("inf")).amin(dim=1, keepdim=True)
    low = torch.where(torch.isfinite(low), low, 0.0) - _NO_VECTOR_GAP
    L = mm.shape[1]
    pos = torch.arange(L, device=mm.device, dtype=mm.dtype).unsqueeze(0)
    z_mm = torch.where(scored, z_mm, low - _RECENCY + _RECENCY * pos / max(L, 1))
    z_id = standardise(ids, eligible)
    return lam * z_mm + (1.0 - lam) * z_id


def reference_fused_scores(mm: torch.Tensor, has_vec: torch.Tensor, ids: torch.Tensor,
                           eligible: torch.Tensor, lam: float) -> torch.Tensor:
    """Plain fp64 per-sample loop of `fused_scores` (tests and audits)."""
    B, L = mm.shape
    out = torch.zeros(B, L, dtype=torch.float64)
    for b in range(B):
        s = [l for l in range(L) if has_vec[b, l] and eligible[b, l]]
        e = [l for l in range(L) if eligible[b, l]]
        z_mm = [0.0] * L
        if s:
            v = mm[b, s].double()
            sd = max(float(v.std(unbiased=False)), _STD_FLOOR)
            for l in s:
                z_mm[l] = (float(mm[b, l]) - float(v.mean())) / sd
            low = min(z_mm[l] for l in s) - _NO_VECTOR_GAP
        else:
            low = -_NO_VECTOR_GAP
        for l in range(L):
            if l not in s:
                z_mm[l] = low - _RECENCY + _RECENCY * l / L
        z_id = [0.0] * L
        if e:
            v = ids[b, e].double()
            sd = max(float(v.std(unbiased=False)), _STD_FLOOR)
            for l in e:
                z_id[l] = (float(ids[b, l]) - float(v.mean())) / sd
        for l in range(L):
            out[b, l] = lam * z_mm[l] + (1.0 - lam) * z_id[l]
    return out


def union_of(a: GSUResult, b: GSUResult, a_rows: Optional[torch.Tensor] = None,
             b_rows: Optional[torch.Tensor] = None) -> GSUResult:
    """``a``'s slots then ``b``'s (``[B, K_a + K_b]``); a valid slot of ``b`` whose behaviour ``a``
    already holds becomes invalid, so every behaviour is attended and counted once.

    A behaviour is identified by ``a_rows [B, K_a, F]`` / ``b_rows [B, K_b, F]`` (its embedding
    rows, e.g. item and category; None = by position). Why by rows and not by position: the
    same item at several positions of a history has the same ID token and SCL vector, so the
    two cosines tie exactly there, and which of those positions a kernel returns depends on
    its arithmetic (the serving GEMM vs the grouped training GEMM round the ID cosines of equal
    tokens differently by column). Deduplicating by position would then attend such an item
    once in one path and twice in the other; by rows the union depends only on the multisets
    of picked behaviours, which the ties do not change.
    """
    if a_rows is None or b_rows is None:
        a_rows, b_rows = a.indices.unsqueeze(2), b.indices.unsqueeze(2)
    same = (b_rows.unsqueeze(2) == a_rows.unsqueeze(1)).all(dim=3)  # [B, K_b, K_a]
    dup = same & a.valid.unsqueeze(1)
    b_valid = b.valid & ~dup.any(dim=2)
    return GSUResult(
        indices=torch.cat([a.indices, torch.where(b_valid, b.indices, 0)], dim=1),
        scores=torch.cat([a.scores.float(), torch.where(b_valid, b.scores.float(), 0.0)], dim=1),
        valid=torch.cat([a.valid, b_valid], dim=1),
        has_score=torch.cat([a.has_score, b.has_score & b_valid], dim=1),
    )


def side_by_side(a: GSUResult, b: GSUResult) -> GSUResult:
    """``a``'s slots then ``b``'s, ``[B, K_a + K_b]``, nothing dropped (the ``branches`` rule)."""
    return GSUResult(indices=torch.cat([a.indices, b.indices], dim=1),
                     scores=torch.cat([a.scores.float(), b.scores.float()], dim=1),
                     valid=torch.cat([a.valid, b.valid], dim=1),
                     has_score=torch.cat([a.has_score, b.has_score], dim=1))


def branch_slices(res: GSUResult, branches: int) -> Tuple[GSUResult, ...]:
    """Cut ``res [B, branches * K]`` back into its ``branches`` results of K slots (inverse of `side_by_side`)."""
    K = res.top_k // branches
    if K * branches != res.top_k:
        raise ValueError(f"{res.top_k} slots do not split into {branches} equal branches")
    return tuple(GSUResult(res.indices[:, i * K:(i + 1) * K], res.scores[:, i * K:(i + 1) * K],
                           res.valid[:, i * K:(i + 1) * K], res.has_score[:, i * K:(i + 1) * K])
                 for i in range(branches))


def behaviour_rows(search: SearchInputs, res: GSUResult) -> torch.Tensor:
    """``[B, K, 2]`` (item row, category row) of each pick: what its ID token and SCL vector read."""
    h = search.hist
    return torch.stack([h.at(h.items, res.indices), h.at(h.cats, res.indices)], dim=2)


class FusionGSU(nn.Module):
    """The fusion GSU (module docstring): both top-K as two ``branches`` or their ``union`` (2K slots),
    ``half`` (K/2 of each) or the ``gated`` sum (K slots).

    Args:
        top_k: K.
        rule: "branches", "union", "half" or "gated".
        gate: the ESU's `FusionGate` (shared, not copied; read without gradient here); required
            for "gated".
        chunk_size: SCL rows converted per step (see `CosineGSU`).
    """

    scores_are_scl_cosines = False
    reads_id_tokens = True  # every rule scores the ID cosines too
    scores_whole_history = True  # the ID cosines of every position

    def __init__(self, top_k: int, rule: str = "branches", gate: Optional[FusionGate] = None,
                 chunk_size: int = DEFAULT_CHUNK_ROWS) -> None:
        super().__init__()
        if rule not in FUSION_RULES:
            raise ValueError(f"fusion rule must be one of {FUSION_RULES}, got {rule!r}")
        if rule == "gated" and gate is None:
            raise ValueError("the gated fusion GSU needs the ESU's gate")
        self.top_k = top_k
        self.rule = rule
        self.gate = gate
        self.chunk_size = chunk_size
        self.multimodal = CosineGSU(top_k, chunk_size=chunk_size)
        self.ids = EmbeddingCosineGSU(top_k, chunk_size=chunk_size)

    @property
    def slots(self) -> int:
        """Positions `retrieve` returns per sample: 2K for ``branches`` and ``union``, else K."""
        return 2 * self.top_k if self.rule in ("branches", "union") else self.top_k

    @torch.no_grad()
    def retrieve(self, search: SearchInputs) -> GSUResult:
        """K positions per sample (see `SearchInputs`); no gradient through the selection."""
        if self.rule == "branches":
            return side_by_side(self.multimodal.retrieve(search), self.ids.retrieve(search))
        if self.rule == "union":
            mm, ids = self.multimodal.retrieve(search), self.ids.retrieve(search)
            return union_of(mm, ids, behaviour_rows(search, mm), behaviour_rows(search, ids))
        if self.rule == "half":
            # Rank-interleaved merge of each side's top-K: the first K distinct positions hold
            # each side's best ~K/2 (a duplicate is replaced by the next best of either side).
            return merge_gsu_results(self.multimodal.retrieve(search), self.ids.retrieve(search), self.top_k)
        h = search.hist
        scl_target, scl_seq = search.scl()
        seq_tok, target_tok = search.id_tokens()
        mm, has_vec = history_cosine(scl_target, scl_seq, h.index, self.chunk_size)
        ids, _ = history_cosine(target_tok.detach(), seq_tok.detach(), h.index, self.chunk_size)
        eligible = h.per_sample(h.mask)
        return topk_eligible(fused_scores(mm, has_vec, ids, eligible, self.gate().detach()), eligible, self.top_k)

    def extra_repr(self) -> str:
        return f"top_k={self.top_k}, rule={self.rule!r}"


class FusionSimilarity(nn.Module):
    """R of the picks for the fusion ESU: ``[B, K, 2]`` = (SCL cosine, ID-token cosine), no gradient.

    ``ok [B, K, 2]``: the SCL cosine exists where both vectors do; the ID cosine on every valid pick.
    """

    @torch.no_grad()
    def forward(self, res: GSUResult, search: SearchInputs, target_tok: torch.Tensor, gsu_tok: torch.Tensor
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        scl_target, scl_seq = search.scl()
        q, k = scl_target.float(), search.hist.at(scl_seq, res.indices).float()  # [B, D], [B, K, D]
        mm, has_vec = cosine_of_rows(q, k)
        mm_ok = has_vec & res.valid
        ids, id_vec = cosine_of_rows(target_tok.detach().float(), gsu_tok.detach().float())
        id_ok = id_vec & res.valid
        sim = torch.stack([torch.where(mm_ok, mm, 0.0), torch.where(id_ok, ids, 0.0)], dim=2)
        return sim, torch.stack([mm_ok, id_ok], dim=2)


class FusionSimTier(nn.Module):
    """Two SimTier histograms, of the multimodal and of the ID similarities: ``[B, 2 * num_tiers]``.

    Each has its own learnable tier weights (the learned gate of that similarity's counts).
    """

    def __init__(self, num_tiers: int = 22, tier_width: float = 0.1, init: str = "uniform",
                 device: Optional[torch.device] = None) -> None:
        super().__init__()
        self.multimodal = SimTier(num_tiers, tier_width, init=init, device=device)
        self.ids = SimTier(num_tiers, tier_width, init=init, device=device)
        self.output_dim = 2 * num_tiers

    def counts(self, similarities: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
        """Hard tier counts of both similarities: ``[B, K, 2]``, ``[B, K, 2]`` -> ``[B, 2 * num_tiers]``."""
        return torch.cat([self.multimodal.counts(similarities[..., 0], ok[..., 0]),
                          self.ids.counts(similarities[..., 1], ok[..., 1])], dim=1)

    def forward(self, similarities: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
        """``similarities [B, K, 2]``, ``ok [B, K, 2]`` bool -> ``[B, 2 * num_tiers]``."""
        return torch.cat([self.multimodal(similarities[..., 0], ok[..., 0]),
                          self.ids(similarities[..., 1], ok[..., 1])], dim=1)


class FusionSemanticAttention(SemanticAwareTargetAttention):
    """SA-TA over the fused relevance ``R_f = lam * R_mm + (1 - lam) * R_id`` (learned gate ``lam``).

    Same projections, variants, g1..g3 and temperature as `SemanticAwareTargetAttention`; only R
    differs: two similarities ``[B, K, 2]`` combined by `gate` (the fusion GSU's "gated" rule
    reads the same gate, TWIN-style). The similarities carry no gradient; the gate does.

    Args: those of `SemanticAwareTargetAttention`, plus ``gate_init_mm`` (initial ``lam``).
    """

    def __init__(self, *args, gate_init_mm: float = 0.5, device: Optional[torch.device] = None, **kwargs) -> None:
        super().__init__(*args, device=device, **kwargs)
        self.fusion_gate = FusionGate(gate_init_mm, device=device)

    def fused_relevance(self, similarities: torch.Tensor) -> torch.Tensor:
        """``[B, K, 2]`` -> ``R_f [B, K]`` (gradient to the gate only)."""
        lam = self.fusion_gate()
        r = similarities.detach()
        return lam * r[..., 0] + (1.0 - lam) * r[..., 1]

    def fused_logits(self, query: torch.Tensor, keys: torch.Tensor, similarities: torch.Tensor) -> torch.Tensor:
        """``alpha [B, K]`` before masking; ``similarities [B, K, 2]``."""
        alpha_id = self.attention.logits(query, keys)
        r = self.fused_relevance(similarities).to(alpha_id.dtype)
        if self.temperature is not None:
            r = r / self.temperature
        g1, g2, g3 = self.gates[0], self.gates[1], self.gates[2]
        return g1 * alpha_id + g2 * r + g3 * (alpha_id * r)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, similarities: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        """``query [B, Dq]``, ``keys [B, K, Dk]``, ``similarities [B, K, 2]``, ``mask [B, K]`` -> ``[B, Dv]``."""
        _check_qkm(query, keys, mask)
        if similarities.shape != (*mask.shape, 2):
            raise ValueError(f"similarities {tuple(similarities.shape)} must be [B, K, 2] with mask {tuple(mask.shape)}")
        weights = masked_softmax(self.fused_logits(query, keys, similarities), mask)
        return torch.bmm(weights.unsqueeze(1), self.attention.values(keys)).squeeze(1)

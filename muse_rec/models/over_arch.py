"""`OverArch`: the ESU, the short-term branch and the tower; the tower input is built here only.

Its inputs are the same in training and serving (`LifelongCTRModel.score` computes them once):
pooled features ``[B, P]``, the ID tokens of the target / the K retrieved / the R recent
behaviours, the GSU's `GSUResult` (None without a long-term search) and the `SearchInputs`
(SCL vectors, for similarities). The parts, in tower-input order:

==========================  ===============  ===========================================
part                        width            present when
==========================  ===============  ===========================================
pooled user/item features   P                always
target ID token             D_tok            always
SimTier(R of the K picks)   num_tiers        ``esu.simtier``
SCL attention over picks    128              ``gsu.kind: scl_attention``
TA / SA-TA over picks       D_tok            ``esu.attention`` != none
SimTier(recent cosines)     num_tiers        ``short_term.simtier`` and SCL vectors
TA over the recent R        D_tok            ``short_term.attention``
mean of recent, of picks    D_tok (x2)       ``short_term.mean_pool`` (picks: with a GSU)
==========================  ===============  ===========================================

The SimTier histograms of SCL cosines are the only parts at unit scale from the first step (the
others start at the ID tables' ~1e-3): with ``parametrization.tower_fan_in: scl_histograms`` they
alone make the fan-in of the tower's first Linear (`scl_histogram_columns`).

With the fusion GSU's ``branches`` rule the picks are two branches of K (MUSE's, SIM-soft's):
the ESU parts (SimTier, attention, mean of picks) are computed once per branch and the tower
reads both, branch after branch. The attention is shared by the branches (one ID-token space);
each branch has its own SimTier, since the two halves' similarity histograms differ by
construction (MUSE's picks are the highest SCL cosines).

R, the similarity of each pick to the target, is chosen once at construction
(`make_similarity`): the GSU's own SCL cosines when it has them, else the SCL cosine of the
picks, or (``esu.similarity: id``) the cosine of the ID tokens.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import nn

from muse_rec.data.schema import SCL_DIM
from muse_rec.modules import GSUResult, MLPTower, SearchInputs, SimTier, TargetAttention, masked_mean
from muse_rec.modules.cosine import cosine_of_rows
from muse_rec.modules.fusion import BRANCH_RULES, FusionSimilarity, FusionSimTier, branch_slices
from muse_rec.modules.search import history_cosine, unit_vectors
from muse_rec.spec import ModelSpec


class GSUScoresSimilarity(nn.Module):
    """R = the cosine GSU's own selection scores (SCL cosines, already computed)."""

    def forward(self, res: GSUResult, search: SearchInputs, target_tok: torch.Tensor, gsu_tok: torch.Tensor
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        return res.scores, res.has_score


class SCLCosineSimilarity(nn.Module):
    """R = cosine of the target's and each pick's frozen SCL vectors; defined where both exist."""

    @torch.no_grad()
    def forward(self, res: GSUResult, search: SearchInputs, target_tok: torch.Tensor, gsu_tok: torch.Tensor
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        scl_target, scl_seq = search.scl()
        q, k = scl_target.float(), search.hist.at(scl_seq, res.indices).float()  # [B, D], [B, K, D]
        cos, has_vector = cosine_of_rows(q, k)
        ok = has_vector & res.valid
        return torch.where(ok, cos, 0.0), ok


class IdCosineSimilarity(nn.Module):
    """R = cosine of the (detached) ID tokens of the target and each pick (ID-only baselines), in [-1, 1]
    (0 for an all-zero token), by `cosine_of_rows` as the SCL and the fusion's ID cosines: a pick whose
    token is the target's has cosine 1, SimTier's tier 20. (``F.cosine_similarity`` rounded it above 1 for
    ~1 token in 5, into tier 21: one similarity in two tiers, hopping as the token trained.)"""

    @torch.no_grad()
    def forward(self, res: GSUResult, search: SearchInputs, target_tok: torch.Tensor, gsu_tok: torch.Tensor
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        cos, _ = cosine_of_rows(target_tok.detach().float(), gsu_tok.detach().float())  # [B, D], [B, K, D]
        return torch.where(res.valid, cos, 0.0), res.valid


def make_similarity(spec: ModelSpec, gsu: Optional[nn.Module]) -> Optional[nn.Module]:
    """The R module of a spec, or None when nothing reads R (no SimTier, no SA-TA, no GSU)."""
    e = spec.esu
    if gsu is None or not (e.simtier or e.attention == "sa_ta"):
        return None
    if e.similarity == "id":
        return IdCosineSimilarity()
    if e.similarity == "fusion":
        return FusionSimilarity()
    return GSUScoresSimilarity() if gsu.scores_are_scl_cosines else SCLCosineSimilarity()


class OverArch(nn.Module):
    """ESU + short-term branch + MLP tower of a `LifelongCTRModel` (see the module docstring).

    Args:
        spec: the model spec (ESU, short-term and tower keys).
        pooled_dim, token_dim: P and D_tok of the sparse arch.
        has_gsu: the model retrieves from the long-term sequence.
        uses_scl: the model looks SCL vectors up (the recent SimTier needs them).
        esu_attention: the ESU's TA / SA-TA (shared with a TWIN-style GSU), or None.
        scl_attention: attention over the picks' SCL vectors (shared with `SCLAttentionGSU`), or None.
        similarity: the R module (`make_similarity`), or None.
        output_bias: initial bias of the output logit (`MLPTower`); None = as every Linear.
        device: where parameters are built (``meta`` allowed).
    """

    def __init__(self, spec: ModelSpec, pooled_dim: int, token_dim: int, has_gsu: bool, uses_scl: bool,
                 esu_attention: Optional[nn.Module], scl_attention: Optional[TargetAttention],
                 similarity: Optional[nn.Module], output_bias: Optional[float] = None,
                 device: Optional[torch.device] = None) -> None:
        super().__init__()
        e, s, pz = spec.esu, spec.short_term, spec.parametrization
        self.has_gsu = has_gsu
        self.similarity = similarity
        self.branches = 2 if (spec.gsu.kind == "fusion" and spec.gsu.fusion in BRANCH_RULES) else 1
        simtier_kind = FusionSimTier if e.similarity == "fusion" else SimTier  # fusion: one per similarity
        self.simtier = (simtier_kind(e.num_tiers, e.tier_width, init=pz.simtier_init, device=device)
                        if e.simtier else None)
        self.branch_simtier = (simtier_kind(e.num_tiers, e.tier_width, init=pz.simtier_init, device=device)
                               if e.simtier and self.branches == 2 else None)
        self.scl_attention = scl_attention
        self.esu_attention = esu_attention
        # SA-TA reads R too; a plain TA does not (decided here, once).
        self.attention_reads_similarity = e.attention == "sa_ta"
        self.recent_simtier = (SimTier(e.num_tiers, e.tier_width, init=pz.simtier_init, device=device)
                               if (s.simtier and uses_scl) else None)
        self.recent_attention = (TargetAttention(token_dim, token_dim, e.attention_hidden, parametrization=pz,
                                                 device=device)
                                 if s.attention else None)
        self.mean_pool = s.mean_pool
        if (self.simtier is not None or self.attention_reads_similarity) and similarity is None:
            raise ValueError("model.esu: SimTier / SA-TA read similarities R but no similarity was built")

        # (width, how many of its leading columns are a SimTier histogram of SCL cosines), in the
        # order `forward` appends the parts.
        scl_histogram = {"scl": e.num_tiers, "fusion": e.num_tiers, "id": 0}[e.similarity]
        parts = [(pooled_dim, 0), (token_dim, 0)]
        for _ in range(self.branches if has_gsu else 0):
            if self.simtier is not None:  # FusionSimTier: the SCL histogram first, then the ID one
                parts.append((self.simtier.output_dim, scl_histogram))
            if scl_attention is not None:
                parts.append((SCL_DIM, 0))
            if esu_attention is not None:
                parts.append((token_dim, 0))
        if self.recent_simtier is not None:
            parts.append((e.num_tiers, e.num_tiers))  # always SCL cosines
        if self.recent_attention is not None:
            parts.append((token_dim, 0))
        if self.mean_pool:
            parts += [(token_dim, 0)] * (1 + (self.branches if has_gsu else 0))
        self.input_dim = sum(w for w, _ in parts)
        starts = [sum(w for w, _ in parts[:i]) for i in range(len(parts))]
        self.scl_histogram_columns = tuple(c for start, (_, n) in zip(starts, parts) for c in range(start, start + n))
        fan_in = (self.scl_histogram_columns if pz.tower_fan_in == "scl_histograms" and self.scl_histogram_columns
                  else None)
        self.tower = MLPTower(self.input_dim, tuple(spec.tower_hidden), activation=spec.tower_activation,
                              dropout=spec.dropout, parametrization=pz, output_bias=output_bias,
                              fan_in_columns=fan_in, device=device)

    def features(self, pooled: torch.Tensor, target_tok: torch.Tensor, gsu_tok: torch.Tensor,
                 recent_tok: torch.Tensor, recent_mask: torch.Tensor, res: Optional[GSUResult],
                 search: SearchInputs) -> torch.Tensor:
        """The tower input ``[B, input_dim]``.

        Args:
            pooled: ``[B, P]``. target_tok: ``[B, D_tok]``. gsu_tok: ``[B, K, D_tok]`` (zeros at
                invalid picks). recent_tok: ``[B, R, D_tok]``; recent_mask: ``[B, R]`` bool.
            res: the GSU's picks (None without a GSU). search: SCL vectors and histories.
        """
        parts: List[torch.Tensor] = [pooled, target_tok]
        branches: List[Tuple[GSUResult, torch.Tensor]] = []
        if res is not None:
            if self.branches == 1:
                branches = [(res, gsu_tok)]
            else:  # the picks' tokens cut as `branch_slices` cuts the picks: equal K-slot halves
                branches = list(zip(branch_slices(res, self.branches), gsu_tok.chunk(self.branches, dim=1)))
            for simtier, (r, tok) in zip((self.simtier, self.branch_simtier), branches):
                parts += self._esu(simtier, target_tok, tok, r, search)
        if self.recent_simtier is not None:
            scl_target, scl_seq = search.scl()
            R = recent_mask.shape[1]
            cos, has_vec = history_cosine(scl_target, scl_seq[:, scl_seq.shape[1] - R:], search.hist.index,
                                          members=search.hist.members)
            ok = has_vec & recent_mask
            parts.append(self.recent_simtier(torch.where(ok, cos, 0.0), ok))
        if self.recent_attention is not None:
            parts.append(self.recent_attention(target_tok, recent_tok, recent_mask))
        if self.mean_pool:
            parts.append(masked_mean(recent_tok, recent_mask))
            parts += [masked_mean(tok, r.valid) for r, tok in branches]
        return torch.cat(parts, dim=-1)

    def _esu(self, simtier: Optional[nn.Module], target_tok: torch.Tensor, gsu_tok: torch.Tensor, res: GSUResult,
             search: SearchInputs) -> List[torch.Tensor]:
        """The ESU's features of one set of picks (``res [B, K]``, ``gsu_tok [B, K, D_tok]``)."""
        parts: List[torch.Tensor] = []
        sim = sim_ok = None
        if self.similarity is not None:
            sim, sim_ok = self.similarity(res, search, target_tok, gsu_tok)
        if simtier is not None:
            parts.append(simtier(sim, sim_ok))
        if self.scl_attention is not None:
            scl_target, scl_seq = search.scl()
            parts.append(self.scl_attention(unit_vectors(scl_target),
                                            unit_vectors(search.hist.at(scl_seq, res.indices)), res.valid))
        if self.esu_attention is not None:
            if self.attention_reads_similarity:
                parts.append(self.esu_attention(target_tok, gsu_tok, sim, res.valid))
            else:
                parts.append(self.esu_attention(target_tok, gsu_tok, res.valid))
        return parts

    def forward(self, pooled: torch.Tensor, target_tok: torch.Tensor, gsu_tok: torch.Tensor,
                recent_tok: torch.Tensor, recent_mask: torch.Tensor, res: Optional[GSUResult],
                search: SearchInputs) -> torch.Tensor:
        """Logits ``[B]`` (see `features` for the arguments)."""
        return self.tower(self.features(pooled, target_tok, gsu_tok, recent_tok, recent_mask, res, search))

"""`GSUResult` and the top-K selection rules every GSU shares.

Selection semantics (the contract the ESUs rely on):

* Slots are ordered best first (highest relevance; for SIM-hard, newest first); equal relevance
  keeps the lowest position first, so a history left-padded to any length selects the same behaviours.
* ``valid[b, k]`` is False for slots beyond what the GSU may select (the user has fewer
  eligible behaviours than K, or K > L). Their ``indices`` point at position 0 and their
  ``scores`` are 0.0, so gathering with them is always in range and harmless once masked.
* Padding (``mask`` False) is never selected into a valid slot.

Multimodal cosine GSU specifically (MUSE, reference behaviour kept and made explicit):

* A real behaviour whose item has no SCL vector (all-zero) has no cosine. It ranks below
  every behaviour with a vector (reference: its cosine 0 is replaced by -1.1), so it is
  selected only when fewer than K behaviours have a vector; among such behaviours the
  newest come first. It is a real behaviour, so its slot is ``valid`` (its ID embedding is
  attended), its ``scores`` entry is 0.0 (neutral for SA-TA's R term) and ``has_score`` is
  False, so SimTier does not count it in any tier.
* If the *target* has no SCL vector no behaviour has a cosine: the GSU then returns the K
  newest real behaviours, all with ``has_score`` False.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from muse_rec.modules.ordered_topk import topk_lowest_position_first

# Sentinels of the cosine selection score (real cosines lie in [-1, 1]).
NO_VECTOR_SCORE: float = -1.1  # the reference's value for "no cosine" (the floors' score of a missing vector)
# No-vector behaviours get NO_VECTOR_LOW + RECENCY_SPAN * position / L, i.e. newest first, between the two
# floors below. fp32 steps are 2^-23 there, so the L positions stay distinct up to RECENCY_SPAN * 2^23 ~ 8M
# (the reference's -1.1 + 0.05 * position / L did only up to ~420K: beyond, neighbours rounded to one value
# and tied, lowest position first, so the "newest" behaviours without a vector came out older and in another
# order in each top-K path).
NO_VECTOR_LOW: float = -1.98
RECENCY_SPAN: float = 0.96
PAD_SCORE: float = -3.0
# Thresholds that decode a selection score back into (valid, has_score).
_HAS_SCORE_FLOOR: float = -1.01
_VALID_FLOOR: float = -2.0


@dataclass
class GSUResult:
    """The K behaviours a GSU retrieved for each sample.

    Attributes:
        indices: ``[B, K]`` int64 positions into the sequence's L axis (0 for invalid slots).
        scores: ``[B, K]`` float32 relevance used for the selection (cosine for the
            multimodal GSU); 0.0 where ``has_score`` is False.
        valid: ``[B, K]`` bool, False for slots beyond the user's eligible behaviours.
        has_score: ``[B, K]`` bool, ``valid`` and the relevance is a real value (for the
            cosine GSUs: both SCL vectors exist). SimTier counts only these slots.
    """

    indices: torch.Tensor
    scores: torch.Tensor
    valid: torch.Tensor
    has_score: torch.Tensor

    @property
    def top_k(self) -> int:
        return int(self.indices.shape[1])

    def gather(self, seq: torch.Tensor) -> torch.Tensor:
        """Pick the selected positions of ``seq [B or 1, L, *rest]`` -> ``[B, K, *rest]``.

        Differentiable w.r.t. ``seq`` (this is how the model re-reads selected embeddings
        with gradient after a no-grad selection).
        """
        B, K = self.indices.shape
        rest = seq.shape[2:]
        src = seq.expand(B, *seq.shape[1:])
        idx = self.indices.view(B, K, *([1] * len(rest))).expand(B, K, *rest)
        return torch.gather(src, 1, idx)


def pad_to_k(values: torch.Tensor, indices: torch.Tensor, top_k: int, fill: float):
    """Right-pad ``[B, k]`` selection values/indices to ``[B, top_k]`` (k < K when L < K)."""
    B, k = values.shape
    if k >= top_k:
        return values, indices
    extra = top_k - k
    values = torch.cat([values, values.new_full((B, extra), fill)], dim=1)
    indices = torch.cat([indices, indices.new_zeros((B, extra))], dim=1)
    return values, indices


def cosine_selection_scores(
    cos: torch.Tensor, has_vector: torch.Tensor, mask: torch.Tensor, start: int, seq_len: int
) -> torch.Tensor:
    """Encode cosines and the no-vector / padding rules into one fp32 score.

    Args:
        cos: ``[B, C]`` fp32 cosines of positions ``start .. start + C``.
        has_vector: ``[B, C]`` bool, both vectors non-zero.
        mask: ``[B or 1, C]`` bool, True = real behaviour.
        start: position of column 0; seq_len: L (for the recency tie-break).

    Returns:
        ``[B, C]`` fp32: the cosine, or NO_VECTOR_LOW + recency, or PAD_SCORE.
    """
    C = cos.shape[1]
    # In fp64, rounded once to fp32: three fp32 roundings (division, product, sum) could merge neighbours.
    pos = torch.arange(start, start + C, device=cos.device, dtype=torch.float64)
    no_vec = (NO_VECTOR_LOW + RECENCY_SPAN * pos / max(seq_len, 1)).to(torch.float32)
    sel = torch.where(has_vector, cos, no_vec.unsqueeze(0))
    return torch.where(mask, sel, PAD_SCORE)


def decode_cosine_selection(values: torch.Tensor, indices: torch.Tensor, top_k: int) -> GSUResult:
    """Turn top-k'd cosine selection scores ``[B, k]`` into a `GSUResult` of width K."""
    values, indices = pad_to_k(values, indices, top_k, PAD_SCORE)
    valid = values > _VALID_FLOOR
    has_score = values > _HAS_SCORE_FLOOR
    return GSUResult(
        indices=torch.where(valid, indices, 0),
        scores=torch.where(has_score, values, 0.0).to(torch.float32),
        valid=valid,
        has_score=has_score,
    )


def topk_eligible(score: torch.Tensor, eligible: torch.Tensor, top_k: int) -> GSUResult:
    """Top-K of an unbounded relevance ``score [B, L]`` among ``eligible [B, L]`` positions.

    Ineligible positions are never selected into a valid slot; rows with fewer than K
    eligible positions get invalid slots. Every valid slot has a score (``has_score = valid``).
    """
    if score.shape != eligible.shape:
        raise ValueError(f"score {tuple(score.shape)} and eligible {tuple(eligible.shape)} differ")
    sel = torch.where(eligible, score.to(torch.float32), float("-inf"))
    k = min(top_k, sel.shape[1])
    # Equal relevance, lowest position first (as every cosine top-K): `torch.topk` keeps any of the
    # equal values at the K-th place, and which ones depends on the row's length, so the Ranker (L = the
    # user's behaviours) and the evaluation (L = data.seq_len) kept different behaviours where they tie
    # (e.g. every behaviour without an SCL vector under the SCL attention GSU) and scored differently.
    values, indices = topk_lowest_position_first(sel, k)
    values, indices = pad_to_k(values, indices, top_k, float("-inf"))
    valid = torch.isfinite(values)
    return GSUResult(
        indices=torch.where(valid, indices, 0),
        scores=torch.where(valid, values, 0.0),
        valid=valid,
        has_score=valid.clone(),
    )


def newest_eligible(eligible: torch.Tensor, top_k: int) -> GSUResult:
    """The K newest ``eligible [B, L]`` positions, newest first; rows with fewer get invalid slots. Every valid
    slot has score 1.0 (``has_score = valid``).

    Ranked by int64 position, -1 where not eligible: an fp32 position is exact only below 2^24, and past it
    neighbours rounded to one value and tied (lowest position first), so at L = 2^24 + 64 the "newest" came out
    of order and held older behaviours. Eligible positions are distinct: no ties.
    """
    L = eligible.shape[1]
    positions = torch.arange(L, device=eligible.device).unsqueeze(0)
    newest, indices = torch.topk(torch.where(eligible, positions, -1), min(top_k, L), dim=1)
    newest, indices = pad_to_k(newest, indices, top_k, -1)
    valid = newest >= 0
    return GSUResult(indices=torch.where(valid, indices, 0), scores=valid.to(torch.float32), valid=valid,
                     has_score=valid.clone())


def vector_first_topk(score: torch.Tensor, has_vector: torch.Tensor, eligible: torch.Tensor,
                      top_k: int) -> GSUResult:
    """The multimodal GSUs' rule for any relevance ``score [B, L]`` (bounded or not).

    Eligible behaviours with an SCL vector (``has_vector``) come first, best ``score`` first;
    then, only if fewer than K have one, eligible behaviours without a vector, newest first,
    as ``valid`` slots with ``has_score`` False and score 0.0. This is exactly the rule that
    `cosine_selection_scores` encodes with sentinels for cosines in [-1, 1]; sentinels cannot
    work for unbounded scores (an ID attention logit added to the cosine), hence two top-Ks and
    a branch-free merge (static shapes, exportable).

    Args:
        score: ``[B, L]`` relevance; read only where ``has_vector & eligible``.
        has_vector: ``[B, L]`` bool, both the target and the behaviour have an SCL vector.
        eligible: ``[B, L]`` bool, real behaviours.
    """
    if not (score.shape == has_vector.shape == eligible.shape):
        raise ValueError(f"score {tuple(score.shape)}, has_vector {tuple(has_vector.shape)} and eligible "
                         f"{tuple(eligible.shape)} differ")
    scored = topk_eligible(score, has_vector & eligible, top_k)  # valid slots form a prefix
    newest = newest_eligible(eligible & ~has_vector, top_k)
    slot = torch.arange(top_k, device=score.device).unsqueeze(0)  # [1, K]
    n_scored = scored.valid.sum(dim=1, keepdim=True)  # [B, 1]
    from_scored = slot < n_scored
    j = (slot - n_scored).clamp(min=0)  # slot in the newest-first list
    idx_rest = torch.gather(newest.indices, 1, j)
    valid_rest = torch.gather(newest.valid, 1, j)
    valid = torch.where(from_scored, True, valid_rest)
    return GSUResult(
        indices=torch.where(from_scored, scored.indices, torch.where(valid_rest, idx_rest, 0)),
        scores=torch.where(from_scored, scored.scores, 0.0),
        valid=valid,
        has_score=from_scored,
    )

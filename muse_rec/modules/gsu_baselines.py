"""GSUs of the baselines: SIM-hard (category), TWIN (attention), MISS (co-occurrence + merge).

SIM-soft (cosine of trainable ID embeddings) is `muse_rec.modules.gsu.EmbeddingCosineGSU`.
All selections here are discrete and run without gradient; the model re-reads the selected
behaviours' embeddings with gradient through `GSUResult.gather`.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from muse_rec.modules.attention import TargetAttention
from muse_rec.modules.cosine import check_grouped_inputs
from muse_rec.modules.gsu import CosineGSU, RetrievesTopK
from muse_rec.modules.search import SearchInputs, history_dot, unit_vectors
from muse_rec.modules.selection import GSUResult, newest_eligible, topk_eligible, vector_first_topk


def _check_seq(name: str, seq: torch.Tensor, mask: torch.Tensor, batch: int) -> None:
    if seq.dim() != 2 or mask.shape != seq.shape or seq.shape[0] != batch:
        raise ValueError(
            f"{name} must be [B, L] with mask [B, L] and B = {batch}; got {name} "
            f"{tuple(seq.shape)}, mask {tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool, got {mask.dtype}")


class CategoryGSU(RetrievesTopK, nn.Module):
    """SIM-hard: the K most recent behaviours whose category equals the target's.

    Slots come newest first; ``valid`` is False beyond the user's matches; ``scores`` are
    1.0 on valid slots (the relevance is binary). For MUSE's ESU on top of it, compute the
    cosines of the picks with `muse_rec.modules.cosine.cosine_at`.

    Args:
        top_k: K.
        unknown_category: category row meaning "unknown" (0 in the prepared data); an unknown
            target matches nothing, since "both unknown" says nothing about relevance.
            ``None`` disables the rule.
    """

    scores_are_scl_cosines = False
    reads_id_tokens = False
    # The match runs over every position of every candidate: [B, L] int64 categories, bool matches and fp32
    # scores (~17 B per candidate and position; 1.7 GiB for 1,024 candidates at L = 100K), so the Ranker
    # bounds its candidates per pass as for the fp32 [B, L] scorers.
    scores_whole_history = True

    def __init__(self, top_k: int = 50, unknown_category: Optional[int] = 0) -> None:
        super().__init__()
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.top_k = top_k
        self.unknown_category = unknown_category

    @torch.no_grad()
    def forward(self, target_cat: torch.Tensor, seq_cats: torch.Tensor, mask: torch.Tensor) -> GSUResult:
        """``target_cat [B]``, ``seq_cats [B, L]``, ``mask [B, L]`` -> `GSUResult` ``[B, K]``."""
        _check_seq("seq_cats", seq_cats, mask, target_cat.shape[0])
        match = mask & (seq_cats == target_cat.unsqueeze(1))
        if self.unknown_category is not None:
            match &= (target_cat != self.unknown_category).unsqueeze(1)
        return newest_eligible(match, self.top_k)

    def retrieve(self, search: SearchInputs) -> GSUResult:
        """SIM-hard over the searched histories (`SearchInputs`)."""
        h = search.hist
        return self(search.target_cat, h.per_sample(h.cats), h.per_sample(h.mask))

    def extra_repr(self) -> str:
        return f"top_k={self.top_k}, unknown_category={self.unknown_category}"


class AttentionGSU(RetrievesTopK, nn.Module):
    """TWIN: retrieve by the ESU's own target-attention logits over the whole sequence.

    TWIN's point is consistency: the GSU ranks behaviours with the same relevance the ESU's
    attention computes. So this module holds a *reference* to the ESU's `TargetAttention`
    and uses its ``logits``; it owns no parameters of its own. Wire it as::

        esu_attention = TargetAttention(query_dim=32, key_dim=32, hidden_dim=32)
        gsu = AttentionGSU(esu_attention, top_k=50)   # shares W_q, W_k with the ESU

    The selection runs under ``no_grad``: W_q / W_k learn only through the ESU's attention
    over the retrieved K. The logits are computed in chunks of ``chunk_size`` positions so
    the ``[B, L, H]`` projected keys never exist at once for long sequences.

    Args:
        attention: the ESU's `TargetAttention` (registered as a shared submodule; its
            parameters appear once in ``model.parameters()``).
        top_k: K.
        chunk_size: positions projected per step.
    """

    scores_are_scl_cosines = False
    reads_id_tokens = True  # TWIN: attention over the history's ID tokens
    scores_whole_history = True  # attention logits of every position

    def __init__(self, attention: TargetAttention, top_k: int = 50, chunk_size: int = 1024) -> None:
        super().__init__()
        if top_k < 1 or chunk_size < 1:
            raise ValueError(f"top_k and chunk_size must be >= 1, got {top_k}, {chunk_size}")
        self.attention = attention
        self.top_k = top_k
        self.chunk_size = chunk_size

    @torch.no_grad()
    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor,
                index: Optional[torch.Tensor] = None, members: Optional[torch.Tensor] = None) -> GSUResult:
        """``query [B, Dq]``, ``keys [B, L, Dk]`` embeddings, ``mask [B, L]`` -> `GSUResult`.

        With `index` ``[B]``, keys/mask are ``[U, L, *]``, one sequence per distinct user,
        projected once per user. ``scores`` are the attention logits (unbounded).
        """
        logits = self.full_logits(query, keys, mask, index, members)
        return topk_eligible(logits, mask if index is None else mask.index_select(0, index), self.top_k)

    @torch.no_grad()
    def full_logits(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor,
                    index: Optional[torch.Tensor] = None, members: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Attention logits of every position, ``[B, L]`` (masking left to the caller)."""
        if index is not None:
            if keys.shape[0] != 1:
                check_grouped_inputs(query, keys, mask, index)
            q = self.attention.project_query(query)  # [B, H]
            k = torch.cat([self.attention.project_keys(keys[:, l0 : l0 + self.chunk_size])
                           for l0 in range(0, keys.shape[1], self.chunk_size)], dim=1)  # [U, L, H]
            return history_dot(q, k, index, members) * self.attention.scale
        if keys.dim() != 3 or mask.shape != keys.shape[:2]:
            raise ValueError(f"keys must be [B, L, D] with mask [B, L]; got {tuple(keys.shape)}, {tuple(mask.shape)}")
        return torch.cat(
            [
                self.attention.logits(query, keys[:, l0 : l0 + self.chunk_size])
                for l0 in range(0, keys.shape[1], self.chunk_size)
            ]
            or [keys.new_zeros(keys.shape[:2])],
            dim=1,
        )


    def keys_of(self, search: SearchInputs):
        """``(query [B, Dq], keys [U, L, Dk])`` this GSU scores: the ID tokens (TWIN)."""
        seq_tok, target_tok = search.id_tokens()
        return target_tok, seq_tok

    def retrieve(self, search: SearchInputs) -> GSUResult:
        """Top-K by the attention logits over the searched histories."""
        query, keys = self.keys_of(search)
        h = search.hist
        return self(query, keys, h.mask, h.index, h.members)


class SCLAttentionGSU(AttentionGSU):
    """GSU-scoring ablation "MM attention": a learned target attention over the SCL vectors.

    The same projections also attend over the K retrieved behaviours' SCL vectors in the ESU
    (that is how they are trained; the selection itself runs without gradient). Both read the
    vectors as unit vectors (`unit_vectors`), as the cosine GSU effectively does: the int8
    storage (norm ~127) would make the logits ~10^4 times too large and the softmax one-hot.
    """

    reads_id_tokens = False

    def keys_of(self, search: SearchInputs):
        scl_target, scl_seq = search.scl()
        return unit_vectors(scl_target), unit_vectors(scl_seq)

    @torch.no_grad()
    def retrieve(self, search: SearchInputs) -> GSUResult:
        """Top-K by the attention logits under the multimodal GSUs' rule (`vector_first_topk`): a behaviour
        without an SCL vector ranks below every behaviour with one, newest first, as in the cosine GSU. Its
        unit vector is 0, so its logit is the key bias's alone, which outranked real vectors (trained: 373 of
        28,094 picks where the rule allows 248)."""
        query, keys = self.keys_of(search)
        h = search.hist
        logits = self.full_logits(query, keys, h.mask, h.index, h.members)  # [B, L]
        has_vector = (query != 0).any(dim=-1, keepdim=True) & h.per_sample((keys != 0).any(dim=-1))
        return vector_first_topk(logits, has_vector, h.per_sample(h.mask), self.top_k)


class CooccurrenceGSU(nn.Module):
    """MISS's ID co-occurrence GSU, as a per-user in-sequence co-occurrence count.

    MISS retrieves with an item co-occurrence signal learned from all users' behaviour. A
    batch carries no global co-occurrence statistics, so this GSU uses the co-occurrence
    visible in the user's own history: behaviour i is relevant to target a when it occurs
    close (within ``window`` positions, a session proxy) to behaviours of the target's item
    or category. Score::

        anchor_j = mask_j * (item_weight * [item_j == item_a] + [cat_j == cat_a])
        score_i  = sum_{|i - j| <= window} anchor_j

    Behaviours with score 0 are not eligible (valid=False); ties go to the newest. This is a
    deviation from MISS (no cross-user statistics); it needs only ids present in a `Batch`.

    Args:
        top_k: K.
        window: half-width of the co-occurrence window, in behaviours.
        item_weight: weight of an exact item match relative to a category match.
        unknown_id: id meaning "unknown" (0): never an anchor.
    """

    def __init__(self, top_k: int = 50, window: int = 5, item_weight: float = 2.0, unknown_id: int = 0) -> None:
        super().__init__()
        if top_k < 1 or window < 0:
            raise ValueError(f"top_k must be >= 1 and window >= 0, got {top_k}, {window}")
        self.top_k = top_k
        self.window = window
        self.item_weight = item_weight
        self.unknown_id = unknown_id

    @torch.no_grad()
    def scores(
        self,
        target_item: torch.Tensor,
        target_cat: torch.Tensor,
        seq_items: torch.Tensor,
        seq_cats: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """Co-occurrence score ``[B, L]`` fp32 (0 at padding)."""
        _check_seq("seq_items", seq_items, mask, target_item.shape[0])
        _check_seq("seq_cats", seq_cats, mask, target_cat.shape[0])
        item_hit = (seq_items == target_item.unsqueeze(1)) & (seq_items != self.unknown_id)
        cat_hit = (seq_cats == target_cat.unsqueeze(1)) & (seq_cats != self.unknown_id)
        anchor = (self.item_weight * item_hit.float() + cat_hit.float()) * mask.float()
        # Window sum via a prefix sum: O(B * L) for any window. The prefix sums are fp64: they reach
        # (item_weight + 1) x L, and fp32 holds integers exactly only up to 2^24, so past ~5.6M positions an
        # fp32 difference of two prefix sums miscounted (10 or 12 for 11, 34 where at most 33 is possible).
        # A window's sum is at most (2 window + 1) (item_weight + 1): exact again in fp32.
        B, L = anchor.shape
        csum = torch.cat([anchor.new_zeros(B, 1, dtype=torch.float64), anchor.cumsum(dim=1, dtype=torch.float64)],
                         dim=1)  # [B, L + 1]
        pos = torch.arange(L, device=anchor.device)
        hi = (pos + self.window + 1).clamp(max=L)
        lo = (pos - self.window).clamp(min=0)
        return (csum[:, hi] - csum[:, lo]).to(torch.float32) * mask.float()

    @torch.no_grad()
    def forward(
        self,
        target_item: torch.Tensor,
        target_cat: torch.Tensor,
        seq_items: torch.Tensor,
        seq_cats: torch.Tensor,
        mask: torch.Tensor,
    ) -> GSUResult:
        """Ids ``[B]``, ``[B]``, ``[B, L]``, ``[B, L]``, ``mask [B, L]`` -> `GSUResult` ``[B, K]``."""
        score = self.scores(target_item, target_cat, seq_items, seq_cats, mask)
        B, L = score.shape
        # Highest count first, ties to the newest: a stable descending sort of the
        # newest-first (flipped) scores. Exact for any item_weight (no mixed-in epsilon).
        k = min(self.top_k, L)
        order = torch.sort(score.flip(1), dim=1, descending=True, stable=True).indices[:, :k]
        idx = (L - 1) - order
        val = torch.gather(score, 1, idx)
        valid = val > 0
        pad = self.top_k - k
        res = GSUResult(
            indices=torch.cat([torch.where(valid, idx, 0), idx.new_zeros(B, pad)], 1),
            scores=torch.cat([torch.where(valid, val, 0.0), val.new_zeros(B, pad)], 1),
            valid=torch.cat([valid, valid.new_zeros(B, pad)], 1),
            has_score=torch.cat([valid, valid.new_zeros(B, pad)], 1),
        )
        return res


class MISSGSU(RetrievesTopK, nn.Module):
    """MISS: the ID co-occurrence GSU's picks merged (`merge_gsu_results`) with the multimodal GSU's.

    Args:
        top_k: K.
        chunk_size: see `CosineGSU`.
    """

    scores_are_scl_cosines = False
    reads_id_tokens = False
    # The co-occurrence half counts over every position of every candidate ([B, L] int64 ids, fp32 anchors,
    # prefix sums and a full sort: ~37 B per candidate and position, 3.7 GiB for 1,024 candidates at L = 100K):
    # the Ranker bounds its candidates per pass as for the fp32 [B, L] scorers.
    scores_whole_history = True

    def __init__(self, top_k: int = 50, chunk_size: int = 2048) -> None:
        super().__init__()
        self.top_k = top_k
        self.cooccurrence = CooccurrenceGSU(top_k)
        self.multimodal = CosineGSU(top_k, chunk_size=chunk_size)

    def retrieve(self, search: SearchInputs) -> GSUResult:
        h = search.hist
        co = self.cooccurrence(search.target_item, search.target_cat, h.per_sample(h.items),
                               h.per_sample(h.cats), h.per_sample(h.mask))
        return merge_gsu_results(co, self.multimodal.retrieve(search), self.top_k)


def merge_gsu_results(a: GSUResult, b: GSUResult, top_k: int) -> GSUResult:
    """Merge two GSUs' picks (MISS: ID co-occurrence + multimodal) into K slots.

    Scores of different GSUs live on different scales (counts vs cosines), so they are not
    compared: the merge interleaves by rank ``a[0], b[0], a[1], b[1], ...``, drops invalid
    slots and positions already taken, and keeps the first K. Each kept slot carries its
    source's ``scores``/``has_score``. Fewer than K distinct positions -> invalid slots.
    """
    if a.indices.shape[0] != b.indices.shape[0]:
        raise ValueError(f"batch sizes differ: {a.indices.shape[0]} vs {b.indices.shape[0]}")

    def interleave(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n = min(x.shape[1], y.shape[1])
        head = torch.stack([x[:, :n], y[:, :n]], dim=2).flatten(1)
        return torch.cat([head, x[:, n:], y[:, n:]], dim=1)

    idx = interleave(a.indices, b.indices)
    val = interleave(a.valid, b.valid)
    sco = interleave(a.scores.float(), b.scores.float())
    has = interleave(a.has_score, b.has_score)
    M = idx.shape[1]
    # A slot is a duplicate if an earlier valid slot holds the same position ([B, M, M]).
    same = (idx.unsqueeze(2) == idx.unsqueeze(1)) & val.unsqueeze(1)
    earlier = torch.ones(M, M, dtype=torch.bool, device=idx.device).tril(diagonal=-1)
    keep = val & ~(same & earlier).any(dim=2)
    # Stable compaction: kept slots first, in interleaved order.
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices
    n = min(top_k, M)
    take = order[:, :n]
    kept = torch.gather(keep, 1, take)
    out = GSUResult(
        indices=torch.where(kept, torch.gather(idx, 1, take), 0),
        scores=torch.where(kept, torch.gather(sco, 1, take), 0.0),
        valid=kept,
        has_score=kept & torch.gather(has, 1, take),
    )
    if n < top_k:
        pad = top_k - n
        B = idx.shape[0]
        out = GSUResult(
            indices=torch.cat([out.indices, idx.new_zeros(B, pad)], 1),
            scores=torch.cat([out.scores, out.scores.new_zeros(B, pad)], 1),
            valid=torch.cat([out.valid, val.new_zeros(B, pad)], 1),
            has_score=torch.cat([out.has_score, val.new_zeros(B, pad)], 1),
        )
    return out

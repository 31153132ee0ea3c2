"""Cosine GSUs: MUSE's multimodal GSU (frozen SCL vectors) and SIM-soft (ID embeddings).

r_i = cos(v_a, v_i) for every behaviour i of the sequence; keep the top K. The selection
rules (padding, behaviours without an SCL vector, short users, K > L) are defined once in
`muse_rec.modules.selection`; the kernels in `muse_rec.modules.cosine` (training) and
`muse_rec.modules.shared_keys_cosine` (serving).

Example::

    gsu = CosineGSU(top_k=50)
    res = gsu(target_scl, seq_scl, seq_mask)           # [B, 128] int8, [B, L, 128] int8, [B, L]
    topk_emb = res.gather(seq_item_emb)                 # [B, 50, 32], with gradient
    tiers = simtier(res.scores, res.has_score)          # [B, 22]
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from muse_rec.modules.cosine import (
    DEFAULT_CHUNK_ROWS,
    batched_cosine,
    check_cosine_inputs,
    check_grouped_inputs,
    grouped_cosine_topk,
    reference_cosine,
)
from muse_rec.modules.ordered_topk import topk_lowest_position_first
from muse_rec.modules.shared_keys_cosine import shared_keys_cosine_topk
from muse_rec.modules.search import SearchInputs, history_cosine, history_dot
from muse_rec.modules.selection import (
    GSUResult,
    cosine_selection_scores,
    decode_cosine_selection,
    vector_first_topk,
)


def _validate_top_k(top_k: int, chunk_size: int) -> None:
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


class RetrievesTopK:
    """Mixin of a GSU whose `retrieve` returns ``top_k`` positions per sample (every GSU but the
    fusion GSU's two-branch rules): its ``slots``, which the sharding planner costs."""

    top_k: int

    @property
    def slots(self) -> int:
        """Positions `retrieve` returns per sample (K)."""
        return self.top_k


class CosineGSU(RetrievesTopK, nn.Module):
    """MUSE's GSU: top-K behaviours by cosine of (frozen) SCL vectors. No parameters.

    Two shapes are served by the same call:

    * training: ``keys [B, L, D]``, one sequence per query (batched mat-vec per chunk,
      ``[B, L]`` fp32 scores, one top-K);
    * serving: ``keys [1, L, D]`` with ``mask [1, L]`` shared by ``B`` candidate queries
      (GEMM per chunk with a running top-K; memory ``O(B * (K + chunk_size))``).

    Args:
        top_k: K, the number of behaviours retrieved (the paper's 50).
        chunk_size: key rows converted to fp32 per step (default 2048 = 1 MiB of fp32 at
            D = 128, sized to stay in a CPU's L2).
    """

    # The selection scores are SCL cosines: the ESU may read them as R (no second cosine).
    scores_are_scl_cosines = True
    # Whether `retrieve` reads the ID tokens of the whole history (`SearchInputs.id_tokens`): L more
    # ids per history through the item and category tables, which the sharding planner costs.
    reads_id_tokens = False
    # Whether a serving forward holds fp32 ``[B, L]`` scores of every candidate against the whole history (the
    # Ranker bounds the candidates per pass of such a model, `inference.FULL_SCORES_PER_PASS`). The SCL cosine
    # streams the int8 history in chunks instead (`shared_keys_cosine`), at a fixed cost per forward.
    scores_whole_history = False

    def __init__(self, top_k: int = 50, chunk_size: int = DEFAULT_CHUNK_ROWS) -> None:
        super().__init__()
        _validate_top_k(top_k, chunk_size)
        self.top_k = top_k
        self.chunk_size = chunk_size

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor,
                index: Optional[torch.Tensor] = None, members: Optional[torch.Tensor] = None) -> GSUResult:
        """Retrieve the top K.

        Args:
            query: ``[B, D]`` target SCL vectors (int8 / fp16 / bf16 / fp32).
            keys: ``[B, L, D]`` behaviour SCL vectors, or ``[1, L, D]`` shared by all B, or
                with `index`: ``[U, L, D]``, one sequence per distinct user.
            mask: ``[B, L]`` (or ``[1, L]``, or ``[U, L]``) bool, True = real behaviour.
            index: ``[B]`` int64, sample b's row in `keys` (see `grouped_cosine`).
            members: ``[U, P]`` the samples of each row (see `grouped_cosine`), optional.

        Returns:
            `GSUResult` with ``[B, K]`` tensors, best first; ``scores`` are cosines.
        """
        if index is not None and keys.shape[0] == 1 and keys.shape[1] > 0:
            # One history shared by all B queries (serving; static shape, exportable): GEMM per
            # chunk with a running top-K, memory O(B * (K + chunk_size)) for any L.
            values, indices = shared_keys_cosine_topk(query, keys[0], mask[0], self.top_k, self.chunk_size)
            return decode_cosine_selection(values, indices, self.top_k)
        if index is not None:
            check_grouped_inputs(query, keys, mask, index)
            values, indices = grouped_cosine_topk(query, keys, mask, index, self.top_k, members)
            return decode_cosine_selection(values, indices, self.top_k)
        check_cosine_inputs(query, keys, mask)
        B, L = query.shape[0], keys.shape[1]
        if L == 0:
            return decode_cosine_selection(
                query.new_zeros((B, 0), dtype=torch.float32),
                query.new_zeros((B, 0), dtype=torch.int64),
                self.top_k,
            )
        with torch.no_grad():
            if keys.shape[0] == 1 and B > 1:
                values, indices = shared_keys_cosine_topk(
                    query, keys[0], mask[0], self.top_k, self.chunk_size
                )
            else:
                sel = self._selection_scores(query, keys, mask)
                values, indices = topk_lowest_position_first(sel, min(self.top_k, L))
        return decode_cosine_selection(values, indices, self.top_k)

    def retrieve(self, search: SearchInputs) -> GSUResult:
        """MUSE's GSU: top-K by cosine of the frozen SCL vectors (see `SearchInputs`)."""
        scl_target, scl_seq = search.scl()
        h = search.hist
        return self(scl_target, scl_seq, h.mask, h.index, h.members)

    def full_scores(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Cosine of every position: ``[B, L]`` fp32; 0.0 at padding and where a vector is 0.

        The model reuses these for SimTier on the recent-50 branch (pass it the recent keys
        only, so only those are computed).
        """
        return self.full_scores_with_validity(query, keys, mask)[0]

    def full_scores_with_validity(
        self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor,
        index: Optional[torch.Tensor] = None, members: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """`full_scores` plus ``has_score [B, L]`` (real behaviour and both vectors exist)."""
        if index is not None:
            if keys.shape[0] != 1:
                check_grouped_inputs(query, keys, mask, index)
            cos, has_vec = history_cosine(query, keys, index, self.chunk_size, members)
            has_score = has_vec & mask.index_select(0, index)
            return torch.where(has_score, cos, 0.0), has_score
        check_cosine_inputs(query, keys, mask)
        with torch.no_grad():
            cos, has_vec = batched_cosine(query, keys.expand(query.shape[0], -1, -1), self.chunk_size)
        has_score = has_vec & mask
        return torch.where(has_score, cos, 0.0), has_score

    def _selection_scores(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        cos, has_vec = batched_cosine(query, keys.expand(query.shape[0], -1, -1), self.chunk_size)
        return cosine_selection_scores(cos, has_vec, mask.expand_as(cos), 0, keys.shape[1])

    def extra_repr(self) -> str:
        return f"top_k={self.top_k}, chunk_size={self.chunk_size}"


class EmbeddingCosineGSU(CosineGSU):
    """SIM-soft: top-K by cosine of trainable ID embeddings, with NO gradient through it.

    Inputs are detached: the selection is a discrete choice; the model re-reads the
    selected behaviours' embeddings with gradient via `GSUResult.gather`. Typical tokens
    are ``[item emb ‖ category emb]`` (32-d). Same selection rules as `CosineGSU` (an
    all-zero embedding counts as "no vector").

    Args:
        top_k: K.
        chunk_size: see `CosineGSU`.
    """

    scores_are_scl_cosines = False  # ID cosines: an SCL-similarity ESU computes its own R
    reads_id_tokens = True
    scores_whole_history = True  # float ID tokens: the static [B, L] cosine

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor,
                index: Optional[torch.Tensor] = None, members: Optional[torch.Tensor] = None) -> GSUResult:
        """``query [B, D]`` float, ``keys [B, L, D]`` (or ``[U, L, D]`` with `index`) float -> `GSUResult`."""
        if not (query.is_floating_point() and keys.is_floating_point()):
            raise ValueError(
                f"EmbeddingCosineGSU expects float embeddings, got query {query.dtype}, keys {keys.dtype}"
            )
        return super().forward(query.detach(), keys.detach(), mask, index, members)

    def retrieve(self, search: SearchInputs) -> GSUResult:
        """SIM-soft: top-K by cosine of the (detached) ID tokens ``[item ‖ category]``."""
        seq_tok, target_tok = search.id_tokens()
        h = search.hist
        return self(target_tok, seq_tok, h.mask, h.index, h.members)


class ScoreSumGSU(RetrievesTopK, nn.Module):
    """GSU-scoring ablation: multimodal cosine + ``id_weight`` x an ID relevance, one top-K.

    The ID relevance is the cosine of the ID tokens (``id_scorer`` = None) or the logits of the
    ESU's ID target attention (``id_scorer`` = that `TargetAttention`, TWIN-style). The selection
    follows the multimodal GSU's rule (`vector_first_topk`): behaviours without an SCL vector
    rank below every behaviour with one, newest first, whatever their ID score.

    Args:
        top_k: K.
        id_weight: weight of the ID relevance in the sum.
        id_scorer: None (ID cosine) or the ESU's `TargetAttention` (shared, not copied).
        chunk_size: see `CosineGSU`.
    """

    scores_are_scl_cosines = False
    reads_id_tokens = True
    scores_whole_history = True  # the ID scores of every position

    def __init__(self, top_k: int, id_weight: float = 1.0, id_scorer: Optional[nn.Module] = None,
                 chunk_size: int = DEFAULT_CHUNK_ROWS) -> None:
        super().__init__()
        _validate_top_k(top_k, chunk_size)
        self.top_k = top_k
        self.id_weight = id_weight
        self.id_scorer = id_scorer
        self.chunk_size = chunk_size

    @torch.no_grad()
    def id_relevance(self, target_tok: torch.Tensor, seq_tok: torch.Tensor, index: torch.Tensor,
                     members: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``[B, L]`` ID relevance of every position (cosine, or attention logits)."""
        if self.id_scorer is None:
            return history_cosine(target_tok, seq_tok, index, self.chunk_size, members)[0]
        q = self.id_scorer.project_query(target_tok)
        return history_dot(q, self.id_scorer.project_keys(seq_tok), index, members) * self.id_scorer.scale

    @torch.no_grad()
    def retrieve(self, search: SearchInputs) -> GSUResult:
        scl_target, scl_seq = search.scl()
        seq_tok, target_tok = search.id_tokens()
        h = search.hist
        mm, has_vec = history_cosine(scl_target, scl_seq, h.index, self.chunk_size, h.members)  # [B, L]
        score = mm + self.id_weight * self.id_relevance(target_tok, seq_tok, h.index, h.members)
        return vector_first_topk(score, has_vec, h.per_sample(h.mask), self.top_k)

    def extra_repr(self) -> str:
        return f"top_k={self.top_k}, id_weight={self.id_weight}, id_score={'cosine' if self.id_scorer is None else 'attention'}"


def reference_cosine_topk(
    query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor, top_k: int
) -> GSUResult:
    """Plain fp64 implementation of `CosineGSU` (same rules), for tests and audits.

    ``query [B, D]``, ``keys [B or 1, L, D]``, ``mask [B or 1, L]`` -> `GSUResult` with K slots.
    """
    check_cosine_inputs(query, keys, mask)
    B, L = query.shape[0], keys.shape[1]
    cos, has_vec = reference_cosine(query, keys)  # [B, L] fp64
    m = mask.expand(B, L)
    pos = torch.arange(L, dtype=torch.float64)
    no_vec = -1.1 + 0.05 * pos / max(L, 1)  # newest first, below every cosine
    sel = torch.where(m & has_vec, cos, torch.where(m, no_vec, -3.0))
    # Equal cosines: lowest position first (a stable sort, plainly; the fast paths use an int64 key).
    values, order = torch.sort(sel, dim=1, descending=True, stable=True)
    values, indices = values[:, :min(top_k, L)], order[:, :min(top_k, L)]
    n_pad = top_k - values.shape[1]
    values = torch.cat([values, torch.full((B, n_pad), -3.0, dtype=torch.float64)], 1)
    indices = torch.cat([indices, torch.zeros((B, n_pad), dtype=torch.int64)], 1)
    valid = values > -2.0
    has_score = values >= -1.0
    return GSUResult(
        indices=torch.where(valid, indices, 0),
        scores=torch.where(has_score, values, 0.0),
        valid=valid,
        has_score=has_score,
    )

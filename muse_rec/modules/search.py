"""What a GSU searches: `Histories` (one history per distinct user) and `SearchInputs`.

Training and serving pose the same problem to a GSU: B targets, each pointing (``index [B]``)
at one of U behaviour histories ``[U, L]``.

* training: a batch of B impressions of U distinct users (a user's ~11 impressions share one
  history, so the per-position work runs over U histories, not B copies);
* serving: one user and B candidates, U = 1 and ``index = zeros(B)``.

Every GSU therefore has ONE retrieval method, ``retrieve(SearchInputs) -> GSUResult``, and the
scoring kernels below pick their fastest exact form from the static shape: U = 1 is one GEMM
against the shared history (traceable by `torch.export`, no data-dependent Python); U > 1 runs
one padded batched GEMM over all distinct users (`muse_rec.modules.cosine.grouped_cosine` /
`grouped_dot`), grouped as the loader grouped the batch (``members``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Tuple

import torch

from muse_rec.modules.cosine import DEFAULT_CHUNK_ROWS, finish_cosine, grouped_cosine, grouped_dot


@dataclass
class Histories:
    """One behaviour history per distinct user of a batch (or the one user of a request).

    Samples with equal user keys carry the same history (one history per user and split), which
    makes grouping exact. This class is the one place where a batch is grouped by user.

    Attributes:
        items, cats: ``[U, L]`` int64, right-aligned. mask: ``[U, L]`` bool.
        index: ``[B]`` int64, the history row of each sample.
        members: ``[U, P]`` int64, the samples of each row padded with B (the grouped GEMM's
            layout, `muse_rec.modules.cosine.group_members`), or None (then derived when needed).
    """

    items: torch.Tensor
    cats: torch.Tensor
    mask: torch.Tensor
    index: torch.Tensor
    members: Optional[torch.Tensor] = None

    @staticmethod
    def of(batch) -> "Histories":
        """The histories of a `muse_rec.data.batch.Batch`, grouped as the loader grouped it
        (``hist_index``, ``hist_members``, computed on the host): no device sync, no
        data-dependent shapes in the step. Row u reads its first member's history."""
        first = batch.hist_members[:, 0]
        return Histories(batch.seq_items.index_select(0, first), batch.seq_cats.index_select(0, first),
                         batch.seq_mask().index_select(0, first), batch.hist_index, batch.hist_members)

    @staticmethod
    def one_user(items: torch.Tensor, cats: torch.Tensor, mask: torch.Tensor, candidates: int) -> "Histories":
        """The serving shape: one history ``[1, L]`` shared by ``candidates`` targets."""
        index = torch.zeros(candidates, dtype=torch.int64, device=items.device)
        return Histories(items, cats, mask, index)

    @property
    def shared(self) -> bool:
        """True when all samples read one history (U = 1; static under `torch.export`)."""
        return self.items.shape[0] == 1

    def per_sample(self, x: torch.Tensor) -> torch.Tensor:
        """``[U, ...]`` -> ``[B, ...]`` (cheap for ids and masks; avoid for vectors)."""
        return x.index_select(0, self.index)

    def at(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``x[index[b], positions[b, k]]``: ``[U, L, *]`` gathered at ``[B, K]`` -> ``[B, K, *]``."""
        return x[self.index.unsqueeze(1), positions]


def history_cosine(query: torch.Tensor, keys: torch.Tensor, index: torch.Tensor,
                   chunk_rows: int = DEFAULT_CHUNK_ROWS, members: Optional[torch.Tensor] = None
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cosine of each query with every position of its history: ``[B, D]`` x ``[U, L, D]`` -> ``[B, L]``.

    Returns ``cos`` fp32 (0 where a vector is zero) and ``has_vector`` bool, the values of
    `grouped_cosine` (same formula: dot / (|q| |k|), clamped). No gradient.
    """
    if keys.shape[0] != 1:
        return grouped_cosine(query, keys, index, chunk_rows, members)
    with torch.no_grad():
        q = query.to(torch.float32)
        k = keys[0].to(torch.float32)  # [L, D]
        return finish_cosine(q @ k.t(), torch.linalg.vector_norm(k, dim=1).unsqueeze(0),
                             torch.linalg.vector_norm(q, dim=1, keepdim=True))


def history_dot(query: torch.Tensor, keys: torch.Tensor, index: torch.Tensor,
                members: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``out[b, l] = query[b] . keys[index[b], l]``: ``[B, H]`` x ``[U, L, H]`` -> ``[B, L]``."""
    if keys.shape[0] == 1:
        return query @ keys[0].t()
    return grouped_dot(query, keys, index, members)


def unit_vectors(x: torch.Tensor) -> torch.Tensor:
    """``x / |x|`` along the last dim in fp32; all-zero vectors ("no vector") stay zero.

    Learned projections of SCL vectors read these: the int8 storage scale (norm ~127) would
    otherwise make attention logits ~10^4 times larger than for unit inputs (one-hot softmax).
    """
    xf = x.to(torch.float32)
    return xf / torch.linalg.vector_norm(xf, dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)


@dataclass
class SearchInputs:
    """Everything a GSU may read for one forward (training batch or serving request).

    Attributes:
        hist: the histories ``[U, L]`` and each target's row ``index [B]``.
        target_item, target_cat: ``[B]`` int64 rows.
        scl_target: ``[B, 128]`` frozen SCL vectors of the targets, or None (model reads none).
        scl_seq: ``[U, L, 128]`` SCL vectors of the histories (zeros at padding), or None.
        id_token_fn: computes ``(seq [U, L, D_tok], target [B, D_tok])`` ID tokens without
            gradient; called at most once (`id_tokens` caches), only by GSUs that score IDs.
    """

    hist: Histories
    target_item: torch.Tensor
    target_cat: torch.Tensor
    scl_target: Optional[torch.Tensor]
    scl_seq: Optional[torch.Tensor]
    id_token_fn: Optional[Callable[[], Tuple[torch.Tensor, torch.Tensor]]] = None
    _id_tokens: Optional[Tuple[torch.Tensor, torch.Tensor]] = field(default=None, repr=False)

    @property
    def batch_size(self) -> int:
        return int(self.target_item.shape[0])

    def id_tokens(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(seq [U, L, D_tok], target [B, D_tok])`` ID tokens, no gradient (computed once)."""
        if self._id_tokens is None:
            if self.id_token_fn is None:
                raise ValueError("this GSU scores ID embeddings: SearchInputs.id_token_fn is missing")
            self._id_tokens = self.id_token_fn()
        return self._id_tokens

    def scl(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(scl_target [B, 128], scl_seq [U, L, 128])``; an error if the model looked none up."""
        if self.scl_target is None or self.scl_seq is None:
            raise ValueError("this GSU reads SCL vectors: SearchInputs.scl_target / scl_seq are missing")
        return self.scl_target, self.scl_seq

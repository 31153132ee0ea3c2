"""`LifelongCTRModel`: MUSE and every baseline of the paper's Table 5, assembled from one spec.

The flow of one forward (shapes for batch B, sequence L, K retrieved, R recent, D_tok = 32)::

    pooled ids ----------------------------> EBC ----------------------> [B, P]
    target + whole sequence -> frozen SCL EC (no grad) -> [B,128], [B,L,128]
        -> GSU (spec.gsu.kind) -> K positions (no gradient through the selection)
    target, K selected, R recent ids -> ONE trainable EC lookup -> [B,D_tok], [B,K,D_tok], [B,R,D_tok]
        -> ESU: SimTier(R_sim) [B,T] and/or TA / SA-TA [B,D_tok]
        -> short-term: TA over the recent R, mean pools, SimTier of the recent cosines
    concat -> MLP tower (Dice) -> logit [B]

Only the selected and recent behaviours' ID rows are looked up with gradient, so a step moves
exactly those rows (fused optimizers with momentum move any row they see).

`LifelongCTRTrain` wraps it with the loss and returns ``(loss, (loss, logits, labels))``,
the contract of TorchRec's `TrainPipelineSparseDist`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedTensor

from muse_rec.data.batch import Batch
from muse_rec.models.sparse_arch import SparseArch
from muse_rec.modules import (
    AttentionGSU,
    CategoryGSU,
    CooccurrenceGSU,
    CosineGSU,
    EmbeddingCosineGSU,
    GSUResult,
    MLPTower,
    SemanticAwareTargetAttention,
    SimTier,
    TargetAttention,
    masked_mean,
    merge_gsu_results,
)
from muse_rec.modules.cosine import finish_cosine, grouped_cosine
from muse_rec.modules.selection import topk_eligible
from muse_rec.spec import ModelSpec

SCL_DIM = 128


@dataclass
class Histories:
    """One behaviour history per distinct user of a batch.

    A user's impressions (~11 per user in Taobao-MM, consecutive in the sample files) share one
    history, so the expensive per-position work (SCL lookup, cosine, ID-GSU lookups) runs over
    U distinct histories, not B copies. Samples with equal ``user_keys`` carry the same history
    (one history per user and split), which is what makes this exact.

    Attributes:
        items, cats: ``[U, L]`` int64, right-aligned. mask: ``[U, L]`` bool.
        index: ``[B]`` int64, the history row of each sample.
    """

    items: torch.Tensor
    cats: torch.Tensor
    mask: torch.Tensor
    index: torch.Tensor

    @staticmethod
    def of(batch: Batch) -> "Histories":
        keys, index = torch.unique(batch.user_keys, return_inverse=True)
        B = index.shape[0]
        first = torch.full((keys.shape[0],), B, dtype=torch.int64, device=index.device)
        first.scatter_reduce_(0, index, torch.arange(B, device=index.device), reduce="amin")
        return Histories(batch.seq_items.index_select(0, first), batch.seq_cats.index_select(0, first),
                         batch.seq_mask().index_select(0, first), index)

    def per_sample(self, x: torch.Tensor) -> torch.Tensor:
        """``[U, ...]`` -> ``[B, ...]`` (cheap for ids and masks; avoid for vectors)."""
        return x.index_select(0, self.index)

    def at(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``x[index[b], positions[b, k]]``: ``[U, L, *]`` gathered at ``[B, K]`` -> ``[B, K, *]``."""
        return x[self.index.unsqueeze(1), positions]


class LifelongCTRModel(nn.Module):
    """A two-stage lifelong-sequence CTR model whose GSU and ESU come from a `ModelSpec`.

    Args:
        spec: the model section of a run spec (GSU kind, ESU parts, short-term branch, tower).
        table_sizes: rows per embedding table (the prepared data's vocab sizes).
        seq_len: L, the behaviours kept per user.
        device: where parameters are built; ``meta`` for DistributedModelParallel.
    """

    def __init__(self, spec: ModelSpec, table_sizes: Mapping[str, int], seq_len: int,
                 device: Optional[torch.device] = None) -> None:
        super().__init__()
        self.spec = spec
        self.seq_len = seq_len
        self.sparse_arch = SparseArch(
            table_sizes,
            id_dim=spec.embedding_dim,
            dim_overrides={f: spec.small_dim for f in spec.small_features},
            init_std=spec.init_std,
            device=device,
        )
        d_tok = self.sparse_arch.token_dim
        g, e, s, pz = spec.gsu, spec.esu, spec.short_term, spec.parametrization
        self.top_k = min(g.top_k, seq_len)
        self.recent = min(s.recent, seq_len)
        self.uses_scl = g.kind in ("cosine_scl", "cooccurrence_scl", "scl_attention") or (
            e.similarity == "scl" and (e.simtier or e.attention == "sa_ta" or s.simtier))

        # ESU attention first: TWIN's GSU scores with the same projections (consistency).
        self.esu_attention: Optional[nn.Module] = None
        if e.attention == "ta":
            self.esu_attention = TargetAttention(d_tok, d_tok, e.attention_hidden, parametrization=pz, device=device)
        elif e.attention == "sa_ta":
            self.esu_attention = SemanticAwareTargetAttention(
                d_tok, d_tok, e.attention_hidden, variant=e.sa_ta_variant,
                temperature_init=e.temperature_init, parametrization=pz, device=device)

        self.gsu: Optional[nn.Module] = None
        self.mm_gsu: Optional[nn.Module] = None
        self.id_gsu: Optional[nn.Module] = None  # the ID term added to the MM cosine (ablation)
        self.scl_attention: Optional[TargetAttention] = None
        if g.kind == "cosine_scl":
            self.gsu = CosineGSU(self.top_k, chunk_size=g.chunk_size)
            if g.id_score == "cosine":
                self.id_gsu = EmbeddingCosineGSU(self.top_k, chunk_size=g.chunk_size)
            elif g.id_score == "attention":
                ta = self.esu_attention.attention if isinstance(self.esu_attention, SemanticAwareTargetAttention) \
                    else self.esu_attention
                self.id_gsu = AttentionGSU(ta, self.top_k)
        elif g.kind == "scl_attention":
            # Multimodal attention retrieval, TWIN's consistency applied to SCL vectors: the same
            # projections score the whole sequence (no grad) and attend over the K retrieved.
            self.scl_attention = TargetAttention(SCL_DIM, SCL_DIM, e.attention_hidden, parametrization=pz,
                                                 device=device)
            self.gsu = AttentionGSU(self.scl_attention, self.top_k)
        elif g.kind == "category":
            self.gsu = CategoryGSU(self.top_k)
        elif g.kind == "id_cosine":
            self.gsu = EmbeddingCosineGSU(self.top_k)
        elif g.kind == "attention":
            self.gsu = AttentionGSU(self.esu_attention, self.top_k)
        elif g.kind == "cooccurrence_scl":
            self.gsu = CooccurrenceGSU(self.top_k)
            self.mm_gsu = CosineGSU(self.top_k, chunk_size=g.chunk_size)

        self.simtier = SimTier(e.num_tiers, e.tier_width, device=device) if e.simtier else None
        self.recent_simtier = SimTier(e.num_tiers, e.tier_width, device=device) if (s.simtier and self.uses_scl) else None
        self.recent_attention = TargetAttention(d_tok, d_tok, e.attention_hidden, parametrization=pz,
                                                device=device) if s.attention else None

        width = self.sparse_arch.pooled_dim + d_tok  # pooled features + target token
        if self.simtier is not None:
            width += e.num_tiers
        if self.scl_attention is not None:
            width += SCL_DIM
        if self.esu_attention is not None:
            width += d_tok
        if self.recent_simtier is not None:
            width += e.num_tiers
        if self.recent_attention is not None:
            width += d_tok
        if s.mean_pool:
            width += d_tok * (2 if self.gsu is not None else 1)
        self.tower = MLPTower(width, tuple(spec.tower_hidden), activation=spec.tower_activation,
                              dropout=spec.dropout, parametrization=pz, device=device)

    # ------------------------------------------------------------------------------------------
    def retrieve(self, batch: Batch, hist: "Histories", scl_target: Optional[torch.Tensor],
                 scl_seq: Optional[torch.Tensor]) -> Optional[GSUResult]:
        """The GSU: K positions of the whole sequence per sample (no gradient through it)."""
        kind, h = self.spec.gsu.kind, hist
        if kind == "none":
            return None
        if kind == "cosine_scl" and self.id_gsu is None:
            return self.gsu(scl_target, scl_seq, h.mask, h.index)
        if kind == "cosine_scl":  # MM cosine + an ID relevance, one top-K over the sum
            mm, _ = self.gsu.full_scores_with_validity(scl_target, scl_seq, h.mask, h.index)
            seq_tok, tgt = self._id_tokens_no_grad(batch, h)
            if isinstance(self.id_gsu, AttentionGSU):
                ids = self.id_gsu.full_logits(tgt, seq_tok, h.mask, h.index)
            else:
                ids, _ = self.id_gsu.full_scores_with_validity(tgt, seq_tok, h.mask, h.index)
            return topk_eligible(mm + self.spec.gsu.id_weight * ids, h.per_sample(h.mask), self.top_k)
        if kind == "scl_attention":
            return self.gsu(scl_target.float(), scl_seq.float(), h.mask, h.index)
        if kind == "category":
            return self.gsu(batch.target_cat, h.per_sample(h.cats), h.per_sample(h.mask))
        if kind == "cooccurrence_scl":
            co = self.gsu(batch.target_item, batch.target_cat, h.per_sample(h.items), h.per_sample(h.cats),
                          h.per_sample(h.mask))
            return merge_gsu_results(co, self.mm_gsu(scl_target, scl_seq, h.mask, h.index), self.top_k)
        seq_tok, tgt = self._id_tokens_no_grad(batch, h)
        return self.gsu(tgt, seq_tok, h.mask, h.index)

    def _id_tokens_no_grad(self, batch: Batch, h: "Histories") -> Tuple[torch.Tensor, torch.Tensor]:
        """ID tokens of the whole histories ``[U, L, D_tok]`` and of the targets ``[B, D_tok]``,
        without gradient: ID-embedding GSUs read them, and no row they touch is updated."""
        seq_tok = self.sparse_arch.sequence_tokens_no_grad(h.items, h.cats, h.mask)
        tgt = self.sparse_arch.sequence_tokens_no_grad(
            batch.target_item.unsqueeze(1), batch.target_cat.unsqueeze(1),
            torch.ones_like(batch.target_item, dtype=torch.bool).unsqueeze(1))[:, 0]
        return seq_tok, tgt

    def forward(self, batch: Batch) -> torch.Tensor:
        """``batch`` -> logits ``[B]`` (pre-sigmoid).

        The pooled EBC is called on ``batch.pooled`` right here, so `TrainPipelineSparseDist`'s
        FX trace finds it and overlaps its input distribution with the previous step. The rest
        (GSU -> selected-id lookup -> ESU) depends on data computed in the forward, so it runs
        behind `_search_and_score`, which the trace treats as one opaque call.
        """
        pooled = self.sparse_arch.pooled(batch.pooled)
        return _search_and_score(self, batch, pooled)

    def search_and_score(self, batch: Batch, pooled_kt: KeyedTensor) -> torch.Tensor:
        """Everything after the pooled lookup: ``[B]`` logits."""
        s = self.spec.short_term
        R = self.recent
        pooled = self.sparse_arch.in_feature_order(pooled_kt).values()  # [B, P], fixed column order
        h = Histories.of(batch)
        L = h.items.shape[1]

        scl_t = scl_seq = None
        if self.uses_scl:  # [B, 128] targets, [U, L, 128] one history per distinct user
            scl_t, scl_seq = self.sparse_arch.scl_vectors(batch.target_item, h.items, h.mask)
        res = self.retrieve(batch, h, scl_t, scl_seq)

        B = batch.labels.shape[0]
        if res is None:  # DIN: no long-term search
            gsu_items = batch.target_item.new_zeros(B, 1)
            gsu_valid = torch.zeros(B, 1, dtype=torch.bool, device=gsu_items.device)
            gsu_cats = gsu_items
        else:
            gsu_items, gsu_cats, gsu_valid = h.at(h.items, res.indices), h.at(h.cats, res.indices), res.valid
        rec_items = h.per_sample(h.items[:, L - R:])
        rec_cats = h.per_sample(h.cats[:, L - R:])
        rec_mask = h.per_sample(h.mask[:, L - R:])
        tok = self.sparse_arch.id_tokens(batch.target_item, batch.target_cat, gsu_items, gsu_cats,
                                         gsu_valid, rec_items, rec_cats, rec_mask)

        parts: List[torch.Tensor] = [pooled, tok.target]
        if res is not None:
            sim, sim_ok = self._similarities(res, h, tok.target, tok.gsu, scl_t, scl_seq)
            if self.simtier is not None:
                parts.append(self.simtier(sim, sim_ok))
            if self.scl_attention is not None:
                parts.append(self.scl_attention(scl_t.float(), h.at(scl_seq, res.indices).float(), res.valid))
            if isinstance(self.esu_attention, SemanticAwareTargetAttention):
                parts.append(self.esu_attention(tok.target, tok.gsu, sim, res.valid))
            elif self.esu_attention is not None:
                parts.append(self.esu_attention(tok.target, tok.gsu, res.valid))
        if self.recent_simtier is not None:
            cos, has_vec = grouped_cosine(scl_t, scl_seq[:, L - R:], h.index)
            rec_ok = has_vec & rec_mask
            parts.append(self.recent_simtier(torch.where(rec_ok, cos, 0.0), rec_ok))
        if self.recent_attention is not None:
            parts.append(self.recent_attention(tok.target, tok.recent, rec_mask))
        if s.mean_pool:
            parts.append(masked_mean(tok.recent, rec_mask))
            if res is not None:
                parts.append(masked_mean(tok.gsu, res.valid))
        return self.tower(torch.cat(parts, dim=-1))

    def _similarities(self, res: GSUResult, h: "Histories", tgt_tok: torch.Tensor, gsu_tok: torch.Tensor,
                      scl_t: Optional[torch.Tensor], scl_seq: Optional[torch.Tensor]
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
        """R ``[B, K]`` and where it is defined: SCL cosines of the retrieved behaviours or ID cosines."""
        if self.spec.esu.similarity == "id":
            with torch.no_grad():
                cos = F.cosine_similarity(gsu_tok, tgt_tok.unsqueeze(1), dim=-1, eps=1e-12)
            return torch.where(res.valid, cos, 0.0), res.valid
        if self.spec.gsu.kind == "cosine_scl" and self.id_gsu is None:
            return res.scores, res.has_score  # the GSU's own cosines, already computed
        return self._scl_cosine(scl_t, h.at(scl_seq, res.indices), res.valid)

    @staticmethod
    def _scl_cosine(scl_t: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Cosine of ``[B, D]`` target vs ``[B, N, D]`` SCL vectors; defined where both are non-zero."""
        with torch.no_grad():
            q, k = scl_t.float(), keys.float()
            dots = torch.bmm(k, q.unsqueeze(2)).squeeze(2)
            cos, has_vector = finish_cosine(dots, torch.linalg.vector_norm(k, dim=2),
                                            torch.linalg.vector_norm(q, dim=1, keepdim=True))
            ok = has_vector & mask
            return torch.where(ok, cos, 0.0), ok


def _search_and_score(model: LifelongCTRModel, batch: Batch, pooled: KeyedTensor) -> torch.Tensor:
    return model.search_and_score(batch, pooled)


# Opaque to torch.fx: TorchRec's pipeline traces the model's forward to find sharded modules fed
# straight from the batch; the data-dependent search below must not be traced.
torch.fx.wrap("_search_and_score")


class LifelongCTRTrain(nn.Module):
    """Loss wrapper: ``batch -> (loss, (loss, logits, labels))`` for `TrainPipelineSparseDist`.

    The loss is the weighted mean BCE (padding rows have weight 0); 1 logit + BCE is the
    reference's 2 logits + softmax cross-entropy.
    """

    def __init__(self, model: LifelongCTRModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        logits = self.model(batch)
        per_sample = F.binary_cross_entropy_with_logits(logits, batch.labels, reduction="none")
        loss = (per_sample * batch.weights).sum() / batch.weights.sum().clamp_min(1.0)
        return loss, (loss.detach(), logits.detach(), batch.labels)


def is_frozen_key(key: str) -> bool:
    """True for state of the frozen SCL table (checkpoints leave it out; it is reloaded from data)."""
    return ".sparse_arch.scl." in f".{key}"


def build_train_model(spec: ModelSpec, table_sizes: Mapping[str, int], seq_len: int,
                      device: Optional[torch.device] = None) -> LifelongCTRTrain:
    """The trainable model of a spec, ready for `shard_model` (build it on ``meta``)."""
    return LifelongCTRTrain(LifelongCTRModel(spec, table_sizes, seq_len, device=device))

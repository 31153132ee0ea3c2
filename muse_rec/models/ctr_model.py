"""`LifelongCTRModel`: MUSE and every baseline of the paper's Table 5, assembled from one spec.

The flow of one forward (shapes for B targets, U histories of length L, K retrieved, R recent,
D_tok = 32); training runs it for a batch (U distinct users), serving for one user (U = 1)::

    pooled ids ----------------------------> EBC ----------------------> [B, P]
    `score` (the same code for both):
      targets + histories -> frozen SCL EC (no grad) -> [B,128], [U,L,128]       (if the spec reads SCL)
        -> self.gsu.retrieve(SearchInputs) -> `GSUResult` [B, K] (no gradient through the selection)
      target, K selected, R recent ids -> ONE trainable EC lookup -> [B,D_tok], [B,K,D_tok], [B,R,D_tok]
        -> self.over_arch: ESU (SimTier of R, TA / SA-TA), short-term branch, tower -> logit [B]

The GSU module and the over-arch's parts are chosen from the spec once, in the constructor
(`build_gsu`, `OverArch`); `muse_rec.serving.inference.InferenceModel` calls `score` as is.
Only the selected and recent behaviours' ID rows are looked up with gradient, so a step moves
exactly those rows (fused optimizers with momentum move any row they see).

`LifelongCTRTrain` wraps it with the loss and returns ``(loss, (loss, logits, labels))``,
the contract of TorchRec's `TrainPipelineSparseDist`.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedTensor

from muse_rec.data.batch import POOLED_FEATURES, Batch
from muse_rec.data.schema import SCL_DIM
from muse_rec.models.over_arch import OverArch, make_similarity
from muse_rec.models.frozen_scl import SCL_SEQ_FEATURE, SCL_TARGET_FEATURE
from muse_rec.models.sparse_arch import (GSU_CAT, GSU_ITEM, RECENT_CAT, RECENT_ITEM, TARGET_CAT,
                                        TARGET_ITEM, SparseArch)
from muse_rec.modules import (
    MISSGSU,
    AttentionGSU,
    CategoryGSU,
    CosineGSU,
    EmbeddingCosineGSU,
    GSUResult,
    Histories,
    SCLAttentionGSU,
    ScoreSumGSU,
    SearchInputs,
    SemanticAwareTargetAttention,
    TargetAttention,
)
from muse_rec.modules.fusion import FusionGSU, FusionSemanticAttention
from muse_rec.modules.parametrization import prior_logit
from muse_rec.spec import ModelSpec

__all__ = ["Histories", "LifelongCTRModel", "LifelongCTRTrain", "build_gsu", "build_train_model"]


def build_gsu(spec: ModelSpec, top_k: int, esu_attention: Optional[nn.Module],
              scl_attention: Optional[TargetAttention]) -> Optional[nn.Module]:
    """The GSU module of ``spec.gsu`` (the only place its ``kind`` string is read), or None.

    Every returned module has ``retrieve(SearchInputs) -> GSUResult``, ``scores_are_scl_cosines``,
    ``reads_id_tokens`` (it scores the history's ID tokens), ``scores_whole_history`` (a serving forward holds
    ``[B, L]`` scores) and ``slots`` (positions per sample).
    TWIN-style GSUs hold a reference to the ESU's attention (consistency), not a copy.
    """
    g = spec.gsu
    id_attention = esu_attention.attention if isinstance(esu_attention, SemanticAwareTargetAttention) \
        else esu_attention
    if g.kind == "none":
        return None
    if g.kind == "cosine_scl" and g.id_score == "none":
        return CosineGSU(top_k, chunk_size=g.chunk_size)
    if g.kind == "cosine_scl":  # the GSU-scoring ablations: MM cosine + an ID relevance
        return ScoreSumGSU(top_k, g.id_weight, id_attention if g.id_score == "attention" else None,
                           chunk_size=g.chunk_size)
    if g.kind == "scl_attention":
        return SCLAttentionGSU(scl_attention, top_k)
    if g.kind == "category":
        return CategoryGSU(top_k)
    if g.kind == "id_cosine":
        return EmbeddingCosineGSU(top_k, chunk_size=g.chunk_size)
    if g.kind == "attention":
        return AttentionGSU(id_attention, top_k)
    if g.kind == "cooccurrence_scl":
        return MISSGSU(top_k, chunk_size=g.chunk_size)
    if g.kind == "fusion":
        gate = esu_attention.fusion_gate if isinstance(esu_attention, FusionSemanticAttention) else None
        return FusionGSU(top_k, g.fusion, gate, chunk_size=g.chunk_size)
    raise ValueError(f"model.gsu.kind: unknown {g.kind!r}")


class LifelongCTRModel(nn.Module):
    """A two-stage lifelong-sequence CTR model whose GSU and ESU come from a `ModelSpec`.

    The whole computation after the pooled lookup is `score`, used as is by training
    (`search_and_score`: B samples of U users) and by serving
    (`muse_rec.serving.inference.InferenceModel`: one user, B candidates).

    Args:
        spec: the model section of a run spec (GSU kind, ESU parts, short-term branch, tower).
        table_sizes: rows per embedding table (the prepared data's vocab sizes).
        seq_len: L, the behaviours kept per user.
        device: where parameters are built; ``meta`` for DistributedModelParallel.
        scl_device: where the frozen SCL table is built; None = ``device`` (see `SparseArch`).
        positive_rate: the train split's click rate, the output logit's initial bias under
            ``parametrization.output_bias: train_prior``. None (planning, or weights that a
            checkpoint replaces next) = the output bias starts as every Linear's.
    """

    def __init__(self, spec: ModelSpec, table_sizes: Mapping[str, int], seq_len: int,
                 device: Optional[torch.device] = None, positive_rate: Optional[float] = None,
                 scl_device: Optional[torch.device] = None) -> None:
        super().__init__()
        self.spec = spec
        self.seq_len = seq_len
        g, e, s, pz = spec.gsu, spec.esu, spec.short_term, spec.parametrization
        self.uses_scl = spec.reads_scl
        self.sparse_arch = SparseArch(
            table_sizes,
            id_dim=spec.embedding_dim,
            dim_overrides={f: spec.small_dim for f in spec.small_features},
            init_std=spec.init_std,
            device=device,
            with_scl=self.uses_scl,
            scl_device=scl_device,
        )
        d_tok = self.sparse_arch.token_dim
        self.top_k = min(g.top_k, seq_len)
        self.recent = min(s.recent, seq_len)

        # ESU attention first: TWIN's GSU scores with the same projections (consistency).
        esu_attention: Optional[nn.Module] = None
        if e.attention == "ta":
            esu_attention = TargetAttention(d_tok, d_tok, e.attention_hidden, parametrization=pz, device=device)
        elif e.attention == "sa_ta" and e.similarity == "fusion":
            esu_attention = FusionSemanticAttention(
                d_tok, d_tok, e.attention_hidden, variant=e.sa_ta_variant, temperature_init=e.temperature_init,
                gate_init_mm=e.fusion_gate_init, parametrization=pz, device=device)
        elif e.attention == "sa_ta":
            esu_attention = SemanticAwareTargetAttention(
                d_tok, d_tok, e.attention_hidden, variant=e.sa_ta_variant,
                temperature_init=e.temperature_init, parametrization=pz, device=device)
        # Multimodal attention retrieval, TWIN's consistency applied to SCL vectors: the same
        # projections score the whole sequence (no grad) and attend over the K retrieved.
        scl_attention = (TargetAttention(SCL_DIM, SCL_DIM, e.attention_hidden, parametrization=pz,
                                         device=device)
                         if g.kind == "scl_attention" else None)
        self.gsu = build_gsu(spec, self.top_k, esu_attention, scl_attention)
        output_bias = (prior_logit(positive_rate)
                       if pz.output_bias == "train_prior" and positive_rate is not None else None)
        self.over_arch = OverArch(spec, self.sparse_arch.pooled_dim, d_tok, self.gsu is not None, self.uses_scl,
                                  esu_attention, scl_attention, make_similarity(spec, self.gsu),
                                  output_bias=output_bias, device=device)

    def lookups_per_sample(self) -> Dict[str, float]:
        """Ids each embedding feature looks up per training sample, at the spec's worst case: every
        sample its own user, with a full history of ``seq_len`` behaviours (all with SCL vectors).

        TorchRec's planner calls this a feature's pooling factor and costs each table's lookups
        and all-to-alls with it; without it every table counts one id per sample, and the planner
        placed the item table (~100 ids per sample) whole on one rank next to tables of one id.
        """
        L, gsu = float(self.seq_len), self.gsu
        retrieved = float(gsu.slots) if gsu is not None else 0.0  # DIN: one invalid slot, no id
        # An ID-scoring GSU also looks the whole history and the target up without gradient,
        # through the gsu_* features (`SparseArch.sequence_tokens_no_grad`).
        scored = L + 1.0 if gsu is not None and gsu.reads_id_tokens else 0.0
        lookups = {f: 1.0 for f in POOLED_FEATURES}
        for item, cat, n in ((TARGET_ITEM, TARGET_CAT, 1.0), (GSU_ITEM, GSU_CAT, retrieved + scored),
                             (RECENT_ITEM, RECENT_CAT, float(self.recent))):
            lookups[item] = lookups[cat] = n
        if self.uses_scl:
            lookups.update({SCL_TARGET_FEATURE: 1.0, SCL_SEQ_FEATURE: L})
        return lookups

    # ------------------------------------------------------------------------------------------
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
        """Everything after the pooled lookup: group the batch by user, then `score`: ``[B]`` logits."""
        pooled = self.sparse_arch.in_feature_order(pooled_kt).values()  # [B, P], fixed column order
        return self.score(pooled, batch.target_item, batch.target_cat, Histories.of(batch))

    def score(self, pooled: torch.Tensor, target_item: torch.Tensor, target_cat: torch.Tensor,
              hist: Histories, scl_seq: Optional[torch.Tensor] = None) -> torch.Tensor:
        """THE forward after the pooled lookup, for training and serving alike.

        Args:
            pooled: ``[B, P]`` pooled features in `POOLED_FEATURES` column order.
            target_item, target_cat: ``[B]`` int64 target rows.
            hist: the histories ``[U, L]`` and each sample's row (U = 1 when serving).
            scl_seq: ``[U, L, 128]`` SCL vectors of the histories when the caller has them (the
                Ranker's cache; zeros at padding); None = look them up.

        Returns:
            ``[B]`` logits.
        """
        R = self.recent
        L = hist.items.shape[1]
        scl_t = None
        if self.uses_scl:  # [B, 128] targets, [U, L, 128] one history per distinct user
            if scl_seq is None:
                scl_t, scl_seq = self.sparse_arch.scl_vectors(target_item, hist.items, hist.mask)
            else:
                scl_t, _ = self.sparse_arch.scl_vectors(target_item, hist.items[:, :0], hist.mask[:, :0])
        else:
            scl_seq = None
        search = SearchInputs(hist, target_item, target_cat, scl_t, scl_seq,
                              id_token_fn=lambda: self._id_tokens_no_grad(target_item, target_cat, hist))
        res: Optional[GSUResult] = self.gsu.retrieve(search) if self.gsu is not None else None

        B = target_item.shape[0]
        if res is None:  # DIN: no long-term search (one invalid slot)
            gsu_items = target_item.new_zeros(B, 1)
            gsu_valid = torch.zeros(B, 1, dtype=torch.bool, device=gsu_items.device)
            gsu_cats = gsu_items
        else:
            gsu_items, gsu_cats, gsu_valid = hist.at(hist.items, res.indices), hist.at(hist.cats, res.indices), res.valid
        # The newest min(R, L) positions: a history shorter than R (a caller of `InferenceModel` that does
        # not pad to R) has no more; ``L - R`` would be a negative start, which slices the newest R - L only.
        newest = max(L - R, 0)
        rec_items = hist.per_sample(hist.items[:, newest:])
        rec_cats = hist.per_sample(hist.cats[:, newest:])
        rec_mask = hist.per_sample(hist.mask[:, newest:])
        tok = self.sparse_arch.id_tokens(target_item, target_cat, gsu_items, gsu_cats,
                                         gsu_valid, rec_items, rec_cats, rec_mask)
        return self.over_arch(pooled, tok.target, tok.gsu, tok.recent, rec_mask, res, search)

    def _id_tokens_no_grad(self, target_item: torch.Tensor, target_cat: torch.Tensor, h: Histories
                           ) -> Tuple[torch.Tensor, torch.Tensor]:
        """ID tokens of the whole histories ``[U, L, D_tok]`` and of the targets ``[B, D_tok]``,
        without gradient: ID-embedding GSUs read them, and no row they touch is updated."""
        seq_tok = self.sparse_arch.sequence_tokens_no_grad(h.items, h.cats, h.mask)
        tgt = self.sparse_arch.sequence_tokens_no_grad(
            target_item.unsqueeze(1), target_cat.unsqueeze(1),
            torch.ones_like(target_item, dtype=torch.bool).unsqueeze(1))[:, 0]
        return seq_tok, tgt


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
                      device: Optional[torch.device] = None,
                      positive_rate: Optional[float] = None,
                      scl_device: Optional[torch.device] = None) -> LifelongCTRTrain:
    """The trainable model of a spec, ready for `shard_model` (build it on ``meta``).

    ``positive_rate``: the train split's click rate (`PreparedData.positive_rate`), for the output
    logit's prior; see `LifelongCTRModel`. ``scl_device``: where the frozen SCL table is built (None = ``device``).
    """
    return LifelongCTRTrain(LifelongCTRModel(spec, table_sizes, seq_len, device=device,
                                             positive_rate=positive_rate, scl_device=scl_device))

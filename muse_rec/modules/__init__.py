"""Small dense modules of MUSE and its baselines (pure torch; no TorchRec, no sharding).

GSUs (retrieve K of L behaviours, no gradient through the choice) return a `GSUResult`;
ESUs (SimTier, target attentions) and the tower consume plain ``[B, K, D]`` tensors.
See docs/modules.md for the conventions and how the model wires them.
"""
from muse_rec.modules.attention import SemanticAwareTargetAttention, TargetAttention, masked_softmax
from muse_rec.modules.cosine import cosine_at
from muse_rec.modules.din import DINAttention
from muse_rec.modules.gsu import CosineGSU, EmbeddingCosineGSU, ScoreSumGSU, reference_cosine_topk
from muse_rec.modules.gsu_baselines import (
    MISSGSU,
    AttentionGSU,
    CategoryGSU,
    CooccurrenceGSU,
    SCLAttentionGSU,
    merge_gsu_results,
)
from muse_rec.modules.search import Histories, SearchInputs
from muse_rec.modules.selection import GSUResult
from muse_rec.modules.simtier import SimTier
from muse_rec.modules.tower import Dice, MLPTower, masked_mean

__all__ = [
    "AttentionGSU",
    "CategoryGSU",
    "CooccurrenceGSU",
    "CosineGSU",
    "DINAttention",
    "Dice",
    "EmbeddingCosineGSU",
    "GSUResult",
    "Histories",
    "MISSGSU",
    "SCLAttentionGSU",
    "ScoreSumGSU",
    "SearchInputs",
    "MLPTower",
    "SemanticAwareTargetAttention",
    "SimTier",
    "TargetAttention",
    "cosine_at",
    "masked_mean",
    "masked_softmax",
    "merge_gsu_results",
    "reference_cosine_topk",
]

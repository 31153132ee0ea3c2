"""`InferenceModel`: the one-user, many-candidates program around a trained `LifelongCTRModel`.

At serving time the user is fixed for a request (MUSE.md, "Deployment"): one behaviour
history ``[1, L]`` is scored against B candidates. This module only turns the request into the
model's inputs and calls `LifelongCTRModel.score`, the very function training runs after its
pooled lookup, with the histories of `Histories.one_user` (U = 1, every candidate pointing at
row 0). There is no second feature list and no second GSU: every GSU's ``retrieve`` and the
`OverArch` take their static-shape, exportable path when U = 1 (one GEMM against the shared
history; fixed-length lookups in eval mode), and the grouped path of training otherwise.

Inputs (the exported program's signature, all int64 unless stated)::

    seq_items, seq_cats   [1, L]   right-aligned behaviour rows, 0 = padding
    seq_length            [1]      real behaviours (<= L)
    user_fields           [1, 6]   rows of user_id, user_f1..user_f5 (0 = unknown)
    cand_items, cand_cats [B]      candidate item rows and their category rows
    cand_attrs            [B, 2]   candidate item_f213, item_f214 rows
    seq_scl               [1, L, 128] int8  the history's SCL vectors, zeros at padding (only for
                                   models that read SCL vectors; the Ranker prefetches them, as in
                                   the paper's deployment, so a request does not look L rows up)
    -> scores             [B]      float32 click probabilities
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torchrec import KeyedJaggedTensor

from muse_rec.data.batch import ITEM_FEATURES, POOLED_FEATURES, USER_FEATURES
from muse_rec.models.ctr_model import LifelongCTRModel
from muse_rec.models.sparse_arch import lookup_rows
from muse_rec.modules import Histories

# Bound on candidates x history positions per forward of a model whose GSU scores the whole history as
# fp32 ``[B, L]`` matrices (its GSU's ``scores_whole_history``): 2^24 scores, 64 MiB per matrix, so the
# default 1,024 candidates per pass up to L = 16K and fewer beyond. At L = 100K and 1,000 candidates,
# 1,024 per pass peaked at 4.3 GB (TWIN) and 1.3 GB (SIM-soft), 128-167 per pass at 1.3 / 1.1 GB, and
# ran faster (TWIN 2.5 s vs 2.9-4.1 s, SIM-soft 0.87 s vs 1.48 s). The float Ranker splits requests by
# it, and `muse-rec export` makes it an exported program's largest candidate count.
FULL_SCORES_PER_PASS = 1 << 24


class InferenceModel(nn.Module):
    """Score B candidates for one user with a trained `LifelongCTRModel` (its own modules).

    Args:
        model: the trained model (eval mode is set here). Its submodules are shared, so
            quantizing its tables afterwards (`muse_rec.serving.quantize`) quantizes this too.

    Example::

        inf = InferenceModel(train_model.model)
        p = inf(seq_items, seq_cats, seq_length, user_fields, cand_items, cand_cats, cand_attrs)  # [B]
    """

    def __init__(self, model: LifelongCTRModel) -> None:
        super().__init__()
        self.model = model.eval()
        self.top_k = model.top_k
        self.recent = model.recent
        self.seq_len = model.seq_len

    def candidates_per_pass(self, limit: int, seq_len: int) -> int:
        """The most candidates one forward should take at history length ``seq_len``: ``limit``, and
        for a model whose GSU holds ``[B, L]`` tensors of every history position (``scores_whole_history``:
        TWIN, SIM-soft, SIM-hard, MISS, the ID-score ablations, fusion) at most
        ``FULL_SCORES_PER_PASS // seq_len`` (at least 1). MUSE's SCL cosine GSU streams the history in
        chunks at a fixed cost per forward (at L = 100K, 167 candidates per pass took 1.7x the time of
        1,024), so it is not bounded; no GSU (DIN): nothing to bound."""
        gsu = self.model.gsu
        if gsu is None or not gsu.scores_whole_history:
            return limit
        return max(1, min(limit, FULL_SCORES_PER_PASS // seq_len))

    @staticmethod
    def seq_mask(seq_items: torch.Tensor, seq_length: torch.Tensor) -> torch.Tensor:
        """``[1, L]`` bool, True at the ``seq_length`` newest (rightmost) positions."""
        L = seq_items.shape[1]
        pos = torch.arange(L, device=seq_items.device)
        return pos.unsqueeze(0) >= (L - seq_length).unsqueeze(1)

    # ---- the program ------------------------------------------------------------------------
    def forward(self, seq_items: torch.Tensor, seq_cats: torch.Tensor, seq_length: torch.Tensor,
                user_fields: torch.Tensor, cand_items: torch.Tensor, cand_cats: torch.Tensor,
                cand_attrs: torch.Tensor, seq_scl: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Click probabilities ``[B]`` (see the module docstring for the shapes).

        ``seq_scl`` ``[1, L, 128]`` int8: the history's SCL vectors as the Ranker prefetches them
        (zeros at padding); None = look them up in the model's SCL table.
        """
        mask = self.seq_mask(seq_items, seq_length)
        return torch.sigmoid(self.logits(seq_items, seq_cats, mask, seq_scl, user_fields,
                                         cand_items, cand_cats, cand_attrs))

    def logits(self, seq_items: torch.Tensor, seq_cats: torch.Tensor, seq_mask: torch.Tensor,
               seq_scl: Optional[torch.Tensor], user_fields: torch.Tensor, cand_items: torch.Tensor,
               cand_cats: torch.Tensor, cand_attrs: torch.Tensor) -> torch.Tensor:
        """Logits ``[B]``: `LifelongCTRModel.score` for one history and B candidates.

        `seq_scl` ``[1, L, 128]`` (any of int8/fp16/fp32 values, zeros at padding) may come from
        a cache (the Ranker gathers it from the prepared int8 table once per user); None = the
        model looks the history's SCL vectors up itself (ignored by models without SCL).
        """
        pooled = self._pooled(user_fields, cand_attrs)  # [B, P]
        hist = Histories.one_user(seq_items, seq_cats, seq_mask, cand_items.shape[0])
        return self.model.score(pooled, cand_items, cand_cats, hist, scl_seq=seq_scl)

    # ---- pieces -----------------------------------------------------------------------------
    def _pooled(self, user_fields: torch.Tensor, cand_attrs: torch.Tensor) -> torch.Tensor:
        """``[B, P]`` pooled features: the user's 6 rows repeated per candidate + its 2 item rows."""
        B = cand_attrs.shape[0]
        columns = [user_fields[0, j].expand(B) for j in range(len(USER_FEATURES))]
        columns += [cand_attrs[:, j] for j in range(len(ITEM_FEATURES))]
        kjt = KeyedJaggedTensor(
            keys=list(POOLED_FEATURES),
            values=torch.cat(columns).to(torch.int64),
            lengths=torch.ones(len(POOLED_FEATURES) * B, dtype=torch.int32, device=cand_attrs.device),
        )
        return lookup_rows(self.model.sparse_arch.pooled(kjt).values(), B)

"""`InferenceModel`: the one-user, many-candidates forward of a trained `LifelongCTRModel`.

At serving time the user is fixed for a request (MUSE.md, "Deployment"): one behaviour
history ``[1, L]`` is scored against B candidates. The training forward groups a batch by
user with data-dependent Python (``torch.unique``, loops over ``.tolist()``) and builds its
KJTs with boolean masks (data-dependent sizes), none of which `torch.export` can trace. This
module computes the same function for one user with static-shape code only, composed of the
trained model's own submodules (same parameters, no copies):

* GSU: `shared_keys_cosine_topk` (one GEMM per chunk of the shared ``[L, 128]`` keys, running
  top-K) instead of the grouped mat-vec;
* ID lookups: every slot is looked up (fixed KJT lengths) and masked slots are zeroed
  afterwards, which equals `SparseArch.id_tokens` (it leaves masked slots out and scatters
  zeros); the recent-R ids are looked up once, not B times;
* recent SimTier: the cosines of the B targets with the R newest behaviours in one GEMM.

Equivalence with the training forward is tested (tests/serving/test_inference_parity.py).

Inputs (the exported program's signature, all int64 unless stated)::

    seq_items, seq_cats   [1, L]   right-aligned behaviour rows, 0 = padding
    seq_length            [1]      real behaviours (<= L)
    user_fields           [1, 6]   rows of user_id, user_f1..user_f5 (0 = unknown)
    cand_items, cand_cats [B]      candidate item rows and their category rows
    cand_attrs            [B, 2]   candidate item_f213, item_f214 rows
    -> scores             [B]      float32 click probabilities
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torchrec import KeyedJaggedTensor

from muse_rec.data.batch import ITEM_FEATURES, POOLED_FEATURES, USER_FEATURES
from muse_rec.models.ctr_model import LifelongCTRModel
from muse_rec.models.frozen_scl import SCL_SEQ_FEATURE, SCL_TARGET_FEATURE
from muse_rec.models.sparse_arch import ID_FEATURES
from muse_rec.modules import SemanticAwareTargetAttention, masked_mean
from muse_rec.modules.cosine import finish_cosine, shared_keys_cosine_topk
from muse_rec.modules.selection import GSUResult, decode_cosine_selection

# GSU kinds whose one-user path is implemented (the others score with per-sample Python).
SERVABLE_GSU_KINDS: Tuple[str, ...] = ("cosine_scl", "none")


def check_servable(model: LifelongCTRModel) -> None:
    """Raise a clear error for spec choices the one-user forward does not implement."""
    kind = model.spec.gsu.kind
    if kind not in SERVABLE_GSU_KINDS:
        raise NotImplementedError(
            f"model.gsu.kind {kind!r}: the serving forward implements {list(SERVABLE_GSU_KINDS)} "
            "(MUSE and its ESU ablations, DIN); serve other baselines with `muse-rec evaluate`")


class InferenceModel(nn.Module):
    """Score B candidates for one user with the parameters of a trained `LifelongCTRModel`.

    Args:
        model: the trained model (eval mode is set here). Its submodules are shared, so
            quantizing its tables afterwards (`muse_rec.serving.quantize`) quantizes this too.

    Example::

        inf = InferenceModel(train_model.model)
        p = inf(seq_items, seq_cats, seq_length, user_fields, cand_items, cand_cats, cand_attrs)  # [B]
    """

    def __init__(self, model: LifelongCTRModel) -> None:
        super().__init__()
        check_servable(model)
        self.model = model.eval()
        self.top_k = model.top_k
        self.recent = model.recent
        self.seq_len = model.seq_len

    # ---- per-user part (the Ranker caches its result) -------------------------------------
    def sequence_scl(self, seq_items: torch.Tensor, seq_mask: torch.Tensor) -> torch.Tensor:
        """SCL vectors of the history: ``[1, L]`` rows, ``[1, L]`` bool -> ``[1, L, 128]``, 0 at padding."""
        _, seq = self._scl_lookup(seq_items.new_zeros(1), seq_items, seq_mask)
        return seq

    @staticmethod
    def seq_mask(seq_items: torch.Tensor, seq_length: torch.Tensor) -> torch.Tensor:
        """``[1, L]`` bool, True at the ``seq_length`` newest (rightmost) positions."""
        L = seq_items.shape[1]
        pos = torch.arange(L, device=seq_items.device)
        return pos.unsqueeze(0) >= (L - seq_length).unsqueeze(1)

    # ---- the program ------------------------------------------------------------------------
    def forward(self, seq_items: torch.Tensor, seq_cats: torch.Tensor, seq_length: torch.Tensor,
                user_fields: torch.Tensor, cand_items: torch.Tensor, cand_cats: torch.Tensor,
                cand_attrs: torch.Tensor) -> torch.Tensor:
        """Click probabilities ``[B]`` (see the module docstring for the shapes)."""
        mask = self.seq_mask(seq_items, seq_length)
        seq_scl = self.sequence_scl(seq_items, mask) if self.model.uses_scl else None
        return torch.sigmoid(self.logits(seq_items, seq_cats, mask, seq_scl, user_fields,
                                         cand_items, cand_cats, cand_attrs))

    def logits(self, seq_items: torch.Tensor, seq_cats: torch.Tensor, seq_mask: torch.Tensor,
               seq_scl: Optional[torch.Tensor], user_fields: torch.Tensor, cand_items: torch.Tensor,
               cand_cats: torch.Tensor, cand_attrs: torch.Tensor) -> torch.Tensor:
        """Logits ``[B]`` given the history's SCL vectors ``[1, L, 128]`` (any of int8/fp16/fp32 values).

        `seq_scl` may come from a cache (the Ranker gathers it from the prepared int8 table once
        per user); None when the model uses no SCL vectors.
        """
        m = self.model
        L, R = seq_items.shape[1], self.recent
        B = cand_items.shape[0]
        pooled = self._pooled(user_fields, cand_attrs)  # [B, P]
        scl_t = None
        if m.uses_scl:
            if seq_scl is None:
                raise ValueError("this model reads SCL vectors: pass seq_scl [1, L, 128]")
            scl_t, _ = self._scl_lookup(cand_items, seq_items[:, :0], seq_mask[:, :0])

        res: Optional[GSUResult] = None
        if m.gsu is not None:
            vals, idx = shared_keys_cosine_topk(scl_t, seq_scl[0], seq_mask[0], self.top_k, m.gsu.chunk_size)
            res = decode_cosine_selection(vals, idx, self.top_k)
            gsu_items = seq_items[0][res.indices]  # [B, K]
            gsu_cats = seq_cats[0][res.indices]
            gsu_valid = res.valid
        else:  # DIN: no long-term search (the training forward's one zero slot)
            gsu_items = cand_items.new_zeros(B, 1)
            gsu_cats = gsu_items
            gsu_valid = torch.zeros(B, 1, dtype=torch.bool, device=cand_items.device)
        rec_mask1 = seq_mask[:, L - R:]  # [1, R]
        tgt_tok, gsu_tok, rec_tok1 = self._id_tokens(cand_items, cand_cats, gsu_items, gsu_cats, gsu_valid,
                                                     seq_items[0, L - R:], seq_cats[0, L - R:], rec_mask1[0])
        rec_tok = rec_tok1.expand(B, -1, -1)
        rec_mask = rec_mask1.expand(B, -1)

        parts: List[torch.Tensor] = [pooled, tgt_tok]
        if res is not None:
            sim, sim_ok = self._similarities(res, tgt_tok, gsu_tok)
            if m.simtier is not None:
                parts.append(m.simtier(sim, sim_ok))
            if isinstance(m.esu_attention, SemanticAwareTargetAttention):
                parts.append(m.esu_attention(tgt_tok, gsu_tok, sim, res.valid))
            elif m.esu_attention is not None:
                parts.append(m.esu_attention(tgt_tok, gsu_tok, res.valid))
        if m.recent_simtier is not None:
            cos, has_vec = self._recent_cosine(scl_t, seq_scl[0, L - R:])
            rec_ok = has_vec & rec_mask
            parts.append(m.recent_simtier(torch.where(rec_ok, cos, 0.0), rec_ok))
        if m.recent_attention is not None:
            parts.append(m.recent_attention(tgt_tok, rec_tok, rec_mask))
        if m.spec.short_term.mean_pool:
            parts.append(masked_mean(rec_tok1, rec_mask1).expand(B, -1))
            if res is not None:
                parts.append(masked_mean(gsu_tok, res.valid))
        return m.tower(torch.cat(parts, dim=-1))

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
        return _rows(self.model.sparse_arch.pooled(kjt).values(), B)

    def _scl_lookup(self, target_items: torch.Tensor, seq_items: torch.Tensor, seq_mask: torch.Tensor
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Frozen SCL rows: targets ``[N]`` -> ``[N, 128]``; one history ``[1, S]`` -> ``[1, S, 128]``.

        One KJT of stride N: the target feature has one id per row, the history sits in row 0
        of the sequence feature. Padding positions are looked up (row 0 is all zero) and zeroed.
        """
        scl = self.model.sparse_arch.scl
        N, S = target_items.shape[0], seq_items.shape[1]
        dev = target_items.device
        seq_lengths = _first_row_only(N, S, dev)
        kjt = KeyedJaggedTensor(
            keys=[SCL_TARGET_FEATURE, SCL_SEQ_FEATURE],
            values=torch.cat([target_items, seq_items[0]]).to(torch.int64),
            lengths=torch.cat([torch.ones(N, dtype=torch.int32, device=dev), seq_lengths]),
        )
        with torch.no_grad():
            out = scl.collection(kjt)
        target = _rows(out[SCL_TARGET_FEATURE].values(), N).to(scl.dtype)
        seq = _rows(out[SCL_SEQ_FEATURE].values(), S).to(scl.dtype).view(1, S, scl.dim)
        return target, seq * seq_mask.unsqueeze(2).to(seq.dtype)

    def _id_tokens(self, cand_items: torch.Tensor, cand_cats: torch.Tensor, gsu_items: torch.Tensor,
                   gsu_cats: torch.Tensor, gsu_valid: torch.Tensor, rec_items: torch.Tensor,
                   rec_cats: torch.Tensor, rec_mask: torch.Tensor
                   ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[item ‖ category]`` tokens: targets ``[B, D]``, picks ``[B, K, D]``, recent ``[1, R, D]``.

        All slots are looked up with fixed lengths (K per row; the R recent ids once, in row
        0) and masked slots are zeroed: the values of `SparseArch.id_tokens`.
        """
        B, K = gsu_items.shape
        R = rec_items.shape[0]
        dev = cand_items.device
        ones = torch.ones(B, dtype=torch.int32, device=dev)
        k_len = torch.full((B,), K, dtype=torch.int32, device=dev)
        r_len = _first_row_only(B, R, dev)
        kjt = KeyedJaggedTensor(
            keys=list(ID_FEATURES),  # target/gsu/recent items, then the same for categories
            values=torch.cat([cand_items, gsu_items.reshape(-1), rec_items,
                              cand_cats, gsu_cats.reshape(-1), rec_cats]).to(torch.int64),
            lengths=torch.cat([ones, k_len, r_len, ones, k_len, r_len]),
        )
        out = self.model.sparse_arch.ids(kjt)
        v = [_rows(out[f].values(), n) for f, n in zip(ID_FEATURES, [B, B * K, R] * 2)]
        D = v[0].shape[1]
        target = torch.cat([v[0], v[3]], dim=-1)
        gsu = torch.cat([v[1].view(B, K, D), v[4].view(B, K, D)], dim=-1) * gsu_valid.unsqueeze(2).to(v[1].dtype)
        recent = torch.cat([v[2], v[5]], dim=-1) * rec_mask.unsqueeze(1).to(v[2].dtype)
        return target, gsu, recent.unsqueeze(0)

    def _similarities(self, res: GSUResult, tgt_tok: torch.Tensor, gsu_tok: torch.Tensor
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
        """R ``[B, K]`` and where it is defined (as `LifelongCTRModel._similarities`)."""
        if self.model.spec.esu.similarity == "id":
            with torch.no_grad():
                cos = F.cosine_similarity(gsu_tok, tgt_tok.unsqueeze(1), dim=-1, eps=1e-12)
            return torch.where(res.valid, cos, 0.0), res.valid
        return res.scores, res.has_score  # the cosine GSU's own cosines

    @staticmethod
    def _recent_cosine(query: torch.Tensor, keys: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Cosine ``[B, R]`` of B targets with the R newest behaviours (as `grouped_cosine`)."""
        with torch.no_grad():
            q = query.to(torch.float32)
            k = keys.to(torch.float32)
            dots = q @ k.t()
            return finish_cosine(dots, torch.linalg.vector_norm(k, dim=1).unsqueeze(0),
                                  torch.linalg.vector_norm(q, dim=1, keepdim=True))


def _first_row_only(rows: int, length: int, device: torch.device) -> torch.Tensor:
    """KJT lengths ``[rows]`` int32: ``length`` ids in row 0, none in the others.

    Built without a ``rows - 1`` sized tensor, whose size would add a ``rows >= 3`` guard to
    an exported program with a dynamic candidate count.
    """
    first = torch.arange(rows, device=device) == 0
    return first.to(torch.int32) * length


def _rows(x: torch.Tensor, n) -> torch.Tensor:
    """``x`` with its first dim declared equal to ``n``.

    A TorchRec lookup's output size comes from summing KJT lengths, which `torch.export`
    sees as a data-dependent size; stating it (a no-op check in eager mode) lets the
    exported graph reshape and broadcast without guards.
    """
    torch._check(x.shape[0] == n, lambda: f"lookup returned {x.shape[0]} rows, expected {n}")
    return x

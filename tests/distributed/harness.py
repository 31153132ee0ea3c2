"""A small CTR model around `SparseArch` for distributed tests: real GSU, real lookups.

It exercises every lookup path the MUSE-family models use in one forward: the frozen SCL
lookup, a cosine top-K GSU over it, the trainable ID lookup of the selected + recent
behaviours, and the no-grad whole-sequence ID lookup (SIM-soft / TWIN style).
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import nn

from muse_rec.data.batch import POOLED_FEATURES, pooled_kjt
from muse_rec.models.sparse_arch import SparseArch


def table_sizes(items: int = 200, cats: int = 9, pooled_rows: int = 13) -> Dict[str, int]:
    return {"item": items, "category": cats, **{f: pooled_rows for f in POOLED_FEATURES}}


class RetrievalHarness(nn.Module):
    """logit = <target token, mean(selected + recent tokens)> + linear(pooled) + 1e-3 * sum(whole-seq tokens).

    Args:
        sizes: table sizes for `SparseArch`; k: GSU top-K; recent: newest behaviours used.
    """

    def __init__(self, sizes: Dict[str, int], k: int = 3, recent: int = 2, device: torch.device | None = None) -> None:
        super().__init__()
        self.sparse = SparseArch(sizes, dim_overrides={"user_f1": 8}, device=device)
        self.k, self.recent = k, recent
        # Dense params on a real device even when the tables are on meta (DMP moves them).
        dense_dev = None if device is None or device.type == "meta" else device
        self.head = nn.Linear(self.sparse.pooled_dim, 1, device=dense_dev)

    def select(self, target_item: torch.Tensor, seq_items: torch.Tensor, seq_mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Cosine top-K over SCL vectors -> (``[B, K]`` positions, ``[B, K]`` valid)."""
        tgt, seq = self.sparse.scl_vectors(target_item, seq_items, seq_mask)
        score = torch.cosine_similarity(seq.float(), tgt.float().unsqueeze(1), dim=-1)
        score = score.masked_fill(~seq_mask, -2.0)
        top = score.topk(self.k, dim=1)
        return top.indices, top.values > -2.0

    def forward(self, batch: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        seq_items, seq_cats, seq_mask = batch["seq_items"], batch["seq_cats"], batch["seq_mask"]
        pos, valid = self.select(batch["target_item"], seq_items, seq_mask)
        R = self.recent
        tok = self.sparse.id_tokens(
            batch["target_item"], batch["target_cat"],
            seq_items.gather(1, pos), seq_cats.gather(1, pos), valid,
            seq_items[:, -R:], seq_cats[:, -R:], seq_mask[:, -R:],
        )
        whole = self.sparse.sequence_tokens_no_grad(seq_items, seq_cats, seq_mask)
        behaviours = torch.cat([tok.gsu, tok.recent], dim=1)
        logit = (tok.target.unsqueeze(1) * behaviours).sum(-1).mean(1)
        logit = logit + self.head(self.sparse.pooled_embeddings(batch["pooled"]).values()).squeeze(1)
        # A small real weight: were the whole-sequence lookup differentiable, every row would move.
        logit = logit + 1e-3 * whole.sum(dim=(1, 2))
        loss = nn.functional.binary_cross_entropy_with_logits(logit, batch["labels"])
        return loss, logit


def make_batch(B: int, L: int, sizes: Dict[str, int], seed: int, unique_items: bool = True) -> Dict[str, object]:
    """Right-aligned sequences; with `unique_items` no item row repeats within the batch."""
    g = torch.Generator().manual_seed(seed)
    n_items = sizes["item"]
    if unique_items:
        need = B * (L + 1)
        if need >= n_items:
            raise ValueError(f"unique_items needs {need} < {n_items} item rows")
        perm = torch.randperm(n_items - 1, generator=g)[:need] + 1
        target_item, seq_items = perm[:B], perm[B:].view(B, L)
    else:
        target_item = torch.randint(1, n_items, (B,), generator=g)
        seq_items = torch.randint(1, n_items, (B, L), generator=g)
    lengths = torch.randint(L // 2, L + 1, (B,), generator=g)
    seq_mask = torch.arange(L).unsqueeze(0) >= (L - lengths).unsqueeze(1)
    seq_items = seq_items * seq_mask
    seq_cats = torch.randint(1, sizes["category"], (B, L), generator=g) * seq_mask
    return {
        "labels": (torch.rand(B, generator=g) < 0.5).float(),
        "pooled": pooled_kjt(torch.randint(0, sizes[POOLED_FEATURES[0]], (B, len(POOLED_FEATURES)), generator=g)),
        "target_item": target_item,
        "target_cat": torch.randint(1, sizes["category"], (B,), generator=g),
        "seq_items": seq_items,
        "seq_cats": seq_cats,
        "seq_mask": seq_mask,
    }

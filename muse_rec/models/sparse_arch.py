"""`SparseArch`: every embedding table of the CTR models, in three TorchRec collections.

* ``pooled``: an EmbeddingBagCollection, one table per one-id-per-sample feature
  (`POOLED_FEATURES`); input is `Batch.pooled` as is.
* ``ids``: an EmbeddingCollection with the trainable item and category tables. The target
  shares the behaviour tables (as in the paper): table ``item`` serves features
  ``target_item``/``gsu_item``/``recent_item``, table ``category`` the matching ``*_cat``.
  A behaviour token is ``[item emb ‖ category emb]`` (``D_tok = item_dim + cat_dim``).
* ``scl``: the frozen multimodal table (`FrozenSCL`), never updated.

Which ids reach the trainable EC decides which rows a fused optimizer moves, so:
`id_tokens` puts only the valid (selected) ids in its KJT, and `sequence_tokens_no_grad`
(for GSUs that score the whole sequence with ID embeddings: SIM-soft, TWIN) runs the same
EC under ``torch.no_grad()``, which neither builds a backward nor updates anything.
Both calls use the same six features in the same order, because a sharded EC fixes its
feature order on the first call. While an eval model is traced (`torch.export` of the serving
program) both look every slot up with fixed lengths and zero the masked ones: the same values with
static shapes.
"""
from __future__ import annotations

import functools
from typing import Dict, List, Mapping, NamedTuple, Optional

import numpy as np
import torch
from torch import nn
from torchrec import (
    DataType,
    EmbeddingBagCollection,
    EmbeddingBagConfig,
    EmbeddingCollection,
    EmbeddingConfig,
    KeyedJaggedTensor,
    KeyedTensor,
    PoolingType,
)

from muse_rec.data.batch import POOLED_FEATURES
from muse_rec.data.schema import SCL_DIM
from muse_rec.models.frozen_scl import FrozenSCL
from muse_rec.models.sparse_ids import dense_from_jagged, masked_kjt, traced

ITEM_TABLE = "item"
CATEGORY_TABLE = "category"
TARGET_ITEM, GSU_ITEM, RECENT_ITEM = "target_item", "gsu_item", "recent_item"
TARGET_CAT, GSU_CAT, RECENT_CAT = "target_cat", "gsu_cat", "recent_cat"
# Fixed KJT key order of the `ids` EC (see module docstring).
ID_FEATURES: List[str] = [TARGET_ITEM, GSU_ITEM, RECENT_ITEM, TARGET_CAT, GSU_CAT, RECENT_CAT]
REQUIRED_TABLES: List[str] = [ITEM_TABLE, CATEGORY_TABLE] + POOLED_FEATURES


def lookup_rows(x: torch.Tensor, n) -> torch.Tensor:
    """``x`` (a lookup's output values) with its first dim declared equal to ``n``.

    A TorchRec lookup's output size is the sum of the KJT's lengths, which `torch.export` sees
    as data-dependent; stating it (a no-op check in eager mode) lets the exported graph reshape
    and broadcast without guards.
    """
    torch._check(x.shape[0] == n, lambda: f"lookup returned {x.shape[0]} rows, expected {n}")
    return x


class IdTokens(NamedTuple):
    """ID tokens ``[item ‖ category]`` of one forward.

    target: ``[B, D_tok]``; gsu: ``[B, K, D_tok]``; recent: ``[B, R, D_tok]``; zeros at
    masked positions.
    """

    target: torch.Tensor
    gsu: torch.Tensor
    recent: torch.Tensor


class SparseArch(nn.Module):
    """All embedding tables of a MUSE-family model.

    Args:
        table_sizes: rows per table, row 0 = padding/unknown included. Keys: ``item``,
            ``category`` and every name in `POOLED_FEATURES`. The SCL table has ``item`` rows.
        id_dim: default embedding width of ID tables (16 in the reference).
        dim_overrides: per-table widths, e.g. ``{"user_f1": 8, "user_f2": 8, "user_f3": 8}``
            (the reference uses 8 for three small user fields; which ones is a spec choice).
            ``item`` and ``category`` must keep equal widths (one EmbeddingCollection).
        scl_dim: width of the frozen multimodal vectors (128 for Taobao-MM).
        scl_data_type: SCL storage (FP16 default: int8 values are exact in fp16).
        init_std: std of the truncated-normal init of trainable tables (1e-3 in the
            reference), truncated at +-2 std.
        device: where tables are built; ``meta`` for sharding with DMP.
        scl_device: where the SCL table is built; None = ``device`` (``meta``: none is allocated, for a
            caller that gives the table other storage, as `muse-rec export`'s int8 check does).

    Example::

        arch = SparseArch(sizes, dim_overrides={"user_f1": 8}, device=torch.device("meta"))
        pooled = arch.pooled_embeddings(batch.pooled)             # KeyedTensor [B, sum dims]
        tok = arch.id_tokens(batch.target_item, batch.target_cat, gsu_items, gsu_cats,
                             gsu_mask, recent_items, recent_cats, recent_mask)
    """

    def __init__(
        self,
        table_sizes: Mapping[str, int],
        id_dim: int = 16,
        dim_overrides: Optional[Mapping[str, int]] = None,
        scl_dim: int = SCL_DIM,
        scl_data_type: DataType = DataType.FP16,
        init_std: float = 1e-3,
        device: Optional[torch.device] = None,
        with_scl: bool = True,
        scl_device: Optional[torch.device] = None,
    ) -> None:
        super().__init__()
        overrides = dict(dim_overrides or {})
        missing = [t for t in REQUIRED_TABLES if t not in table_sizes]
        if missing:
            raise KeyError(f"table_sizes lacks {missing}; it needs {REQUIRED_TABLES}")
        unknown = sorted(set(overrides) - set(REQUIRED_TABLES))
        if unknown:
            raise KeyError(f"dim_overrides names unknown tables {unknown}; known: {REQUIRED_TABLES}")
        for name in REQUIRED_TABLES:
            if int(table_sizes[name]) < 1:
                raise ValueError(f"table_sizes[{name!r}] = {table_sizes[name]}: need >= 1 (row 0 = padding)")
        self.dims: Dict[str, int] = {t: int(overrides.get(t, id_dim)) for t in REQUIRED_TABLES}
        if self.dims[ITEM_TABLE] != self.dims[CATEGORY_TABLE]:
            # TorchRec requires one embedding_dim for all tables of an EmbeddingCollection.
            raise ValueError(
                f"item dim {self.dims[ITEM_TABLE]} != category dim {self.dims[CATEGORY_TABLE]}: "
                "both tables live in one EmbeddingCollection, which needs equal dims"
            )
        init = functools.partial(nn.init.trunc_normal_, std=init_std, a=-2 * init_std, b=2 * init_std)

        self.pooled = EmbeddingBagCollection(
            tables=[
                EmbeddingBagConfig(
                    name=f,
                    embedding_dim=self.dims[f],
                    num_embeddings=int(table_sizes[f]),
                    feature_names=[f],
                    pooling=PoolingType.SUM,  # one id per sample: SUM is the row itself
                    init_fn=init,
                )
                for f in POOLED_FEATURES
            ],
            device=device,
        )
        self.ids = EmbeddingCollection(
            tables=[
                EmbeddingConfig(
                    name=ITEM_TABLE,
                    embedding_dim=self.dims[ITEM_TABLE],
                    num_embeddings=int(table_sizes[ITEM_TABLE]),
                    feature_names=[TARGET_ITEM, GSU_ITEM, RECENT_ITEM],
                    init_fn=init,
                ),
                EmbeddingConfig(
                    name=CATEGORY_TABLE,
                    embedding_dim=self.dims[CATEGORY_TABLE],
                    num_embeddings=int(table_sizes[CATEGORY_TABLE]),
                    feature_names=[TARGET_CAT, GSU_CAT, RECENT_CAT],
                    init_fn=init,
                ),
            ],
            device=device,
        )
        # Only for a model that reads SCL vectors: at the full vocabulary the table is 58 GiB (fp16) to
        # shard and ~35 GB (int8) to ship in an exported ranker, dead weight for DIN or TWIN.
        self.scl = FrozenSCL(int(table_sizes[ITEM_TABLE]), scl_dim, scl_data_type,
                             device=device if scl_device is None else scl_device) if with_scl else None

    @property
    def token_dim(self) -> int:
        """``D_tok`` = item dim + category dim."""
        return self.dims[ITEM_TABLE] + self.dims[CATEGORY_TABLE]

    @property
    def pooled_dim(self) -> int:
        """Width of the concatenated pooled features."""
        return sum(self.dims[f] for f in POOLED_FEATURES)

    def pooled_embeddings(self, pooled: KeyedJaggedTensor) -> KeyedTensor:
        """Pooled features (`Batch.pooled`) -> KeyedTensor ``[B, pooled_dim]`` in `POOLED_FEATURES` order.

        A sharded EBC returns its keys grouped by sharding (table-wise tables per rank
        first); the columns are put back in the fixed order so ``.values()`` means the same
        thing whatever the plan.
        """
        return self.in_feature_order(self.pooled(pooled))

    @staticmethod
    def in_feature_order(kt: KeyedTensor) -> KeyedTensor:
        """The pooled EBC's output with its columns in `POOLED_FEATURES` order."""
        if kt.keys() == POOLED_FEATURES:
            return kt
        by_key = kt.to_dict()
        return KeyedTensor.from_tensor_list(POOLED_FEATURES, [by_key[f] for f in POOLED_FEATURES])

    def id_tokens(
        self,
        target_item: torch.Tensor,
        target_cat: torch.Tensor,
        gsu_items: torch.Tensor,
        gsu_cats: torch.Tensor,
        gsu_mask: torch.Tensor,
        recent_items: torch.Tensor,
        recent_cats: torch.Tensor,
        recent_mask: torch.Tensor,
    ) -> IdTokens:
        """Trainable ID tokens of the target, the GSU-selected and the recent behaviours.

        One EC call; only ids at True mask positions (and the B targets) are looked up, so
        a step updates exactly those rows.

        Args:
            target_item, target_cat: ``[B]`` int64.
            gsu_items, gsu_cats, gsu_mask: ``[B, K]`` rows retrieved by the GSU, bool mask.
            recent_items, recent_cats, recent_mask: ``[B, R]`` the most recent behaviours.
        """
        B = target_item.shape[0]
        one = torch.ones(B, 1, dtype=torch.bool, device=target_item.device)
        masks = [one, gsu_mask, recent_mask] * 2
        dense = self._lookup_ids(
            [target_item.reshape(B, 1), gsu_items, recent_items, target_cat.reshape(B, 1), gsu_cats, recent_cats],
            masks)
        return IdTokens(
            target=torch.cat([dense[TARGET_ITEM], dense[TARGET_CAT]], dim=-1).squeeze(1),
            gsu=torch.cat([dense[GSU_ITEM], dense[GSU_CAT]], dim=-1),
            recent=torch.cat([dense[RECENT_ITEM], dense[RECENT_CAT]], dim=-1),
        )

    def _lookup_ids(self, ids: List[torch.Tensor], masks: List[torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The `ID_FEATURES` looked up in the ``ids`` EC: per feature ``[N, n_f]`` -> ``[N, n_f, D]``, 0 where masked.

        Only the valid ids go into the KJT: in training a fused optimizer moves every row it sees,
        and in evaluation padding would all go to the rank holding row 0 (`traced`). While an eval
        model is traced every slot is looked up with fixed lengths and masked slots are zeroed
        afterwards: the same values, with static shapes (`torch.export` cannot trace the boolean
        indexing of the masked KJT).
        """
        if self.training or not traced():
            out = self.ids(masked_kjt(ID_FEATURES, ids, masks))
            return {f: dense_from_jagged(out[f].values(), m) for f, m in zip(ID_FEATURES, masks)}
        kjt = KeyedJaggedTensor(
            keys=list(ID_FEATURES),
            values=torch.cat([i.reshape(-1) for i in ids]).to(torch.int64),
            lengths=torch.cat([torch.full((i.shape[0],), i.shape[1], dtype=torch.int32, device=i.device)
                               for i in ids]),
        )
        out = self.ids(kjt)
        dense: Dict[str, torch.Tensor] = {}
        for f, i, m in zip(ID_FEATURES, ids, masks):
            v = lookup_rows(out[f].values(), i.shape[0] * i.shape[1])
            dense[f] = v.view(i.shape[0], i.shape[1], v.shape[1]) * m.unsqueeze(2).to(v.dtype)
        return dense

    def sequence_tokens_no_grad(
        self, seq_items: torch.Tensor, seq_cats: torch.Tensor, seq_mask: torch.Tensor
    ) -> torch.Tensor:
        """ID tokens of the whole sequence, for GSUs that score it with ID embeddings.

        Runs under ``torch.no_grad()``: the result carries no gradient and no row it touches
        is updated. Memory: ``[B, L, D_tok]`` fp32, e.g. 128 MB for B=1000, L=1000, D_tok=32.

        Args:
            seq_items, seq_cats: ``[B, L]`` int64 rows; seq_mask: ``[B, L]`` bool.

        Returns:
            ``[B, L, D_tok]``, zeros where ``seq_mask`` is False.
        """
        B = seq_items.shape[0]
        dev = seq_items.device
        none = torch.zeros(B, 1, dtype=torch.bool, device=dev)
        empty = torch.zeros(B, 1, dtype=torch.int64, device=dev)
        with torch.no_grad():
            out = self._lookup_ids([empty, seq_items, empty, empty, seq_cats, empty], [none, seq_mask, none] * 2)
            return torch.cat([out[GSU_ITEM], out[GSU_CAT]], dim=-1)

    def scl_vectors(
        self, target_item: torch.Tensor, seq_items: torch.Tensor, seq_mask: torch.Tensor
    ) -> "tuple[torch.Tensor, torch.Tensor]":
        """Frozen SCL vectors: ``[B, scl_dim]`` target, ``[B, L, scl_dim]`` behaviours (storage dtype)."""
        return self.scl(target_item, seq_items, seq_mask)

    def load_scl_(self, array: np.ndarray) -> int:
        """Fill the (local shards of the) SCL table from the prepared ``[n_items, scl_dim]`` array
        (rows written; 0 for a model without the table)."""
        return self.scl.load_(array) if self.scl is not None else 0

    def collections(self) -> "tuple[nn.Module, ...]":
        """The embedding collections it holds: pooled, ids, and the SCL table's where it has one."""
        return (self.pooled, self.ids) + ((self.scl.collection,) if self.scl is not None else ())

    def forward(self, pooled: KeyedJaggedTensor) -> KeyedTensor:
        """The pooled lookup; the sequence lookups depend on the GSU, see `id_tokens`."""
        return self.pooled_embeddings(pooled)

"""`PredictionAccumulator`: collects an evaluation run's predictions and computes exact metrics.

Each rank calls `update` once per batch; `compute` gathers every rank's samples on rank 0,
computes GAUC / AUC / logloss / grouped GAUC there over the WHOLE set (`compute_metrics`), and
returns the same dict on every rank. Because all metrics are computed in one canonical sample
order, 1 rank and N ranks give bit-identical numbers for the same predictions.

Memory: rows are kept as CPU NumPy chunks, padding rows dropped, 41 bytes per sample with both
optional columns (user 8, item 8, label 1, score 8, seq length 8, popularity 8): ~0.95 GB for the
23M-sample Taobao-MM test split on the root rank after gathering, plus the sort's workspace.

Example::

    acc = PredictionAccumulator()
    for batch in loader:
        probs = torch.sigmoid(model(batch))
        acc.update(batch.user_keys, batch.item_keys, batch.labels, probs, batch.weights,
                   batch.seq_lengths, item_popularity)
    metrics = acc.compute()            # every rank gets the same dict
    acc.write_parquet("runs/x/predictions")
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.distributed as dist

from muse_rec.metrics.kernels import DEFAULT_LOGLOSS_EPS, UserAuc, check_scores_labels
from muse_rec.metrics.compute import check_integer_keys, compute_metrics_and_users, real_sample_mask
from muse_rec.metrics.gather import (
    ROOT,
    all_gather_objects,
    broadcast_from_root,
    gather_columns,
    is_distributed,
    rank_and_world,
)
from muse_rec.metrics.grouped import DEFAULT_POPULARITY_EDGES, DEFAULT_SEQ_LEN_EDGES
from muse_rec.metrics.predictions_io import remove_stale_parts, write_part

ArrayLike = Union[torch.Tensor, np.ndarray]

# Stored dtype per column; fixed so that ranks always agree (a rank may have seen no batch).
COLUMN_DTYPES: Dict[str, np.dtype] = {
    "user_key": np.dtype(np.int64),
    "item_key": np.dtype(np.int64),
    "label": np.dtype(np.int8),
    "score": np.dtype(np.float64),  # float32 -> float64 is exact, so ties are preserved
    "seq_length": np.dtype(np.int64),
    "item_popularity": np.dtype(np.float64),
}
REQUIRED = ("user_key", "item_key", "label", "score")
OPTIONAL = ("seq_length", "item_popularity")


def _to_numpy(name: str, x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu")
        # NumPy has no bfloat16 (a bf16 model's sigmoid, a bf16 batch's labels or weights): fp32 holds every
        # bf16 value exactly, so ties survive; `.numpy()` raised TypeError "unsupported ScalarType BFloat16".
        return (x.float() if x.dtype == torch.bfloat16 else x).numpy()
    if isinstance(x, np.ndarray):
        return x
    raise TypeError(f"update(): {name} must be a torch.Tensor or numpy array, got {type(x).__name__}")


class PredictionAccumulator:
    """Accumulates per-sample predictions of one evaluation run on this rank.

    Args:
        seq_len_edges: bins of ``by_seq_length`` (default ``[0,50) [50,200) [200,500) [500,inf)``),
            or an int for that many quantile bins.
        popularity_edges: bins of ``by_popularity`` over train-target frequency (default decades
            ``[0,1) [1,10) [10,100) [100,1000) [1000,inf)``), or an int for quantile bins.
        logloss_eps: probabilities are clipped to ``[eps, 1 - eps]`` for logloss.
        no_user_key: a user key that marks samples of no user: they count in AUC and logloss but form
            no GAUC user (`compute_metrics`); None (the default): every key is a user.
    """

    def __init__(
        self,
        seq_len_edges: Sequence[float] | int = DEFAULT_SEQ_LEN_EDGES,
        popularity_edges: Sequence[float] | int = DEFAULT_POPULARITY_EDGES,
        logloss_eps: float = DEFAULT_LOGLOSS_EPS,
        no_user_key: Optional[int] = None,
    ) -> None:
        self.no_user_key = no_user_key
        self.seq_len_edges = seq_len_edges
        self.popularity_edges = popularity_edges
        self.logloss_eps = logloss_eps
        self.reset()

    def reset(self) -> None:
        """Forget every sample (start a new evaluation run)."""
        self._chunks: Dict[str, List[np.ndarray]] = {c: [] for c in COLUMN_DTYPES}
        # Which optional columns the updates carry; None until the first update.
        self._optional: Optional[tuple[str, ...]] = None
        # The root's per-user AUCs of the last `compute` (None elsewhere and before it).
        self.user_aucs: Optional[UserAuc] = None
        self._n = 0

    def __len__(self) -> int:
        """Real (weight 1) samples held on this rank."""
        return self._n

    def update(
        self,
        user_keys: ArrayLike,
        item_keys: ArrayLike,
        labels: ArrayLike,
        scores: ArrayLike,
        weights: ArrayLike,
        seq_lengths: Optional[ArrayLike] = None,
        item_popularity: Optional[ArrayLike] = None,
    ) -> None:
        """Add one batch. All arguments ``[B]``, CPU or CUDA tensors (copied to CPU) or arrays.

        Args:
            user_keys: int64 raw user ids (group samples per user).
            item_keys: int64 raw target item ids (written with the predictions).
            labels: 0/1 clicks.
            scores: predicted click probabilities in ``[0, 1]`` (not logits).
            weights: 1 for real samples, 0 for padding rows (dropped).
            seq_lengths: optional behaviour-sequence length of each sample's user.
            item_popularity: optional train-target frequency of each target item.
            Either optional column must be given in every update or in none.
        """
        given = {
            "user_key": user_keys,
            "item_key": item_keys,
            "label": labels,
            "score": scores,
            "seq_length": seq_lengths,
            "item_popularity": item_popularity,
        }
        optional = tuple(c for c in OPTIONAL if given[c] is not None)
        if self._optional is not None and optional != self._optional:
            raise ValueError(
                f"update(): optional columns {list(optional)} differ from earlier updates' "
                f"{list(self._optional)}; pass seq_lengths / item_popularity always or never"
            )
        arrays = {c: _to_numpy(c, v) for c, v in given.items() if v is not None}
        w = _to_numpy("weights", weights)
        b = w.shape[0] if w.ndim == 1 else -1
        for c, a in arrays.items():
            if a.ndim != 1 or a.shape[0] != b:
                raise ValueError(f"update(): {c} has shape {a.shape}, weights {w.shape}; all must be [B]")
        keep = real_sample_mask(w, "update(): weights")
        arrays = {c: a[keep] for c, a in arrays.items()}
        check_scores_labels(arrays["score"], arrays["label"], "update()")
        for c in ("user_key", "item_key"):
            check_integer_keys(arrays[c], f"{c}s", "update()")
        s = arrays["score"]
        if s.size and (s.min() < 0.0 or s.max() > 1.0):
            raise ValueError(f"update(): scores must be probabilities in [0, 1], found [{s.min()}, {s.max()}]")
        for c, a in arrays.items():
            self._chunks[c].append(a.astype(COLUMN_DTYPES[c], copy=False))
        self._optional = optional
        self._n += int(keep.sum())

    def local_columns(self, optional: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
        """This rank's samples: column name -> ``[n]`` array (dtypes `COLUMN_DTYPES`).

        Args:
            optional: optional columns to include; default those the updates carried. A rank
                without updates returns empty arrays for them.
        """
        chosen = (self._optional or ()) if optional is None else tuple(optional)
        names = list(REQUIRED) + list(chosen)
        out = {}
        for c in names:
            chunks = self._chunks[c]
            if chunks:
                out[c] = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
            elif self._n == 0:
                out[c] = np.zeros(0, dtype=COLUMN_DTYPES[c])
            else:
                raise ValueError(f"column {c} was not passed to update() on this rank")
        return out

    def _agreed_optional(self, group: Optional[dist.ProcessGroup]) -> tuple[str, ...]:
        """Optional columns every non-empty rank carries (error if ranks disagree)."""
        seen = all_gather_objects(self._optional, group)
        known = {o for o in seen if o is not None}
        if len(known) > 1:
            raise ValueError(f"ranks disagree on optional columns: {sorted(known)}")
        return known.pop() if known else ()

    def compute(self, process_group: Optional[dist.ProcessGroup] = None) -> Dict[str, Any]:
        """Metrics over every rank's samples (collective: all ranks of the group must call it).

        Returns:
            The dict of `compute_metrics` (``gauc``, ``auc``, ``logloss``, counts, and
            ``by_seq_length`` / ``by_popularity`` when those columns were given), identical on
            every rank. The root also keeps the per-user AUCs behind its GAUC in `user_aucs`.
        """
        optional = self._agreed_optional(process_group)
        full = gather_columns(self.local_columns(optional), process_group)
        result: Optional[Dict[str, Any]] = None
        if full is not None:
            result, self.user_aucs = compute_metrics_and_users(
                full["user_key"],
                full["label"],
                full["score"],
                seq_lengths=full.get("seq_length"),
                item_popularity=full.get("item_popularity"),
                seq_len_edges=self.seq_len_edges,
                popularity_edges=self.popularity_edges,
                logloss_eps=self.logloss_eps,
                no_user_key=self.no_user_key,
            )
            result["world_size"] = rank_and_world(process_group)[1]
        return broadcast_from_root(result, process_group)

    def write_parquet(self, path: str | Path, process_group: Optional[dist.ProcessGroup] = None) -> Path:
        """Write this rank's predictions to ``path/part-<rank>-of-<world>.parquet`` (collective).

        ``path`` is a Parquet dataset directory (see `muse_rec.metrics.predictions_io`); parts of
        an earlier run with another world size are removed first. Returns this rank's file.
        """
        rank, world = rank_and_world(process_group)
        optional = self._agreed_optional(process_group)
        if rank == ROOT:
            remove_stale_parts(path, world)
        if is_distributed(process_group):
            dist.barrier(group=process_group)
        written = write_part(path, self.local_columns(optional), rank, world)
        if is_distributed(process_group):
            # Return only when every part exists, so rank 0 may read the dataset right away.
            dist.barrier(group=process_group)
        return written

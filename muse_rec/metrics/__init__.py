"""Exact evaluation metrics over the whole evaluation set: GAUC, AUC, logloss, grouped GAUC.

- `kernels`: the vectorised exact kernels (ties 0.5; why not ``torchrec.metrics``).
- `grouped`: GAUC/AUC per sequence-length and per target-popularity bin.
- `compute`: every metric of one complete prediction set.
- `gather`: collecting per-rank columns on rank 0 (gloo / nccl).
- `accumulator`: `PredictionAccumulator`, the object an evaluation loop feeds.
- `predictions_io`: per-sample predictions as a Parquet dataset directory.
- `report`: comparison tables and atomic JSON.
"""
from muse_rec.metrics.accumulator import PredictionAccumulator
from muse_rec.metrics.kernels import DEFAULT_LOGLOSS_EPS, UserAuc, auc, gauc, logloss, user_auc
from muse_rec.metrics.compute import compute_metrics
from muse_rec.metrics.grouped import DEFAULT_POPULARITY_EDGES, DEFAULT_SEQ_LEN_EDGES, Bins, quantile_edges
from muse_rec.metrics.predictions_io import read_predictions
from muse_rec.metrics.report import metrics_table, save_metrics_json

__all__ = [
    "DEFAULT_LOGLOSS_EPS",
    "DEFAULT_POPULARITY_EDGES",
    "DEFAULT_SEQ_LEN_EDGES",
    "Bins",
    "PredictionAccumulator",
    "UserAuc",
    "auc",
    "compute_metrics",
    "gauc",
    "logloss",
    "metrics_table",
    "quantile_edges",
    "read_predictions",
    "save_metrics_json",
    "user_auc",
]

"""Exact evaluation metrics over the whole evaluation set: GAUC, AUC, logloss, grouped GAUC.

- `kernels`: the vectorised exact kernels (ties 0.5; why not ``torchrec.metrics``).
- `grouped`: GAUC/AUC per sequence-length and per target-popularity bin.
- `compute`: every metric of one complete prediction set.
- `gather`: collecting per-rank columns on rank 0 (gloo / nccl).
- `accumulator`: `PredictionAccumulator`, the object an evaluation loop feeds.
- `predictions_io`: per-sample predictions as a Parquet dataset directory.
- `report`: comparison tables and atomic JSON.
"""
from muse_rec.lazy_exports import lazy_getattr

# Lazy: `report` and `kernels` are NumPy only, and `muse-rec compare` (which needs only them)
# should refuse a missing run directory before paying for torch's import; `accumulator` and
# `gather` need torch.
_EXPORTS = {
    "PredictionAccumulator": "muse_rec.metrics.accumulator",
    **{name: "muse_rec.metrics.kernels" for name in ("DEFAULT_LOGLOSS_EPS", "UserAuc", "auc", "gauc", "logloss", "user_auc")},
    "compute_metrics": "muse_rec.metrics.compute",
    **{name: "muse_rec.metrics.grouped" for name in ("DEFAULT_POPULARITY_EDGES", "DEFAULT_SEQ_LEN_EDGES", "Bins", "quantile_edges")},
    "read_predictions": "muse_rec.metrics.predictions_io",
    "metrics_table": "muse_rec.metrics.report",
    "save_metrics_json": "muse_rec.metrics.report",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)

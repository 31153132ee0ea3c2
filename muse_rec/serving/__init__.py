"""Serving: the one-user inference forward, int8 quantization, torch.export, and the Ranker.

- `inference`: `InferenceModel`, the trained model's one-user, B-candidate forward (exportable).
- `quantize`: TorchRec int8 inference tables (lossless int8 for the frozen SCL table).
- `export`: checkpoint -> quantized program on disk (`muse-rec export`), and loading it back.
- `cache`: byte-bounded LRU with asynchronous (thread-pool) loads.
- `request`: JSON ranking requests and their validation.
- `ranker`: `Ranker` (`muse-rec rank`): prefetch a user's sequence + SCL vectors, score candidates.
See docs/serving.md.
"""
from muse_rec.lazy_exports import lazy_getattr

# Lazy: `muse_rec.serving.request` (pure Python + NumPy) must stay importable without torch, so
# that `muse-rec rank` rejects a malformed request before paying for the model imports.
_EXPORTS = {
    "AsyncLRUCache": "muse_rec.serving.cache",
    "InferenceModel": "muse_rec.serving.inference",
    **{name: "muse_rec.serving.ranker" for name in ("ExportedScorer", "FloatScorer", "Ranker", "UserContext")},
    **{name: "muse_rec.serving.request" for name in ("RankRequest", "RequestError", "parse_requests")},
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)

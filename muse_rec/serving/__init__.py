"""Serving: the one-user inference forward, int8 quantization, torch.export, and the Ranker.

- `inference`: `InferenceModel`, the trained model's one-user, B-candidate forward (exportable).
- `quantize`: TorchRec int8 inference tables (lossless int8 for the frozen SCL table).
- `export`: checkpoint -> quantized program on disk (`muse-rec export`), and loading it back.
- `cache`: byte-bounded LRU with asynchronous (thread-pool) loads.
- `request`: JSON ranking requests and their validation.
- `ranker`: `Ranker` (`muse-rec rank`): prefetch a user's sequence + SCL vectors, score candidates.
See docs/serving.md.
"""
import importlib
from typing import Any

# Lazy: `muse_rec.serving.request` (pure Python + NumPy) must stay importable without torch, so
# that `muse-rec rank` rejects a malformed request before paying for the model imports.
_EXPORTS = {
    "AsyncLRUCache": "muse_rec.serving.cache",
    "InferenceModel": "muse_rec.serving.inference",
    "ExportedScorer": "muse_rec.serving.ranker",
    "FloatScorer": "muse_rec.serving.ranker",
    "Ranker": "muse_rec.serving.ranker",
    "UserContext": "muse_rec.serving.ranker",
    "RankRequest": "muse_rec.serving.request",
    "RequestError": "muse_rec.serving.request",
    "parse_requests": "muse_rec.serving.request",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'muse_rec.serving' has no attribute {name!r}")

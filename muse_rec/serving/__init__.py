"""Serving: the one-user inference forward, int8 quantization, torch.export, and the Ranker.

- `inference`: `InferenceModel`, the trained model's one-user, B-candidate forward (exportable).
- `quantize`: TorchRec int8 inference tables (lossless int8 for the frozen SCL table).
- `export`: checkpoint -> quantized program on disk (`muse-rec export`), and loading it back.
- `cache`: byte-bounded LRU with asynchronous (thread-pool) loads.
- `request`: JSON ranking requests and their validation.
- `ranker`: `Ranker` (`muse-rec rank`): prefetch a user's sequence + SCL vectors, score candidates.
See docs/serving.md.
"""
from muse_rec.serving.cache import AsyncLRUCache
from muse_rec.serving.inference import InferenceModel
from muse_rec.serving.ranker import ExportedScorer, FloatScorer, Ranker, UserContext
from muse_rec.serving.request import RankRequest, RequestError, parse_requests

__all__ = [
    "AsyncLRUCache",
    "ExportedScorer",
    "FloatScorer",
    "InferenceModel",
    "RankRequest",
    "Ranker",
    "RequestError",
    "UserContext",
    "parse_requests",
]

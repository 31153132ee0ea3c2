"""`Ranker`: score ~1000 candidates for one user against a cached lifelong sequence.

The paper's deployment (MUSE.md, section 5): while candidate matching runs, the user's
behaviour sequence and its SCL vectors are prefetched once (`Ranker.prefetch`, a future from
a thread pool) into an LRU cache bounded in bytes; ranking (`Ranker.score`) then runs the GSU
(cosine + top-K per candidate over the cached sequence) and the ESU for all candidates in one
batched pass.

Two scorers share the request handling:

* `FloatScorer`: the trained model's parameters through `InferenceModel` (any serving length, every
  history left-padded to it as in training's batches; the cached int8 SCL vectors feed the GSU
  directly). Scores equal the training model's.
* `ExportedScorer`: the `torch.export` program of `muse-rec export` (quantized tables, history
  length fixed at export; it reads the same cached SCL vectors as its ``seq_scl`` input).

Documented handling of bad input (never a crash, never a silent wrong score):

* unknown user (no row in the split's user table): the unknown-user rows and an empty
  history, as training treats such samples; the response says ``"has_history_row": false``
  (and ``"known_user": false``, its older name, kept for existing clients);
* a user with a history row but never in the training data (a new test user): its history and fields
  with the unknown ``user_id`` row 0; the response says ``"user_seen_in_train": false``, while
  ``"known_user"`` is true (it only ever meant the history row);
* unknown candidate ids (not in the item vocabulary): scored with the unknown-item row 0 (as
  training does for unseen targets) and listed in ``"unknown_candidates"`` (positions);
* malformed requests: `muse_rec.serving.request.RequestError`;
* a model whose output is NaN/Inf: `NonFiniteScoresError` (a RuntimeError), no scores returned.
"""
from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future
from pathlib import Path
from dataclasses import dataclass
from typing import Deque, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from muse_rec.data.batch import USER_FEATURES
from muse_rec.data.prepared import PreparedData
from muse_rec.data.vocab import PADDING_ROW
from muse_rec.json_files import INT64_MAX, INT64_MIN
from muse_rec.serving.cache import AsyncLRUCache
from muse_rec.serving.export import (ExportError, check_data_fingerprint, check_history_fits, example_inputs, load_export,
                                     load_trained_model)
from muse_rec.serving.inference import InferenceModel
from muse_rec.serving.request import RankRequest, RequestError, validate_request
from muse_rec.spec import Spec

DEFAULT_CACHE_BYTES = 1 << 30  # ~70 users at L = 100K (14.4 MB each), ~7K users at L = 1K
DEFAULT_MAX_BATCH = 1024  # candidates per forward (bounds the [B, chunk] GSU scores)
# `rank_all`'s look-ahead, in requests per loader thread: two keep every thread busy while one
# request is scored (a load, ~35 ms at L = 100K, is of the order of a score) and bound the
# contexts held outside the cache to a few.
PREFETCH_AHEAD_PER_WORKER = 2


@dataclass
class UserContext:
    """What the Ranker caches per user (right-aligned, left-padded to the scorer's length).

    Attributes:
        user: raw user id. known: the split has a history row for the user (`seen_in_train` says
            whether its id has a row of the user_id vocabulary).
        history_length: behaviours the user has (before cutting to the serving length).
        user_fields: ``[1, 6]`` int64 rows of `USER_FEATURES`.
        seq_items, seq_cats: ``[1, L]`` int64. seq_length: ``[1]`` int64 real behaviours.
        seq_scl: ``[1, L, 128]`` int8 SCL vectors (zeros at padding), or None when the scorer
            looks them up itself.
    """

    user: int
    known: bool
    history_length: int
    user_fields: torch.Tensor
    seq_items: torch.Tensor
    seq_cats: torch.Tensor
    seq_length: torch.Tensor
    seq_scl: Optional[torch.Tensor]

    @property
    def seen_in_train(self) -> bool:
        """Whether the user id has a row of the ``user_id`` vocabulary (the train data's users); else the
        model sees the unknown-user row 0, whether or not the split has a history row (`known`)."""
        return bool(self.user_fields[0, USER_FEATURES.index("user_id")] != PADDING_ROW)

    @property
    def nbytes(self) -> int:
        ts = [self.user_fields, self.seq_items, self.seq_cats, self.seq_length]
        ts += [self.seq_scl] if self.seq_scl is not None else []
        return sum(t.numel() * t.element_size() for t in ts)


def build_context(user: int, known: bool, items: np.ndarray, cats: np.ndarray, fields: np.ndarray,
                  scl: np.ndarray, scorer: "Scorer", seq_len: int) -> UserContext:
    """A user's cached state: the newest ``seq_len`` behaviours, left-padded, and their SCL rows.

    Args:
        items, cats: ``[n]`` item / category rows, oldest -> newest. fields: ``[6]`` user rows.
        scl: ``[n_items, 128]`` int8 SCL table (memory-mapped is fine: only the history's rows
            are read).
        scorer: decides the padded length (fixed for an exported program, else ``seq_len``, at
            least the model's recent-R) and whether SCL vectors are cached.
    """
    n_all = int(items.shape[0])
    items, cats = items[max(0, n_all - seq_len):], cats[max(0, n_all - seq_len):]
    n = int(items.shape[0])
    # Every history at the serving length, as training's batches pad it to data.seq_len: the GSUs'
    # reductions over L (the fusion GSU's per-history standardisation) and its top-Ks round alike only
    # at one length; padded to the user's own n, the gated fusion GSU kept other behaviours at near-ties
    # and served a trained model up to 5.6e-3 from its evaluation.
    L = scorer.fixed_len or max(seq_len, scorer.min_len)
    seq_items = np.zeros((1, L), np.int64)
    seq_cats = np.zeros((1, L), np.int64)
    seq_items[0, L - n:] = items
    seq_cats[0, L - n:] = cats
    vectors = None
    if scorer.needs_scl:
        vectors = np.zeros((1, L, scl.shape[1]), np.int8)
        vectors[0, L - n:] = scl[np.asarray(items, dtype=np.int64)]
    return UserContext(user=user, known=known, history_length=n_all,
                       user_fields=torch.from_numpy(np.asarray(fields, np.int64)).unsqueeze(0),
                       seq_items=torch.from_numpy(seq_items), seq_cats=torch.from_numpy(seq_cats),
                       seq_length=torch.tensor([n], dtype=torch.int64),
                       seq_scl=None if vectors is None else torch.from_numpy(vectors))


class NonFiniteScoresError(RuntimeError):
    """The model's output for a request holds NaN/Inf (weights that overflow it): never returned as scores."""


class FloatScorer:
    """The trained model's parameters, one-user forward (`InferenceModel.logits`)."""

    def __init__(self, model: InferenceModel) -> None:
        self.model = model.eval()
        self.needs_scl = model.model.uses_scl
        self.fixed_len: Optional[int] = None
        self.min_len = model.recent  # the recent-R slice needs at least R positions
        self.max_candidates: Optional[int] = None

    def candidates_per_pass(self, limit: int, seq_len: int) -> int:
        """Candidates per forward: ``limit``, bounded for a GSU that scores the whole history
        (`InferenceModel.candidates_per_pass`)."""
        return self.model.candidates_per_pass(limit, seq_len)

    @torch.no_grad()
    def __call__(self, ctx: UserContext, items: torch.Tensor, cats: torch.Tensor, attrs: torch.Tensor) -> torch.Tensor:
        mask = InferenceModel.seq_mask(ctx.seq_items, ctx.seq_length)
        logits = self.model.logits(ctx.seq_items, ctx.seq_cats, mask, ctx.seq_scl, ctx.user_fields, items, cats, attrs)
        return torch.sigmoid(logits)


class ExportedScorer:
    """An exported program (`muse-rec export`); history length fixed, any B from 1 to its maximum."""

    def __init__(self, exported_dir: str, expect_sha256: Optional[str] = None) -> None:
        self.program, self.manifest = load_export(exported_dir, expect_sha256)  # verifies the files first
        # Programs of SCL models take the history's SCL vectors (prefetched into the cache).
        self.needs_scl = "seq_scl" in self.manifest["inputs"]
        self.fixed_len: Optional[int] = int(self.manifest["seq_len"])
        self.min_len = self.fixed_len
        if int(self.manifest["min_candidates"]) > 1:
            raise ExportError(f"{exported_dir}: exported by an older muse-rec for at least "
                              f"{self.manifest['min_candidates']} candidates; re-export it (`muse-rec export`)")
        self.max_candidates: Optional[int] = int(self.manifest["max_candidates"])
        # Requests are built from manifest.json (L, which inputs). A program it does not describe (an
        # edited or mismatched manifest, re-hashed) would fail its own shape guards on every request,
        # with a traceback: tried once here on the manifest's shapes instead.
        self.exported_dir = exported_dir
        try:
            with torch.no_grad():
                self.program(*example_inputs(self.fixed_len, candidates=1, with_scl=self.needs_scl))
        except (RuntimeError, AssertionError, ValueError, TypeError) as e:
            raise self._undescribed(e) from None

    def _undescribed(self, e: BaseException) -> ExportError:
        """The one line for a program that refuses inputs its manifest.json describes (``e``: its refusal)."""
        return ExportError(f"{self.exported_dir}: the exported program refuses the inputs its manifest.json describes "
                           f"({type(e).__name__}: {' '.join(str(e).split())[:300]}); re-export")

    def candidates_per_pass(self, limit: int, seq_len: int) -> int:
        """Candidates per call: ``limit`` (the program's ``max_candidates`` already carries the bound
        `muse-rec export` took from `InferenceModel.candidates_per_pass`)."""
        return limit

    @torch.no_grad()
    def __call__(self, ctx: UserContext, items: torch.Tensor, cats: torch.Tensor, attrs: torch.Tensor) -> torch.Tensor:
        extra = (ctx.seq_scl,) if self.needs_scl else ()
        try:
            return self.program(ctx.seq_items, ctx.seq_cats, ctx.seq_length, ctx.user_fields, items, cats, attrs, *extra)
        except AssertionError as e:
            # The program's guard on its candidate count: a manifest.json (edited, re-sealed) whose max_candidates
            # exceeds the traced range passes the one-candidate try above, and the guard's AssertionError reached
            # the user as a traceback at the first request of more candidates than the program takes.
            raise self._undescribed(e) from None


Scorer = Union[FloatScorer, ExportedScorer]


def score_in_batches(scorer: "Scorer", ctx: UserContext, items: torch.Tensor, cats: torch.Tensor,
                     attrs: torch.Tensor, max_batch: int) -> torch.Tensor:
    """Scores ``[C]`` of C candidates, ``max_batch`` per forward (bounds the ``[B, chunk]`` GSU scores)."""
    return torch.cat([scorer(ctx, items[i:i + max_batch], cats[i:i + max_batch], attrs[i:i + max_batch])
                      for i in range(0, items.shape[0], max_batch)])


class Ranker:
    """Rank candidates for users of a prepared split.

    Args:
        scorer: `FloatScorer` or `ExportedScorer`.
        data: prepared data: vocabularies, item attributes, user histories, SCL table.
        split: whose user table holds the histories (the spec's eval split by default).
        seq_len: serving history length (newest behaviours kept); for an exported scorer it
            must not exceed the exported length (histories are padded to it).
        cache_bytes: bound of the user-context cache.
        max_workers: prefetch threads.
        max_batch: candidates per forward pass (larger requests run in several passes); for a float
            model whose GSU scores the whole history, at most
            ``inference.FULL_SCORES_PER_PASS // seq_len`` (`InferenceModel.candidates_per_pass`).

    Example::

        ranker = Ranker.from_checkpoint(spec)
        fut = ranker.prefetch(user_id)        # while candidate matching runs
        scores = ranker.score(user_id, candidate_item_ids)   # np.ndarray [C] probabilities
    """

    def __init__(self, scorer: Scorer, data: PreparedData, split: str = "test", seq_len: int = 1000,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, max_workers: int = 2,
                 max_batch: int = DEFAULT_MAX_BATCH) -> None:
        data.require_split(split)
        if seq_len < 1 or max_batch < 1:
            raise ValueError(f"seq_len and max_batch must be >= 1, got {seq_len}, {max_batch}")
        if scorer.fixed_len is not None and seq_len > scorer.fixed_len:
            raise ValueError(f"seq_len {seq_len} exceeds the exported program's history length "
                             f"{scorer.fixed_len}; re-export with --seq-len {seq_len}")
        # Each user's context holds [1, L] inputs: a length beyond memory was numpy's "array is too big" (naming
        # nothing) at the first request. A lower bound (ids only), so a length that fits is never refused.
        try:
            check_history_fits(seq_len, False, key="seq_len", advice="serve a shorter history")
        except ExportError as e:  # a bad argument, as the checks above: a ValueError
            raise ValueError(str(e)) from None
        self.scorer, self.data, self.split, self.seq_len = scorer, data, split, seq_len
        self.max_batch = scorer.candidates_per_pass(min(max_batch, scorer.max_candidates or max_batch), seq_len)
        self._users, self._items = data.vocab("user_id"), data.vocab("item")
        self.cache: AsyncLRUCache[UserContext] = AsyncLRUCache(
            self._load_user, lambda c: c.nbytes, cache_bytes, max_workers)

    # ---- construction -----------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, spec: Spec, checkpoint: Optional[str] = None, seq_len: Optional[int] = None,
                        split: Optional[str] = None, allow_data_mismatch: bool = False,
                        expect_sha256: Optional[str] = None, **kwargs) -> "Ranker":
        """A float Ranker from a training checkpoint (default: the run's latest).

        It only scores: its SCL table is held as the int8 values (144 B per item row, `load_trained_model`'s
        ``int8_scl``), whose fp32 lookups equal the fp16 table's (256 B per row), so the scores are the same."""
        data = PreparedData(spec.data.prepared)
        L = spec.data.seq_len if seq_len is None else seq_len
        model, _ = load_trained_model(spec, data, checkpoint, seq_len=spec.data.seq_len,
                                      allow_data_mismatch=allow_data_mismatch, expect_sha256=expect_sha256,
                                      int8_scl=True)
        return cls(FloatScorer(InferenceModel(model)), data, split or spec.data.eval_split, L, **kwargs)

    @classmethod
    def from_exported(cls, spec: Spec, exported_dir: str, seq_len: Optional[int] = None,
                      split: Optional[str] = None, allow_data_mismatch: bool = False,
                      expect_sha256: Optional[str] = None, **kwargs) -> "Ranker":
        """A Ranker over an exported program; checks it was exported on this spec's vocabularies."""
        data = PreparedData(spec.data.prepared)
        scorer = ExportedScorer(exported_dir, expect_sha256)
        check_data_fingerprint(Path(exported_dir), scorer.manifest.get("data_fingerprint"), data, allow_data_mismatch)
        if scorer.manifest["vocab_sizes"] != dict(data.vocab_sizes):
            raise ValueError(f"{exported_dir} was exported with other vocabularies than {spec.data.prepared} "
                             "holds; serve it with the prepared data it was trained on")
        method = scorer.manifest.get("method")
        if method is not None and method != spec.model.method:  # the program is whole: the spec's model is unused
            raise ValueError(f"{exported_dir} holds a {method} model (its manifest.json), the spec's model.method is "
                             f"{spec.model.method}: pass the spec it was exported from")
        return cls(scorer, data, split or spec.data.eval_split, scorer.fixed_len if seq_len is None else seq_len, **kwargs)

    # ---- per user ---------------------------------------------------------------------------
    def prefetch(self, user: int) -> "Future[UserContext]":
        """Start loading the user's history and SCL vectors (no-op when cached); returns a future."""
        # A Python int beyond int64 failed inside the load (OverflowError), a numpy uint64 beyond it was taken as
        # another id; ids are int64 (the release's hashed ids), as the request parser takes them.
        if not isinstance(user, (int, np.integer)) or isinstance(user, bool) or not INT64_MIN <= int(user) <= INT64_MAX:
            raise RequestError(f"user: expected an int64 user id, got {user!r}")
        return self.cache.get_async(int(user))

    def _load_user(self, user: int) -> UserContext:
        hist = self.data.user_history(self.split, user)
        fields = np.zeros(len(USER_FEATURES), np.int64)
        fields[0] = int(self._users.rows(np.array([user]))[0])
        if hist is None:
            items = cats = np.zeros(0, np.int64)
        else:
            items, cats, fields[1:] = hist
        return build_context(user, hist is not None, items, cats, fields, self.data.scl(), self.scorer, self.seq_len)

    # ---- scoring ----------------------------------------------------------------------------
    def candidate_rows(self, candidate_item_ids: Sequence[int]) -> Dict[str, np.ndarray]:
        """Raw item ids ``[C]`` -> item rows, category rows, ``[C, 2]`` attribute rows, unknown mask."""
        raw = np.asarray(candidate_item_ids)
        if raw.ndim != 1 or raw.size == 0:
            raise RequestError(f"candidates: expected a non-empty 1-D list of item ids, got shape {raw.shape}")
        if not np.issubdtype(raw.dtype, np.integer):
            raise RequestError(f"candidates: expected int64 item ids, got dtype {raw.dtype}")
        # Unsigned ids beyond int64 (numpy makes [2**63] uint64) wrapped to negative ids in the cast below: another
        # item's row, or the unknown row, scored without a word.
        over = np.flatnonzero(raw > INT64_MAX) if raw.dtype.kind == "u" else ()
        if len(over):
            raise RequestError(f"candidates[{over[0]}]: expected an int64 item id, got {int(raw[over[0]])}")
        rows = self._items.rows(raw.astype(np.int64)).astype(np.int64)
        attrs = self.data.target_attrs(rows).astype(np.int64)  # [C, 3]: category, f213, f214
        return {"items": rows, "cats": attrs[:, 0], "attrs": attrs[:, 1:], "unknown": rows == 0}

    def score(self, user: int, candidate_item_ids: Sequence[int]) -> np.ndarray:
        """Click probabilities ``[C]`` float32 of raw candidate ids for a raw user id."""
        return self._score(self.prefetch(user).result(), self.candidate_rows(candidate_item_ids))

    def _score(self, ctx: UserContext, cand: Dict[str, np.ndarray]) -> np.ndarray:
        items, cats, attrs = (torch.from_numpy(cand[k]) for k in ("items", "cats", "attrs"))
        scores = score_in_batches(self.scorer, ctx, items, cats, attrs, self.max_batch).float().numpy()
        if not np.all(np.isfinite(scores)):  # never hand out a silent wrong score
            raise NonFiniteScoresError(f"user {ctx.user}: the model produced non-finite scores")
        return scores

    def rank(self, request: Union[RankRequest, dict]) -> Dict[str, object]:
        """Score one request; returns the JSON-ready response (see the module docstring)."""
        req = request if isinstance(request, RankRequest) else validate_request(request)
        return self._respond(req, self.prefetch(req.user).result())

    def _respond(self, req: RankRequest, ctx: UserContext) -> Dict[str, object]:
        """The response to ``req`` for its user's (already loaded) context ``ctx``."""
        cand = self.candidate_rows(req.candidates)
        scores = self._score(ctx, cand)
        return {
            "user": req.user,
            "has_history_row": ctx.known,
            "user_seen_in_train": ctx.seen_in_train,
            "known_user": ctx.known,  # the older name of has_history_row: read as "seen in train", it misled
            "history_length": ctx.history_length,
            "history_used": int(ctx.seq_length[0]),
            "scores": [float(s) for s in scores],
            "unknown_candidates": [int(i) for i in np.flatnonzero(cand["unknown"])],
        }

    def close(self) -> None:
        self.cache.close()

    def __enter__(self) -> "Ranker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def rank_all(ranker: Ranker, requests: List[RankRequest],
             latencies: Optional[List[float]] = None) -> List[Dict[str, object]]:
    """Score ``requests`` in order, loading the users of the next ones while one is scored.

    ``latencies``, when given, receives each request's seconds in order: from its turn to its
    response, waiting for its user's context included (what a caller of this process waits).

    Each request's context is taken from the future its prefetch returned, not looked up in the
    cache again: the cache is bounded, and when the requests' contexts exceed it (a few thousand
    users at L = 1,000 with the default 1 GiB, ~80 at L = 100K) an up-front prefetch of every
    user had evicted the first ones by the time they were scored, so each user was loaded twice.
    At most ``PREFETCH_AHEAD_PER_WORKER * max_workers`` contexts are held beyond the cache."""
    ahead = PREFETCH_AHEAD_PER_WORKER * ranker.cache.max_workers
    pending: Deque["Future[UserContext]"] = deque()
    queued = 0  # requests whose user has been prefetched
    out: List[Dict[str, object]] = []
    for req in requests:
        while queued < len(requests) and len(pending) <= ahead:
            pending.append(ranker.prefetch(requests[queued].user))
            queued += 1
        start = time.perf_counter()
        out.append(ranker._respond(req, pending.popleft().result()))
        if latencies is not None:
            latencies.append(time.perf_counter() - start)
    return out

"""Model-free floors: the scores every CTR practitioner checks before trusting a model.

Each floor scores every sample of a prepared split without training a network; the project's
exact metrics (`muse_rec.metrics.kernels`: GAUC, AUC, logloss) then say how far it gets. A
model whose GAUC is below the best floor has learned less than a one-line heuristic.

Floors (``FLOORS``, name -> what):

- ``popularity``: smoothed train CTR of the target item,
  ``(clicks + a * prior) / (impressions + a)``, ``prior`` = the global train CTR, ``a`` =
  ``FloorOptions.prior_strength``; items never a train target get the prior.
- ``cos_mean_history``: cosine of the target's SCL vector with the mean SCL vector of the
  user's history (the newest ``seq_len`` behaviours; all of them when ``seq_len`` = 0).
- ``cos_mean_recent``: the same over the newest ``recent`` behaviours (default 50).
- ``mean_topk_similarity``: mean of the K highest cosines of the target with the history,
  selected by the multimodal GSU's own rule (`muse_rec.modules.selection`): only behaviours
  with a vector have a cosine; slots without one are not averaged.
- ``logistic_regression``: the four scores above (cosines 0 where missing, plus a "missing"
  indicator) standardised, fitted on (a fixed subsample of) the train split by Newton's method
  with a small L2 penalty, evaluated on the split.

Missing vectors follow the GSU's rule (`NO_VECTOR_SCORE`): a sample whose target has no SCL
vector, or whose history has none, has no cosine and scores -1.1, below every real cosine.

Memory: the split is read in chunks of ``chunk_samples`` samples ordered by user (each user's
history is gathered once per chunk); a chunk holds ``users x longest history x 128`` int8 plus
``chunk_samples x longest history`` fp32 cosines. Only the per-sample scores (4 x 8 B per
sample) and the metric inputs are kept for the whole split, as the metrics need them all.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from muse_rec.data.prepared import PreparedData
from muse_rec.metrics.kernels import DEFAULT_LOGLOSS_EPS, auc, logloss, user_auc
from muse_rec.metrics.report import save_metrics_json
from muse_rec.modules.cosine import grouped_cosine
from muse_rec.modules.selection import NO_VECTOR_SCORE, cosine_selection_scores, decode_cosine_selection

logger = logging.getLogger("muse_rec")

# Bumped whenever a floor's definition changes: cached floor files of another version are stale.
FLOORS_VERSION = 1

FLOORS: Dict[str, str] = {
    "popularity": "smoothed train CTR of the target item",
    "cos_mean_history": "cos(target, mean history SCL)",
    "cos_mean_recent": "cos(target, mean SCL of the newest {recent})",
    "mean_topk_similarity": "mean of the top-{top_k} SCL cosines (GSU rule)",
    "logistic_regression": "logistic regression on the floors above, fitted on train",
}
SCL_FLOORS = ("cos_mean_history", "cos_mean_recent", "mean_topk_similarity")
# Floors whose scores are click probabilities, so their logloss means something. The cosines
# are not; their logloss is reported as None ("-"), not invented by an arbitrary squashing.
PROBABILITY_FLOORS = ("popularity", "logistic_regression")


class FloorsError(ValueError):
    """The floors cannot be computed on this data (the message says which file / split / why)."""


@dataclass(frozen=True)
class FloorOptions:
    """Knobs of the floors (all recorded in the result so a cache can tell runs apart).

    Attributes:
        seq_len: behaviours per user the history floors see (the newest); 0 = the whole stored
            history. A run's check uses its ``data.seq_len``, so the floor sees what the model sees.
        recent: behaviours of ``cos_mean_recent`` (the newest ones).
        top_k: K of ``mean_topk_similarity`` (the paper's GSU keeps 50).
        prior_strength: ``a`` of the popularity smoothing, in pseudo-impressions at the prior CTR.
            20 lets an item's own clicks outweigh the prior once it has a few dozen impressions.
        lr_train_samples: train samples the logistic regression is fitted on (a seeded uniform
            subsample when the split is larger): 5 weights need far fewer than a release's 76M.
        lr_l2: L2 penalty on the standardised weights (per-sample loss scale); keeps Newton's
            Hessian invertible when a feature is constant (e.g. no SCL vectors at all).
        chunk_samples: samples per streamed chunk (bounds memory, see the module docstring).
        seed: seed of the train subsample.
    """

    seq_len: int = 0
    recent: int = 50
    top_k: int = 50
    prior_strength: float = 20.0
    lr_train_samples: int = 200_000
    lr_l2: float = 1e-4
    chunk_samples: int = 1024
    seed: int = 0

    def check(self) -> None:
        for key in ("recent", "top_k", "chunk_samples", "lr_train_samples"):
            if getattr(self, key) <= 0:
                raise FloorsError(f"floors option {key} must be > 0, got {getattr(self, key)}")
        if self.seq_len < 0:
            raise FloorsError(f"floors option seq_len must be >= 0 (0 = whole history), got {self.seq_len}")
        if not self.prior_strength > 0 or not self.lr_l2 > 0:
            raise FloorsError(f"floors options prior_strength and lr_l2 must be > 0, got "
                              f"{self.prior_strength}, {self.lr_l2}")


def describe(name: str, opts: FloorOptions) -> str:
    """The human name of floor ``name`` (with its K / recent window filled in)."""
    return FLOORS[name].format(recent=opts.recent, top_k=opts.top_k)


# ----------------------------------------------------------------------------------------------
# Popularity: smoothed train CTR per item.
# ----------------------------------------------------------------------------------------------


@dataclass
class ItemCtr:
    """Train impressions and clicks per item row, and the smoothing that turns them into a CTR."""

    impressions: np.ndarray  # [n_items] int64, memory-mapped items/popularity.npy
    clicked_items: np.ndarray  # [C] int64 sorted distinct item rows with >= 1 train click
    clicks: np.ndarray  # [C] int64 clicks of those rows
    prior: float  # global train CTR
    strength: float  # a

    @classmethod
    def from_train(cls, data: PreparedData, split: str, strength: float, chunk: int = 1 << 22) -> "ItemCtr":
        """Count clicks per target item over the train split, ``chunk`` samples at a time.

        Only clicked targets are kept (one int32 each, then one sort), not an ``[n_items]`` array:
        the full vocabulary has 243M rows.
        """
        n = data.num_samples(split)
        if n == 0:
            raise FloorsError(f"{data.path}: split {split!r} has no samples; the popularity floor needs train clicks")
        labels, items = data.array(f"{split}/labels.npy"), data.array(f"{split}/sample_items.npy")
        clicked: List[np.ndarray] = []
        for lo in range(0, n, chunk):
            y = np.asarray(labels[lo:lo + chunk])
            clicked.append(np.asarray(items[lo:lo + chunk])[y == 1])
        rows, counts = np.unique(np.concatenate(clicked), return_counts=True)
        prior = float(counts.sum()) / n
        return cls(data.item_popularity(), rows.astype(np.int64), counts.astype(np.int64), prior, strength)

    def clicks_of(self, items: np.ndarray) -> np.ndarray:
        """``[n]`` int64 train clicks of item rows ``items [n]``."""
        if self.clicked_items.size == 0:
            return np.zeros(items.shape, np.int64)
        pos = np.minimum(np.searchsorted(self.clicked_items, items), self.clicked_items.size - 1)
        return np.where(self.clicked_items[pos] == items, self.clicks[pos], 0)

    def ctr(self, items: np.ndarray, own_labels: Optional[np.ndarray] = None) -> np.ndarray:
        """``[n]`` float64 smoothed CTR; with ``own_labels`` (train samples) leave-one-out, so a
        train sample's feature does not contain its own label."""
        clicks = self.clicks_of(items).astype(np.float64)
        imps = np.asarray(self.impressions[items]).astype(np.float64)
        if own_labels is not None:
            clicks, imps = clicks - own_labels, imps - 1.0
        a = self.strength
        return (clicks + a * self.prior) / (imps + a)


# ----------------------------------------------------------------------------------------------
# SCL floors: one chunk of samples at a time, histories gathered once per user.
# ----------------------------------------------------------------------------------------------


def _cos_with_sum(target: np.ndarray, summed: np.ndarray) -> np.ndarray:
    """``[n]`` float64 cosine of int8 ``target [n, D]`` with summed vectors ``[n, D]``; the
    sentinel where either is zero. A sum of vectors points where their mean points."""
    t, s = target.astype(np.float64), summed.astype(np.float64)
    denom = np.linalg.norm(t, axis=1) * np.linalg.norm(s, axis=1)
    ok = denom > 0
    cos = np.einsum("nd,nd->n", t, s) / np.where(ok, denom, 1.0)
    return np.where(ok, np.clip(cos, -1.0, 1.0), NO_VECTOR_SCORE)


def _histories(data: PreparedData, split: str, user_rows: np.ndarray, seq_len: int) -> Tuple[np.ndarray, np.ndarray]:
    """Right-aligned histories of ``user_rows [U]``: item rows ``[U, Lmax]`` int64 (0 = padding)
    and ``mask [U, Lmax]`` bool, newest behaviour last, the newest ``seq_len`` kept (0 = all)."""
    off = data.array(f"{split}/seq_offsets.npy")
    end = np.asarray(off[user_rows + 1]).astype(np.int64)
    length = end - np.asarray(off[user_rows]).astype(np.int64)
    if seq_len:
        length = np.minimum(length, seq_len)
    width = int(length.max()) if length.size else 0
    pos = np.arange(width, dtype=np.int64)
    mask = pos[None, :] >= (width - length)[:, None]
    items = np.zeros((user_rows.size, width), np.int64)
    items[mask] = np.asarray(data.array(f"{split}/seq_items.npy")[((end - width)[:, None] + pos[None, :])[mask]])
    return items, mask


def scl_scores(data: PreparedData, split: str, idx: np.ndarray, opts: FloorOptions) -> Dict[str, np.ndarray]:
    """The three SCL floors of samples ``idx [n]`` (positions in ``split``): name -> ``[n]`` float64."""
    scl = data.scl()
    n = idx.size
    target = np.asarray(scl[np.asarray(data.array(f"{split}/sample_items.npy")[idx])])  # [n, D] int8
    users = np.asarray(data.array(f"{split}/sample_users.npy")[idx]).astype(np.int64)
    has_user = users >= 0
    out = {name: np.full(n, NO_VECTOR_SCORE) for name in SCL_FLOORS}
    if not has_user.any():
        return out
    rows, index = np.unique(users[has_user], return_inverse=True)
    items, mask = _histories(data, split, rows, opts.seq_len)
    if items.shape[1] == 0:
        return out
    keys = np.asarray(scl[items])  # [U, Lmax, D] int8; padding is row 0, the zero vector
    summed = keys.sum(axis=1, dtype=np.int64)  # [U, D]
    recent = keys[:, -opts.recent:].sum(axis=1, dtype=np.int64)
    out["cos_mean_history"][has_user] = _cos_with_sum(target[has_user], summed[index])
    out["cos_mean_recent"][has_user] = _cos_with_sum(target[has_user], recent[index])
    # Top-K exactly as the cosine GSU selects: its kernel, its sentinels, its decoding.
    index_t = torch.from_numpy(index.astype(np.int64))
    cos, has_vector = grouped_cosine(torch.from_numpy(target[has_user]), torch.from_numpy(keys), index_t)
    width = keys.shape[1]
    sel = cosine_selection_scores(cos, has_vector, torch.from_numpy(mask)[index_t], 0, width)
    values, positions = torch.topk(sel, min(opts.top_k, width), dim=1)
    picked = decode_cosine_selection(values, positions, opts.top_k)
    count = picked.has_score.sum(1)
    mean = picked.scores.to(torch.float64).sum(1) / count.clamp_min(1)
    out["mean_topk_similarity"][has_user] = torch.where(count > 0, mean, NO_VECTOR_SCORE).numpy()
    return out


def _chunks(order: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for lo in range(0, order.size, size):
        yield np.sort(order[lo:lo + size])  # ascending positions read the memory maps forward


def split_scores(data: PreparedData, split: str, idx: np.ndarray, opts: FloorOptions, ctr: ItemCtr,
                 with_scl: bool, leave_one_out: bool = False) -> Dict[str, np.ndarray]:
    """Floor scores of samples ``idx`` (any order, streamed in user order): name -> ``[n]``."""
    n = idx.size
    labels = np.asarray(data.array(f"{split}/labels.npy")[idx]).astype(np.float64)
    items = np.asarray(data.array(f"{split}/sample_items.npy")[idx]).astype(np.int64)
    out = {"popularity": ctr.ctr(items, labels if leave_one_out else None)}
    if not with_scl:
        return out
    for name in SCL_FLOORS:
        out[name] = np.empty(n, np.float64)
    users = np.asarray(data.array(f"{split}/sample_users.npy")[idx])
    by_user = np.argsort(users, kind="stable")  # one user's samples share a chunk (history read once)
    for part in _chunks(by_user, opts.chunk_samples):
        for name, v in scl_scores(data, split, idx[part], opts).items():
            out[name][part] = v
    return out


# ----------------------------------------------------------------------------------------------
# Logistic regression on the floors.
# ----------------------------------------------------------------------------------------------


def lr_features(scores: Dict[str, np.ndarray]) -> np.ndarray:
    """``[n, F]`` float64: logit of the smoothed CTR, the SCL floors (0 where missing) and one
    "some cosine missing" indicator, so a missing value is not read as a real cosine of -1.1."""
    p = np.clip(scores["popularity"], DEFAULT_LOGLOSS_EPS, 1 - DEFAULT_LOGLOSS_EPS)
    cols = [np.log(p / (1 - p))]
    names = [k for k in SCL_FLOORS if k in scores]
    missing = np.zeros(p.shape, bool)
    for k in names:
        gone = scores[k] < -1.0
        missing |= gone
        cols.append(np.where(gone, 0.0, scores[k]))
    if names:
        cols.append(missing.astype(np.float64))
    return np.stack(cols, axis=1)


@dataclass
class LogisticModel:
    """``p = sigmoid(((x - mean) / scale) . w + b)``."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float
    iterations: int

    def predict(self, x: np.ndarray) -> np.ndarray:
        z = ((x - self.mean) / self.scale) @ self.weights + self.bias
        return 1.0 / (1.0 + np.exp(-z))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, max_iter: int = 50, tol: float = 1e-10) -> LogisticModel:
    """Newton's method on ``mean logloss + l2/2 |w|^2`` over standardised ``x [n, F]``, ``y [n]``.

    Why Newton and not SGD/LBFGS: with F <= 5 features the Hessian is tiny, the objective is
    strictly convex, and Newton converges to the exact optimum in ~10 deterministic steps with
    no learning rate to tune (a floor must not depend on tuning).
    """
    mean = x.mean(0)
    scale = x.std(0)
    scale = np.where(scale > 0, scale, 1.0)  # a constant column becomes 0; the L2 keeps H regular
    z = np.concatenate([(x - mean) / scale, np.ones((x.shape[0], 1))], axis=1)
    theta = np.zeros(z.shape[1])
    reg = np.full(z.shape[1], l2)
    reg[-1] = 0.0  # the bias is not penalised
    it = 0
    for it in range(1, max_iter + 1):
        p = 1.0 / (1.0 + np.exp(-(z @ theta)))
        grad = z.T @ (p - y) / y.size + reg * theta
        hess = (z * (p * (1 - p))[:, None]).T @ z / y.size + np.diag(reg)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.max(np.abs(step)) < tol:
            break
    return LogisticModel(mean, scale, theta[:-1], float(theta[-1]), it)


# ----------------------------------------------------------------------------------------------
# Everything together.
# ----------------------------------------------------------------------------------------------


def _metrics(user_keys: np.ndarray, labels: np.ndarray, scores: np.ndarray, probability: bool) -> Dict:
    per_user = user_auc(user_keys, scores, labels)
    return {"gauc": per_user.gauc(), "auc": auc(scores, labels),
            "logloss": logloss(scores, labels) if probability else None,
            "gauc_users": int(per_user.valid.sum()), "gauc_samples": per_user.gauc_samples}


def compute_floors(data: PreparedData, split: str = "test", opts: FloorOptions = FloorOptions(),
                   train_split: str = "train") -> Dict:
    """Every floor's GAUC / AUC / logloss on ``split`` (strict-JSON-able dict, see docs/metrics.md).

    Raises:
        FloorsError: the split is empty, has no user with both a click and a non-click (GAUC is
            undefined), or train has no samples. Floors that cannot be computed (no SCL vectors;
            train with a single label value for the regression) are skipped and listed in
            ``skipped`` with the reason.
    """
    opts.check()
    n = data.num_samples(split)
    if n == 0:
        raise FloorsError(f"{data.path}: split {split!r} has no samples")
    user_keys = np.asarray(data.array(f"{split}/sample_user_keys.npy"))
    labels = np.asarray(data.array(f"{split}/labels.npy"))
    per_user = user_auc(user_keys, np.zeros(n), labels)
    if not per_user.valid.any():
        raise FloorsError(
            f"{data.path}: split {split!r}: none of its {per_user.user_keys.size} users has both a click and a "
            f"non-click ({int(labels.sum())} clicks in {n} samples), so GAUC is undefined for any scorer")
    skipped: Dict[str, str] = {}
    with_scl = bool(np.asarray(data.scl_present()).any())
    if not with_scl:
        for name in SCL_FLOORS:
            skipped[name] = "the prepared data has no SCL vectors (items/scl_present.npy is all False)"
    ctr = ItemCtr.from_train(data, train_split, opts.prior_strength)
    scores = split_scores(data, split, np.arange(n, dtype=np.int64), opts, ctr, with_scl)

    train_n = data.num_samples(train_split)
    rng = np.random.default_rng(opts.seed)
    fit_idx = (np.arange(train_n, dtype=np.int64) if train_n <= opts.lr_train_samples
               else np.sort(rng.choice(train_n, opts.lr_train_samples, replace=False)))
    y_fit = np.asarray(data.array(f"{train_split}/labels.npy")[fit_idx]).astype(np.float64)
    model: Optional[LogisticModel] = None
    if not with_scl:
        skipped["logistic_regression"] = "only the popularity floor is available (no SCL vectors): nothing to combine"
    elif y_fit.min() == y_fit.max():
        skipped["logistic_regression"] = f"the {fit_idx.size} train samples it is fitted on all have label {int(y_fit[0])}"
    else:
        train_scores = split_scores(data, train_split, fit_idx, opts, ctr, with_scl, leave_one_out=True)
        model = fit_logistic(lr_features(train_scores), y_fit, opts.lr_l2)
        scores["logistic_regression"] = model.predict(lr_features(scores))

    floors: Dict[str, Dict] = {}
    for name in FLOORS:
        if name in scores:
            floors[name] = {"description": describe(name, opts),
                            **_metrics(user_keys, labels, scores[name], name in PROBABILITY_FLOORS)}
    best = max(floors, key=lambda k: floors[k]["gauc"])
    target_vec = np.asarray(data.scl_present()[np.asarray(data.array(f"{split}/sample_items.npy"))])
    result = {
        "version": FLOORS_VERSION, "prepared": str(data.path), "split": split, "train_split": train_split,
        "options": asdict(opts), "samples": n, "users": int(per_user.user_keys.size),
        "gauc_users": int(per_user.valid.sum()), "positives": int(labels.sum()),
        "prior_ctr": ctr.prior, "targets_with_scl": float(target_vec.mean()),
        "floors": floors, "skipped": skipped, "best": {"name": best, **floors[best]},
    }
    if model is not None:
        result["logistic_regression"] = {"fitted_on": int(fit_idx.size), "newton_iterations": model.iterations,
                                         "weights": model.weights.tolist(), "bias": model.bias}
    return result


def below_floor_message(gauc: float, floors: Dict) -> Tuple[bool, str]:
    """``(below, sentence)`` comparing a model's GAUC with the best floor of `compute_floors`."""
    best = floors["best"]
    name, value = best["description"], best["gauc"]
    if math.isnan(gauc):
        return False, f"GAUC is undefined; the best model-free floor '{name}' reaches {value:.4f}"
    if gauc < value:
        return True, (f"GAUC {gauc:.4f} is below the model-free floor '{name}' {value:.4f} "
                      f"({gauc - value:+.4f}): the model learned less than a heuristic; check the learning rates, "
                      "the number of steps and the data")
    return False, f"GAUC {gauc:.4f} is above the best model-free floor '{name}' {value:.4f} ({gauc - value:+.4f})"


# ----------------------------------------------------------------------------------------------
# Cache: `compare` and `reproduce` read floors many times; they are computed once per data set.
# ----------------------------------------------------------------------------------------------


def cache_name(data: PreparedData, split: str, opts: FloorOptions, train_split: str = "train") -> str:
    """File name unique to (the prepared data's meta.json, splits, options, FLOORS_VERSION).

    meta.json carries the input fingerprint and every count, so re-preparing other data under
    the same path gives another name (no stale floors)."""
    key = json.dumps({"meta": data.meta, "split": split, "train_split": train_split, "options": asdict(opts),
                      "version": FLOORS_VERSION}, sort_keys=True, default=str)
    return f"floors-{split}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def cached_floors(data: PreparedData, split: str, opts: FloorOptions, cache_dir: str,
                  train_split: str = "train") -> Dict:
    """`compute_floors`, read from ``cache_dir`` when already computed there, else computed and
    written there (atomically). ``cache_dir`` is never inside the prepared data, which may be
    read-only or shared."""
    path = Path(cache_dir) / cache_name(data, split, opts, train_split)
    if path.exists():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            logger.warning("%s: unreadable cached floors, recomputing", path)
    result = compute_floors(data, split, opts, train_split)
    save_metrics_json(path, result)
    return json.loads(path.read_text())  # what a later cache hit returns (NaN -> null)


def check_run_against_floors(data: PreparedData, split: str, seq_len: int, gauc: Optional[float], cache_dir: str,
                             train_split: str = "train") -> Dict:
    """A finished run's check (`train.check_floors`): the floors of its eval split at its
    ``seq_len`` (cached in ``cache_dir``), logged beside its GAUC; a WARNING when it is below.

    Returns the keys the run records in metrics.json: ``floors`` (name -> description, gauc,
    auc, logloss), ``best_floor`` and ``below_floor``; or ``floors_error`` when the floors
    cannot be computed on this data (the run itself is not failed for that).
    """
    start = time.perf_counter()
    try:
        result = cached_floors(data, split, FloorOptions(seq_len=seq_len), cache_dir, train_split)
    except FloorsError as e:
        logger.warning("model-free floors not checked: %s", e)
        return {"floors_error": str(e)}
    keep = ("description", "gauc", "auc", "logloss")
    floors = {k: {f: v.get(f) for f in keep} for k, v in result["floors"].items()}
    below, sentence = below_floor_message(float("nan") if gauc is None else gauc, result)
    (logger.warning if below else logger.info)("%s [floors: %s, split %s, seq_len %d; %.1f s]", sentence,
                                              data.path, split, seq_len, time.perf_counter() - start)
    return {"floors": floors, "best_floor": {"name": result["best"]["name"], "gauc": result["best"]["gauc"]},
            "below_floor": below}

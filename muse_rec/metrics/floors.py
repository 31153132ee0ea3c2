"""Model-free floors: the scores every CTR practitioner checks before trusting a model.

Each floor scores every sample of a prepared split without training a network; the project's
exact metrics (`muse_rec.metrics.kernels`: GAUC, AUC, logloss) then say how far it gets. A
model whose GAUC is below the best floor has learned less than a one-line heuristic.

Floors (``FLOORS``, name -> what):

- ``popularity``: smoothed train CTR of the target item (of the fit split, `--train-split`),
  ``(clicks + a * prior) / (impressions + a)``, ``prior`` = the global train CTR, ``a`` =
  ``FloorOptions.prior_strength``; items never a train target, and targets without an item id
  (vocabulary row 0: raw id 0), get the prior.
- ``category_share``: the share of the user's history (the newest ``seq_len`` behaviours; all of
  them when ``seq_len`` = 0) whose category is the target's: SIM-hard's GSU rule (`CategoryGSU`). A
  target of unknown category (row 0) matches nothing, nor does a behaviour of unknown category; such
  a target, or an empty history, scores -1 (`NO_CATEGORY_SCORE`), below every share. It reads no SCL
  vector, but the history beyond the newest behaviours (`floor_options.FLOOR_READS`).
- ``cos_mean_history``: cosine of the target's SCL vector with the mean SCL vector of the
  user's history (the newest ``seq_len`` behaviours; all of them when ``seq_len`` = 0).
- ``cos_mean_recent``: the same over the newest ``recent`` behaviours (default 50).
- ``mean_topk_similarity``: mean of the K highest cosines of the target with the history,
  selected by the multimodal GSU's own rule (`muse_rec.modules.selection`): only behaviours
  with a vector have a cosine; slots without one are not averaged.
- ``logistic_regression``: the five scores above (cosines and share 0 where missing, plus a
  "missing" indicator for the cosines and one for the share) standardised, fitted on (a fixed
  subsample of) the train split by Newton's method with a small L2 penalty, evaluated on the split.
  Without SCL vectors it is skipped (the two floors without them are reported on their own).

Scores: `muse_rec.metrics.floor_scores` (missing vectors, memory bound); the regression:
`muse_rec.metrics.floor_regression`; a gap's noise: `muse_rec.metrics.floor_noise`. Here: every floor
together, their metrics, the cache and a trained run's check.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import stat
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Dict, FrozenSet, Optional, Tuple

import numpy as np

from muse_rec.data.files import tmp_of
from muse_rec.data.prepared import PreparedData
from muse_rec.data.vocab import MISSING_ID
from muse_rec.json_files import read_json_object
from muse_rec.metrics.floor_noise import (FloorUsers, in_errors, load_floor_users, paired_gap_se, save_floor_users,
                                          users_file)
from muse_rec.metrics.floor_options import EVERYTHING, FloorOptions, FloorsError, floor_standing, lacked
from muse_rec.metrics.floor_regression import LogisticModel, fit_logistic, lr_features
from muse_rec.metrics.floor_scores import (CATEGORY_FLOOR, SCL_FLOORS, UNKNOWN_CATEGORY, ItemCtr,
                                           popularity_scores, split_scores)
from muse_rec.metrics.kernels import UserAuc, auc, logloss, user_auc
from muse_rec.metrics.report import check_floors, metrics_json_text, save_metrics_json
from muse_rec.terminal import Throttle
from muse_rec.wording import count

__all__ = ["FLOORS", "FloorOptions", "FloorsError", "ItemCtr", "below_floor_message", "cached_floors", "foreign_cache",
           "check_run_against_floors", "compute_floors", "compute_floors_and_users", "split_scores"]

logger = logging.getLogger("muse_rec")
# A progress line at most this often while the floors are scored: on a release-sized test split
# (~23M samples) they take many minutes, and a log that says nothing for that long looks hung.
PROGRESS_EVERY_S = 10.0

# Bumped whenever a floor's definition changes: cached floor files of another version are stale.
FLOORS_VERSION = 7  # 2: the popularity floor counts impressions on its fit split, not always on train;
# 3: the floor names say their history window and fit split (cached files keep the names they were made with);
# 4: the SCL cosines are rounded once from exact integers, so equal cosines tie (`floor_scores.tie_exact_cosine`);
# 5: a target without an item id (vocabulary row 0) gets the popularity floor's prior (`ItemCtr.ctr`);
# 6: a new floor, category_share (SIM-hard's GSU rule), also a feature of the regression;
# 7: samples without a user id (raw id 0) form no GAUC user, as in a model's evaluation

FLOORS: Dict[str, str] = {
    "popularity": "smoothed {train_split} CTR of the target item",
    CATEGORY_FLOOR: "share of the history in the target's category{window}",
    "cos_mean_history": "cos(target, mean history SCL){window}",
    "cos_mean_recent": "cos(target, mean SCL of the newest {recent})",
    "mean_topk_similarity": "mean of the top-{top_k} SCL cosines (GSU rule){window}",
    "logistic_regression": "logistic regression on the floors above, fitted on {train_split}",
}
# A model below a floor by fewer paired standard errors than this (`floor_noise`) is within the split's noise:
# two, a two-sided 95% interval of a gap that is, over many users, close to normal.
NOISE_SES = 2.0
# Floors whose scores are click probabilities, so their logloss means something. The cosines
# are not; their logloss is reported as None ("-"), not invented by an arbitrary squashing.
PROBABILITY_FLOORS = ("popularity", "logistic_regression")


def describe(name: str, opts: FloorOptions, train_split: str = "train") -> str:
    """The human name of floor ``name``, with its K, recent window, history window (when the floors
    see only the newest ``seq_len``, as a run's check does) and fit split filled in."""
    window = f", newest {opts.seq_len:,}" if opts.seq_len else ""
    return FLOORS[name].format(recent=opts.recent, top_k=opts.top_k, window=window, train_split=train_split)


# ----------------------------------------------------------------------------------------------
# Everything together.
# ----------------------------------------------------------------------------------------------


def _metrics(per_user: UserAuc, labels: np.ndarray, scores: np.ndarray, probability: bool) -> Dict:
    """A floor's metrics from its per-user AUCs (users without an id left out) and its scores ``[n]``."""
    return {"gauc": per_user.gauc(), "auc": auc(scores, labels),
            "logloss": logloss(scores, labels) if probability else None,
            "gauc_users": int(per_user.valid.sum()), "gauc_samples": per_user.gauc_samples}


def scoring_progress(say: Optional[Callable[[str], None]], what: str, total: int) -> Optional[Callable[[int], None]]:
    """An ``on_chunk`` for `split_scores` that says ``floors: <what>: k of n samples scored (p%), t s``
    at most every `PROGRESS_EVERY_S` (nothing for a split scored faster), or None without ``say``."""
    if say is None:
        return None
    clock = Throttle(PROGRESS_EVERY_S)

    def on_chunk(done: int) -> None:
        if clock.due():
            say(f"floors: {what}: {done:,} of {total:,} samples scored ({100 * done / max(total, 1):.0f}%), "
                f"{clock.elapsed:.0f} s")

    return on_chunk


def _fit_scores(data: PreparedData, train_split: str, fit_idx: np.ndarray, opts: FloorOptions, ctr: ItemCtr,
                scored: Optional[Dict[str, np.ndarray]], say: Optional[Callable[[str], None]]) -> Dict[str, np.ndarray]:
    """The floors of the regression's fit samples ``fit_idx [m]`` of ``train_split`` (popularity leave-one-out).

    ``scored``: the floors of every sample of ``train_split`` when that is also the split scored (name ->
    ``[n]``), or None. Only the popularity differs on the fit (leave-one-out); a sample's other floors do not
    depend on it nor on the samples scored beside it, so they are taken from there, not scored a second time
    (that doubled `baselines --split train`: 25.5 s against 12.9 s on test, on a 250k/80k set).
    """
    if scored is None:
        return split_scores(data, train_split, fit_idx, opts, ctr, with_scl=True, leave_one_out=True,
                            on_chunk=scoring_progress(say, f"split {train_split} (the regression's fit)", fit_idx.size))
    fit = {name: v[fit_idx] for name, v in scored.items() if name != "popularity"}
    fit["popularity"] = popularity_scores(data, train_split, fit_idx, ctr, leave_one_out=True)
    return fit


def compute_floors(data: PreparedData, split: str = "test", opts: FloorOptions = FloorOptions(),
                   train_split: str = "train", say: Optional[Callable[[str], None]] = None) -> Dict:
    """Every floor's GAUC / AUC / logloss on ``split`` (strict-JSON-able dict, see docs/metrics.md).
    ``say``: where progress lines go while the splits are scored (`scoring_progress`).
    Raises as `compute_floors_and_users`."""
    return compute_floors_and_users(data, split, opts, train_split, say)[0]


def compute_floors_and_users(data: PreparedData, split: str = "test", opts: FloorOptions = FloorOptions(),
                             train_split: str = "train", say: Optional[Callable[[str], None]] = None
                             ) -> Tuple[Dict, FloorUsers]:
    """`compute_floors`'s dict, and every floor's per-user AUCs (`FloorUsers`: what a run's check weighs
    its gap to a floor with).

    Raises:
        FloorsError: the split is empty, has no user with both a click and a non-click (GAUC is
            undefined), or train has no samples. Floors that cannot be computed (the SCL floors and the
            regression without SCL vectors; the regression on train with a single label value) are
            skipped and listed in ``skipped`` with the reason.
    """
    opts.check()
    n = data.num_samples(split)
    if n == 0:
        raise FloorsError(f"{data.path}: split {split!r} has no samples")
    user_keys = np.asarray(data.array(f"{split}/sample_user_keys.npy"))
    labels = data.labels(split)
    # A sample without a user id (raw id 0) is nobody's: no GAUC user, as in a model's evaluation (`predict`).
    per_user = user_auc(user_keys, np.zeros(n), labels).without(MISSING_ID)
    if not per_user.valid.any():
        raise FloorsError(
            f"{data.path}: split {split!r}: none of its {count(per_user.user_keys.size, 'user')} has both a click and "
            f"a non-click ({count(int(labels.sum()), 'click')} in {count(n, 'sample')}), so GAUC is undefined for any "
            "scorer")
    skipped: Dict[str, str] = {}
    with_scl = bool(np.asarray(data.scl_present()).any())
    if not with_scl:
        for name in SCL_FLOORS:
            skipped[name] = "the prepared data has no SCL vectors (items/scl_present.npy is all False)"
    ctr = ItemCtr.from_train(data, train_split, opts.prior_strength)
    scores = split_scores(data, split, np.arange(n, dtype=np.int64), opts, ctr, with_scl,
                          on_chunk=scoring_progress(say, f"split {split}", n))

    train_n = data.num_samples(train_split)
    rng = np.random.default_rng(opts.seed)
    fit_idx = (np.arange(train_n, dtype=np.int64) if train_n <= opts.lr_train_samples
               else np.sort(rng.choice(train_n, opts.lr_train_samples, replace=False)))
    y_fit = data.labels(train_split, fit_idx).astype(np.float64)
    model: Optional[LogisticModel] = None
    if not with_scl:
        skipped["logistic_regression"] = ("it combines the SCL floors with the others, and the prepared data has no "
                                          "SCL vectors (the floors without them are reported on their own)")
    elif y_fit.min() == y_fit.max():
        skipped["logistic_regression"] = (f"{count(fit_idx.size, f'{train_split} sample')} to fit it on, every one "
                                          f"with label {int(y_fit[0])}")
    else:
        train_scores = _fit_scores(data, train_split, fit_idx, opts, ctr, scores if split == train_split else None,
                                   say)
        model = fit_logistic(lr_features(train_scores), y_fit, opts.lr_l2)
        scores["logistic_regression"] = model.predict(lr_features(scores))

    floors: Dict[str, Dict] = {}
    per_floor: Dict[str, UserAuc] = {}
    for name in FLOORS:
        if name in scores:
            per_floor[name] = user_auc(user_keys, scores[name], labels).without(MISSING_ID)
            floors[name] = {"description": describe(name, opts, train_split),
                            **_metrics(per_floor[name], labels, scores[name], name in PROBABILITY_FLOORS)}
    best = max(floors, key=lambda k: floors[k]["gauc"])
    targets = data.item_rows(split, slice(None))
    target_vec = np.asarray(data.scl_present()[targets])
    target_cat = np.asarray(data.item_attrs()[targets, 0])
    result = {
        "version": FLOORS_VERSION, "prepared": str(data.path), "data_fingerprint": data.fingerprint, "split": split,
        "train_split": train_split,
        "options": asdict(opts), "samples": n, "users": int(per_user.user_keys.size),
        "samples_without_user": n - int(per_user.n_samples.sum()),
        "gauc_users": int(per_user.valid.sum()), "positives": int(labels.sum()),
        "prior_ctr": ctr.prior, "targets_with_scl": float(target_vec.mean()),
        "targets_with_category": float((target_cat != UNKNOWN_CATEGORY).mean()),
        "floors": floors, "skipped": skipped, "best": {"name": best, **floors[best]},
    }
    if model is not None:
        result["logistic_regression"] = {"fitted_on": int(fit_idx.size), "newton_iterations": model.iterations,
                                         "weights": model.weights.tolist(), "bias": model.bias}
    return result, FloorUsers.of(per_floor)


def _gap(gauc: float, floor: float, se: Optional[float]) -> str:
    """``(-0.0139)``, or with the gap's paired standard error ``(-0.0139, 2.1 standard errors of 0.0066)``."""
    errors = in_errors(gauc - floor, se)
    return f"({gauc - floor:+.4f})" if errors is None else f"({gauc - floor:+.4f}, {errors})"


def within_noise(gauc: float, floor: float, se: Optional[float]) -> bool:
    """Whether a model below a floor is so by less than `NOISE_SES` paired standard errors (``se``; unknown:
    False, the gap is taken at its word)."""
    return se is not None and gauc - floor > -NOISE_SES * se


def below_floor_message(gauc: float, floors: Dict, reads: FrozenSet[str] = EVERYTHING,
                        gap_se: Optional[Dict[str, float]] = None) -> Tuple[bool, str]:
    """``(below, sentence)`` comparing a model's GAUC with the best floor of `compute_floors`. For a model
    below a floor that reads what it does not (``reads``: `floor_options.model_reads`; SCL vectors, the
    long-term history), the sentence also measures it against the best floor it can see: only below that
    one is its training in doubt; above it, what it cannot read carries signal it cannot see.

    ``gap_se``: floor name -> the standard error of the model's gap to it (`floor_noise.paired_gap_se`), where
    known: each gap is then said in standard errors, and a model below by less than `NOISE_SES` of them is said
    to be within the split's noise instead of "ranked better by a score without training"."""
    gap_se = gap_se or {}
    best = floors["best"]
    name, value = best["description"], best["gauc"]
    best_se = gap_se.get(best["name"])
    if math.isnan(gauc):
        return False, f"GAUC is undefined; the best model-free floor '{name}' reaches {value:.4f}"
    if gauc >= value:
        return False, (f"GAUC {gauc:.4f} is above the best model-free floor '{name}' {value:.4f} "
                       f"{_gap(gauc, value, best_se)}")
    sentence = f"GAUC {gauc:.4f} is below the model-free floor '{name}' {value:.4f} {_gap(gauc, value, best_se)}"
    advice = "check the learning rates, the number of steps and the data"
    standing = floor_standing(gauc, best["name"], value, floors.get("floors", {}), reads)
    seen_name, seen = standing.visible_best or (best["name"], best)
    seen_se = gap_se.get(seen_name)
    if not standing.only_for_want and within_noise(gauc, seen["gauc"], seen_se):
        noise = (f"less than {NOISE_SES:g} standard errors of this split's per-user noise, so it cannot tell the "
                 f"two apart; if more test users or seeds keep the model below, {advice}")
    else:
        noise = f"a score without training ranks this split better than the model; {advice}"
    if standing.visible_best is None:
        return True, f"{sentence}: {noise}"
    against = f"'{seen.get('description', seen_name)}' {seen['gauc']:.4f} {_gap(gauc, seen['gauc'], seen_se)}"
    lack, them, carry = lacked(standing.lacks)
    if not standing.only_for_want:
        return True, (f"{sentence}, and below the best floor without {lack} (this model does not read {them}), "
                      f"{against}: {noise}")
    return True, (f"{sentence}, which reads {lack}; this model does not, and it is above the best floor without "
                  f"{them}, {against}: {lack} {carry} signal this model cannot see")


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


def is_cache_file(name: str) -> bool:
    """Whether ``name`` is one `cached_floors` writes in its cache directory (`cache_name` and its
    `floor_noise.users_file`), or the temporary file of a write that was killed."""
    base = tmp_of(name) or name
    return base.startswith("floors-") and base.endswith((".json", ".users.npz"))


def cached_floors(data: PreparedData, split: str, opts: FloorOptions, cache_dir: str,
                  train_split: str = "train") -> Dict:
    """`compute_floors`, read from ``cache_dir`` when already computed there, else computed and
    written there (atomically). ``cache_dir`` is never inside the prepared data, which may be
    read-only or shared."""
    return _cached(data, split, opts, cache_dir, train_split, with_users=False)[0]


def _cached(data: PreparedData, split: str, opts: FloorOptions, cache_dir: str, train_split: str,
            with_users: bool) -> Tuple[Dict, Optional[FloorUsers]]:
    """`cached_floors`, and with ``with_users`` the floors' per-user AUCs too (a cache without a readable
    users file is then computed again: once, as the floors were; None only where it cannot be written)."""
    path = Path(cache_dir) / cache_name(data, split, opts, train_split)
    foreign = foreign_cache(path)
    if foreign:
        logger.warning("not reading or writing the floors cached in %s: %s; computing them", cache_dir, foreign)
    elif path.exists():
        cached = _read_cached(path)
        if cached is not None and not with_users:
            return cached, None
        # The cache is read back from disk: a users count that is not an integer is a damaged entry (scored again).
        n = None if cached is None else cached["best"].get("gauc_users")
        users = (load_floor_users(users_file(path), cached["floors"], n)
                 if isinstance(n, int) and not isinstance(n, bool) else None)
        if users is not None:
            return cached, users
    logger.info("computing the model-free floors of %s split %s%s", data.path, split,
                "" if foreign else f" (cached in {cache_dir})")
    result, users = compute_floors_and_users(data, split, opts, train_split, say=logger.info)
    if not foreign:
        _write_cache(path, result, users)
    # What a later cache hit returns (NaN -> null), from the text written, not read back from the file.
    return json.loads(metrics_json_text(result)), users


def _write_cache(path: Path, result: Dict, users: FloorUsers) -> None:
    try:  # the users file first: the JSON is what marks the entry complete
        save_floor_users(users_file(path), users)
        save_metrics_json(path, result)
    except OSError as e:  # only a cache (a file in its directory's place, no room, read-only): said, not fatal
        logger.warning("floors not cached, %s could not be written (%s); they are computed again next time",
                       path, e)


def foreign_cache(path: Path) -> Optional[str]:
    """Why the cache file ``path`` is not this user's own, or None. The default cache sits in a run
    directory's parent, which may be shared (a run in /tmp caches in /tmp/.floors): any user there could leave
    a well-formed file holding any floors, which a run would then report its GAUC against. So the directory
    and the file (where it exists) must belong to the user running this, and not be writable by every user,
    as ssh asks of its keys."""
    me = os.geteuid()
    for where in (path.parent, path):
        try:
            st = where.stat()
        except OSError:  # absent (created by this process), or not there to read: nothing foreign in it
            continue
        if st.st_uid != me:
            return f"{where} belongs to user id {st.st_uid}, not to this process's {me}"
        if st.st_mode & stat.S_IWOTH:
            return f"every user may write {where} (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def _read_cached(path: Path) -> Optional[Dict]:
    """The floors `cached_floors` wrote to ``path``, or None (a warning said why) where the file is not
    such a result: a damaged cache is recomputed, not a traceback at the end of a training run."""
    try:
        doc = read_json_object(path)
        floors = check_floors(doc.get("floors"), str(path))
        best = doc.get("best")
        name = best.get("name") if isinstance(best, dict) else None
        # Its readers take the best floor's description and GAUC from here: it must be one of the floors
        # (whose GAUC check_floors found a finite number or null), with both.
        if not (isinstance(name, str) and name in floors and best == {"name": name, **floors[name]}
                and isinstance(best.get("description"), str) and best.get("gauc") is not None):
            raise ValueError(f"{path}: best: expected one of its floors, got {best!r:.80}")
    except ValueError as e:
        logger.warning("%s: unreadable cached floors, recomputing", e)
        return None
    return doc


def run_floors_cache(run_dir: str) -> str:
    """Where a run's floor check caches its floors: ``<run dir's parent>/.floors/``, shared by the
    runs of one output root (all of `muse-rec reproduce`, or runs compared together)."""
    return str(Path(run_dir).parent / ".floors")


def floors_of_run(data: PreparedData, split: str, seq_len: int, cache_dir: str, train_split: str = "train",
                  with_users: bool = False) -> Dict:
    """The floors a run checks (`cached_floors`): its eval ``split`` at its ``seq_len``, fitted on
    ``train_split``. The trainer (`check_run_against_floors`), `muse-rec reproduce` (before its job) and
    `compare` ask the same way, so they read one cache file. ``with_users``: make sure the cache holds their
    per-user AUCs too, which the trainer's check reads (a cache written before them is scored again here)."""
    return _cached(data, split, FloorOptions(seq_len=seq_len), cache_dir, train_split, with_users)[0]


def check_run_against_floors(data: PreparedData, split: str, seq_len: int, gauc: Optional[float], cache_dir: str,
                             train_split: str = "train", reads: FrozenSet[str] = EVERYTHING,
                             model_users: Optional[UserAuc] = None) -> Dict:
    """A finished run's check (`train.check_floors`): the floors of its eval split at its
    ``seq_len`` (cached in ``cache_dir``), logged beside its GAUC; a WARNING when it is below.

    Returns the keys the run records in metrics.json: ``floors`` (name -> description, gauc,
    auc, logloss: the same for every run of the split, which `compare` and the reproduce report rely on),
    ``floor_gap_se`` (name -> the standard error of the run's GAUC minus the floor's, paired over users,
    `floor_noise`), ``best_floor`` (with its ``gap_se``) and ``below_floor``; or ``floors_error`` when the floors
    cannot be computed on this data (the run itself is not failed for that). ``reads``: what the run's
    model reads of the floors' inputs (`floor_options.model_reads`; `below_floor_message`).
    ``model_users``: the run's per-user AUCs on ``split`` (users without an id left out); without them, or
    when they are not the floors' users, no ``gap_se``.
    """
    start = time.perf_counter()
    try:
        result, users = _cached(data, split, FloorOptions(seq_len=seq_len), cache_dir, train_split,
                                with_users=model_users is not None)
    except FloorsError as e:
        logger.warning("model-free floors not checked: %s", e)
        return {"floors_error": str(e)}
    gap_se = {} if users is None or gauc is None else paired_gap_se(model_users, users, gauc)
    keep = ("description", "gauc", "auc", "logloss")
    floors = {k: {f: v.get(f) for f in keep} for k, v in result["floors"].items()}
    below, sentence = below_floor_message(float("nan") if gauc is None else gauc, result, reads, gap_se)
    (logger.warning if below else logger.info)("%s [floors: %s, split %s, seq_len %d; %.1f s]", sentence,
                                              data.path, split, seq_len, time.perf_counter() - start)
    best = result["best"]["name"]
    return {"floors": floors, **({"floor_gap_se": gap_se} if gap_se else {}),
            "best_floor": {"name": best, "gauc": result["best"]["gauc"],
                           **({"gap_se": gap_se[best]} if best in gap_se else {})},
            "below_floor": below}

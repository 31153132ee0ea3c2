"""How far a model's GAUC is from a floor's, against the noise of the split's users.

A run's floor check compares two GAUCs of one split. Both are impression-weighted means of per-user AUCs
over the same users, so their difference is the weighted mean of the per-user differences
``d_u = AUC_model(u) - AUC_floor(u)``, and the users are what a fresh test split would redraw. Its standard
error is that of a ratio estimator with the users as the sampling unit (the delta method; a per-user
bootstrap converges to it, tested):

    D = sum_u n_u d_u / sum_u n_u,    SE(D) = sqrt(U / (U - 1) * sum_u (n_u (d_u - D))^2) / sum_u n_u

over the U users with both a click and a non-click. Pairing matters: a model and a floor rank the same
users' impressions, so what one user's impressions happen to be moves both GAUCs alike and cancels in the
difference. On session 43's world of 3% clicks, 782 GAUC users, the demo profile's MUSE was below the best
floor by 0.0046 and 0.0061, each within one such error (0.0066 and 0.0064 by a per-user bootstrap).

`FloorUsers` keeps what this needs of the floors (per-user AUCs, not the scores): the floor cache stores it
beside its JSON (`save_floor_users` / `load_floor_users`), so a run reads it without scoring the split again.
"""
from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence

import numpy as np

from muse_rec.data.files import tmp_name
from muse_rec.metrics.kernels import UserAuc

__all__ = ["FloorUsers", "errors_below", "in_errors", "load_floor_users", "paired_gap_se", "recorded_gap_errors",
           "save_floor_users", "users_file"]

# The arrays of a floor-users file that are not a floor's per-user AUCs.
KEYS, IMPRESSIONS = "user_keys", "n_samples"
# Two GAUCs computed from the same per-user AUCs agree to float64 rounding of a weighted mean (~1e-16 per
# user); a larger mismatch means the arrays are not the users the GAUC was taken over.
GAUC_AGREEMENT = 1e-9


@dataclass(frozen=True)
class FloorUsers:
    """The per-user AUCs of every floor on one split, over the U users that enter GAUC.

    Attributes:
        user_keys: ``[U]`` int64, ascending.
        n_samples: ``[U]`` int64 impressions of each user (GAUC's weights).
        auc: floor name -> ``[U]`` float64 per-user AUC.
    """

    user_keys: np.ndarray
    n_samples: np.ndarray
    auc: Dict[str, np.ndarray]

    @classmethod
    def of(cls, per_user: Mapping[str, UserAuc]) -> "FloorUsers":
        """From each floor's `UserAuc` of one split (the same users and labels, so the same valid users)."""
        first = next(iter(per_user.values()))
        valid = first.valid
        return cls(first.user_keys[valid], first.n_samples[valid], {k: v.auc[valid] for k, v in per_user.items()})

    def gauc(self, name: str) -> float:
        """Floor ``name``'s GAUC from these arrays (what `compute_floors` reported, to rounding)."""
        return float(np.sum(self.n_samples * self.auc[name]) / np.sum(self.n_samples))


def users_file(json_path: Path) -> Path:
    """Where the floor cache keeps the `FloorUsers` of the floors in ``json_path`` (``floors-*.users.npz``)."""
    return json_path.with_name(json_path.name[: -len(".json")] + ".users.npz")


def save_floor_users(path: Path, users: FloorUsers) -> None:
    """Write ``users`` to ``path`` whole or not at all (a temporary file beside it, then one rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(str(path))
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **{KEYS: users.user_keys, IMPRESSIONS: users.n_samples},
                     **{f"auc.{name}": v for name, v in users.auc.items()})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_floor_users(path: Path, floors: Mapping[str, Mapping], gauc_users: int) -> Optional[FloorUsers]:
    """The `FloorUsers` saved at ``path`` for the cached floors ``floors`` (name -> its metrics, with
    ``gauc``) over ``gauc_users`` users, or None where the file is absent or not theirs: a file from
    outside is read without pickles and kept only if every array has the users' shape and each floor's
    weighted mean is its recorded GAUC."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        return None
    keys, n = arrays.pop(KEYS, None), arrays.pop(IMPRESSIONS, None)
    auc = {k[len("auc."):]: v for k, v in arrays.items() if k.startswith("auc.")}
    shape = (gauc_users,)
    if (keys is None or n is None or keys.shape != shape or n.shape != shape or keys.dtype != np.int64
            or n.dtype != np.int64 or set(auc) != set(floors) or gauc_users == 0 or n.min() < 2
            or np.any(np.diff(keys) <= 0)):
        return None
    users = FloorUsers(keys, n, auc)
    for name, v in auc.items():
        recorded = floors[name].get("gauc")
        if (v.shape != shape or v.dtype != np.float64 or not np.all((v >= 0) & (v <= 1))
                or not isinstance(recorded, float) or abs(users.gauc(name) - recorded) > GAUC_AGREEMENT):
            return None
    return users


def paired_gap_se(model: UserAuc, floors: FloorUsers, gauc: float) -> Dict[str, float]:
    """Floor name -> the standard error of ``gauc - that floor's GAUC`` (module docstring), paired over users.

    ``model``: the run's per-user AUCs on the split (users without an id already left out); ``gauc``: the
    GAUC it reported. Empty where the model's users are not the floors' (an evaluation cut short, another
    split) or fewer than two: no error is better than a wrong one."""
    valid = model.valid
    keys, n, auc = model.user_keys[valid], model.n_samples[valid], model.auc[valid]
    if (keys.size < 2 or not np.array_equal(keys, floors.user_keys) or not np.array_equal(n, floors.n_samples)
            or not math.isclose(float(np.sum(n * auc) / np.sum(n)), gauc, rel_tol=0.0, abs_tol=GAUC_AGREEMENT)):
        return {}
    weights = n / np.sum(n)
    scale = keys.size / (keys.size - 1)
    out: Dict[str, float] = {}
    for name, floor_auc in floors.auc.items():
        d = auc - floor_auc
        gap = float(np.sum(weights * d))
        out[name] = math.sqrt(scale * float(np.sum((weights * (d - gap)) ** 2)))
    return out


def recorded_gap_errors(runs: Sequence[Mapping], floors: Optional[Mapping]) -> Dict[str, float]:
    """Floor name -> the mean over ``runs`` (the seeds of one configuration: their metrics.json) of the paired
    standard error each recorded of its GAUC's gap to that floor (`floors.check_run_against_floors`), where every
    run recorded one against these very ``floors``; else nothing. For one run it is that gap's error; for several,
    the seeds' gaps share the split's users, so the error of their mean gap is at most the mean of their errors:
    a gap it calls large is large."""
    if not floors or not runs or any(r.get("floors") != floors or not r.get("floor_gap_se") for r in runs):
        return {}
    names = set.intersection(*(set(r["floor_gap_se"]) for r in runs))
    return {k: sum(r["floor_gap_se"][k] for r in runs) / len(runs) for k in sorted(names)}


def in_errors(gap: float, se: Optional[float]) -> Optional[str]:
    """``"2.1 standard errors of 0.0066"``: the size of a GAUC ``gap`` in its standard error ``se``; None where
    ``se`` is unknown (or 0). The one wording of a run's floor line, `compare`'s and the reproduce report's."""
    if se is None or not se > 0:
        return None
    return f"{abs(gap) / se:.1f} standard errors of {se:.4f}"


def errors_below(gauc: float, floor_gauc: float, se: Optional[float]) -> str:
    """``"; 2.0 standard errors of 0.0050 below it"``: how far ``gauc`` is below a floor's in the standard error
    ``se`` of that gap (`recorded_gap_errors`), for a listing of models below it; "" where ``se`` is unknown."""
    errors = in_errors(floor_gauc - gauc, se)
    return "" if errors is None else f"; {errors} below it"

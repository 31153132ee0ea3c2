"""The floors' knobs (`FloorOptions`) and their error (`FloorsError`): no torch, so that
`muse-rec baselines` shows its defaults in ``--help`` and refuses a bad path or option before
the scoring code's imports (seconds)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

# Floors that read no SCL vector: a model that reads none (DIN, TWIN) has every input they have (the
# target item and its category, the history's categories).
ID_FLOORS = ("popularity", "category_share")


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
            subsample when the split is larger): 7 weights need far fewer than a release's 76M.
        lr_l2: L2 penalty on the standardised weights (per-sample loss scale); keeps Newton's
            Hessian invertible when a feature is constant (e.g. no SCL vectors at all).
        chunk_samples: most samples per streamed chunk.
        chunk_slots: most (sample x history position) pairs per chunk: the memory bound (see the
            module docstring). A user over it is split into pieces; one sample's history longer
            than that is still one chunk.
        seed: seed of the train subsample.
    """

    seq_len: int = 0
    recent: int = 50
    top_k: int = 50
    prior_strength: float = 20.0
    lr_train_samples: int = 200_000
    lr_l2: float = 1e-4
    chunk_samples: int = 1024
    chunk_slots: int = 1 << 20
    seed: int = 0

    def check(self, name: Callable[[str], str] = lambda key: f"floors option {key}") -> None:
        """FloorsError naming the first bad option as ``name(field)`` (`muse-rec baselines` names its flag)."""
        for key in ("recent", "top_k", "chunk_samples", "chunk_slots", "lr_train_samples"):
            if getattr(self, key) <= 0:
                raise FloorsError(f"{name(key)} must be > 0, got {getattr(self, key)}")
        if self.seq_len < 0:
            raise FloorsError(f"{name('seq_len')} must be >= 0 (0 = whole history), got {self.seq_len}")
        for key in ("prior_strength", "lr_l2"):  # inf: popularity becomes inf/inf = nan
            if not 0 < getattr(self, key) < float("inf"):
                raise FloorsError(f"{name(key)} must be a finite number > 0, got {getattr(self, key)}")


def best_id_floor(floors: Dict[str, Dict]) -> Optional[Tuple[str, Dict]]:
    """``(name, floor)``: the best of ``floors`` (name -> description, gauc, ...) that reads no SCL vector
    (`ID_FLOORS`), None without one."""
    measured = [(name, f) for name, f in floors.items() if name in ID_FLOORS and f.get("gauc") is not None]
    return max(measured, key=lambda item: item[1]["gauc"]) if measured else None


@dataclass(frozen=True)
class FloorStanding:
    """Where a model's GAUC stands against the best floor (`floor_standing`).

    Attributes:
        below: the GAUC is below the best floor (an undefined, NaN GAUC is not).
        id_best: ``(name, floor)`` of the best floor without SCL vectors (`best_id_floor`) when the model is
            below a best floor that reads them and is not known to read them itself; else None.
        only_for_want_of_scl: the model reads no SCL vectors and is at or above ``id_best``: its training is
            not in doubt, the SCL vectors carry signal it cannot see.
    """

    below: bool
    id_best: Optional[Tuple[str, Dict]]
    only_for_want_of_scl: bool


def floor_standing(gauc: float, best_name: str, best_gauc: float, floors: Dict[str, Dict],
                   reads_scl: Optional[bool]) -> FloorStanding:
    """The one rule behind a run's floor line (`floors.below_floor_message`) and `compare`'s verdict.

    ``best_name`` / ``best_gauc``: the best floor of ``floors`` (name -> description, gauc, ...);
    ``reads_scl``: whether the model reads SCL vectors, None when unknown (then it is held to the best floor,
    and ``id_best`` is still given so that a message can name the floor without them)."""
    below = gauc < best_gauc
    id_best = (best_id_floor(floors) if below and reads_scl is not True and best_name not in ID_FLOORS
               else None)
    only = id_best is not None and reads_scl is False and gauc >= id_best[1]["gauc"]
    return FloorStanding(below, id_best, only)

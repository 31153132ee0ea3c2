"""The floors' knobs (`FloorOptions`) and their error (`FloorsError`): no torch, so that
`muse-rec baselines` shows its defaults in ``--help`` and refuses a bad path or option before
the scoring code's imports (seconds)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Optional, Tuple, TypeVar

# What each floor reads besides the target item, its category and the newest behaviours: "scl" (SCL vectors)
# and "long_history" (the history beyond the newest ``recent`` behaviours, which only a model with a GSU
# searches). A model is held to a floor only if it reads all of it (`floor_standing`); a floor not listed
# here (a hand-written floors file) is taken to read everything.
SCL, LONG_HISTORY = "scl", "long_history"
FLOOR_READS: Dict[str, FrozenSet[str]] = {
    "popularity": frozenset(),
    "category_share": frozenset({LONG_HISTORY}),
    "cos_mean_history": frozenset({SCL, LONG_HISTORY}),
    "cos_mean_recent": frozenset({SCL}),
    "mean_topk_similarity": frozenset({SCL, LONG_HISTORY}),
    "logistic_regression": frozenset({SCL, LONG_HISTORY}),
}
EVERYTHING: FrozenSet[str] = frozenset({SCL, LONG_HISTORY})


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


def floor_reads(name: str) -> FrozenSet[str]:
    """What floor ``name`` reads (`FLOOR_READS`); everything for a name this code does not know."""
    return FLOOR_READS.get(name, EVERYTHING)


def best_floor_within(floors: Dict[str, Dict], reads: FrozenSet[str]) -> Optional[Tuple[str, Dict]]:
    """``(name, floor)``: the best of ``floors`` (name -> description, gauc, ...) that reads nothing beyond
    ``reads``, None without one."""
    measured = [(name, f) for name, f in floors.items()
                if floor_reads(name) <= reads and f.get("gauc") is not None]
    return max(measured, key=lambda item: item[1]["gauc"]) if measured else None


def lacked(inputs: FrozenSet[str]) -> Tuple[str, str, str]:
    """``(words, pronoun, "carry" agreeing)`` for what a model does not read: ("SCL vectors", "them", "carry") or
    ("the long-term history", "it", "carries"), or both ("SCL vectors and the long-term history", "them",
    "carry")."""
    words = [w for key, w in ((SCL, "SCL vectors"), (LONG_HISTORY, "the long-term history")) if key in inputs]
    one = inputs == frozenset({LONG_HISTORY})
    return " and ".join(words), "it" if one else "them", "carries" if one else "carry"


@dataclass(frozen=True)
class FloorStanding:
    """Where a model's GAUC stands against the best floor (`floor_standing`).

    Attributes:
        below: the GAUC is below the best floor (an undefined, NaN GAUC is not).
        lacks: what the best floor reads that the model does not (`FLOOR_READS`), when the model is below it;
            for a model whose inputs are unknown, all that the best floor reads. Else empty.
        visible_best: ``(name, floor)`` of the best floor the model can see (reading nothing it does not read)
            when it is below a best floor it cannot see; for a model whose inputs are unknown, the best floor
            that reads neither SCL vectors nor the long-term history, so that a message can name it. Else None.
        only_for_want: the model is below the best floor only because that floor reads what the model does not
            (``lacks``), and it is at or above ``visible_best``: its training is not in doubt.
    """

    below: bool
    lacks: FrozenSet[str]
    visible_best: Optional[Tuple[str, Dict]]
    only_for_want: bool


def floor_standing(gauc: float, best_name: str, best_gauc: float, floors: Dict[str, Dict],
                   reads: Optional[FrozenSet[str]]) -> FloorStanding:
    """The one rule behind a run's floor line (`floors.below_floor_message`), `compare`'s verdict and the
    reproduce report's.

    ``best_name`` / ``best_gauc``: the best floor of ``floors`` (name -> description, gauc, ...);
    ``reads``: what the model reads of `FLOOR_READS`'s inputs (`model_reads`), None when unknown (then it is
    held to the best floor)."""
    below = gauc < best_gauc
    reads_known = frozenset() if reads is None else reads
    lacks = floor_reads(best_name) - reads_known
    if not below or not lacks:
        return FloorStanding(below, frozenset(), None, False)
    visible = best_floor_within(floors, reads_known)
    only = reads is not None and visible is not None and gauc >= visible[1]["gauc"]
    return FloorStanding(below, lacks, visible, only)


T = TypeVar("T")


Standings = List[Tuple[T, FloorStanding]]


def sort_by_standing(standings: Iterable[Tuple[T, FloorStanding]]
                     ) -> Tuple[Standings, Dict[Tuple[FrozenSet[str], str], Standings]]:
    """``(doubted, only_for_want)`` of ``(model, standing)`` pairs: those below the best floor whose training is
    in doubt, and those below it only for want of what it reads, grouped by what they lack and the floor they
    are measured against instead (one sentence per group in `compare`'s verdict and the reproduce report)."""
    doubted: Standings = []
    blind: Dict[Tuple[FrozenSet[str], str], Standings] = {}
    for model, standing in standings:
        if standing.only_for_want:
            blind.setdefault((standing.lacks, standing.visible_best[0]), []).append((model, standing))
        elif standing.below:
            doubted.append((model, standing))
    return doubted, blind


def model_reads(model: Any) -> FrozenSet[str]:
    """What a model (a `muse_rec.spec.ModelSpec`; not imported: this module stays light) reads of the floors'
    inputs (`FLOOR_READS`): SCL vectors when `ModelSpec.reads_scl`, the long-term history when it has a GSU
    (its search reads the whole history window; without one, as DIN and DIN-ref, only the newest behaviours)."""
    return frozenset(k for k, on in ((SCL, model.reads_scl), (LONG_HISTORY, model.gsu.kind != "none")) if on)

"""Check a paper's claim against our numbers and say so in one sentence.

A claim compares two cells A and B measured over seeds. The gap is ``mean(A) - mean(B)``; it
is read against the noise of training in two ways, both printed:

- the seed spread: the pooled per-run standard deviation (`muse_rec.metrics.seeds.pooled_std`,
  ``sqrt((sd_A^2 + sd_B^2) / 2)`` at equal seeds; `muse-rec compare` divides its margins by the same);
  the sentence says "the gap is X x the seed spread";
- the standard error of the gap, ``sqrt(sd_A^2/n_A + sd_B^2/n_B)``; the verdict uses it.

Verdicts (``min_z`` = 2 by default). With many seeds that is a one-sided 97.5% level; with the
2-3 seeds a reproduction runs, the s.e. rests on 1-4 degrees of freedom and the test is weaker:
between two cells of one distribution a ``beats`` claim holds in ~9% of draws at 2 seeds and ~6% at
3 (simulated with `Gap.of` and `judge`), so a single claim that holds at 2 seeds is a hint, not proof.

- ``beats``: holds if gap >= min_z * s.e.; "within noise" if 0 < gap < min_z * s.e.;
  "does not hold" if gap <= 0.
- ``not_worse``: holds if gap >= -min_z * s.e. (A is not clearly below B); else does not hold.
- with a single seed no noise is measured: the sign decides and the sentence says so.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Mapping, Optional

from muse_rec.metrics.seeds import Stats, pooled_std
from muse_rec.reproduce.paper import Claim

HOLDS = "holds"
WITHIN_NOISE = "within noise"
FAILS = "does not hold"
UNMEASURED = "not measured"
DEFAULT_MIN_Z = 2.0


@dataclass(frozen=True)
class Verdict:
    """The outcome of one claim: a status (see module doc) and the sentence for the report."""

    status: str
    sentence: str
    gap: Optional[float] = None
    by_sign: bool = False  # one seed in a cell: no noise measured, the gap's sign alone decided

    @property
    def holds(self) -> bool:
        return self.status == HOLDS


@dataclass(frozen=True)
class Gap:
    """``mean(a) - mean(b)`` with its seed spread (`pooled_std`: None when neither cell has 2 seeds) and
    standard error (None when either has fewer)."""

    gap: float
    spread: Optional[float]
    se: Optional[float]
    n_a: int  # seeds of each cell: a failed run leaves one cell with fewer
    n_b: int

    @property
    def n(self) -> int:
        """The fewer seeds of the two cells."""
        return min(self.n_a, self.n_b)

    @classmethod
    def of(cls, a: Stats, b: Stats) -> "Gap":
        if a.mean is None or b.mean is None:
            raise ValueError("both cells need at least one finished seed")
        se = None
        if a.std is not None and b.std is not None:
            se = math.sqrt(a.std ** 2 / a.n + b.std ** 2 / b.n)
        return cls(a.mean - b.mean, pooled_std(a, b), se, a.n, b.n)

    def noise_words(self, unit: str) -> str:
        if self.spread is None or self.se is None:
            return "one seed: noise not measured"
        # Seeds that agree exactly have no spread to divide by: "inf x" read the same for a gap of either sign.
        ratio = f"{self.gap / self.spread:.1f} x the seed spread" if self.spread > 0 else "no seed spread"
        return (f"{ratio} (pooled std {self.spread:.4f}{unit}; "
                f"s.e. of the gap {self.se:.4f}{unit}; {self.seeds_words()})")

    def seeds_words(self) -> str:
        """"3 seeds", or "3 and 2 seeds" (A's, B's) where a cell has fewer: the fewer alone hid the other's."""
        return f"{self.n_a} seeds" if self.n_a == self.n_b else f"{self.n_a} and {self.n_b} seeds"


def judge(kind: str, gap: Gap, min_z: float = DEFAULT_MIN_Z) -> str:
    """The status of a ``beats`` / ``not_worse`` claim with this gap (see module doc)."""
    if kind not in ("beats", "not_worse"):
        raise ValueError(f"unknown claim kind {kind!r}")
    if gap.se is None:
        ok = gap.gap > 0 if kind == "beats" else gap.gap >= 0
        return HOLDS if ok else FAILS
    if kind == "not_worse":
        return HOLDS if gap.gap >= -min_z * gap.se else FAILS
    if gap.gap <= 0:
        return FAILS
    return HOLDS if gap.gap >= min_z * gap.se else WITHIN_NOISE


def compare_sentence(kind: str, subject: str, other: str, a: Stats, b: Stats, paper_gap: Optional[float] = None,
                     unit: str = " GAUC", min_z: float = DEFAULT_MIN_Z, digits: int = 4) -> Verdict:
    """One sentence: "A beats B by +x GAUC (paper +y), z x the seed spread (...): holds"."""
    verb = {"beats": "beats", "not_worse": "is not worse than"}[kind]
    if a.mean is None or b.mean is None:
        missing = subject if a.mean is None else other
        return Verdict(UNMEASURED, f"{subject} {verb} {other}: {UNMEASURED} ({missing} has no finished run).")
    g = Gap.of(a, b)
    status = judge(kind, g, min_z)
    paper = f" (paper {paper_gap:+.{digits}f})" if paper_gap is not None else ""
    return Verdict(status, f"{subject} {verb} {other}: {g.gap:+.{digits}f}{unit} here{paper}, "
                           f"{g.noise_words(unit)}: **{status}**.", g.gap, by_sign=g.se is None)


def evaluate_claim(claim: Claim, stats: Mapping[str, Stats], paper: Mapping[str, Optional[float]],
                   min_z: float = DEFAULT_MIN_Z) -> Verdict:
    """Check ``claim`` against ``stats`` (row label -> GAUC over seeds); ``paper`` = published GAUC."""
    if claim.subject not in stats:
        raise KeyError(f"claim about {claim.subject!r}: no such row (rows: {sorted(stats)})")
    if claim.kind == "best":
        return _best(claim.subject, stats, paper, min_z)
    if claim.other is None or claim.other not in stats:
        raise KeyError(f"claim {claim.subject!r} {claim.kind} {claim.other!r}: no such row (rows: {sorted(stats)})")
    p_a, p_b = paper.get(claim.subject), paper.get(claim.other)
    paper_gap = p_a - p_b if p_a is not None and p_b is not None else None
    return compare_sentence(claim.kind, claim.subject, claim.other, stats[claim.subject], stats[claim.other],
                            paper_gap, min_z=min_z)


def _best(subject: str, stats: Mapping[str, Stats], paper: Mapping[str, Optional[float]], min_z: float) -> Verdict:
    """``subject`` has the highest mean GAUC; the margin to the runner-up is judged like `beats`."""
    measured: Dict[str, float] = {k: s.mean for k, s in stats.items() if s.mean is not None}
    if subject not in measured or len(measured) < 2:
        return Verdict(UNMEASURED, f"{subject} is the best of the table: {UNMEASURED} (too few finished rows).")
    others = {k: v for k, v in measured.items() if k != subject}
    runner_up = max(others, key=others.get)  # type: ignore[arg-type]
    top = max(measured, key=measured.get)  # type: ignore[arg-type]
    g = Gap.of(stats[subject], stats[runner_up])
    status = judge("beats", g, min_z)
    paper_words = ""
    if all(paper.get(k) is not None for k in measured):
        p_top = max(measured, key=lambda k: paper[k])  # type: ignore[arg-type,return-value]
        paper_words = f" (paper: best is {p_top})"
    if top != subject:
        return Verdict(FAILS, f"{subject} is the best of the {len(measured)} rows: the best here is {top}, "
                              f"{-g.gap:.4f} GAUC above {subject}{paper_words}: **{FAILS}**.", g.gap)
    return Verdict(status, f"{subject} is the best of the {len(measured)} rows: {g.gap:+.4f} GAUC above the "
                           f"runner-up {runner_up}{paper_words}, {g.noise_words(' GAUC')}: **{status}**.", g.gap,
                   by_sign=g.se is None)

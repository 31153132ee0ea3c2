"""Statistics over seeds: one quantity (a GAUC, a logloss) of runs that differ only in their seed.

`muse-rec compare` and `muse-rec reproduce` both read a gap between two cells (methods, table rows)
against the seed-to-seed noise; both take it from here, so one set of runs shows one spread in both:

- a cell's spread: the sample standard deviation of its values (``n - 1`` in the denominator);
- the spread of a gap between cells A and B: their pooled standard deviation, each cell's squared
  deviations over the degrees of freedom of both,
  ``sqrt(((n_A - 1) sd_A^2 + (n_B - 1) sd_B^2) / (n_A + n_B - 2))``: with as many seeds on each side
  ``sqrt((sd_A^2 + sd_B^2) / 2)``, and with one seed on one side (no spread measured there) the
  other side's ``sd``.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Dict, List, Optional


@dataclass
class Stats:
    """Values of one quantity over seeds (NaNs and missing seeds left out)."""

    values: List[float] = field(default_factory=list)
    seeds: List[int] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> Optional[float]:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> Optional[float]:
        """Sample standard deviation over seeds; None with fewer than 2 seeds."""
        return statistics.stdev(self.values) if self.n > 1 else None

    @classmethod
    def of(cls, by_seed: Dict[int, Optional[float]]) -> "Stats":
        keep = {s: v for s, v in sorted(by_seed.items()) if v is not None and not math.isnan(v)}
        return cls(list(keep.values()), list(keep))


def pooled_std(a: Stats, b: Stats) -> Optional[float]:
    """The pooled standard deviation of cells ``a`` and ``b`` (module doc), in their values' unit;
    None when neither has two seeds (no spread measured)."""
    dof = max(a.n - 1, 0) + max(b.n - 1, 0)
    if dof == 0:
        return None
    squares = sum((s.n - 1) * s.std ** 2 for s in (a, b) if s.std is not None)
    return math.sqrt(squares / dof)

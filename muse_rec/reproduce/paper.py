"""What the paper published, as data: the tables `muse-rec reproduce` re-creates and their claims.

Numbers are GAUC from the paper (arXiv 2512.07216) as recorded in shared/design/MUSE.md:
Table 5 on the open-source Taobao-MM release (1k behaviours), Table 3 on the production set.
MUSE.md records no per-row numbers for the GSU ablations (Tables 1 and 2); their claims are the
paper's stated conclusion ("simplicity suffices in the GSU: lightweight cosine similarity with
high-quality multimodal embeddings outperforms complex retrieval mechanisms"), and their paper
column stays empty rather than invented.

A row names the spec that trains it: ``{profile}/<method>`` resolves to ``specs/demo/`` on
synthetic data and ``specs/taobao_mm_p90/`` on the real release; ``ablations/<x>`` is an
ablation spec (demo profile; on real data the plan overlays the real profile, see plan.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Literal, Optional, Tuple

ClaimKind = Literal["beats", "not_worse", "best"]


@dataclass(frozen=True)
class TableRow:
    """One line of a reproduced table.

    Args:
        label: what the paper calls it, e.g. ``"SIM-hard"``.
        config: the run-configuration id (run directories are ``<config>-s<seed>``).
        spec: spec file below ``specs/`` without ``.yaml`` (``{profile}`` = the data profile).
        overrides: extra ``key=value`` spec overrides of this row.
        paper_gauc: the published GAUC, None where the paper's number is not recorded.
    """

    label: str
    config: str
    spec: str
    overrides: Tuple[str, ...] = ()
    paper_gauc: Optional[float] = None


@dataclass(frozen=True)
class Claim:
    """A statement the paper makes about rows of one table, checked against our numbers.

    ``beats``: ``subject`` has a higher GAUC than ``other``. ``not_worse``: ``subject`` is not
    clearly below ``other`` (the paper's "simplicity suffices"). ``best``: ``subject`` beats
    every other row of the table (checked against the runner-up).
    """

    kind: ClaimKind
    subject: str
    other: Optional[str] = None
    source: str = ""


@dataclass(frozen=True)
class PaperTable:
    """A table of the paper: rows to train, the reference row for gaps, the claims to check."""

    key: str
    title: str
    paper_setting: str
    reference: str
    rows: Tuple[TableRow, ...]
    claims: Tuple[Claim, ...] = field(default_factory=tuple)

    def row(self, label: str) -> TableRow:
        for r in self.rows:
            if r.label == label:
                return r
        raise KeyError(f"{self.key}: no row labelled {label!r} (rows: {[r.label for r in self.rows]})")


TABLE5 = PaperTable(
    key="table5",
    title="Table 5: MUSE vs search-based baselines",
    paper_setting="Taobao-MM open-source release, 1k behaviours (paper Table 5)",
    reference="DIN",
    rows=(
        TableRow("DIN", "din", "{profile}/din", paper_gauc=0.6082),
        TableRow("SIM-hard", "sim_hard", "{profile}/sim_hard", paper_gauc=0.6139),
        TableRow("SIM-soft", "sim_soft", "{profile}/sim_soft", paper_gauc=0.6135),
        TableRow("TWIN", "twin", "{profile}/twin", paper_gauc=0.6098),
        TableRow("MISS", "miss", "{profile}/miss", paper_gauc=0.6097),
        TableRow("MUSE", "muse", "{profile}/muse", paper_gauc=0.6154),
    ),
    claims=(
        Claim("best", "MUSE", source="Table 5"),
        Claim("beats", "MUSE", "DIN", "Table 5"),
        Claim("beats", "MUSE", "SIM-soft", "Table 5: multimodal beats ID retrieval"),
        Claim("beats", "MUSE", "TWIN", "Table 5"),
        Claim("beats", "MUSE", "MISS", "Table 5"),
        Claim("beats", "SIM-hard", "DIN", "Table 5: long-term search helps"),
    ),
)

TABLE3 = PaperTable(
    key="table3",
    title="Table 3: ESU ablation (GSU = multimodal cosine)",
    paper_setting="production set, 5k behaviours (paper Table 3)",
    reference="TA",
    rows=(
        TableRow("TA", "esu_ta", "ablations/esu_ta", paper_gauc=0.6301),
        TableRow("SimTier", "esu_simtier", "ablations/esu_simtier", paper_gauc=0.6345),
        TableRow("TA+SimTier", "esu_ta_simtier", "ablations/esu_ta_simtier", paper_gauc=0.6361),
        TableRow("SA-TA", "esu_sa_ta", "ablations/esu_sa_ta", paper_gauc=0.6339),
        TableRow("SA-TA+SimTier", "esu_sa_ta_simtier", "ablations/esu_sa_ta_simtier", paper_gauc=0.6377),
    ),
    claims=(
        Claim("best", "SA-TA+SimTier", source="Table 3"),
        Claim("beats", "SimTier", "TA", "Table 3"),
        Claim("beats", "SA-TA", "TA", "Table 3: semantic-aware attention helps"),
        Claim("beats", "TA+SimTier", "TA", "Table 3"),
        Claim("beats", "SA-TA+SimTier", "TA+SimTier", "Table 3"),
    ),
)

_ABSTRACT = "abstract: 'simplicity suffices in the GSU'"

TABLE1 = PaperTable(
    key="table1",
    title="Table 1: GSU embedding (ESU = SimTier + SA-TA)",
    paper_setting="production set (paper Table 1; per-row numbers not recorded in MUSE.md)",
    reference="ID",
    rows=(
        TableRow("ID", "gsu_embedding_id", "ablations/gsu_embedding_id"),
        TableRow("MM", "gsu_embedding_mm", "ablations/gsu_embedding_mm"),
    ),
    claims=(Claim("beats", "MM", "ID", _ABSTRACT + ": multimodal embeddings retrieve better"),),
)

TABLE2 = PaperTable(
    key="table2",
    title="Table 2: GSU scoring (ESU = SimTier + SA-TA)",
    paper_setting="production set (paper Table 2; per-row numbers not recorded in MUSE.md)",
    reference="MM cos",
    rows=(
        TableRow("MM cos", "gsu_score_mm_cos", "ablations/gsu_score_mm_cos"),
        TableRow("MM attn", "gsu_score_mm_attention", "ablations/gsu_score_mm_attention"),
        TableRow("MM cos + ID cos", "gsu_score_mm_cos_id_cos", "ablations/gsu_score_mm_cos_id_cos"),
        TableRow("MM cos + ID attn", "gsu_score_mm_cos_id_attention", "ablations/gsu_score_mm_cos_id_attention"),
    ),
    claims=(
        Claim("not_worse", "MM cos", "MM attn", _ABSTRACT),
        Claim("not_worse", "MM cos", "MM cos + ID cos", _ABSTRACT),
        Claim("not_worse", "MM cos", "MM cos + ID attn", _ABSTRACT),
    ),
)

PAPER_TABLES: Dict[str, PaperTable] = {t.key: t for t in (TABLE5, TABLE3, TABLE1, TABLE2)}

# Fig. 5: the sequence length handed to the GSU (the newest N behaviours).
FIG5_LENGTHS: Tuple[int, ...] = (50, 100, 200, 500, 1000)
FIG5_CLAIM = "MUSE's GAUC grows with the length of the sequence the GSU searches (paper Fig. 5; 5K -> 100K: +0.38% GAUC)"
FIG6_CLAIMS = (
    "the gain of MUSE over DIN grows with the user's sequence length (paper Fig. 5/6)",
    "the gain of MUSE over DIN is largest on unpopular target items (paper Fig. 6)",
)


def fig5_row(length: int) -> TableRow:
    """MUSE trained with the GSU limited to the newest ``length`` behaviours."""
    return TableRow(f"N={length}", f"muse_len{length}", "{profile}/muse", (f"data.seq_len={length}",))

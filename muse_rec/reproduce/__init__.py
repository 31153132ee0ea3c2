"""Paper reproduction: `muse-rec reproduce` trains the paper's tables and figures and reports them.

- `paper`: the published numbers and claims, as data.
- `plan`: which runs each experiment needs (identical rows share runs).
- `runner` / `worker`: prepare the data, train every pending run in one distributed job, resume.
- `results`, `claims`, `report`, `plots`: metrics.json -> statistics -> verdicts -> report.md + PNGs.
"""
from muse_rec.reproduce.claims import Verdict, compare_sentence, evaluate_claim
from muse_rec.reproduce.paper import PAPER_TABLES, Claim, PaperTable, TableRow
from muse_rec.reproduce.plan import EXPERIMENTS, REAL, SYNTHETIC, Plan, Profile, Run, build_plan, parse_what
from muse_rec.reproduce.results import Stats, group_gains, load_metrics

__all__ = [
    "EXPERIMENTS", "PAPER_TABLES", "REAL", "SYNTHETIC", "Claim", "PaperTable", "Plan", "Profile", "Run", "Stats",
    "TableRow", "Verdict", "build_plan", "compare_sentence", "evaluate_claim", "group_gains", "load_metrics",
    "parse_what",
]

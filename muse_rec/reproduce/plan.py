"""The experiment plan: which trainings `muse-rec reproduce` runs for a --what / --quick choice.

Every table row and Fig. 5 point names a spec (+ overrides). Rows whose resolved specs are
identical apart from their labels (e.g. Table 3's SA-TA+SimTier, Table 1's MM and the Table 5
MUSE row are all MUSE) share one configuration and its runs, so nothing is trained twice. The
sharing is decided over ALL experiments, whatever --what selects, so a later call with another
--what reuses the same run directories.

A run is a configuration at one seed; its directory is ``<out>/runs/<config>-s<seed>``.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import yaml

from muse_rec.reproduce.paper import FIG5_LENGTHS, PAPER_TABLES, TableRow, fig5_row
from muse_rec.spec import dotted_items, load_spec, training_settings

EXPERIMENTS: Tuple[str, ...] = ("table5", "table3", "table1", "table2", "fig5", "fig6")
REPO_ROOT = Path(__file__).resolve().parents[2]
SPECS_DIR = REPO_ROOT / "specs"


@dataclass(frozen=True)
class Profile:
    """Which data the runs train on and which spec folder / overlay that implies.

    Args:
        name: ``synthetic`` (the demo profile) or ``real`` (the Taobao-MM p90 profile).
        method_dir: folder under ``specs/`` holding the Table 5 method specs of this profile.
        ablation_overlay: profile file (below ``specs/``) whose keys are laid over the ablation
            specs, which extend the demo profile; None = use them as they are.
    """

    name: str
    method_dir: str
    ablation_overlay: Optional[str] = None


SYNTHETIC = Profile("synthetic", "demo")
REAL = Profile("real", "taobao_mm_p90", ablation_overlay="profiles/taobao_mm_p90.yaml")
# Keys of a profile file that are not training settings: where runs go and the planning-only
# vocabulary estimates (a training run sizes tables from the prepared data).
_OVERLAY_SKIP = ("output_dir", "data.vocab_sizes", "data.prepared")
# Keys the overlaid profile decides for every run even where its file leaves them to base.yaml: the
# ablation specs extend the demo profile, which sets them for its tiny data (warn_below_clicks 0 =
# never warn), so a real-data ablation kept the demo's value while the method runs used base.yaml's.
_PROFILE_DECIDES = ("train.warn_below_clicks",)
_BASE_SPEC = "base.yaml"


@dataclass(frozen=True)
class Config:
    """One distinct training configuration: a spec file plus overrides."""

    id: str
    spec_path: str
    overrides: Tuple[str, ...]


@dataclass(frozen=True)
class Run:
    """A configuration at one seed."""

    config: Config
    seed: int

    @property
    def name(self) -> str:
        return f"{self.config.id}-s{self.seed}"


@dataclass
class Plan:
    """Selected experiments, their rows -> configuration ids, and the runs to train.

    ``row_config[(table_key, label)]`` is the configuration id whose runs fill that cell
    (``table_key`` is a paper table key or ``"fig5"``).
    """

    what: Tuple[str, ...]
    seeds: Tuple[int, ...]
    fig5_lengths: Tuple[int, ...]
    profile: Profile
    row_config: Dict[Tuple[str, str], str]
    configs: Dict[str, Config]
    runs: List[Run] = field(default_factory=list)

    def config_of(self, table: str, label: str) -> str:
        try:
            return self.row_config[(table, label)]
        except KeyError:
            raise KeyError(f"plan has no cell {table}/{label!r}") from None

    def to_dict(self) -> Dict:
        """The selection (`--dry-run`, OUT/plan.json): the cells ``what`` fills, the configurations its runs
        train and the runs. ``row_config`` holds every experiment's cells (the sharing is decided over all);
        listing them all showed 20 cells and 15 configurations for a --what table5 that trains 6."""
        cells = _needed_cells(self.what, self.fig5_lengths)
        return {
            "what": list(self.what), "seeds": list(self.seeds), "fig5_lengths": list(self.fig5_lengths),
            "profile": self.profile.name,
            "cells": {f"{t}/{label}": self.row_config[(t, label)] for t, label in cells},
            "configs": {c.id: {"spec": c.spec_path, "overrides": list(c.overrides)}
                        for c in dict.fromkeys(r.config for r in self.runs)},
            "runs": [r.name for r in self.runs],
        }


def parse_what(text: str) -> Tuple[str, ...]:
    """``"table5,fig5"`` -> ``("table5", "fig5")`` in canonical order; unknown names raise."""
    asked = [w.strip().lower() for w in text.split(",") if w.strip()]
    unknown = [w for w in asked if w not in EXPERIMENTS]
    if unknown or not asked:
        raise ValueError(f"--what {text!r}: unknown experiment(s) {unknown}; choose from {','.join(EXPERIMENTS)}")
    return tuple(e for e in EXPERIMENTS if e in asked)


def profile_overlay(profile: Profile, specs_dir: Path = SPECS_DIR) -> Tuple[str, ...]:
    """The overlay file of ``profile`` flattened to ``key=value`` overrides (YAML flow values), plus
    each `_PROFILE_DECIDES` key the file does not set, at base.yaml's value (what the profile's
    own method specs resolve to)."""
    if profile.ablation_overlay is None:
        return ()
    path = specs_dir / profile.ablation_overlay
    doc = yaml.safe_load(path.read_text()) or {}
    if "extends" in doc:
        raise ValueError(f"{path}: a profile overlay must not use 'extends'")
    items = dict(dotted_items(doc, skip=_OVERLAY_SKIP))
    base = dict(dotted_items(yaml.safe_load((specs_dir / _BASE_SPEC).read_text()) or {}))
    items.update({key: base[key] for key in _PROFILE_DECIDES if key not in items and key in base})
    return tuple(f"{key}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                 for key, v in items.items())


def all_rows(fig5_lengths: Sequence[int] = FIG5_LENGTHS) -> List[Tuple[str, TableRow]]:
    """Every (experiment key, row) of every table and Fig. 5 point, in report order."""
    rows = [(t.key, r) for t in PAPER_TABLES.values() for r in t.rows]
    rows += [("fig5", fig5_row(n)) for n in fig5_lengths]
    return rows


def _needed_cells(what: Sequence[str], fig5_lengths: Sequence[int]) -> List[Tuple[str, str]]:
    cells: List[Tuple[str, str]] = []
    for w in what:
        if w in PAPER_TABLES:
            cells += [(w, r.label) for r in PAPER_TABLES[w].rows]
        elif w == "fig5":
            cells += [("fig5", fig5_row(n).label) for n in fig5_lengths] + [("table5", "DIN")]
        elif w == "fig6":
            cells += [("table5", "DIN"), ("table5", "MUSE")]
    return list(dict.fromkeys(cells))


def _fingerprint(spec_path: Path, overrides: Sequence[str]) -> str:
    """Hash of the resolved spec's training settings (`training_settings`: without its name,
    place and the keys that change only what a run logs; the method specs and the ablations may
    come from profiles that set those differently) and without the label model.method."""
    d = training_settings(load_spec(spec_path, list(overrides)).to_dict(), leave_out=("model.method",))
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


# The most seeds per cell: each is one training of every configuration (17 for all of the paper's
# experiments, ~20 s each on the demo data on this 2-core box), so 1,000 is already days of training;
# the plan lists every run, so --seeds 2**62 hung building it (100,000 took 9 s and 640 MB).
MAX_SEEDS = 1_000


def check_seeds(seeds: int) -> None:
    """ValueError naming --seeds unless 1 <= seeds <= `MAX_SEEDS`."""
    if not 1 <= seeds <= MAX_SEEDS:
        raise ValueError(f"--seeds {seeds}: need 1 to {MAX_SEEDS:,} seeds")


def build_plan(
    what: Sequence[str] = EXPERIMENTS,
    seeds: int = 3,
    fig5_lengths: Sequence[int] = FIG5_LENGTHS,
    profile: Profile = SYNTHETIC,
    prepared: str = "data/demo/prepared",
    specs_dir: Path = SPECS_DIR,
) -> Plan:
    """Resolve every row to a configuration, share identical ones, list the runs ``what`` needs.

    Args:
        what: experiment keys (see `EXPERIMENTS`).
        seeds: seeds per configuration (``train.seed`` = 0 .. seeds-1).
        fig5_lengths: sequence lengths of Fig. 5 (each <= the profile's data.seq_len).
        profile: data profile (spec folder of Table 5, overlay for the ablations).
        prepared: ``data.prepared`` of every run (it takes part in the sharing test, nothing else).
    """
    check_seeds(seeds)
    overlay = profile_overlay(profile, specs_dir)
    by_print: Dict[str, Config] = {}
    row_config: Dict[Tuple[str, str], str] = {}
    for table, row in all_rows(fig5_lengths):
        is_method = row.spec.startswith("{profile}/")
        spec_rel = row.spec.replace("{profile}", profile.method_dir) + ".yaml"
        spec_path = specs_dir / spec_rel
        overrides = (() if is_method else overlay) + tuple(row.overrides)
        fp = _fingerprint(spec_path, overrides + (f"data.prepared={prepared}",))
        cfg = by_print.setdefault(fp, Config(row.config, str(spec_path), overrides))
        row_config[(table, row.label)] = cfg.id
    configs = {c.id: c for c in by_print.values()}
    needed = list(dict.fromkeys(row_config[c] for c in _needed_cells(what, fig5_lengths)))
    runs = [Run(configs[cid], s) for cid in needed for s in range(seeds)]
    return Plan(tuple(what), tuple(range(seeds)), tuple(fig5_lengths), profile, row_config, configs, runs)

"""The experiment plan: which runs each --what / --quick selection trains, and row sharing."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from muse_rec.reproduce.paper import PAPER_TABLES
from muse_rec.reproduce.plan import EXPERIMENTS, REAL, SPECS_DIR, SYNTHETIC, build_plan, parse_what, profile_overlay
from muse_rec.spec import load_spec

QUICK_LENGTHS = (50, 200, 1000)


def _configs(plan) -> set:
    return {r.config.id for r in plan.runs}


def test_full_plan_shares_identical_rows_and_counts_runs():
    plan = build_plan(EXPERIMENTS, seeds=3)
    # 6 methods + 4 new ESU rows + 0 new Table 1 rows + 3 new Table 2 rows + 4 new Fig. 5 lengths.
    assert len(plan.configs) == 17
    assert len(plan.runs) == 51
    assert {r.seed for r in plan.runs} == {0, 1, 2}
    # Rows that ARE MUSE (or SIM-soft) are not trained again.
    for cell in [("table3", "SA-TA+SimTier"), ("table1", "MM"), ("table2", "MM cos"), ("fig5", "N=1000")]:
        assert plan.config_of(*cell) == "muse"
    assert plan.config_of("table1", "ID") == "sim_soft"
    assert plan.config_of("fig5", "N=50") == "muse_len50"
    assert len({r.name for r in plan.runs}) == len(plan.runs)


def test_quick_plan_is_smaller():
    plan = build_plan(EXPERIMENTS, seeds=2, fig5_lengths=QUICK_LENGTHS)
    assert len(plan.configs) == 15 and len(plan.runs) == 30
    assert not any(c.startswith("muse_len100") or c.startswith("muse_len500") for c in _configs(plan))


@pytest.mark.parametrize("what, expected", [
    ("table5", {"din", "sim_hard", "sim_soft", "twin", "miss", "muse"}),
    ("table3", {"esu_ta", "esu_simtier", "esu_ta_simtier", "esu_sa_ta", "muse"}),
    ("table1", {"sim_soft", "muse"}),
    ("table2", {"muse", "gsu_score_mm_attention", "gsu_score_mm_cos_id_cos", "gsu_score_mm_cos_id_attention"}),
    ("fig5", {"muse_len50", "muse_len200", "muse", "din"}),
    ("fig6", {"din", "muse"}),
    ("fig6,table1", {"din", "muse", "sim_soft"}),
])
def test_each_experiment_selects_its_runs(what, expected):
    plan = build_plan(parse_what(what), seeds=1, fig5_lengths=QUICK_LENGTHS)
    assert _configs(plan) == expected


def test_fig5_runs_limit_the_sequence_length():
    plan = build_plan(("fig5",), seeds=1, fig5_lengths=QUICK_LENGTHS)
    cfg = plan.configs["muse_len200"]
    spec = load_spec(cfg.spec_path, list(cfg.overrides))
    assert spec.data.seq_len == 200 and spec.model.method == "MUSE"


def test_parse_what_orders_and_rejects_unknown():
    assert parse_what("fig6, table5") == ("table5", "fig6")
    with pytest.raises(ValueError, match="table9"):
        parse_what("table5,table9")
    with pytest.raises(ValueError):
        parse_what(" , ")


def test_seeds_must_be_positive():
    with pytest.raises(ValueError, match="seed"):
        build_plan(("table5",), seeds=0)


def test_real_profile_uses_p90_specs_and_overlays_ablations():
    plan = build_plan(EXPERIMENTS, seeds=1, profile=REAL, prepared="/data/taobao_mm/prepared_p90")
    assert plan.configs["muse"].spec_path.endswith("taobao_mm_p90/muse.yaml")
    assert len(plan.configs) == 17  # the overlay makes the ESU ablation of MUSE identical to MUSE again
    esu = plan.configs["esu_ta"]
    spec = load_spec(esu.spec_path, list(esu.overrides))
    assert spec.train.sparse_optimizer.name == "adam"
    assert spec.train.batch_size == 1000 and spec.train.dense_optimizer.lr == pytest.approx(2e-4)
    assert spec.model.esu.attention == "ta"  # the ablation's own switch survives the overlay
    assert not any(o.startswith(("output_dir", "data.vocab_sizes", "data.prepared")) for o in esu.overrides)
    assert profile_overlay(SYNTHETIC) == ()


def test_the_real_profile_decides_the_few_clicks_warning_of_every_run(tmp_path: Path):
    """The ablation specs extend the demo profile, whose `train.warn_below_clicks: 0` (never warn)
    survived the real profile's overlay: ablations on real data never warned while the methods did.
    Every run's composed spec now has the real profile's value: base.yaml's unless the profile sets one."""
    import yaml

    from muse_rec.reproduce.runner import run_overrides

    def thresholds(specs: Path) -> dict:
        plan = build_plan(EXPERIMENTS, seeds=1, profile=REAL, prepared="/data/p90", specs_dir=specs)
        return {r.config.id: load_spec(r.config.spec_path, run_overrides(tmp_path / "out", r, "/data/p90"))
                .train.warn_below_clicks for r in plan.runs}

    base = yaml.safe_load((SPECS_DIR / "base.yaml").read_text())["train"]["warn_below_clicks"]
    got = thresholds(SPECS_DIR)
    assert got["esu_ta"] == base > 0 and set(got.values()) == {base}, got
    specs = tmp_path / "specs"
    shutil.copytree(SPECS_DIR, specs)
    profile = specs / REAL.ablation_overlay
    own = base + 1  # a value of the profile's own, neither base.yaml's nor the demo's
    doc = yaml.safe_load(profile.read_text())
    doc["train"]["warn_below_clicks"] = own
    profile.write_text(yaml.safe_dump(doc))
    got = thresholds(specs)
    assert got["esu_ta"] == own and set(got.values()) == {own}, got


def test_a_changed_ablation_spec_is_no_longer_shared(tmp_path: Path):
    specs = tmp_path / "specs"
    shutil.copytree(SPECS_DIR, specs)
    f = specs / "ablations" / "gsu_embedding_mm.yaml"
    f.write_text(f.read_text() + "\ntrain: {seed: 0, dense_optimizer: {name: adamw, lr: 5.0e-4}}\n")
    plan = build_plan(("table1",), seeds=1, specs_dir=specs)
    assert plan.config_of("table1", "MM") == "gsu_embedding_mm"
    assert plan.config_of("table5", "MUSE") == "muse"


def test_every_claim_names_rows_of_its_table():
    for table in PAPER_TABLES.values():
        labels = {r.label for r in table.rows}
        assert table.reference in labels
        for c in table.claims:
            assert c.subject in labels and (c.other is None or c.other in labels)

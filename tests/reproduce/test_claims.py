"""Claims: gaps judged against the seed-to-seed noise, one sentence each."""
from __future__ import annotations

import math

import pytest

from muse_rec.reproduce.claims import FAILS, HOLDS, UNMEASURED, WITHIN_NOISE, Gap, compare_sentence, evaluate_claim, judge
from muse_rec.reproduce.paper import TABLE3, TABLE5, Claim
from muse_rec.reproduce.results import Stats


def S(*values: float) -> Stats:
    return Stats.of(dict(enumerate(values)))


def test_stats_mean_std_and_nan_dropped():
    s = Stats.of({0: 0.6, 1: 0.62, 2: float("nan"), 3: None})
    assert s.n == 2 and s.seeds == [0, 1]
    assert s.mean == pytest.approx(0.61)
    assert s.std == pytest.approx(math.sqrt(2) * 0.01)
    assert S(0.5).std is None and Stats().mean is None


def test_gap_spread_and_standard_error():
    g = Gap.of(S(0.64, 0.66, 0.65), S(0.60, 0.61, 0.62))
    assert g.gap == pytest.approx(0.04)
    assert g.spread == pytest.approx(0.01)  # both stds are 0.01
    assert g.se == pytest.approx(math.sqrt(2 * 0.01 ** 2 / 3))
    assert Gap.of(S(0.6), S(0.5)).se is None


def test_judge_beats_three_outcomes_and_single_seed():
    assert judge("beats", Gap.of(S(0.70, 0.71, 0.72), S(0.60, 0.61, 0.62))) == HOLDS
    assert judge("beats", Gap.of(S(0.605, 0.625, 0.615), S(0.60, 0.62, 0.61))) == WITHIN_NOISE
    assert judge("beats", Gap.of(S(0.59, 0.60, 0.61), S(0.60, 0.61, 0.62))) == FAILS
    assert judge("beats", Gap.of(S(0.61), S(0.60))) == HOLDS
    assert judge("beats", Gap.of(S(0.60), S(0.61))) == FAILS


def test_judge_not_worse_tolerates_noise_but_not_a_clear_loss():
    assert judge("not_worse", Gap.of(S(0.605, 0.615, 0.610), S(0.60, 0.62, 0.61))) == HOLDS
    assert judge("not_worse", Gap.of(S(0.50, 0.51, 0.52), S(0.60, 0.61, 0.62))) == FAILS
    with pytest.raises(ValueError):
        judge("best", Gap.of(S(0.6), S(0.5)))


def test_sentence_states_gap_paper_gap_and_spread_ratio():
    v = compare_sentence("beats", "MUSE", "DIN", S(0.64, 0.65, 0.66), S(0.54, 0.55, 0.56), paper_gap=0.0072)
    assert v.status == HOLDS and v.gap == pytest.approx(0.10)
    assert "MUSE beats DIN: +0.1000 GAUC here (paper +0.0072)" in v.sentence
    assert "10.0 x the seed spread" in v.sentence and "**holds**" in v.sentence


def test_missing_cell_is_not_measured():
    v = compare_sentence("beats", "MUSE", "DIN", S(0.6), Stats())
    assert v.status == UNMEASURED and "DIN has no finished run" in v.sentence


def test_best_claim_against_runner_up_and_when_beaten():
    paper = {r.label: r.paper_gauc for r in TABLE5.rows}
    stats = {r.label: S(0.55, 0.56, 0.57) for r in TABLE5.rows}
    stats["MUSE"] = S(0.64, 0.65, 0.66)
    stats["SIM-hard"] = S(0.60, 0.61, 0.62)
    v = evaluate_claim(Claim("best", "MUSE"), stats, paper)
    assert v.status == HOLDS and "runner-up SIM-hard" in v.sentence and "paper: best is MUSE" in v.sentence
    stats["TWIN"] = S(0.70, 0.71, 0.72)
    v = evaluate_claim(Claim("best", "MUSE"), stats, paper)
    assert v.status == FAILS and "the best here is TWIN" in v.sentence


def test_paper_gap_comes_from_the_table():
    paper = {r.label: r.paper_gauc for r in TABLE3.rows}
    stats = {r.label: S(0.6, 0.61) for r in TABLE3.rows}
    v = evaluate_claim(Claim("beats", "SimTier", "TA"), stats, paper)
    assert "(paper +0.0044)" in v.sentence
    with pytest.raises(KeyError, match="no such row"):
        evaluate_claim(Claim("beats", "SimTier", "TB"), stats, paper)


def test_seeds_that_agree_exactly_give_no_ratio_whatever_the_gaps_sign():
    """Two cells whose seeds agree exactly (a spread of 0): a gap of -0.0100 read "inf x the seed spread",
    the sign of a gap the same sentence calls not holding."""
    for kind, (a, b) in (("beats", (0.50, 0.51)), ("not_worse", (0.50, 0.51)), ("beats", (0.52, 0.51))):
        v = compare_sentence(kind, "A", "B", S(a, a), S(b, b))
        assert "inf" not in v.sentence and f"{a - b:+.4f} GAUC here, no seed spread (pooled std 0.0000 GAUC; " \
            in v.sentence, v.sentence


def test_cells_with_different_numbers_of_seeds_say_both():
    """A at 3 seeds, B at 2 (a failed run): the sentence said "2 seeds", as if A had two."""
    v = compare_sentence("beats", "A", "B", S(0.60, 0.62, 0.64), S(0.51, 0.52))
    assert v.sentence.endswith("s.e. of the gap 0.0126 GAUC; 3 and 2 seeds): **holds**."), v.sentence
    assert "; 2 seeds)" in compare_sentence("beats", "A", "B", S(0.60, 0.62), S(0.51, 0.52)).sentence

"""Printed counts: singular for exactly one ("1 user"), plural otherwise, through one helper."""
from __future__ import annotations

from pathlib import Path

import pytest

from muse_rec.wording import count


@pytest.mark.parametrize("n, noun, plural, said", [
    (0, "user", None, "0 users"), (1, "user", None, "1 user"), (2, "user", None, "2 users"),
    (1200, "user", None, "1,200 users"), (1, "category", "categories", "1 category"),
    (3, "category", "categories", "3 categories"), (1, "test user", None, "1 test user"),
])
def test_count_is_singular_for_exactly_one(n: int, noun: str, plural, said: str):
    assert count(n, noun, plural) == said


def test_prepare_s_summary_of_one_of_each_is_singular():
    from muse_rec.cli.prepare import _split_counts

    one = {"samples": 1, "user_rows": 1, "behaviours": 1, "behaviours_unknown_item": 0, "behaviours_without_item_id": 0}
    assert _split_counts(one) == ("1 sample, 1 user row, 0 of 1 behaviour on items outside the vocabulary, "
                                  "0 with no item id (raw id 0)")


def test_baselines_on_the_demo_tables_says_1_user(taobao_fixtures: Path, tmp_path: Path, capsys):
    """The 10-row demo tables hold one test user: `baselines` printed "10 samples, 1 users (1 with both
    labels enter GAUC)"."""
    from muse_rec.cli import main

    prepared = tmp_path / "prepared"
    with pytest.warns(UserWarning):  # the demo tables join no sample to a user row (prepare says so)
        assert main(["prepare", str(taobao_fixtures), str(prepared), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["baselines", str(prepared)]) == 0
    said = capsys.readouterr()
    assert f"{prepared}, split test: 10 samples, 1 user (GAUC over the 1 user with both labels), " in said.out, said.out
    assert "10 train samples to fit it on, every one with label 0" in said.err, said.err

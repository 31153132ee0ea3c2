"""The line `prepare` ends with says how much of the train split has SCL vectors."""
from __future__ import annotations

from muse_rec.cli.prepare import summary_line


def _meta(**train_extra: float) -> dict:
    split = {"samples": 84061, "user_rows": 6000, "behaviours_unknown_item": 0, "behaviours_without_item_id": 0,
             "behaviours": 413577, "positive_rate": 0.0289}
    return {"splits": {"train": {**split, **train_extra}, "test": dict(split)}, "test_users_unseen_in_train": 600,
            "vocab_sizes": {"item": 30001, "category": 301}, "vocab_mode": "full"}


def test_summary_line_gives_the_scl_coverage_of_train() -> None:
    # An outside check's release: 40% of items absent from the SCL table, 62.6% of train targets and 61.7% of
    # train behaviours with a vector; the line said nothing of it.
    line = summary_line("out", _meta(scl_coverage_targets=52646 / 84061, scl_coverage_behaviours=255124 / 413577))
    assert line.endswith("click rate train 0.0289; SCL vectors for 62.6% of train targets and 61.7% of train "
                         "behaviours"), line


def test_summary_line_of_a_meta_json_without_coverage_keeps_its_words() -> None:
    assert summary_line("out", _meta()).endswith("click rate train 0.0289")

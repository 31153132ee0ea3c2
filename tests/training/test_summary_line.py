"""The line a run's log ends with (`done: ...`) and `evaluate` prints."""
from muse_rec.training.results import summary_line


def test_summary_line_says_how_many_users_gauc_averaged() -> None:
    # An outside check at a 3% click rate: GAUC over 782 of 2,600 users; the line gave the GAUC alone.
    r = {"gauc": 0.6653, "auc": 0.6866, "logloss": 0.1311, "users": 2600, "gauc_users": 782}
    line = summary_line(r)
    assert line.startswith("gauc=0.6653 over 782 of 2,600 users (those with a click and a non-click), auc=0.6866")


def test_summary_line_without_the_counts_keeps_its_words() -> None:
    # A metrics dict without the counts (an older one) reads as before.
    assert summary_line({"gauc": 0.5, "auc": 0.5}) == "gauc=0.5000, auc=0.5000"

"""The `muse-rec prepare` console script and the data benchmark, run for real on small inputs."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from muse_rec.data.prepared import PreparedData
from tests.conftest import REPO, subprocess_env, venv_bin


def test_console_script_prepares_fixtures(taobao_fixtures: Path, tmp_path: Path) -> None:
    out = tmp_path / "x"
    cmd = [venv_bin("muse-rec"), "prepare", str(taobao_fixtures), str(out), "--no-progress", "--json"]
    done = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    meta = json.loads(done.stdout)
    assert meta == PreparedData(str(out)).meta
    assert meta["splits"]["train"]["samples"] == 10 and meta["splits"]["test"]["positives"] == 1
    assert "no row in train_user_features" in done.stderr  # the documented warning reaches the user
    # ... as one line of its own, not Python's "file:line: UserWarning:" plus the echoed source line
    assert any(ln.startswith("muse-rec prepare: warning: train_samples: ") and "no row in" in ln
               for ln in done.stderr.splitlines()), done.stderr
    assert "warnings.warn(" not in done.stderr and "UserWarning" not in done.stderr, done.stderr
    again = subprocess.run(cmd[:-1], cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "prepared" in again.stdout


def test_help_line_is_listed() -> None:
    done = subprocess.run([venv_bin("muse-rec"), "--help"], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    assert "prepare" in done.stdout and "build vocabularies" in done.stdout


def _bench_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_data", REPO / "benchmarks" / "bench_data.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)  # type: ignore[union-attr]
    return bench


def test_benchmark_runs_small(tmp_path: Path) -> None:
    pytest.importorskip("muse_rec.data.synth")
    bench = _bench_module()
    assert bench.main(["--out", str(tmp_path), "--preset", "tiny", "--batch", "64", "--seq-len", "50",
                       "--epochs", "1"]) == 0
    res = json.loads((tmp_path / "bench_data.json").read_text())
    assert res["prepare"]["rows_per_s"] > 0 and res["prepare"]["peak_rss_mib"] > 0
    assert [r["workers"] for r in res["loader"]] == [0, 2]
    assert all(r["steady_samples_per_s"] > 0 for r in res["loader"])
    assert "| prepare |" in (tmp_path / "bench_data.md").read_text()


def test_fallback_generator_is_a_valid_release(tmp_path: Path) -> None:
    from muse_rec.data.prepare import PrepareConfig, prepare

    bench = _bench_module()
    (tmp_path / "raw").mkdir()
    bench.write_raw_fallback(str(tmp_path / "raw"), users=30, max_len=40, samples_per_user=2)
    meta = prepare(str(tmp_path / "raw"), str(tmp_path / "out"), PrepareConfig(progress=False))
    assert meta["splits"]["train"]["samples"] == 60 and meta["splits"]["train"]["samples_without_user_row"] == 0


@pytest.mark.parametrize("vocab", ["full", "p90"])
def test_summary_line_says_unseen_test_users_and_unknown_behaviour_items(tmp_path: Path, vocab: str) -> None:
    """The line prepare ends with said neither how many test users are unseen in train nor how many
    behaviours are on unknown items (both become row 0); only meta.json had them. It then counted
    behaviours with no item id (raw id 0, padding in the raw lists) as "on unknown items": 57,029 of them
    on an outside set whose items were all in the vocabulary. They are counted apart now
    (``behaviours_without_item_id``, added; ``behaviours_unknown_item`` still counts all of row 0), each
    number checked against the raw lists: with ``--vocab full`` no behaviour is outside the vocabulary."""
    from tests.data.rawgen import _rows, reference_vocabs, write_raw_release

    raw, out = tmp_path / "raw", tmp_path / "out"
    write_raw_release(str(raw))  # has test users unseen in train and raw id 0 inside histories
    cmd = [venv_bin("muse-rec"), "prepare", str(raw), str(out), "--no-progress", "--vocab", vocab]
    done = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    meta = PreparedData(str(out)).meta
    tr, te = meta["splits"]["train"], meta["splits"]["test"]
    assert meta["test_users_unseen_in_train"] > 0 and te["behaviours"] >= 1000
    known = reference_vocabs(str(raw), vocab)["item"]
    line, = done.stdout.splitlines()
    for split, counts in (("train", tr), ("test", te)):
        ids = [i for r in _rows(str(raw), f"{split}_user_features") for i in r["150_2_180"]]
        missing, outside = sum(i == 0 for i in ids), sum(i != 0 and i not in known for i in ids)
        assert counts["behaviours_without_item_id"] == missing > 0
        assert counts["behaviours_unknown_item"] == missing + outside and (outside == 0) == (vocab == "full")
        unseen = f" ({meta['test_users_unseen_in_train']:,} unseen in train)" if split == "test" else ""
        assert f"{split} {counts['samples']:,} samples, {counts['user_rows']:,} user rows{unseen}, " \
               f"{outside:,} of {counts['behaviours']:,} behaviours on items outside the vocabulary, " \
               f"{missing:,} with no item id (raw id 0);" in line, line
    assert "unknown items" not in line


def test_summary_line_of_a_meta_json_without_the_missing_ids_keeps_its_words() -> None:
    """A meta.json prepared before the missing ids were counted apart (prepare returns it as finished):
    its row-0 count is said as before, not a KeyError."""
    from muse_rec.cli.prepare import _split_counts

    old = {"samples": 5, "user_rows": 2, "behaviours_unknown_item": 3, "behaviours": 40}
    assert _split_counts(old) == "5 samples, 2 user rows, 3 of 40 behaviours on unknown items"

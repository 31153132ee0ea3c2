"""The synthetic Taobao-MM release: exact raw layout, determinism, value rules, planted semantics."""
from __future__ import annotations

import hashlib
import itertools
import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from muse_rec.data import schema as S
from muse_rec.data.synth import MANIFEST_NAME, SynthConfig, write_synthetic_release
from muse_rec.data.synth_diagnostics import group_auc, release_diagnostics

FIXTURES = Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures" / "taobao_mm_demo"
TABLE_NAMES = list(S.TABLES)


def _tiny(**kw) -> SynthConfig:
    return SynthConfig.preset("tiny").replace(**kw)


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth_tiny")
    write_synthetic_release(str(out), _tiny(seed=0))
    return out


def _read(root: Path, name: str):
    return pq.read_table(root / S.TABLES[name].file)


def _digests(root: Path):
    return {n: hashlib.sha256((root / S.TABLES[n].file).read_bytes()).hexdigest() for n in TABLE_NAMES}


def test_schemas_equal_the_real_release_fixtures(release: Path) -> None:
    if not FIXTURES.is_dir():
        pytest.skip(f"Taobao-MM fixtures not found at {FIXTURES} (licensed data lives outside the repo)")
    for name in TABLE_NAMES:
        want = pq.read_schema(FIXTURES / S.TABLES[name].file).remove_metadata()
        got = pq.read_schema(release / S.TABLES[name].file).remove_metadata()
        # str() spells out list child names ('element') and nullability, which equals() may not.
        assert got.equals(want) and str(got) == str(want), f"{name}:\n{got}\n!=\n{want}"


def test_release_passes_the_reader_schema_and_value_rules(release: Path) -> None:
    for name, spec in S.TABLES.items():
        path = str(release / spec.file)
        pf = pq.ParquetFile(path)
        assert S.check_schema(spec, pf.schema_arrow, path) == {}  # the release's own types: nothing to cast
        for rg in range(pf.num_row_groups):
            S.check_batch(spec, pf.read_row_group(rg).to_batches()[0], path, rg)
    # the tables, the manifest and the lock synth held while it wrote (muse_rec.dirlock)
    assert sorted(os.listdir(release)) == sorted([".lock", MANIFEST_NAME] + [s.file for s in S.TABLES.values()])


def test_same_seed_gives_byte_identical_tables_and_another_seed_does_not(release: Path, tmp_path: Path) -> None:
    write_synthetic_release(str(tmp_path / "a"), _tiny(seed=0))
    assert _digests(tmp_path / "a") == _digests(release)
    m_a = json.loads((tmp_path / "a" / MANIFEST_NAME).read_text())
    m_r = json.loads((release / MANIFEST_NAME).read_text())
    m_a.pop("seconds"), m_r.pop("seconds")
    assert m_a == m_r
    write_synthetic_release(str(tmp_path / "b"), _tiny(seed=1))
    differ = [n for n, d in _digests(tmp_path / "b").items() if d != _digests(release)[n]]
    assert differ == TABLE_NAMES


def test_ids_are_nonzero_and_spread_over_int64(release: Path) -> None:
    uf, items, scl = _read(release, "train_user_features"), _read(release, "item_features"), _read(release, "scl")
    samples = _read(release, "train_samples")
    id_columns = {
        "user": uf.column(S.USER).to_numpy(),
        "sample user": samples.column(S.USER).to_numpy(),
        "target": samples.column(S.ITEM).to_numpy(),
        "behaviour item": uf.column(S.SEQ_ITEMS).combine_chunks().flatten().to_numpy(),
        "behaviour category": uf.column(S.SEQ_CATS).combine_chunks().flatten().to_numpy(),
        "item_features item": items.column(S.ITEM).to_numpy(),
        "item_features category": items.column(S.ITEM_CAT).to_numpy(),
        "scl item": scl.column(S.ITEM).to_numpy(),
    }
    for what, ids in id_columns.items():
        assert ids.dtype == np.int64 and (ids != 0).all(), f"{what} ids contain 0 (the missing value)"
    for what in ("user", "behaviour item", "item_features item"):
        ids = np.unique(id_columns[what])
        assert ids.min() < -(2**62) and ids.max() > 2**62, f"{what} ids do not span int64"
        assert 0.35 < (ids < 0).mean() < 0.65, f"{what} ids are not signed-uniform"
    assert np.unique(uf.column(S.USER).to_numpy()).size == uf.num_rows
    assert np.unique(items.column(S.ITEM).to_numpy()).size == items.num_rows
    # Missing values exist where the release has them: 130_x fields and 213/214 attributes.
    user_fields = np.stack([uf.column(c).to_numpy() for c in S.USER_FIELDS])
    assert 0 < (user_fields == 0).mean() < 0.1
    attrs = np.stack([items.column(c).to_numpy() for c in S.ITEM_ATTRS])
    assert 0 < (attrs == 0).mean() < 0.1
    # 130_5 shares 130_1's value vocabulary, as in the release.
    f1, f5 = set(uf.column("130_1").to_numpy().tolist()) - {0}, set(uf.column("130_5").to_numpy().tolist()) - {0}
    assert f5 <= f1


def test_positive_rate_and_one_hot_labels(release: Path) -> None:
    for split in S.SPLITS:
        lab = _read(release, f"{split}_samples").column(S.LABEL).combine_chunks().flatten().to_numpy()
        lab = lab.reshape(-1, 2)
        assert (lab.sum(1) == 1).all()
        assert 0.10 < lab[:, 1].mean() < 0.18, f"{split} positive rate {lab[:, 1].mean():.3f}"


def test_sequences_are_aligned_varied_and_consistent_with_item_features(release: Path) -> None:
    cfg = _tiny(seed=0)
    items = _read(release, "item_features")
    cat_of = dict(zip(items.column(S.ITEM).to_numpy().tolist(), items.column(S.ITEM_CAT).to_numpy().tolist()))
    for split in S.SPLITS:
        uf = _read(release, f"{split}_user_features")
        seq_i, seq_c = uf.column(S.SEQ_ITEMS).to_pylist(), uf.column(S.SEQ_CATS).to_pylist()
        lens = np.array([len(s) for s in seq_i])
        assert lens.tolist() == [len(c) for c in seq_c]
        assert lens.min() >= cfg.min_seq_len and lens.max() == cfg.max_seq_len
        assert (lens < 50).any() and (lens == cfg.max_seq_len).mean() > 0.3, "lengths are not varied"
        pairs = [(i, c) for s, cs in zip(seq_i, seq_c) for i, c in zip(s, cs) if i in cat_of]
        assert pairs and all(cat_of[i] == c for i, c in pairs)
    samples = _read(release, "train_samples").column(S.USER).to_numpy()
    runs = 1 + np.count_nonzero(samples[1:] != samples[:-1])
    assert runs == np.unique(samples).size, "samples are not grouped by user"
    assert 8 < samples.size / np.unique(samples).size < 14, "about 11 impressions per user"


def test_test_split_users_and_extended_histories(release: Path) -> None:
    train_uf, test_uf = _read(release, "train_user_features"), _read(release, "test_user_features")
    train_seq = dict(zip(train_uf.column(S.USER).to_pylist(), train_uf.column(S.SEQ_ITEMS).to_pylist()))
    test_seq = dict(zip(test_uf.column(S.USER).to_pylist(), test_uf.column(S.SEQ_ITEMS).to_pylist()))
    seen = [u for u in test_seq if u in train_seq]
    assert 0 < len(test_seq) - len(seen) < 0.25 * len(test_seq), "a few test users must be unseen in train"
    assert set(_read(release, "test_samples").column(S.USER).to_pylist()) == set(test_seq)
    max_len = _tiny().max_seq_len
    uncapped = [u for u in seen if len(test_seq[u]) < max_len]
    assert uncapped
    for u in uncapped:  # the test snapshot extends the train snapshot at the newest end
        assert test_seq[u][: len(train_seq[u])] == train_seq[u]
    assert sum(len(test_seq[u]) > len(train_seq[u]) for u in uncapped) > 0.5 * len(uncapped)


def test_scl_table_is_quantised_unit_vectors_covering_targets_and_most_behaviours(release: Path) -> None:
    scl = _read(release, "scl")
    vec = scl.column(S.SCL_VECTOR).combine_chunks().flatten().to_numpy().reshape(scl.num_rows, -1)
    assert vec.dtype == np.int8 and vec.shape[1] == S.SCL_DIM
    norm = np.linalg.norm(vec.astype(np.float64), axis=1) / 127.0
    assert (norm <= 1.0 + 1e-9).all() and norm.mean() > 0.9  # truncation only shrinks
    have = set(scl.column(S.ITEM).to_pylist())
    for split in S.SPLITS:
        assert set(_read(release, f"{split}_samples").column(S.ITEM).to_pylist()) <= have, "targets lack SCL"
    beh = _read(release, "train_user_features").column(S.SEQ_ITEMS).combine_chunks().flatten().to_numpy()
    covered = np.isin(beh, np.array(sorted(have), dtype=np.int64)).mean()
    assert 0.85 < covered < 1.0, f"SCL covers {covered:.3f} of behaviours (p90-like expected)"
    item_ids = _read(release, "item_features").column(S.ITEM).to_numpy()
    assert not np.isin(np.unique(beh), item_ids).all(), "some items must lack an item_features row"


def test_long_tail_and_categories_coarser_than_semantics(release: Path) -> None:
    beh = _read(release, "train_user_features").column(S.SEQ_ITEMS).combine_chunks().flatten().to_numpy()
    freq = np.sort(np.unique(beh, return_counts=True)[1])[::-1]
    top10 = freq[: max(1, freq.size // 10)].sum() / freq.sum()
    assert top10 > 0.4 and (freq <= 2).mean() > 0.2, f"no long tail: top 10% cover {top10:.2f}"
    # Semantic neighbours (high SCL cosine) often differ in category and one category holds
    # semantically distant items: category match != semantic match.
    scl, items = _read(release, "scl"), _read(release, "item_features")
    ids = scl.column(S.ITEM).to_numpy()
    vec = scl.column(S.SCL_VECTOR).combine_chunks().flatten().to_numpy().reshape(ids.size, -1).astype(np.float32)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    cat = dict(zip(items.column(S.ITEM).to_numpy().tolist(), items.column(S.ITEM_CAT).to_numpy().tolist()))
    keep = np.array([i in cat for i in ids.tolist()])
    vec, cats = vec[keep][:1500], np.array([cat[i] for i in ids[keep][:1500].tolist()])
    cos = vec @ vec.T
    iu = np.triu_indices(cos.shape[0], 1)
    close, same_cat = cos[iu] > 0.5, (cats[:, None] == cats[None, :])[iu]
    assert 0.05 < (close & ~same_cat).sum() / close.sum() < 0.6
    assert (same_cat & ~close).sum() > (same_cat & close).sum()


def test_semantic_whole_history_beats_recent_window_and_category(release: Path) -> None:
    d = release_diagnostics(str(release), "train")
    whole, recent = d["scl_topk_whole"]["gauc"], d["scl_topk_recent"]["gauc"]
    category = d["category_whole"]["gauc"]
    assert whole > 0.56 and whole > recent + 0.02 and whole > category + 0.02, json.dumps(d, indent=1)


def test_diagnostic_can_fail_when_only_the_recent_interest_drives_clicks(tmp_path: Path) -> None:
    cfg = _tiny(seed=0, long_weight=0.0, target_long_share=0.0, target_sibling_share=0.0,
                target_recent_share=0.5, recent_weight=4.0)
    write_synthetic_release(str(tmp_path), cfg)
    d = release_diagnostics(str(tmp_path), "train")
    assert d["scl_topk_recent"]["gauc"] > d["scl_topk_whole"]["gauc"], json.dumps(d, indent=1)


def test_group_auc_matches_pairwise_definition() -> None:
    rng = np.random.default_rng(0)
    g = rng.integers(0, 6, 200)
    y = (rng.random(200) < 0.3).astype(int)
    s = np.round(rng.random(200) + 0.3 * y, 1)  # rounding makes ties
    num = den = 0.0
    for gid in np.unique(g):
        m = g == gid
        pos, neg = s[m & (y == 1)], s[m & (y == 0)]
        if pos.size and neg.size:
            pairs = list(itertools.product(pos, neg))
            auc = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)
            num, den = num + m.sum() * auc, den + m.sum()
    assert group_auc(y, s, g)["gauc"] == pytest.approx(num / den, abs=1e-12)
    assert group_auc(y, s, np.zeros_like(g))["auc"] == pytest.approx(group_auc(y, s, g)["auc"])


def test_config_errors_name_the_knob(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="categories"):
        write_synthetic_release(str(tmp_path), _tiny(categories=500))
    with pytest.raises(ValueError, match="recent_share"):
        _tiny(recent_share=1.5).validate()
    with pytest.raises(ValueError, match=r"seed=-1 must be >= 0"):  # was NumPy's traceback
        _tiny(seed=-1).validate()
    for knob in ("samples_per_user", "cluster_size_sigma", "item_zipf"):  # a traceback or accepted
        with pytest.raises(ValueError, match=rf"{knob}=inf must be finite"):
            _tiny(**{knob: float("inf")}).validate()
    # A release `muse-rec prepare` refuses ("test_samples: empty table"), written without a word before.
    for knobs in ({"users": 1}, {"test_user_fraction": 0.0}):
        with pytest.raises(ValueError, match=r"rounds to 0 test users; the release needs a test split"):
            _tiny(**knobs).validate()
    with pytest.raises(ValueError, match="unknown synth preset 'huge'"):
        SynthConfig.preset("huge")
    with pytest.raises(KeyError, match="nope"):
        _tiny(nope=1)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        write_synthetic_release(str(tmp_path / "file"), _tiny())


@pytest.mark.parametrize("knob, value", [
    ("test_user_fraction", float("inf")),  # an OverflowError from the test-user count, before the finite check
    ("users", 2**62), ("items", 2**62), ("max_seq_len", 2**62), ("secondary_categories", 2**62),  # NumPy tracebacks
    ("shops_per_cluster", 2**62),  # silently wrapped the shop ids past int64
    ("samples_per_user", 1e30), ("mean_long_interests", 1e30), ("test_extra_behaviours", 1e30),  # "lam too large"
])
def test_a_knob_too_large_is_named_not_a_numpy_traceback(tmp_path: Path, capsys, knob: str, value: float) -> None:
    """`muse-rec synth --users 2**62` (and the others here) ended in a NumPy ValueError or OverflowError
    traceback, exit 1: every count and mean count is now refused past int32, the prepared ids' type."""
    from muse_rec.cli import main
    from muse_rec.data.synth_config import MAX_COUNT

    flag = "--" + knob.replace("_", "-")
    assert main(["synth", str(tmp_path / "out"), "--preset", "tiny", "--quiet", flag, str(value)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"muse-rec synth: {flag} ") and err.count("\n") == 1, err
    assert ("must be finite" if value == float("inf") else f"must be <= {MAX_COUNT:,}") in err, err
    assert not (tmp_path / "out").exists()


def test_a_cluster_size_sigma_whose_weights_overflow_is_named(tmp_path: Path, capsys) -> None:
    """`synth --cluster-size-sigma 1e30`: the log-normal weights overflowed to inf and NumPy's multinomial
    refused the NaN probabilities with a traceback, exit 1; the largest sigma that stays finite works."""
    from muse_rec.cli import main
    from muse_rec.data.synth_config import MAX_LOGNORMAL_SIGMA

    assert main(["synth", str(tmp_path / "bad"), "--preset", "tiny", "--quiet", "--cluster-size-sigma", "1e30"]) == 2
    err = capsys.readouterr().err
    assert err == (f"muse-rec synth: --cluster-size-sigma 1e+30 must be <= {MAX_LOGNORMAL_SIGMA:.1f} "
                   "(the log-normal cluster and category weights overflow float64 past it)\n"), err
    assert not (tmp_path / "bad").exists()
    write_synthetic_release(str(tmp_path / "edge"), _tiny(cluster_size_sigma=MAX_LOGNORMAL_SIGMA), diagnostics=False)


def test_a_knob_against_the_presets_is_named_by_its_flags(tmp_path: Path, capsys) -> None:
    """`synth --preset scale --items 50000` said "invalid SynthConfig: items=50000 must be >= clusters=250000":
    the dataclass's field names, where the user gave --items and the preset the clusters; the line names
    both flags. A word that is no knob (`0 test users`) is left as it is."""
    from muse_rec.cli import main

    assert main(["synth", str(tmp_path / "bad"), "--preset", "scale", "--quiet", "--items", "50000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("muse-rec synth: --items 50000 must be >= --clusters 250000") and err.count("\n") == 1, err
    assert main(["synth", str(tmp_path / "bad"), "--preset", "tiny", "--quiet", "--users", "1",
                 "--test-user-fraction", "0.1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("muse-rec synth: --users 1 x --test-user-fraction 0.1 rounds to 0 test users"), err
    assert not (tmp_path / "bad").exists()


def test_cli_writes_release_and_prints_next_step(tmp_path: Path, capsys) -> None:
    from muse_rec.cli import main

    out = tmp_path / "cli"
    assert main(["synth", str(out), "--preset", "tiny", "--users", "60", "--seed", "3", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert f"muse-rec prepare {out} PREPARED" in text and "train: " in text
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["config"]["users"] == 60 and manifest["config"]["seed"] == 3
    assert manifest["stats"]["train_users"] == _read(out, "train_user_features").num_rows == 60
    assert main(["synth", str(tmp_path / "bad"), "--preset", "tiny", "--categories", "999", "--quiet"]) == 2
    assert "categories" in capsys.readouterr().err


def test_cli_never_overwrites_release_tables_it_did_not_write(tmp_path: Path, capsys) -> None:
    """A real download in OUT (tables, no synth manifest) is kept: exit 2 naming the tables;
    a synthetic release there is replaced; --overwrite replaces the real one too."""
    from muse_rec.cli import main

    real = tmp_path / "taobao_mm"
    real.mkdir()
    (real / "train_samples.parquet").write_bytes(b"the user's licensed download")
    (real / "item_features.parquet").write_bytes(b"another table")
    args = ["--preset", "tiny", "--users", "40", "--quiet", "--no-diagnostics"]
    assert main(["synth", str(real), *args]) == 2
    err = capsys.readouterr().err
    assert "did not write (train_samples.parquet, item_features.parquet)" in err and "--overwrite" in err
    assert (real / "train_samples.parquet").read_bytes() == b"the user's licensed download"
    assert sorted(p.name for p in real.iterdir()) == ["item_features.parquet", "train_samples.parquet"]
    synthetic = tmp_path / "synthetic"
    assert main(["synth", str(synthetic), *args, "--seed", "1"]) == 0
    assert main(["synth", str(synthetic), *args, "--seed", "2"]) == 0  # its own release: replaced
    assert json.loads((synthetic / MANIFEST_NAME).read_text())["config"]["seed"] == 2
    assert main(["synth", str(real), *args, "--overwrite"]) == 0
    assert (real / MANIFEST_NAME).exists() and _read(real, "train_samples").num_rows > 0


def test_a_real_release_in_parts_is_kept_too(tmp_path: Path, capsys) -> None:
    """Tables in parts (docs/data.md) were not seen as a real release: synth wrote its six files
    beside them, leaving a release with two train_samples (prepare refuses such a table)."""
    from muse_rec.cli import main

    real = tmp_path / "taobao_mm"
    (real / "train_samples").mkdir(parents=True)
    (real / "train_samples" / "part-0.parquet").write_bytes(b"the user's licensed download")
    (real / "scl_embedding_int8_p90-00000-of-00002.parquet").write_bytes(b"a split table")
    assert main(["synth", str(real), "--preset", "tiny", "--users", "40", "--quiet", "--no-diagnostics"]) == 2
    err = capsys.readouterr().err
    assert "did not write (train_samples/, scl_embedding_int8_p90-*.parquet)" in err, err
    assert sorted(p.name for p in real.iterdir()) == ["scl_embedding_int8_p90-00000-of-00002.parquet", "train_samples"]


@pytest.mark.parametrize("writer", ["memory", "stream"])
def test_overwrite_replaces_a_release_in_parts_whole(tmp_path: Path, writer: str) -> None:
    """--overwrite over a release kept in parts (a directory of parts, <stem>-*.parquet files) left
    those parts beside the new files: a table there twice, which prepare refuses; and an old
    <stem>.parquet/ directory stopped the renames half way, after the samples tables were already
    replaced: a release mixing two runs. Every old copy of each table now goes, and the new
    release reads as one."""
    from muse_rec.cli import main
    from muse_rec.data.reader import RawRelease, table_locations
    from muse_rec.data.synth_release import STAGING_DIR

    real = tmp_path / "taobao_mm"
    (real / "train_samples").mkdir(parents=True)
    (real / "train_samples" / "part-0.parquet").write_bytes(b"old part")
    (real / "item_features.parquet").mkdir()
    (real / "item_features.parquet" / "part-0.parquet").write_bytes(b"old part")
    for i in range(2):
        (real / f"scl_embedding_int8_p90-0000{i}-of-00002.parquet").write_bytes(b"old part")
    (real / "notes.txt").write_text("the user's own file")
    args = ["--preset", "tiny", "--users", "40", "--quiet", "--no-diagnostics", "--overwrite"]
    if writer == "stream":
        args = ["--preset", "scale", "--users", "300", "--items", "3000", "--clusters", "60", "--categories", "12",
                "--quiet", "--overwrite"]
    assert main(["synth", str(real), *args]) == 0
    assert {p.name for p in real.iterdir()} == {*(t.file for t in S.TABLES.values()), MANIFEST_NAME, ".lock",
                                                "notes.txt"}
    assert not (real / STAGING_DIR).exists()
    for spec in S.TABLES.values():
        assert table_locations(str(real), spec) == [str(real / spec.file)]
    release = RawRelease(str(real))  # every table opens as the one new file
    assert release["train_samples"].num_rows == json.loads((real / MANIFEST_NAME).read_text())["stats"]["train_samples"]


def test_a_second_synth_into_the_same_out_is_refused(tmp_path: Path, capsys) -> None:
    """Two synths into one OUT (other seeds) could publish a release mixing both runs' tables;
    the second now exits 2 naming the holder and writes nothing."""
    from muse_rec.cli import main
    from muse_rec.dirlock import LOCK_FILE, DirLock

    out = tmp_path / "raw"
    args = ["--preset", "tiny", "--users", "40", "--quiet", "--no-diagnostics"]
    lock = DirLock.acquire(out, command="muse-rec synth held-by-the-test")
    try:
        assert main(["synth", str(out), *args]) == 2
        err = capsys.readouterr().err
        assert f"{out}: in use by another synth" in err and "held-by-the-test" in err, err
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]
    finally:
        lock.release()
    assert main(["synth", str(out), *args]) == 0


@pytest.mark.parametrize("knob, bound", [
    ("long_weight", "MAX_LOGIT_SCALE"), ("recent_weight", "MAX_LOGIT_SCALE"),
    ("user_bias_std", "MAX_LOGIT_STD"), ("item_bias_std", "MAX_LOGIT_STD"), ("impression_noise_std", "MAX_LOGIT_STD"),
    ("cluster_zipf", "MAX_POPULARITY_EXPONENT"), ("item_zipf", "MAX_POPULARITY_EXPONENT"),
    ("interest_popularity_power", "MAX_POPULARITY_EXPONENT"), ("item_noise", "MAX_ITEM_NOISE"),
])
def test_a_float_knob_past_its_meaningful_range_is_named(tmp_path: Path, capsys, knob: str, bound: str) -> None:
    """`synth --long-weight 1e30` wrote a release with 98% positives for a 13.7% positive_rate,
    `--user-bias-std 1e30` one whose ceiling GAUC was nan, `--item-noise 1e30` SCL vectors with no
    cluster signal, a Zipf exponent 1e30 one item per cluster, all exit 0. Past its bound each knob
    is refused naming it; at the bound the release still hits positive_rate."""
    from muse_rec.cli import main
    from muse_rec.data import synth_config

    flag = "--" + knob.replace("_", "-")
    assert main(["synth", str(tmp_path / "bad"), "--preset", "tiny", "--quiet", flag, "1e30"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"muse-rec synth: {flag} 1e+30 must be <= ") and err.count("\n") == 1, err
    assert not (tmp_path / "bad").exists()
    most = getattr(synth_config, bound)
    m = write_synthetic_release(str(tmp_path / "edge"), _tiny(**{knob: most}), diagnostics=False, progress=False)
    st, rate = m["stats"], _tiny().positive_rate
    n = st["train_samples"] + st["test_samples"]
    clicked = st["train_positive_rate"] * st["train_samples"] + st["test_positive_rate"] * st["test_samples"]
    # The intercept is solved on both splits' logits for a mean click probability of exactly `rate`, so
    # the clicks are a binomial draw around it: 5 standard deviations of the realised rate.
    assert abs(clicked / n - rate) <= 5 * (rate * (1 - rate) / n) ** 0.5, (clicked / n, rate)


@pytest.mark.parametrize("writer, module, function, hint", [
    ("memory", "muse_rec.data.synth", "user_table", "--writer stream"),
    ("stream", "muse_rec.data.synth_stream", "build_timelines", "--user-row-group-rows"),
])
def test_out_of_memory_names_the_synth_sizes_and_keeps_the_earlier_release(
        tmp_path: Path, capsys, monkeypatch, writer: str, module: str, function: str, hint: str) -> None:
    """A release too large for this machine (seen at --users 150,000 of the demo preset under a 4 GB limit)
    ends with one line naming synth's own size flags and the writer to use, and the release already in
    OUT stays whole. Before, the line was the training commands' (model.*, data.seq_len, train.batch_size)."""
    import importlib

    from muse_rec.cli import main

    out = tmp_path / "raw"
    args = ["--preset", "tiny", "--users", "40", "--quiet", "--no-diagnostics", "--writer", writer]
    assert main(["synth", str(out), *args]) == 0
    before = _digests(out)

    def exhausted(*_a, **_k):
        raise MemoryError("Unable to allocate 709. MiB for an array with shape (92868394,) and data type int64")

    monkeypatch.setattr(importlib.import_module(module), function, exhausted)
    capsys.readouterr()
    assert main(["synth", str(out), *args, "--seed", "7"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("muse-rec synth: out of memory (Unable to allocate"), err
    assert f"--writer {writer}" in err and "--users 40" in err and hint in err and "model." not in err, err
    assert _digests(out) == before


def test_a_memory_writer_release_larger_than_memory_is_refused_before_any_work(tmp_path: Path, capsys,
                                                                               monkeypatch) -> None:
    """`synth OUT --users U` with the memory writer started whatever U was: past the host's memory the
    kernel's OOM killer ended it (no message; it may kill another process). The need is estimated from
    the config first: one line naming --users / --max-seq-len and --writer stream, exit 2, nothing written."""
    import muse_rec.memory
    from muse_rec.cli import main
    from muse_rec.data.synth import memory_writer_bytes

    cfg = SynthConfig.preset("tiny")
    monkeypatch.setattr(muse_rec.memory, "available_memory_bytes", lambda: memory_writer_bytes(cfg) - 1)
    out = tmp_path / "raw"
    assert main(["synth", str(out), "--preset", "tiny", "--quiet", "--no-diagnostics"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("muse-rec synth: out of memory (the memory writer would hold"), err
    assert f"--users {cfg.users:,}" in err and "--max-seq-len" in err and "--writer stream" in err, err
    assert not out.exists()
    # The stream writer is bounded by a row group, not by the users: it is not asked.
    assert main(["synth", str(out), "--preset", "tiny", "--quiet", "--writer", "stream"]) == 0


def test_the_memory_writer_s_estimate_follows_the_config_s_sizes() -> None:
    """Derived from the sizes (users, history lengths, impressions), not a per-user constant of one preset."""
    from muse_rec.data.synth import memory_writer_bytes

    demo = SynthConfig.preset("demo")
    assert memory_writer_bytes(demo.replace(users=2 * demo.users)) == pytest.approx(2 * memory_writer_bytes(demo),
                                                                                    rel=1e-3)
    assert memory_writer_bytes(demo.replace(max_seq_len=2 * demo.max_seq_len)) > 1.5 * memory_writer_bytes(demo)
    assert memory_writer_bytes(demo.replace(samples_per_user=4 * demo.samples_per_user)) > memory_writer_bytes(demo)
    # the writer knob's help (muse-rec synth --help): ~45 KB per user of the demo preset, histories up to 1,000
    assert 40_000 < memory_writer_bytes(demo) / demo.users < 50_000


@pytest.mark.parametrize("writer", ["memory", "stream"])
def test_a_release_directory_whose_name_is_not_utf8_is_written_and_read(tmp_path: Path, writer: str) -> None:
    """`synth /data/caf\\xe9`: pyarrow encoded the text path as UTF-8 and failed on the byte the OS holds
    (UnicodeEncodeError traceback, nothing published); the Parquet files are opened by their OS bytes now."""
    out = tmp_path / os.fsdecode(b"caf\xe9")  # a name Linux takes and UTF-8 cannot encode
    write_synthetic_release(str(out), _tiny(seed=0, writer=writer))
    assert all((out / name).is_file() for name in (MANIFEST_NAME, *(S.TABLES[n].file for n in TABLE_NAMES)))
    assert release_diagnostics(str(out))["samples"] > 0

"""`muse-rec synth --scl-quality Q`: Q = 1 writes today's vectors byte for byte; Q = 0 leaves no
cluster signal in the SCL table; the click model (labels) does not change with Q."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from muse_rec.data import schema as S
from muse_rec.data.synth import SynthConfig, write_synthetic_release
from muse_rec.data.synth_release import INT8_SCALE, written_scl_int8
from muse_rec.data.synth_world import build_catalogue


def _cfg(**kw) -> SynthConfig:
    return SynthConfig.preset("tiny").replace(**kw)


def _cluster_cosines(cfg: SynthConfig) -> tuple:
    """Mean SCL cosine of item pairs within a cluster and across clusters, from the written int8 rows."""
    cat = build_catalogue(cfg)
    items = np.arange(cat.item_cluster.shape[0])
    v = written_scl_int8(cfg, items, cat.item_vec).astype(np.float64)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, items.shape[0], (2, 20000))
    cos = (v[a] * v[b]).sum(1)
    same = (cat.item_cluster[a] == cat.item_cluster[b]) & (a != b)
    return cos[same].mean(), cos[~same].mean(), int(same.sum())


def test_quality_one_is_the_formula_without_the_knob():
    cfg = _cfg()
    cat = build_catalogue(cfg)
    items = np.arange(cat.item_vec.shape[0])
    want = np.trunc(INT8_SCALE * np.clip(cat.item_vec, -1.0, 1.0)).astype(np.int8)  # the writer before the knob
    assert np.array_equal(written_scl_int8(cfg.replace(scl_quality=1.0), items, cat.item_vec), want)


def test_quality_zero_carries_no_cluster_signal_and_one_does():
    within1, across1, n = _cluster_cosines(_cfg(scl_quality=1.0))
    within0, across0, _ = _cluster_cosines(_cfg(scl_quality=0.0))
    within_half, across_half, _ = _cluster_cosines(_cfg(scl_quality=0.5))
    assert n > 200
    assert within1 - across1 > 0.3  # informative (within-cluster cosine ~ 1 / (1 + item_noise^2))
    # Pure noise: both means are those of independent unit vectors in 128-d, 0 +- 1/sqrt(128 n).
    assert abs(within0 - across0) < 4 / np.sqrt(128 * n)
    # In between, the gap shrinks with Q (the signal share of the vector is sqrt(Q)).
    assert 0.3 * (within1 - across1) < within_half - across_half < 0.7 * (within1 - across1)


def test_noise_is_a_function_of_the_item_not_of_the_block():
    cfg = _cfg(scl_quality=0.2)
    cat = build_catalogue(cfg)
    items = np.arange(cat.item_vec.shape[0])
    whole = written_scl_int8(cfg, items, cat.item_vec)
    parts = np.concatenate([written_scl_int8(cfg, items[i:i + 97], cat.item_vec[i:i + 97])
                            for i in range(0, items.shape[0], 97)])
    assert np.array_equal(whole, parts)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_release_at_quality_zero_changes_only_the_scl_table(tmp_path: Path):
    write_synthetic_release(str(tmp_path / "q1"), _cfg(diagnostics_max_users=0))
    write_synthetic_release(str(tmp_path / "q0"), _cfg(diagnostics_max_users=0, scl_quality=0.0))
    for name, table in S.TABLES.items():
        a, b = tmp_path / "q1" / table.file, tmp_path / "q0" / table.file
        if name == "scl":
            assert _digest(a) != _digest(b)
            ta, tb = pq.read_table(a), pq.read_table(b)
            assert ta.column(S.ITEM).equals(tb.column(S.ITEM))  # same rows, other vectors
        else:
            assert _digest(a) == _digest(b), f"{name} changed with --scl-quality"


@pytest.mark.parametrize("q", [-0.1, 1.5])
def test_out_of_range_quality_is_refused(q):
    with pytest.raises(ValueError, match="scl_quality"):
        _cfg(scl_quality=q).validate()

"""``mean_topk_similarity`` averages the K behaviours the cosine GSU itself retrieves, ties included.

Among behaviours of equal fp32 cosine (a repeated item: equal SCL rows) the GSU keeps the lowest
positions (`topk_lowest_position_first`); the floor used `torch.topk`, which keeps any of the
equals, so the floor could average other behaviours than the model's GSU picks. (With equal rows
the mean is the same; with vectors whose fp32 cosines tie and whose exact ones do not, it moved by
up to an ulp / K.) Checked on the picks themselves, on a set made of ties.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from muse_rec.data.prepare import PrepareConfig, prepare
from muse_rec.data.prepared import PreparedData
from muse_rec.data.synth import write_synthetic_release
from muse_rec.data.synth_config import SynthConfig
from muse_rec.metrics import floor_scores
from muse_rec.metrics.floor_options import FloorOptions
from muse_rec.modules.gsu import CosineGSU

# K well below the histories (up to 200 long here) so that the K-th place falls among equals.
OPTS = FloorOptions(seq_len=60, recent=7, top_k=9, prior_strength=5.0, chunk_samples=97, chunk_slots=2000)


@pytest.fixture(scope="module")
def ties(tmp_path_factory) -> Path:
    """The tiny release whose test histories hold only three items (with SCL vectors): every user's
    history is made of repeats, so nearly every K-th place is a tie."""
    root = tmp_path_factory.mktemp("floor_picks")
    write_synthetic_release(str(root / "raw"), SynthConfig.preset("tiny"), progress=False, diagnostics=False)
    prepare(str(root / "raw"), str(root / "prepared"), PrepareConfig(progress=False))
    d = root / "prepared"
    present = np.flatnonzero(np.load(d / "items/scl_present.npy"))
    present = present[present > 0][:3]
    seq = np.load(d / "test/seq_items.npy")
    rng = np.random.default_rng(5)
    np.save(d / "test/seq_items.npy", present[rng.integers(0, 3, seq.size)].astype(seq.dtype))
    return d


def test_floor_picks_are_the_cosine_gsus_picks(ties, monkeypatch):
    picked_calls = []
    real = floor_scores._picked_cosines

    def spy(target, keys, index, positions):
        picked_calls.append((target.copy(), keys.copy(), index.copy(), positions.copy()))
        return real(target, keys, index, positions)

    monkeypatch.setattr(floor_scores, "_picked_cosines", spy)
    data = PreparedData(str(ties))
    n = data.num_samples("test")
    floor_scores.scl_scores(data, "test", np.arange(n), OPTS)
    assert picked_calls, "the floor picked nothing"
    gsu = CosineGSU(top_k=OPTS.top_k)
    compared = ties_at_k = 0
    for target, keys, index, positions in picked_calls:
        mask = keys.any(axis=2)  # every behaviour here has a vector; padding is row 0, the zero vector
        for b in range(target.shape[0]):
            u = index[b]
            k = torch.from_numpy(keys[u][None])
            res = gsu(torch.from_numpy(target[b][None]), k, torch.from_numpy(mask[u][None]))
            want = torch.where(res.has_score[0], res.indices[0], -1).numpy()[: positions.shape[1]]
            got = np.where(want >= 0, positions[b], -1)
            np.testing.assert_array_equal(got, want, err_msg=f"sample {b} of a chunk: other picks than the GSU's")
            compared += 1
            ties_at_k += int(res.has_score[0].sum() == OPTS.top_k and mask[u].sum() > OPTS.top_k)
    assert compared > 100 and ties_at_k > 100, (compared, ties_at_k)

"""MUSE-fusion trains, exports and ranks through the one forward (no fusion-specific serving code)."""
from __future__ import annotations

import numpy as np
import pytest

from muse_rec.data.prepared import PreparedData
from muse_rec.serving import Ranker
from muse_rec.serving.export import load_trained_model
from muse_rec.spec import load_spec
from tests.conftest import REPO
from tests.serving.conftest import SEQ_LEN, _cli
from tests.serving.helpers import training_predictions
from tests.serving.test_ranker import EXPORTED_TOL, _ranker_probs

FUSION_SPEC = REPO / "specs" / "demo" / "muse_fusion.yaml"


@pytest.fixture(scope="module")
def fusion_run(trained_run, tmp_path_factory):
    """A 5-step MUSE-fusion run on the serving fixture's tiny prepared data, and its export."""
    root = tmp_path_factory.mktemp("fusion_run")
    overrides = [f"data.prepared={trained_run.prepared}", f"output_dir={root}/runs/{{name}}", f"data.seq_len={SEQ_LEN}"]
    sets = [a for o in overrides for a in ("--set", o)]
    _cli("train", "--spec", str(FUSION_SPEC), *sets, "--set", "train.batch_size=128", "--set", "train.max_steps=5",
         "--set", "train.eval_at_end=false", "--device", "cpu")
    _cli("export", "--spec", str(FUSION_SPEC), *sets, "--out", str(root / "exported"))
    return load_spec(FUSION_SPEC, overrides), root / "exported"


def test_exported_fusion_ranker_matches_the_training_forward(fusion_run, trained_run):
    spec, exported = fusion_run
    data = PreparedData(str(trained_run.prepared))
    model, _ = load_trained_model(spec, data)
    ref = training_predictions(model, data, "test", SEQ_LEN)
    assert ref.probs.std() > 1e-4  # the scores differ: the comparison is not empty
    with Ranker.from_exported(spec, str(exported)) as r:
        out = _ranker_probs(r, ref, max_users=40)
    done = ~np.isnan(out)
    assert done.sum() > 200
    assert np.abs(out[done] - ref.probs[done]).max() < EXPORTED_TOL

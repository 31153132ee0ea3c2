"""MUSE-fusion trains, exports and ranks through the one forward (no fusion-specific serving code)."""
from __future__ import annotations

import numpy as np
import pytest

from muse_rec.data.prepared import PreparedData
from muse_rec.serving import FloatScorer, InferenceModel, Ranker
from muse_rec.serving.export import load_trained_model
from muse_rec.serving.quantize import quantize_for_serving
from muse_rec.spec import load_spec
from tests.conftest import REPO
from tests.serving.conftest import SEQ_LEN, _cli
from tests.serving.helpers import training_predictions
from tests.serving.test_ranker import FLOAT_TOL, ROUNDING_P, _ranker_probs

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
    """The float Ranker == the trained model's training forward (FLOAT_TOL); the exported program
    == the eager int8 model (`muse-rec export`'s quantization) up to float rounding (ROUNDING_P)."""
    spec, exported = fusion_run
    data = PreparedData(str(trained_run.prepared))
    model, _ = load_trained_model(spec, data)
    ref = training_predictions(model, data, "test", SEQ_LEN)
    assert ref.probs.std() > 1e-4  # the scores differ: the comparison is not empty
    with Ranker(FloatScorer(InferenceModel(model)), data, "test", SEQ_LEN) as fl:
        flt = _ranker_probs(fl, ref, max_users=40)
    done = ~np.isnan(flt)
    assert done.sum() > 200
    assert np.abs(flt[done] - ref.probs[done]).max() < FLOAT_TOL
    int8 = InferenceModel(load_trained_model(spec, data)[0])
    quantize_for_serving(int8, data.scl(), "int8")
    with Ranker.from_exported(spec, str(exported)) as r, Ranker(FloatScorer(int8), data, "test", SEQ_LEN) as eager:
        out = _ranker_probs(r, ref, max_users=40)
        want = _ranker_probs(eager, ref, max_users=40)
    assert np.array_equal(np.isnan(out), ~done)
    assert np.abs(out[done] - want[done]).max() <= ROUNDING_P
    assert np.abs(out[done] - ref.probs[done]).max() > 0.0  # int8, not the float model

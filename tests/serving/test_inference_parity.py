"""`InferenceModel` (one user, B candidates, exportable code) == the training forward."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from muse_rec.models.ctr_model import build_train_model
from muse_rec.serving.inference import InferenceModel
from muse_rec.spec import load_spec
from tests.conftest import REPO
from tests.serving.conftest import SEQ_LEN
from tests.serving.helpers import training_predictions

FLOAT_TOL = 1e-5


def _inference_probs(inf: InferenceModel, ref) -> np.ndarray:
    out = np.full(ref.probs.shape, np.nan, np.float32)
    with torch.no_grad():
        for rows, args in ref.groups:
            out[rows] = inf(*args).numpy()
    return out


def test_trained_model_parity_on_test_split(trained_model):
    model, data = trained_model
    ref = training_predictions(model, data, "test", SEQ_LEN)
    out = _inference_probs(InferenceModel(model), ref)
    assert not np.isnan(out).any()
    diff = np.abs(out - ref.probs).max()
    assert diff < FLOAT_TOL, f"max |dp| {diff}"
    # The predictions are not all alike (the check would be empty otherwise).
    assert ref.probs.std() > 1e-4


@pytest.mark.parametrize("spec_name,overrides", [
    ("din", []),
    ("muse", ["model.esu.attention=ta", "model.short_term.simtier=false"]),
    ("muse", ["model.esu.similarity=id"]),
])
def test_random_init_variants_parity(trained_model, spec_name, overrides):
    """Other servable specs (DIN, ESU ablations), random init: same function as training."""
    _, data = trained_model
    spec = load_spec(REPO / "specs" / "demo" / f"{spec_name}.yaml", [f"data.seq_len={SEQ_LEN}", *overrides])
    torch.manual_seed(3)
    model = build_train_model(spec.model, data.vocab_sizes, SEQ_LEN, device=torch.device("cpu")).model
    # A larger init than the reference's 1e-3 so that the ID paths visibly move the scores.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "sparse_arch" in name and "scl" not in name:
                p.normal_(0, 0.3)
    model.sparse_arch.load_scl_(data.scl())
    ref = training_predictions(model, data, "test", SEQ_LEN, max_batches=2)
    out = _inference_probs(InferenceModel(model), ref)
    assert np.abs(out - ref.probs).max() < FLOAT_TOL
    assert ref.probs.std() > 1e-4


def test_unservable_gsu_is_a_clear_error(trained_model):
    _, data = trained_model
    spec = load_spec(REPO / "specs" / "demo" / "sim_hard.yaml", [f"data.seq_len={SEQ_LEN}"])
    model = build_train_model(spec.model, data.vocab_sizes, SEQ_LEN, device=torch.device("cpu")).model
    with pytest.raises(NotImplementedError, match="model.gsu.kind 'category'"):
        InferenceModel(model)

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


SPEC_FILES = sorted(str(p.relative_to(REPO / "specs")) for p in (REPO / "specs").rglob("*.yaml")
                    if p.parent.name != "profiles" and p.name != "base.yaml")


def random_init_model(spec_file: str, data, seed: int = 3):
    """The spec's model on the tiny data, random init with ID tables at std 0.3 (not the reference's
    1e-3) so that the ID paths visibly move the scores; SCL table loaded."""
    spec = load_spec(REPO / "specs" / spec_file, [f"data.seq_len={SEQ_LEN}"])
    torch.manual_seed(seed)
    model = build_train_model(spec.model, data.vocab_sizes, SEQ_LEN, device=torch.device("cpu")).model
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "sparse_arch" in name and "scl" not in name:
                p.normal_(0, 0.3)
    model.sparse_arch.load_scl_(data.scl())
    return model.eval()


@pytest.mark.parametrize("spec_file", SPEC_FILES)
def test_every_spec_serves_the_training_function(trained_model, spec_file):
    """Every method and ablation: the one-user forward (the float Ranker's) == the training forward."""
    _, data = trained_model
    model = random_init_model(spec_file, data)
    ref = training_predictions(model, data, "test", SEQ_LEN, max_batches=1)
    out = _inference_probs(InferenceModel(model), ref)
    diff = np.abs(out - ref.probs).max()
    print(f"{spec_file}: float max |dp| {diff:.1e}")  # docs/serving.md's table (pytest -s)
    assert diff < FLOAT_TOL, f"max |dp| {diff}"
    assert ref.probs.std() > 1e-4


def test_the_static_path_the_export_traces_serves_the_training_function(trained_model, monkeypatch):
    """The exported program runs the static cosine top-K (`static_shared_keys_cosine_topk`), not the
    eager certified one. Forced here in eager mode, the whole one-user forward through it gives the
    training probabilities. (Its cosines are now the training path's bit for bit:
    `test_static_path_scores_bit_for_bit_as_the_training_path`; this tiny set happens to have no
    exact cosine of 0 in a top-K, where the old unit-vector GEMM moved a float export by 1e-3.)"""
    from muse_rec.modules import shared_keys_cosine as SK

    model, data = trained_model
    ref = training_predictions(model, data, "test", SEQ_LEN)
    calls = []
    real = SK.static_shared_keys_cosine_topk

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(SK, "native_library", lambda: None)  # the dispatcher's eager fast path off
    monkeypatch.setattr(SK, "static_shared_keys_cosine_topk", spy)
    out = _inference_probs(InferenceModel(model), ref)
    assert calls  # the static path really ran
    assert np.abs(out - ref.probs).max() < FLOAT_TOL

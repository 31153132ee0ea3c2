"""int8 serving vs the float model: a per-sample bound derived from the tables (see int8_bound.py)."""
from __future__ import annotations

import pytest
import torch

from muse_rec.serving.export import export_program
from muse_rec.serving.inference import InferenceModel
from tests.serving.conftest import SEQ_LEN
from tests.serving.helpers import training_predictions
from tests.serving.int8_bound import ROUNDING, check_int8, decisions_read_ids, quantized_twins
from tests.serving.test_inference_parity import SPEC_FILES, random_init_model

_CACHE: dict = {}


def _twins(spec_file: str, data):
    """(float, int8, dequantized-float models, row errors, test requests) of a spec; specs with
    equal model sections share one entry."""
    model = random_init_model(spec_file, data)
    key = repr(model.spec)
    if key not in _CACHE:
        ref = training_predictions(model, data, "test", SEQ_LEN, batch_size=64, max_batches=1)
        _CACHE[key] = (*quantized_twins(model, data.scl()), ref)
    return _CACHE[key]


@pytest.mark.parametrize("spec_file", SPEC_FILES)
def test_every_spec_int8_within_derived_bound(trained_model, spec_file):
    _, data = trained_model
    float_model, int8_model, deq_model, deltas, ref = _twins(spec_file, data)
    key = ("check", repr(float_model.spec))
    if key not in _CACHE:
        _CACHE[key] = check_int8(float_model, int8_model, deq_model, deltas, ref.groups)
    c = _CACHE[key]
    print(f"{spec_file}: worst dev/bound {c.worst_ratio:.3f}, max dev {c.dev.max():.2e}, "
          f"unchanged decisions {c.same_decisions.mean():.2f}")
    # The int8 model computes exactly the function of its dequantized tables (every sample).
    assert c.dev_from_dequantized.max() <= ROUNDING
    # Where no discrete decision changed, the deviation is within the derived bound.
    assert c.violations == 0, f"{c.violations} samples beyond the bound (worst ratio {c.worst_ratio:.2f})"
    if not decisions_read_ids(float_model):
        assert c.same_decisions.all(), "a decision changed although no decision reads an ID table"
    assert c.same_decisions.sum() >= 10  # the bound is really exercised
    assert c.dev.max() > 0.0  # quantization really happened


def _perturb_table(int8_model, table: str, mode: str) -> None:
    """Break one quantized ID table in place: zero it (scale = bias = 0) or shuffle its rows."""
    arch = int8_model.sparse_arch
    for collection in (arch.pooled, arch.ids):
        for tbe in collection._emb_modules:
            names = [s[0] for s in tbe.embedding_specs]
            if table in names:
                w, sb = tbe.split_embedding_weights(split_scale_shifts=True)[names.index(table)]
                with torch.no_grad():
                    if mode == "zero":
                        sb.zero_()
                    else:
                        perm = torch.randperm(w.shape[0], generator=torch.Generator().manual_seed(0))
                        w.copy_(w[perm].clone())
                        sb.copy_(sb[perm].clone())
                return
    raise KeyError(table)


@pytest.mark.parametrize("table,mode", [("category", "zero"), ("item", "shuffle"), ("user_f1", "zero")])
def test_a_broken_id_path_fails_the_bound(trained_model, table, mode):
    """The bound is tight enough to catch a broken ID table in the int8 model."""
    import copy

    _, data = trained_model
    float_model, int8_model, deq_model, deltas, ref = _twins("methods/muse.yaml", data)
    broken = copy.deepcopy(int8_model)
    _perturb_table(broken, table, mode)
    c = check_int8(float_model, broken, deq_model, deltas, ref.groups)
    # The intact int8 model has no sample beyond the bound (test above); a broken table must push
    # a substantial share of the samples beyond it (a zeroed small user field moves ~45% of them).
    assert c.violations > len(c.dev) // 4, f"only {c.violations}/{len(c.dev)} samples beyond the bound"


def test_exported_int8_program_equals_the_eager_int8_model(trained_model):
    """For a GSU that retrieves by ID attention (TWIN), the exported program is the eager int8 model."""
    _, data = trained_model
    _, int8_model, _, _, ref = _twins("methods/twin.yaml", data)
    inf = InferenceModel(int8_model)
    program = export_program(inf, SEQ_LEN).module()
    with torch.no_grad():
        dev = max(float((program(*args) - inf(*args)).abs().max()) for _, args in ref.groups)
        one = tuple(a[:1] if i >= 4 else a for i, a in enumerate(ref.groups[0][1]))  # a single candidate
        dev = max(dev, float((program(*one) - inf(*one)).abs().max()))
    assert dev <= ROUNDING / 4  # probabilities: sigmoid is 1/4-Lipschitz

"""The quantized tables' row alignment (`check_row_alignment`): every value the rule accepts stores and looks
up every SCL value exactly; the rest are refused, by the library and by `muse-rec export`, before the model is
touched. Before, any alignment in [1, 4096] went through: an odd one can pad an fp16 row to an odd byte count
(64 values: 128 B -> 129 B at 3; 128 values: 256 B -> 259 B at 7), which no fp16 view describes (torch's stride
error, a traceback) and FBGEMM's CPU lookup reads misaligned (NaN, measured on its TBE directly)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from muse_rec.serving.export_layout import MAX_ROW_ALIGNMENT, check_row_alignment

# Every alignment up to 64 (odd, even, and powers of two) and the powers of two above it, to the largest.
CANDIDATES = tuple(range(1, 65)) + tuple(1 << k for k in range(7, MAX_ROW_ALIGNMENT.bit_length()))


def _accepted(row_alignment: int) -> bool:
    try:
        check_row_alignment(row_alignment)
    except ValueError:
        return False
    return True


def test_the_rule_accepts_the_powers_of_two_up_to_a_page():
    assert [a for a in CANDIDATES if _accepted(a)] == [1 << k for k in range(13)]
    for bad in (0, -16, MAX_ROW_ALIGNMENT * 2, 3, 24):
        with pytest.raises(ValueError, match=rf"^--row-alignment {bad}: must be a power of two in \[1, 4,096\] bytes"):
            check_row_alignment(bad)


@pytest.mark.parametrize("scl_dtype", ["int8", "fp16"])
@pytest.mark.parametrize("dim", [128, 64])  # the release's SCL width, and a narrower table
def test_every_accepted_alignment_looks_up_every_value_exactly(scl_dtype, dim):
    """What the rule guards, for each alignment it accepts: the table `exact_scl_collection` builds returns every
    stored int8 value (exact in fp16 and fp32) through TorchRec's quantized lookup (FBGEMM's CPU kernel)."""
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    from muse_rec.models.frozen_scl import FrozenSCL
    from muse_rec.serving.quantize import FloatCollectionSettings, exact_scl_collection

    rows = 37
    scl = FrozenSCL(num_rows=rows, dim=dim)
    table = np.random.default_rng(dim).integers(-127, 128, size=(rows, dim), dtype=np.int8)
    settings = FloatCollectionSettings(copy.deepcopy(scl.collection.embedding_configs()),
                                       scl.collection.need_indices(), scl.collection.device)
    features = scl.collection.embedding_configs()[0].feature_names
    ids = torch.arange(rows).flip(0)  # every row, out of order
    lookup = KeyedJaggedTensor.from_lengths_sync(keys=features, values=ids.repeat(len(features)),
                                                 lengths=torch.ones(rows * len(features), dtype=torch.int32))
    expected = torch.from_numpy(table).float()[ids]
    checked = 0
    for row_alignment in filter(_accepted, CANDIDATES):
        collection = exact_scl_collection(settings, table, scl_dtype, row_alignment)
        out = collection(lookup)
        for feature in features:
            got = out[feature].values()
            assert torch.equal(got, expected), (row_alignment, feature, (got - expected).abs().max())
        checked += 1
    assert checked == 13


def test_the_library_refuses_an_alignment_before_the_model_is_touched(trained_run, trained_model):
    """`quantize_for_serving` names its argument; the model keeps its float collections."""
    from muse_rec.serving.export import load_trained_model
    from muse_rec.serving.inference import InferenceModel
    from muse_rec.serving.quantize import quantize_for_serving

    _, data = trained_model
    model = InferenceModel(load_trained_model(trained_run.spec(), data)[0])  # its own copy: this one may change
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for bad in (7, 0):
        with pytest.raises(ValueError, match=rf"^row_alignment {bad}: must be a power of two"):
            quantize_for_serving(model, data.scl(), "fp16", bad)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)

"""A sealed checkpoint whose tensor has another dtype than the model's is refused on load, naming the key.

DCP casts a saved tensor to the model's dtype: an int64 or float64 tensor where training saves fp32
(a file from elsewhere, re-sealed with a matching manifest) loaded without a word as other weights.
"""
from __future__ import annotations

import pytest
import torch

from muse_rec.training.checkpoint import load_checkpoint, save_checkpoint
from muse_rec.training.checkpoint_position import CheckpointError, Position


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tower = torch.nn.Linear(3, 2)


@pytest.mark.parametrize("dtype", [torch.float64, torch.int64, torch.float16])
def test_a_tensor_saved_in_another_dtype_is_refused_naming_it(tmp_path, dtype):
    model = _Tiny()
    with torch.no_grad():
        model.tower.weight.copy_(torch.arange(6.0).view(2, 3) * 7)  # exact in every dtype: only the dtype differs
    model.tower.weight = torch.nn.Parameter(model.tower.weight.detach().to(dtype), requires_grad=False)
    ck = save_checkpoint(str(tmp_path / "c"), model, None, Position(step=1, run_id="r"))
    fresh = _Tiny()
    with pytest.raises(CheckpointError, match=rf"'tower\.weight' is saved as {dtype}, the model holds torch\.float32"):
        load_checkpoint(ck, fresh, None)


def test_a_checkpoint_of_the_models_dtypes_loads(tmp_path):
    model = _Tiny()
    ck = save_checkpoint(str(tmp_path / "c"), model, None, Position(step=1, run_id="r"))
    fresh = _Tiny()
    load_checkpoint(ck, fresh, None)
    assert torch.equal(fresh.tower.weight, model.tower.weight)

"""`tower_fan_in: scl_histograms`: which tower-input columns make the first Linear's fan-in.

The columns `OverArch` names must be exactly those the SimTier histograms of SCL cosines fill in
the real forward (checked by marking those modules' outputs), for every method and the fusion
ablations; models without such a histogram must start bit-identical to `tower_fan_in: all`.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from muse_rec.data.loader import make_loader
from muse_rec.models.ctr_model import LifelongCTRModel
from tests.training.conftest import build_model

SEQ_LEN = 100
MARKER = 7.0  # a SimTier value log1p(count) * w with w <= 1 and count <= K never equals it exactly
SPECS = ["methods/muse.yaml", "methods/muse_fusion.yaml", "methods/din.yaml", "methods/din_ref.yaml",
         "methods/sim_hard.yaml", "methods/sim_soft.yaml", "methods/twin.yaml", "methods/miss.yaml",
         "ablations/fusion_esu_both.yaml", "ablations/gsu_score_mm_attention.yaml", "ablations/esu_ta.yaml"]


def _model(spec_file: str, prepared: Path, fan_in: str, seed: int = 0) -> LifelongCTRModel:
    return build_model(spec_file, prepared, [f"model.parametrization.tower_fan_in={fan_in}"], SEQ_LEN, seed)


def _scl_histograms(model: LifelongCTRModel):
    """The SimTier modules that histogram SCL cosines (this test's own reading of the spec)."""
    oa, similarity = model.over_arch, model.spec.esu.similarity
    out = [oa.recent_simtier] if oa.recent_simtier is not None else []
    for st in (oa.simtier, oa.branch_simtier):
        if st is None:
            continue
        if hasattr(st, "multimodal"):  # FusionSimTier: its SCL half
            out.append(st.multimodal)
        elif similarity != "id":
            out.append(st)
    return out


@pytest.mark.parametrize("spec_file", SPECS)
def test_fan_in_columns_are_exactly_the_scl_histograms_of_the_forward(prepared, spec_file):
    model = _model(spec_file, prepared, "scl_histograms")
    oa = model.over_arch
    for st in _scl_histograms(model):
        st.register_forward_hook(lambda m, i, o: torch.full_like(o, MARKER))
    seen = []
    oa.tower.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    batch = next(iter(make_loader(str(prepared), "train", 64, SEQ_LEN)))
    with torch.no_grad():
        model(batch)
    x = seen[0]
    marked = tuple(torch.nonzero((x == MARKER).all(0)).flatten().tolist())
    assert marked == oa.scl_histogram_columns
    first = oa.tower.layers[0]
    if marked:
        assert first.fan_in_columns == marked
        assert first.column_gain == pytest.approx(math.sqrt(x.shape[1] / len(marked)))
    else:  # DIN, TWIN (its SimTier reads ID cosines), MISS
        assert first.fan_in_columns is None
    assert all(getattr(m, "fan_in_columns", None) is None for m in oa.tower.layers[1:])


@pytest.mark.parametrize("spec_file", SPECS)
def test_all_is_lecun_over_every_column_and_models_without_histograms_are_unchanged(prepared, spec_file):
    ref = _model(spec_file, prepared, "all")
    ours = _model(spec_file, prepared, "scl_histograms")
    assert ref.over_arch.tower.layers[0].fan_in_columns is None
    a, b = ref.state_dict(), ours.state_dict()
    w = "over_arch.tower.layers.0.weight"
    cols = list(ours.over_arch.scl_histogram_columns)
    # The same draws, then only the histogram columns of the first Linear scaled.
    for k in a:
        if k != w:
            assert torch.equal(a[k], b[k]), k
    scale = torch.ones(a[w].shape[1])
    scale[cols] = math.sqrt(a[w].shape[1] / len(cols)) if cols else 1.0
    torch.testing.assert_close(b[w], a[w] * scale, rtol=1e-6, atol=0)

"""`simtier_init`: how every SimTier's tier weights start (docs/accuracy.md).

"constant" (the specs' default) starts every tier weight at 1/sqrt(3), the RMS of the reference's
U(0, 1) draw; "uniform" is the reference's draw. Every SimTier a spec builds (ESU, recent, both
halves of the fusion histogram, the second branch) must follow the knob, and models without a
SimTier must start bit-identical under either value.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from muse_rec.models.ctr_model import LifelongCTRModel
from muse_rec.modules import SimTier
from muse_rec.modules.fusion import FusionSimTier
from muse_rec.modules.parametrization import REFERENCE_PARAMETRIZATION, TORCH_PARAMETRIZATION
from muse_rec.modules.simtier import UNIFORM_RMS
from muse_rec.spec import load_spec
from tests.conftest import REPO
from tests.training.conftest import build_model

SEQ_LEN = 100
SPECS = ["methods/muse.yaml", "methods/muse_fusion.yaml", "methods/din.yaml", "methods/din_ref.yaml",
         "methods/sim_hard.yaml", "methods/sim_soft.yaml", "methods/twin.yaml", "methods/miss.yaml",
         "ablations/fusion_esu_both.yaml", "ablations/esu_ta.yaml", "ablations/esu_simtier.yaml"]
# How many SimTier modules each spec builds (this test's own count from the method's definition):
# MUSE: ESU + recent; MUSE-fusion: one ESU SimTier per branch (2) + recent; fusion_esu_both: the
# fused histogram's multimodal and ID halves + recent; DIN-ref: recent; TWIN: ESU over ID cosines,
# no SCL so no recent; DIN, MISS: none.
SIMTIERS = {"methods/muse.yaml": 2, "methods/muse_fusion.yaml": 3, "methods/din.yaml": 0,
            "methods/din_ref.yaml": 1, "methods/sim_hard.yaml": 2, "methods/sim_soft.yaml": 2,
            "methods/twin.yaml": 1, "methods/miss.yaml": 0, "ablations/fusion_esu_both.yaml": 3,
            "ablations/esu_ta.yaml": 1, "ablations/esu_simtier.yaml": 2}


def _model(spec_file: str, prepared: Path, init: str, seed: int = 0) -> LifelongCTRModel:
    return build_model(spec_file, prepared, [f"model.parametrization.simtier_init={init}"], SEQ_LEN, seed)


def _simtiers(model: torch.nn.Module):
    return [m for m in model.modules() if isinstance(m, SimTier)]


def test_the_specs_start_constant_and_the_reference_draws():
    assert load_spec(REPO / "specs/methods/muse.yaml").model.parametrization.simtier_init == "constant"
    assert load_spec(REPO / "specs/demo/twin.yaml").model.parametrization.simtier_init == "constant"
    assert REFERENCE_PARAMETRIZATION.simtier_init == "uniform"  # MUSE.md: SimTier w init U(0, 1)
    assert TORCH_PARAMETRIZATION.simtier_init == "uniform"  # modules built without a spec: as before
    assert UNIFORM_RMS == pytest.approx(math.sqrt(1.0 / 3.0), rel=1e-12)  # E[w^2] of U(0, 1) is 1/3


def test_module_init_constant_uniform_meta_and_errors():
    torch.manual_seed(0)
    assert torch.equal(SimTier(init="constant").weight.detach(), torch.full((22,), UNIFORM_RMS))
    w = SimTier(num_tiers=20000, init="uniform").weight.detach()
    # U(0, 1) over 20k draws: the mean's standard error is 0.002; the RMS is the constant's value.
    assert abs(w.mean().item() - 0.5) < 0.01 and abs(w.pow(2).mean().sqrt().item() - UNIFORM_RMS) < 0.01
    # Built on meta and materialised as DistributedModelParallel does (to_empty + reset_parameters).
    meta = FusionSimTier(init="constant", device=torch.device("meta"))
    meta.to_empty(device="cpu")
    for m in meta.modules():
        if isinstance(m, SimTier):
            m.reset_parameters()
            assert torch.equal(m.weight.detach(), torch.full((22,), UNIFORM_RMS))
    with pytest.raises(ValueError, match="model.parametrization.simtier_init"):
        SimTier(init="ones")
    assert "init=constant" in repr(SimTier(init="constant"))


@pytest.mark.parametrize("spec_file", SPECS)
def test_every_simtier_of_a_model_follows_the_knob(prepared, spec_file):
    constant = _model(spec_file, prepared, "constant")
    uniform = _model(spec_file, prepared, "uniform")
    assert len(_simtiers(constant)) == len(_simtiers(uniform)) == SIMTIERS[spec_file]
    for st in _simtiers(constant):
        assert st.init == "constant"
        assert torch.equal(st.weight.detach(), torch.full_like(st.weight, UNIFORM_RMS))
    for st in _simtiers(uniform):
        w = st.weight.detach()
        assert st.init == "uniform" and (w >= 0).all() and (w <= 1).all() and w.std() > 0.1
    if not SIMTIERS[spec_file]:  # DIN, MISS: nothing else may change
        a, b = constant.state_dict(), uniform.state_dict()
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k

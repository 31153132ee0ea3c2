"""Item 5 of issue 13: a checkpoint with a non-finite weight or optimizer state is never written."""
from __future__ import annotations

import pytest
import torch

from muse_rec.training.checkpoint import save_checkpoint
from muse_rec.training.checkpoint_finite import NonFiniteError
from muse_rec.training.checkpoint_latest import latest_checkpoint
from muse_rec.training.checkpoint_position import Position


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tower = torch.nn.Linear(3, 2)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weight_is_refused_naming_the_parameter(tmp_path, bad):
    root = tmp_path / "checkpoints"
    model = _Tiny()
    save_checkpoint(str(root), model, None, Position(step=1, run_id="r"))
    with torch.no_grad():
        model.tower.bias[1] = bad
    with pytest.raises(NonFiniteError, match=r"step 2: parameter 'tower.bias' holds NaN/Inf"):
        save_checkpoint(str(root), model, None, Position(step=2, run_id="r"))
    assert sorted(p.name for p in root.iterdir()) == ["step-00000001"]  # the last good one stays, no .tmp
    assert latest_checkpoint(str(root)) == root / "step-00000001"


def test_non_finite_optimizer_state_is_refused(tmp_path):
    model = _Tiny()
    opt = torch.optim.Adam(model.parameters())
    model.tower(torch.ones(1, 3)).sum().backward()
    opt.step()
    opt.state[model.tower.weight]["exp_avg"][0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"parameter 'optim\.0' holds NaN/Inf"):
        save_checkpoint(str(tmp_path / "c"), model, opt, Position(step=1, run_id="r"))
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())

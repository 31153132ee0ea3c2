"""A sealed checkpoint (its manifest matches) holding NaN/Inf is refused on load, naming the key.

Training never saves one (`test_nonfinite_checkpoint.py`), so such a checkpoint was altered and re-sealed
after it was written; loaded, `rank` and `evaluate` ended in a traceback on NaN scores.
"""
from __future__ import annotations

import pytest
import torch

from muse_rec.training import checkpoint
from muse_rec.training.checkpoint import load_checkpoint, save_checkpoint
from muse_rec.training.checkpoint_position import CheckpointError, Position


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tower = torch.nn.Linear(3, 2)


def _sealed_with(monkeypatch, root, model, opt=None):
    """A checkpoint of ``model`` written as training writes it, but past the save's finiteness check."""
    with monkeypatch.context() as m:
        m.setattr(checkpoint, "check_finite", lambda state, step: None)
        return save_checkpoint(str(root), model, opt, Position(step=1, run_id="r"))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_sealed_checkpoint_with_a_non_finite_weight_is_refused_naming_it(tmp_path, monkeypatch, bad):
    model = _Tiny()
    with torch.no_grad():
        model.tower.weight[1, 2] = bad
    ck = _sealed_with(monkeypatch, tmp_path / "c", model)
    with pytest.raises(CheckpointError, match=r"'tower\.weight' holds NaN/Inf.*use another checkpoint"):
        load_checkpoint(ck, _Tiny(), None)


def _stepped(model: _Tiny) -> torch.optim.Adam:
    """An Adam with its state (training's optimizers have theirs before a resume loads into it)."""
    opt = torch.optim.Adam(model.parameters())
    model.tower(torch.ones(1, 3)).sum().backward()
    opt.step()
    return opt


def test_a_sealed_checkpoint_with_a_non_finite_optimizer_state_is_refused(tmp_path, monkeypatch):
    model = _Tiny()
    opt = _stepped(model)
    opt.state[model.tower.bias]["exp_avg_sq"][0] = float("nan")
    ck = _sealed_with(monkeypatch, tmp_path / "c", model, opt)
    fresh = _Tiny()
    with pytest.raises(CheckpointError, match=r"'optim\.1' holds NaN/Inf"):
        load_checkpoint(ck, fresh, _stepped(fresh))


def test_a_finite_checkpoint_still_loads(tmp_path):
    model = _Tiny()
    ck = save_checkpoint(str(tmp_path / "c"), model, None, Position(step=1, run_id="r"))
    fresh = _Tiny()
    assert load_checkpoint(ck, fresh, None).step == 1
    assert torch.equal(fresh.tower.weight, model.tower.weight)

"""A checkpoint of finite weights whose scores overflow to NaN: `rank` says so in one line (exit 2).

Such weights pass every check of a checkpoint (its manifest, its values are finite), but the model's
output for a request is NaN; the Ranker never returns it, and `rank` ended in its RuntimeError's traceback.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save, torch_save_to_dcp

from muse_rec.integrity import write_manifest
from muse_rec.training.checkpoint_latest import latest_checkpoint
from tests.robustness.conftest import SPEC, assert_bad_input, cli

# The largest fp32 magnitudes are ~3.4e38: a sum of two such products of one sign is inf, and inf of both
# signs in one sum is NaN; every weight stays finite.
HUGE = 3e38


def _resealed_with_huge_tower(src: Path, dest: Path, tmp: Path) -> None:
    """``dest``: the checkpoint ``src`` with every tower weight +-HUGE (alternating), sealed anew."""
    dcp_to_torch_save(str(src), str(tmp / "full.pt"))
    state = torch.load(tmp / "full.pt", weights_only=False)
    tower = [k for k in state["model"] if ".tower." in k and k.endswith(".weight")]
    assert tower, sorted(state["model"])
    for k in tower:
        w = state["model"][k]
        signs = torch.ones(w.numel()).index_fill_(0, torch.arange(1, w.numel(), 2), -1.0).view_as(w)
        state["model"][k] = HUGE * signs
    torch.save(state, tmp / "huge.pt")
    torch_save_to_dcp(str(tmp / "huge.pt"), str(dest))
    for f in src.iterdir():
        if not f.name.startswith("__") and f.name not in (".metadata", "SHA256SUMS.json"):
            shutil.copy(f, dest / f.name)
    write_manifest(dest)


def test_rank_with_weights_that_overflow_the_scores_is_one_line(trained, tmp_path):
    ck = tmp_path / "ck"
    _resealed_with_huge_tower(latest_checkpoint(str(trained.run_dir / "checkpoints")), ck, tmp_path)
    req = tmp_path / "req.json"
    req.write_text(json.dumps({"user": 1, "candidates": [1, 2]}))
    out = cli("rank", "--spec", SPEC, *trained.sets(), "--checkpoint", str(ck), "--request", str(req))
    assert_bad_input(out, f"muse-rec rank: {ck}: user 1: the model produced non-finite scores")
    assert out.stdout == ""  # no response, and no NaN in one


def test_evaluate_with_weights_that_overflow_the_scores_is_one_line(trained, tmp_path):
    ck = tmp_path / "ck"
    _resealed_with_huge_tower(latest_checkpoint(str(trained.run_dir / "checkpoints")), ck, tmp_path)
    out = cli("evaluate", "--spec", SPEC, *trained.sets(), "--checkpoint", str(ck), "--out", str(tmp_path / "ev"))
    assert_bad_input(out, "muse-rec evaluate: the model scored NaN/Inf on test batch 1 of rank 0")
    assert not (tmp_path / "ev" / "metrics.json").exists()

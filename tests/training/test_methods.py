"""Every method of the paper's Table 5 (and the ablations) trains from its spec alone."""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from muse_rec.data.loader import make_loader
from muse_rec.data.prepared import PreparedData
from muse_rec.distributed.env import init_distributed
from muse_rec.spec import load_spec
from muse_rec.training.trainer import make_pipeline, build_sharded
from tests.training.conftest import FAST

SPECS = Path(__file__).resolve().parents[2] / "specs"
METHODS = sorted(p.stem for p in (SPECS / "demo").glob("*.yaml"))
ABLATIONS = sorted(p.stem for p in (SPECS / "ablations").glob("*.yaml"))


def _losses(spec_path: Path, prepared: Path, rounds: int = 5, batches: int = 3) -> list:
    spec = load_spec(spec_path, [f"data.prepared={prepared}", *FAST])
    env = init_distributed()
    torch.manual_seed(0)
    data = PreparedData(str(prepared))
    dmp, optimizer, _ = build_sharded(spec, data, env)
    fixed = list(itertools.islice(iter(make_loader(data, "train", spec.train.batch_size, spec.data.seq_len)), batches))
    pipeline = make_pipeline("sparse_dist", dmp, optimizer, env)
    it = iter(fixed * rounds)
    per_round = []
    for _ in range(rounds):
        per_round.append(sum(float(pipeline.progress(it)[0]) for _ in range(batches)) / batches)
    return per_round


@pytest.mark.parametrize("method", METHODS)
def test_every_method_learns(method, prepared):
    assert {"din", "sim_hard", "sim_soft", "twin", "miss", "muse"} <= set(METHODS)
    losses = _losses(SPECS / "demo" / f"{method}.yaml", prepared)
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert losses[-1] < losses[0] - 0.01, f"{method}: loss did not fall over repeated batches: {losses}"


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_every_ablation_spec_trains(ablation, prepared):
    losses = _losses(SPECS / "ablations" / f"{ablation}.yaml", prepared, rounds=2)
    assert all(torch.isfinite(torch.tensor(losses))), losses

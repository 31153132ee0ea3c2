"""Every method of the paper's Table 5 (and the ablations) trains from its spec alone."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from muse_rec.data.loader import make_loader
from muse_rec.data.prepared import PreparedData
from muse_rec.distributed.env import init_distributed
from muse_rec.spec import load_spec
from muse_rec.training.build import build_sharded, make_pipeline
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


def test_din_ref_is_the_reference_codes_din_and_din_is_id_only(prepared):
    """din = the paper's ID-only DIN; din_ref = the reference code's DIN (multimodal SimTier over
    the recent 50). Both skip the long-term search. (That din_ref trains: test_every_method_learns.)"""
    from muse_rec.models.ctr_model import build_train_model

    assert {"din", "din_ref"} <= set(METHODS)
    sizes = PreparedData(str(prepared)).vocab_sizes
    models = {m: build_train_model(load_spec(SPECS / "methods" / f"{m}.yaml").model, sizes, seq_len=1000,
                                   device=torch.device("meta")).model for m in ("din", "din_ref")}
    for m in models.values():
        oa = m.over_arch
        assert m.gsu is None and oa.simtier is None and oa.esu_attention is None and oa.recent_attention is not None
    assert not models["din"].uses_scl and models["din"].over_arch.recent_simtier is None
    assert models["din_ref"].uses_scl and models["din_ref"].over_arch.recent_simtier is not None


def test_spec_parametrization_reaches_every_dense_layer(prepared):
    """model.parametrization of base.yaml (the reference's) is what the built MUSE model uses."""
    from muse_rec.models.ctr_model import build_train_model
    from muse_rec.modules import Dice
    from muse_rec.modules.parametrization import ParamLinear

    spec = load_spec(SPECS / "methods" / "muse.yaml")
    p = spec.model.parametrization
    assert (p.linear_init, p.linear_bias, p.attention_bias, p.output_head) == \
        ("normal_fan_in", None, True, "one_logit")
    assert spec.train.dense_optimizer.weight_decay == 0.01
    model = build_train_model(spec.model, PreparedData(str(prepared)).vocab_sizes, seq_len=1000).model
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(isinstance(m, ParamLinear) and m.parametrization == p for m in linears)
    # torch's uniform bias (not the reference's constant 0.1: docs/accuracy.md), every layer biased
    assert all(m.bias is not None and (m.bias.numel() == 1 or m.bias.std() > 0)  # the 1-logit head has one bias
               and m.bias.abs().max() <= m.in_features ** -0.5 for m in linears)
    # The widest is the tower's first Linear: N(0,1)/sqrt(fan_in) over every column (tower_fan_in: all,
    # LeCun's rule as the reference), not torch's uniform (std 1/sqrt(3 fan_in), 42% lower). ~79k
    # weights: the sample std is within 0.3% (1 s.e.); 5% as before.
    wide = max(linears, key=lambda m: m.weight.numel())
    assert p.tower_fan_in == "all" and wide.fan_in_columns is None and wide.gain == 1.0
    assert abs(wide.weight.std().item() * wide.in_features ** 0.5 - 1.0) < 0.05
    dice = [m for m in model.modules() if isinstance(m, Dice)]
    assert len(dice) == len(spec.model.tower_hidden)  # one logit: no Dice on the output (base.yaml)
    assert all(torch.equal(d.alpha, torch.full_like(d.alpha, -0.25)) and d.norm.weight is None for d in dice)


def _output_linear(module: torch.nn.Module) -> torch.nn.Linear:
    return [m for m in module.modules() if isinstance(m, torch.nn.Linear)][-1]


def test_trained_model_starts_its_logit_at_the_train_click_rate(prepared, tmp_path):
    """output_bias: train_prior (the specs' default) reaches the sharded model from meta.json."""
    import math
    import shutil

    from muse_rec.training.run_record import RunError

    data = PreparedData(str(prepared))
    rate = data.positive_rate("train")
    assert rate == data.meta["splits"]["train"]["positive_rate"] and 0.0 < rate < 1.0
    env = init_distributed()
    spec = load_spec(SPECS / "demo" / "muse.yaml", [f"data.prepared={prepared}", *FAST])
    assert spec.model.parametrization.output_bias == "train_prior"
    dmp, _, _ = build_sharded(spec, data, env)
    bias = _output_linear(dmp.module).bias
    assert bias.shape == (1,) and bias.item() == pytest.approx(math.log(rate / (1 - rate)), abs=1e-6)
    linear = load_spec(SPECS / "demo" / "muse.yaml", [f"data.prepared={prepared}", *FAST,
                                                       "model.parametrization.output_bias=linear"])
    torch.manual_seed(0)
    other = _output_linear(build_sharded(linear, data, env)[0].module).bias
    assert abs(other.item()) <= 32 ** -0.5  # torch's uniform bias of a fan-in-32 layer, not the prior

    # The prior is the click rate of the split the run trains on (data.train_split), not of "train".
    other_rate = data.positive_rate("test")
    assert abs(math.log(other_rate / (1 - other_rate)) - math.log(rate / (1 - rate))) > 1e-3  # tells them apart
    on_test = load_spec(SPECS / "demo" / "muse.yaml", [f"data.prepared={prepared}", *FAST, "data.train_split=test"])
    bias = _output_linear(build_sharded(on_test, data, env)[0].module).bias
    assert bias.item() == pytest.approx(math.log(other_rate / (1 - other_rate)), abs=1e-6)

    # A train split with one class has no prior: one line naming the data, not a -inf bias.
    one_class = tmp_path / "prepared"
    shutil.copytree(prepared, one_class)
    meta = json.loads((one_class / "meta.json").read_text())
    meta["splits"]["train"]["positive_rate"] = 0.0
    (one_class / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(RunError, match="split 'train' has click rate 0 \\(one class\\)"):
        build_sharded(load_spec(SPECS / "demo" / "muse.yaml", [f"data.prepared={one_class}", *FAST]),
                      PreparedData(str(one_class)), env)
    meta["splits"]["train"]["positive_rate"] = "0.1"
    (one_class / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(Exception, match=r"splits.train.positive_rate must be a number"):
        PreparedData(str(one_class)).positive_rate("train")


def test_a_training_rank_reserves_the_loader_workers_its_host_starts(prepared, monkeypatch):
    """Training reserves memory for the loader workers it really starts: at most one per CPU of its host
    (`loader.usable_workers`), while `muse-rec plan` reserves the spec's `data.num_workers` for a machine it
    is not told the CPUs of (tests/distributed/test_plan_cli.py)."""
    import os

    from muse_rec.distributed.rank_memory import WORKER_BYTES
    from muse_rec.training import build

    class Planned(Exception):
        """Stops `build_sharded` at the planner, with the reservation it passes."""

    def reservation(*args, dense_bytes: int, **kwargs) -> None:
        raise Planned(dense_bytes)

    monkeypatch.setattr(build, "shard_model", reservation)
    data, env = PreparedData(str(prepared)), init_distributed()

    def reserved(workers: int, cpus: int) -> int:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)))
        spec = load_spec(SPECS / "demo" / "muse.yaml", [f"data.prepared={prepared}", *FAST,
                                                         f"data.num_workers={workers}"])
        with pytest.raises(Planned) as stopped:
            build_sharded(spec, data, env)
        return stopped.value.args[0]

    assert reserved(8, cpus=1) == reserved(1, cpus=1)
    assert reserved(8, cpus=64) - reserved(1, cpus=64) == 7 * WORKER_BYTES

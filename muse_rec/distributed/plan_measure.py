"""Per-rank memory of a sharded model, measured on CPU gloo ranks, beside what `muse-rec plan` predicts.

`measure(spec, sizes, world_size)` starts `world_size` gloo processes; each builds the spec's
model on ``meta`` and shards it exactly as training does (`shard_model` with training's
constraints, fp16 frozen lookups), then reports:

* ``table_bytes``: bytes of every tensor FBGEMM's table-batched embedding kernels hold on the
  rank (weights and fused-optimizer state; each storage counted once);
* ``rss_anon_delta_bytes``: the rank's anonymous RSS after sharding minus before building.

`planned(spec, sizes, world_size)` runs the plan report for the same spec on a CPU topology and
returns, per rank, weights + fused-optimizer state (what the tables should hold), the plan's
DDR total for the tables, and the predicted whole rank (tables + the reservation for what the
rank holds outside them, `rank_memory`). `compare` puts both side by side;
benchmarks/bench_scale.py (--plan-check, --train-check) and tests/distributed/test_plan_vs_measured.py
use them.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Dict, List, Mapping, Sequence

import torch
from torch import nn


def status_bytes(key: str) -> int:
    """A byte field of /proc/self/status (e.g. ``RssAnon``, ``VmRSS``, ``VmHWM``); 0 where there is none."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def kernel_tensor_bytes(module: nn.Module) -> int:
    """Bytes of the parameters and buffers of FBGEMM's table-batched embedding modules in `module`
    (weights, optimizer state, row offsets), each storage counted once."""
    seen, total = set(), 0
    # Sharded collections keep their lookups in a plain list (`_lookups`), not as submodules.
    owners = [lk for m in module.modules() for lk in (getattr(m, "_lookups", None) or [])]
    for m in (x for owner in [module, *owners] for x in owner.modules()):
        # FBGEMM's TBE classes (training, dense, inference): the modules that own table storage.
        if "TableBatchedEmbedding" not in type(m).__name__:
            continue
        for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)):
            st = t.untyped_storage()
            key = (st.data_ptr(), st.nbytes())
            if st.nbytes() and key not in seen:
                seen.add(key)
                total += st.nbytes()
    return total


def _model(spec, sizes: Mapping[str, int]) -> nn.Module:
    from muse_rec.models.ctr_model import build_train_model

    return build_train_model(spec.model, sizes, seq_len=spec.data.seq_len, device=torch.device("meta"))


def _worker(rank: int, world_size: int, port: int, spec_path: str, overrides: Sequence[str],
            sizes: Dict[str, int], out_dir: str) -> None:
    from fbgemm_gpu.split_embedding_configs import SparseType

    from muse_rec.distributed.env import DistEnv, destroy_distributed, init_distributed
    from muse_rec.distributed.model_parallel import shard_model
    from muse_rec.distributed.planner import training_constraints
    from muse_rec.spec import load_spec

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size))
    env = init_distributed(DistEnv.from_environ(device_type="cpu"))
    spec = load_spec(spec_path, list(overrides))
    before = status_bytes("RssAnon")
    model = _model(spec, sizes)
    dmp = shard_model(model, env, sparse_optimizer=spec.train.sparse_optimizer,
                      constraints=training_constraints(model, world_size), frozen_output_dtype=SparseType.FP16)
    after = status_bytes("RssAnon")  # one read: the delta and the absolute figure describe the same moment
    res = {"rank": rank, "table_bytes": kernel_tensor_bytes(dmp), "rss_anon_delta_bytes": after - before,
           "rss_anon_bytes": after}
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w", encoding="utf-8") as f:
        json.dump(res, f)
    destroy_distributed()


def measure(spec_path: str, sizes: Mapping[str, int], world_size: int, overrides: Sequence[str] = ()) -> List[Dict]:
    """Shard the spec's model on `world_size` CPU gloo processes; per-rank measurements (rank order)."""
    import torch.multiprocessing as mp

    from muse_rec.distributed.env import free_port

    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_worker, args=(world_size, free_port(), spec_path, list(overrides), dict(sizes), out),
                 nprocs=world_size, join=True)
        return [json.load(open(os.path.join(out, f"rank{r}.json"), encoding="utf-8")) for r in range(world_size)]


def planned(spec_path: str, sizes: Mapping[str, int], world_size: int, overrides: Sequence[str] = ()) -> List[Dict]:
    """What `muse-rec plan --device cpu` predicts per rank: weights + optimizer state, and DDR."""
    from muse_rec.distributed.plan_fit import PlanSetup, attempt
    from muse_rec.distributed.rank_memory import planned_batch_size, spec_rank_overhead_bytes
    from muse_rec.distributed.sharders import FusedOptimizerConfig, make_sharders
    from muse_rec.spec import load_spec

    spec = load_spec(spec_path, list(overrides))
    opt = spec.train.sparse_optimizer
    sharders = make_sharders(FusedOptimizerConfig(name=opt.name, learning_rate=opt.lr, eps=opt.eps,
                                                  weight_decay=opt.weight_decay), "cpu")
    model = _model(spec, sizes)
    setup = PlanSetup(compute_device="cpu", dense_bytes=spec_rank_overhead_bytes(spec, model, "cpu", world_size),
                      batch_size=planned_batch_size(spec))
    result = attempt(model, setup, world_size, sharders)
    if result.report is None:
        raise RuntimeError(f"no plan for {world_size} CPU ranks: {result.error}")
    return [{"rank": r.rank, "table_bytes": r.weight_bytes + r.optimizer_bytes, "weight_bytes": r.weight_bytes,
             "optimizer_bytes": r.optimizer_bytes, "ddr_bytes": r.ddr_bytes, "reserved_ddr_bytes": r.reserved_ddr_bytes,
             "predicted_ddr_bytes": r.predicted_ddr_bytes} for r in result.report.ranks]


def compare(spec_path: str, sizes: Mapping[str, int], world_size: int, overrides: Sequence[str] = ()) -> List[Dict]:
    """Per rank: planned and measured bytes and their ratio (measured / planned)."""
    plan = planned(spec_path, sizes, world_size, overrides)
    got = measure(spec_path, sizes, world_size, overrides)
    rows = []
    for p, m in zip(plan, got):
        rows.append({**{f"planned_{k}": v for k, v in p.items() if k != "rank"},
                     **{f"measured_{k}": v for k, v in m.items() if k != "rank"}, "rank": p["rank"],
                     "table_ratio": m["table_bytes"] / max(1, p["table_bytes"])})
    return rows

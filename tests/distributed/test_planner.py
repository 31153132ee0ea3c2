"""Planning on meta (no allocation), constraints, summaries; DistEnv parsing; sharder checks."""
from __future__ import annotations

import os

import pytest
import torch

from muse_rec.data.batch import POOLED_FEATURES
from muse_rec.distributed.env import DistEnv
from muse_rec.distributed.planner import GiB, format_summary, make_constraints, make_plan, make_topology, plan_summary
from muse_rec.distributed.sharders import FusedOptimizerConfig, make_sharders
from muse_rec.models.sparse_arch import SparseArch

P90 = {"item": 35_400_000, "category": 26_000, "user_id": 6_900_000, **{f: 100 for f in POOLED_FEATURES[1:]}}


def test_fake_8_gpu_plan_on_meta_row_wise_scl() -> None:
    arch = SparseArch(P90, device=torch.device("meta"))
    sharders = make_sharders(FusedOptimizerConfig(), "cuda")
    topo = make_topology(8, "cuda", hbm_bytes_per_rank=80 * GiB)
    plan = make_plan(arch, topo, sharders, make_constraints(arch, {"scl": ["row_wise"], "item": ["row_wise"]}))
    rows = {r.table: r for r in plan_summary(arch, plan, sharders)}
    assert set(rows) == {"item", "category", "scl", *POOLED_FEATURES}
    scl = rows["scl"]
    assert scl.sharding_type == "row_wise" and scl.ranks == tuple(range(8))
    assert scl.dtype == "FP16" and scl.weight_bytes == 35_400_000 * 128 * 2 and scl.optimizer_bytes == 0
    # Row-wise Adagrad keeps one fp32 per row.
    assert rows["item"].optimizer_bytes == 35_400_000 * 4
    assert sum(scl.bytes_per_rank.values()) == scl.weight_bytes
    text = format_summary(list(rows.values()))
    scl_line = next(ln for ln in text.splitlines() if ln.startswith("scl "))
    # every rank holding the table is named (the column once cut "0,1,...,7" to "0,1,2,3,4,5,")
    assert " 0-7 " in scl_line, scl_line
    assert arch.scl.collection.embeddings["scl"].weight.is_meta  # planning allocated nothing


def test_format_ranks_spells_runs_and_lists() -> None:
    from muse_rec.distributed.planner import format_ranks

    assert format_ranks(range(16)) == "0-15" and format_ranks([3, 1]) == "1,3"
    assert format_ranks([0, 2, 4, 6, 8, 10, 12, 14]) == "0,2,4,6,8,10,12,14"  # whole, not cut to a column


def test_constraints_refuse_data_parallel_and_unknown_tables() -> None:
    arch = SparseArch({**P90, "item": 50, "user_id": 10}, device=torch.device("meta"))
    cons = make_constraints(arch)
    assert all("data_parallel" not in c.sharding_types for c in cons.values())
    with pytest.raises(ValueError, match="'scl'.*data_parallel"):
        make_constraints(arch, {"scl": ["data_parallel"]})
    with pytest.raises(KeyError, match="nope"):
        make_constraints(arch, {"nope": ["row_wise"]})


def test_fused_optimizer_validated_per_device() -> None:
    with pytest.raises(ValueError, match="'lamb' is not supported on cpu.*exact_row_wise_adagrad"):
        FusedOptimizerConfig(name="lamb").fused_params("cpu")
    assert FusedOptimizerConfig(name="adam").fused_params("cuda")["learning_rate"] == 2e-3
    # adam on CPU: RowSparseAdam updates the tables, the kernel's own optimizer is a no-op.
    assert FusedOptimizerConfig(name="adam").fused_params("cpu")["learning_rate"] == 0.0
    frozen = make_sharders(FusedOptimizerConfig(), "cpu")[-1]
    assert frozen.fused_params["learning_rate"] == 0.0
    assert "data_parallel" not in frozen.sharding_types("cpu")
    assert all(k.startswith("fused") for k in frozen.compute_kernels("row_wise", "cuda"))


def test_dist_env_from_variables() -> None:
    solo = DistEnv.from_environ({}, device_type="cpu")
    assert (solo.rank, solo.world_size, solo.backend, solo.device.type) == (0, 1, "gloo", "cpu")
    env = DistEnv.from_environ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}, "cpu")
    assert (env.rank, env.local_rank, env.num_nodes, env.is_main) == (3, 1, 2, False)
    with pytest.raises(ValueError, match="RANK=4"):
        DistEnv.from_environ({"RANK": "4", "WORLD_SIZE": "4"}, "cpu")
    with pytest.raises(ValueError, match="WORLD_SIZE='two'"):
        DistEnv.from_environ({"WORLD_SIZE": "two"}, "cpu")


def test_a_cpu_job_plans_with_this_hosts_memory_and_a_misfit_is_plan_does_not_fit(monkeypatch) -> None:
    """TorchRec's CPU default (128 GiB per rank, whatever the host has) planned jobs the host cannot
    hold: ~11 GiB of p90 tables (35.4M items; 8.4 GiB of SCL alone) were "placed" on an 8 GiB host and
    the OOM killer ended the run. The DDR cap is the host's memory shared by its ranks."""
    from muse_rec.distributed import planner

    assert 0 < planner.host_memory_bytes() <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    monkeypatch.setattr(planner, "host_memory_bytes", lambda: 12 * GiB)
    env = DistEnv(rank=0, world_size=4, local_rank=0, local_world_size=2, device=torch.device("cpu"), backend="gloo")
    assert planner.topology_for(env).devices[0].storage.ddr == 6 * GiB
    assert planner.topology_for(env, ddr_bytes_per_rank=GiB).devices[0].storage.ddr == GiB  # an explicit cap wins
    assert "DDR 6 GiB per rank" in planner.rank_memory_line(planner.topology_for(env))
    arch = SparseArch(P90, device=torch.device("meta"))
    one_rank = DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1, device=torch.device("cpu"), backend="gloo")
    monkeypatch.setattr(planner, "host_memory_bytes", lambda: 8 * GiB)
    with pytest.raises(planner.PlanDoesNotFit, match="insufficient storage$"):
        make_plan(arch, planner.topology_for(one_rank), make_sharders(FusedOptimizerConfig(), "cpu"))
    monkeypatch.setattr(planner, "host_memory_bytes", lambda: 64 * GiB)  # the same tables on a larger host
    make_plan(arch, planner.topology_for(one_rank), make_sharders(FusedOptimizerConfig(), "cpu"))

"""Sharding plans: topology, per-table constraints, the planner, and a readable per-table summary.

Planning is separate from DMP construction (`model_parallel.shard_model` takes a plan) so a
plan can be made, printed and checked for any topology on the ``meta`` device without
allocating a table, e.g. an 8 x 80 GiB GPU node from a CPU box:

    topo = make_topology(world_size=8, compute_device="cuda", hbm_bytes_per_rank=80 * GiB)
    plan = make_plan(model_on_meta, topo, make_sharders(FusedOptimizerConfig(), "cuda"))
    print(format_summary(plan_summary(model_on_meta, plan, sharders)))
"""
from __future__ import annotations

import copy
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch.distributed as dist
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingCollection
from torchrec.distributed.collective_utils import invoke_on_rank_and_broadcast_result
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.constants import BATCH_SIZE, DEFAULT_PERF_ESTIMATOR
from torchrec.distributed.planner.shard_estimators import EmbeddingPerfEstimatorFactory, EmbeddingStorageEstimator
from torchrec.distributed.planner.storage_reservations import HeuristicalStorageReservation
from torchrec.distributed.planner.types import (
    KernelConfig,
    ParameterConstraints,
    PlannerError,
    Stats,
    Storage,
    TopologyFactory,
    TrainerConfig,
)
from torchrec.distributed.types import ModuleSharder, ShardingPlan
from torchrec.modules.embedding_configs import DATA_TYPE_NUM_BITS, BaseEmbeddingConfig

from muse_rec.distributed.env import DistEnv
from muse_rec.distributed.ordered_enumerator import OrderedEmbeddingEnumerator
from muse_rec.distributed.optimizer_state import FusedOptimizerStateEstimator, state_bytes, state_optimizers_by_module
from muse_rec.distributed.sharders import EBC_SHARDING_TYPES, EC_SHARDING_TYPES
from muse_rec.memory import GiB

# TorchRec's default HBM margin (EmbeddingShardingPlanner builds this reservation when given
# none); passed explicitly so a report knows the capacity the planner planned against.
PLANNER_RESERVED_FRACTION = 0.15
PLANNER_LOGGER = "torchrec.distributed.planner"

GPUS_PER_HOST = 8  # the usual GPU node (HGX/DGX): what a CUDA plan assumes unless told otherwise
# torch.device's index is an int8: a host of more ranks cannot be placed (TorchRec's placement
# builds torch.device("cuda", rank % ranks_per_host)).
MAX_DEVICES_PER_HOST = 128


def ranks_per_host(world_size: int, compute_device: str, at_most: Optional[int] = None) -> int:
    """Ranks per host a plan assumes: equal hosts (TorchRec places table_row_wise shards host by
    host) of the most ranks that divide `world_size`, up to `at_most`. Without `at_most`: a CPU
    world is one host, a CUDA world hosts of up to `GPUS_PER_HOST` GPUs (16 ranks: 2 hosts of 8;
    12: 2 of 6)."""
    if at_most is None:
        if compute_device != "cuda":
            return world_size
        at_most = GPUS_PER_HOST
    return max(n for n in range(1, min(at_most, world_size) + 1) if world_size % n == 0)


def hosts_phrase(world_size: int, per_host: int) -> str:
    """`` on 2 hosts of 8`` for a plan's one-line description; empty for one host."""
    return f" on {world_size // per_host} hosts of {per_host}" if per_host < world_size else ""


def make_topology(
    world_size: int,
    compute_device: str = "cpu",
    local_world_size: Optional[int] = None,
    hbm_bytes_per_rank: Optional[int] = None,
    ddr_bytes_per_rank: Optional[int] = None,
) -> Topology:
    """The hardware the planner places tables on.

    Args:
        world_size: total ranks.
        compute_device: ``cpu`` or ``cuda``.
        local_world_size: ranks per host (default: `ranks_per_host`); the planner costs
            communication inside a host and between hosts differently.
        hbm_bytes_per_rank: device memory per rank (CUDA); None = TorchRec's default.
        ddr_bytes_per_rank: host memory per rank; None = TorchRec's default. On CPU this is
            where tables live.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    local = local_world_size or ranks_per_host(world_size, compute_device)
    if not 1 <= local <= world_size:
        raise ValueError(f"ranks per host must be in [1, world size {world_size}], got {local}")
    if compute_device == "cuda" and local > MAX_DEVICES_PER_HOST:
        raise ValueError(f"ranks per host {local} > {MAX_DEVICES_PER_HOST}: torch numbers at most "
                         f"{MAX_DEVICES_PER_HOST} CUDA devices per host")
    return TopologyFactory.create_topology(
        trainer_config=TrainerConfig(
            world_size=world_size,
            local_world_size=local,
            hbm_cap_bytes=hbm_bytes_per_rank,
            ddr_cap_bytes=ddr_bytes_per_rank,
        ),
        kernel_config=KernelConfig(compute_device=compute_device),
    )


def rank_memory_line(topology: Topology) -> str:
    """``HBM 80 GiB, DDR 512 GiB per rank``: the caps the planner plans `topology` with."""
    storage = topology.devices[0].storage
    return f"HBM {storage.hbm / GiB:.4g} GiB, DDR {storage.ddr / GiB:.4g} GiB per rank"


def host_memory_bytes() -> int:
    """This host's physical memory, or its cgroup's memory limit when that is lower (a container's)."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):  # cgroup v2, v1
        try:
            text = Path(limit).read_text().strip()
        except OSError:
            continue
        if text.isdigit():  # v2 writes "max" when unlimited
            total = min(total, int(text))
    return total


def topology_for(env: DistEnv, **caps: Optional[int]) -> Topology:
    """`make_topology` for the running job (`caps`: ``hbm_bytes_per_rank``, ``ddr_bytes_per_rank``).

    On CPU the DDR cap defaults to this host's memory shared by its ranks: TorchRec's default
    (128 GiB per rank, whatever the host has) would plan a job the host cannot hold and leave it
    to the OOM killer mid-run instead of a one-line refusal (`PlanDoesNotFit`) before it starts.
    """
    if env.device.type == "cpu" and caps.get("ddr_bytes_per_rank") is None:
        caps["ddr_bytes_per_rank"] = host_memory_bytes() // max(1, env.local_world_size)
    return make_topology(env.world_size, env.device.type, env.local_world_size, **caps)


def embedding_tables(module: nn.Module) -> Dict[str, Tuple[str, BaseEmbeddingConfig]]:
    """Every table of the (unsharded) module: name -> (collection fqn, config). Names must be unique."""
    tables: Dict[str, Tuple[str, BaseEmbeddingConfig]] = {}
    for path, m in module.named_modules():
        if isinstance(m, EmbeddingBagCollection):
            configs: Sequence[BaseEmbeddingConfig] = m.embedding_bag_configs()
        elif isinstance(m, EmbeddingCollection):
            configs = m.embedding_configs()
        else:
            continue
        for c in configs:
            if c.name in tables:
                raise ValueError(
                    f"table name {c.name!r} is used in both {tables[c.name][0]!r} and {path!r}; "
                    "the planner keys constraints by table name"
                )
            tables[c.name] = (path, c)
    return tables


def make_constraints(
    module: nn.Module, sharding_types: Optional[Mapping[str, Sequence[str]]] = None
) -> Dict[str, ParameterConstraints]:
    """Per-table constraints: allowed sharding types (never ``data_parallel``) and, where the model
    states them (`feature_lookups`), each feature's ids per sample, which TorchRec's planner
    calls pooling factors and costs lookups and all-to-alls with.

    Args:
        module: the unsharded model (any device, ``meta`` included).
        sharding_types: per table name, a subset of the allowed types to force a choice
            (e.g. ``{"scl": ["row_wise"]}``); other tables get every allowed type.
    """
    chosen = dict(sharding_types or {})
    tables = embedding_tables(module)
    unknown = sorted(set(chosen) - set(tables))
    if unknown:
        raise KeyError(f"sharding_types names unknown tables {unknown}; tables: {sorted(tables)}")
    lookups = feature_lookups(module)
    constraints: Dict[str, ParameterConstraints] = {}
    for name, (path, config) in tables.items():
        owner = module.get_submodule(path)
        allowed = EBC_SHARDING_TYPES if isinstance(owner, EmbeddingBagCollection) else EC_SHARDING_TYPES
        wanted = list(chosen.get(name, allowed))
        bad = [t for t in wanted if t not in allowed]
        if bad:
            raise ValueError(f"table {name!r}: sharding types {bad} not allowed; allowed: {allowed}")
        extra = {}
        if lookups is not None:
            missing = [f for f in config.feature_names if f not in lookups]
            if missing:
                raise KeyError(f"table {name!r}: the model states no lookups per sample for features {missing}")
            extra["pooling_factors"] = [float(lookups[f]) for f in config.feature_names]
        constraints[name] = ParameterConstraints(sharding_types=wanted, **extra)
    return constraints


def feature_lookups(module: nn.Module) -> Optional[Mapping[str, float]]:
    """Ids per sample of every embedding feature, from the first submodule of `module` that states
    them (`LifelongCTRModel.lookups_per_sample`); None for bare collections, which the planner
    then costs at TorchRec's default of one id per sample and table."""
    for m in module.modules():
        stated = getattr(m, "lookups_per_sample", None)
        if callable(stated):
            return stated()
    return None


def training_constraints(module: nn.Module, world_size: int) -> Optional[Dict[str, ParameterConstraints]]:
    """The constraints training shards with: with several ranks the frozen SCL table is row-wise
    (fp16 frozen lookups need it, docs/sharding.md); one rank: planner's choice (None).

    `muse-rec plan` plans with the same, so its per-rank bytes are those of the training job."""
    from muse_rec.models.frozen_scl import SCL_TABLE

    if world_size > 1 and SCL_TABLE in embedding_tables(module):
        return make_constraints(module, {SCL_TABLE: ["row_wise"]})
    return None


def make_plan(
    module: nn.Module,
    topology: Topology,
    sharders: List[ModuleSharder[nn.Module]],
    constraints: Optional[Dict[str, ParameterConstraints]] = None,
    verbose: bool = False,
    dense_bytes: Optional[int] = None,
    batch_size: int = BATCH_SIZE,
) -> ShardingPlan:
    """Plan the sharding of `module` (unsharded; ``meta`` is fine, nothing is allocated).

    When a multi-rank process group exists, rank 0 plans and broadcasts, so every rank
    shards identically. Raises `PlanDoesNotFit` on every rank when nothing fits. `verbose` logs TorchRec's plan tables (printed only at INFO).
    `dense_bytes`: per-rank memory outside the embedding tables (`rank_memory.rank_overhead_bytes`),
    reserved before tables are placed; None = TorchRec's estimate from the dense parameters.
    `batch_size`: samples per rank of the largest batch the job runs (`rank_memory.planned_batch_size`).
    """
    planner = sharding_planner(module, topology, sharders, constraints, dense_bytes=dense_bytes, batch_size=batch_size)

    def plan_or_failure() -> Union[ShardingPlan, PlanDoesNotFit]:
        # Returned, not raised: with several ranks TorchRec's `collective_plan` plans on rank 0
        # only, and a raise there would leave every other rank waiting in the broadcast.
        try:
            return planner.plan(module, sharders)
        except PlannerError as e:
            return PlanDoesNotFit(planner_error_line(e))

    with planner_logging(verbose):
        if dist.is_initialized() and dist.get_world_size() > 1:
            result = invoke_on_rank_and_broadcast_result(dist.GroupMember.WORLD, 0, plan_or_failure)
        else:
            result = plan_or_failure()
    if isinstance(result, PlanDoesNotFit):
        raise result
    return result


class PlanDoesNotFit(ValueError):
    """TorchRec's planner found no sharding plan for the topology (raised on every rank)."""


def planner_error_line(e: PlannerError) -> str:
    """The first line of a `PlannerError` (what went wrong; the rest is TorchRec's storage dump)."""
    return next((ln.strip().rstrip(".") for ln in str(e).splitlines() if ln.strip()), type(e).__name__)


def planner_reservation(dense_bytes: Optional[int] = None) -> HeuristicalStorageReservation:
    """The storage reservation of TorchRec's planner: 15% of HBM + dense + KJT per rank.

    `dense_bytes` replaces TorchRec's dense estimate (6 x the dense parameters: ~3 MB for MUSE,
    while a CPU training rank at 30M items held 1.6-2.6 GiB outside its tables: `rank_memory`);
    None keeps it. On a CPU topology `dense_bytes` is `rank_memory`'s measured estimate of all a
    rank holds outside its kernels and their lookup buffers, its batches' ids included, so TorchRec's
    20 copies of a batch of ids are not reserved again (`MeasuredCPUReservation`).
    """
    return MeasuredCPUReservation(percentage=PLANNER_RESERVED_FRACTION, dense_tensor_estimate=dense_bytes or None)


class MeasuredCPUReservation(HeuristicalStorageReservation):
    """TorchRec's heuristic reservation, but on CPU with a given dense estimate only that estimate.

    TorchRec adds 20 copies (2 pipelined batches x 10) of a batch of int64 ids, a GPU pipeline's
    heuristic: for MUSE at the run's batch ~160 B per history position, while a CPU step measured
    ~350 B per position in all, ~270 of them the lookups' buffers the planner already counts per
    shard and the rest `rank_memory`'s per-position term (docs/plan.md, "Planned vs measured").
    """

    def reserve(self, topology: Topology, batch_size: int, module: nn.Module,
                sharders: List[ModuleSharder[nn.Module]],
                constraints: Optional[Dict[str, ParameterConstraints]] = None) -> Topology:
        if topology.compute_device != "cpu" or not self._dense_tensor_estimate:
            return super().reserve(topology, batch_size, module, sharders, constraints)
        reserved = copy.deepcopy(topology)
        dense = Storage(hbm=0, ddr=self._dense_tensor_estimate, ssd=0)
        for device in reserved.devices:
            device.storage -= dense
        # What TorchRec's own reservation records, for its stats tables (`--verbose`).
        self._dense_storage, self._kjt_storage = dense, Storage(hbm=0, ddr=0, ssd=0)
        return reserved


def sharding_planner(
    module: nn.Module,
    topology: Topology,
    sharders: Sequence[ModuleSharder[nn.Module]],
    constraints: Optional[Dict[str, ParameterConstraints]] = None,
    stats: Optional[List[Stats]] = None,
    dense_bytes: Optional[int] = None,
    batch_size: int = BATCH_SIZE,
) -> EmbeddingShardingPlanner:
    """The one planner configuration that training (`make_plan`) and `muse-rec plan` share,
    so the plan a report shows is the plan a run uses.

    `batch_size`: samples per rank. TorchRec sizes every shard's lookup input and output buffers and
    its reservation for input batches (20 KJT copies) with it, and costs lookups with it; left to
    itself it takes 512 (`BATCH_SIZE`) whatever the run's batch, which at L = 300,000 refused a batch
    of 8 for ~20 GiB of buffers it would never hold, and at batch 1,000 counted half of them.

    TorchRec's own enumerator (its options in a fixed order: `OrderedEmbeddingEnumerator`) and
    estimators, plus `FusedOptimizerStateEstimator`: every shard's storage includes the `sharders`'
    fused-optimizer state, so no placement overfills a rank with it.
    """
    constraints = constraints if constraints is not None else make_constraints(module)
    estimators = [
        EmbeddingPerfEstimatorFactory.create(DEFAULT_PERF_ESTIMATOR, topology=topology, constraints=constraints),
        EmbeddingStorageEstimator(topology=topology, constraints=constraints),
        FusedOptimizerStateEstimator(topology, sharders),  # after the storage estimate it adds to
    ]
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 sample per rank, got {batch_size}")
    return EmbeddingShardingPlanner(
        topology=topology,
        batch_size=batch_size,  # the storage reservation's input batches (planner.plan passes it on)
        enumerator=OrderedEmbeddingEnumerator(topology=topology, batch_size=batch_size, constraints=constraints,
                                              estimator=estimators),
        constraints=constraints,
        storage_reservation=planner_reservation(dense_bytes),
        stats=stats,
    )


@contextmanager
def planner_logging(verbose: bool) -> Iterator[None]:
    """TorchRec prints its plan tables only at INFO: raise its logger there while planning."""
    log = logging.getLogger(PLANNER_LOGGER)
    level = log.level
    if verbose:
        log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.setLevel(level)


@dataclass(frozen=True)
class TableSummary:
    """One table of a plan. Bytes: over all ranks (weights incl. replicas; fused-optimizer state)."""

    table: str
    module: str
    rows: int
    dim: int
    dtype: str
    sharding_type: str
    compute_kernel: str
    ranks: Tuple[int, ...]
    weight_bytes: int
    optimizer_bytes: int
    bytes_per_rank: Mapping[int, int]


def plan_summary(
    module: nn.Module, plan: ShardingPlan, sharders: Sequence[ModuleSharder[nn.Module]]
) -> List[TableSummary]:
    """Per-table rows, dim, dtype, sharding, kernel, ranks and bytes of `plan` for `module`."""
    optimizer_by_type = state_optimizers_by_module(sharders)
    out: List[TableSummary] = []
    for name, (path, cfg) in embedding_tables(module).items():
        module_plan = plan.get_plan_for_module(path)
        if module_plan is None or name not in module_plan:
            raise KeyError(f"plan has no entry for table {name!r} of module {path!r}")
        ps = module_plan[name]
        optim = optimizer_by_type.get(type(module.get_submodule(path)))
        elem = DATA_TYPE_NUM_BITS[cfg.data_type] // 8
        weights: Dict[int, int] = {}
        states: Dict[int, int] = {}
        shards = ps.sharding_spec.shards if ps.sharding_spec is not None else []  # type: ignore[attr-defined]
        placed = [(sh.placement.rank(), sh.shard_sizes[0], sh.shard_sizes[1]) for sh in shards]
        if not placed:  # data_parallel: a full replica on every listed rank
            placed = [(r, cfg.num_embeddings, cfg.embedding_dim) for r in ps.ranks or []]
        for rank, rows, cols in placed:
            weights[rank] = weights.get(rank, 0) + rows * cols * elem
            states[rank] = states.get(rank, 0) + state_bytes(optim, rows, cols)
        out.append(
            TableSummary(
                table=name,
                module=path,
                rows=cfg.num_embeddings,
                dim=cfg.embedding_dim,
                dtype=cfg.data_type.value,
                sharding_type=ps.sharding_type,
                compute_kernel=ps.compute_kernel,
                ranks=tuple(sorted(set(ps.ranks or weights))),
                weight_bytes=sum(weights.values()),
                optimizer_bytes=sum(states.values()),
                bytes_per_rank={r: weights[r] + states[r] for r in weights},
            )
        )
    return out


def format_ranks(ranks: Sequence[int]) -> str:
    """``0-7`` for a contiguous run of more than two ranks, else a comma list (``0,2``)."""
    rs = sorted(ranks)
    if len(rs) > 2 and rs == list(range(rs[0], rs[-1] + 1)):
        return f"{rs[0]}-{rs[-1]}"
    return ",".join(map(str, rs))


def format_summary(rows: Sequence[TableSummary]) -> str:
    """A fixed-width text table of `plan_summary` output, with a per-rank total line.

    The ranks column is never cut: a table's ranks are written whole (``0-7``), widening the row
    where a scattered list is longer than the column."""
    head = f"{'table':<12} {'rows':>12} {'dim':>4} {'dtype':>5} {'sharding':<12} {'kernel':<18} {'ranks':<12} {'GiB':>8}"
    lines = [head, "-" * len(head)]
    totals: Dict[int, int] = {}
    for r in rows:
        for rank, b in r.bytes_per_rank.items():
            totals[rank] = totals.get(rank, 0) + b
        gib = sum(r.bytes_per_rank.values()) / GiB
        lines.append(
            f"{r.table:<12} {r.rows:>12} {r.dim:>4} {r.dtype:>5} {r.sharding_type:<12} "
            f"{r.compute_kernel:<18} {format_ranks(r.ranks):<12} {gib:>8.3f}"
        )
    lines.append("per rank GiB: " + ", ".join(f"{k}: {v / GiB:.3f}" for k, v in sorted(totals.items())))
    return "\n".join(lines)

"""A sharding plan with every byte accounted: per table, per shard, per rank, and whether it fits.

`plan_report` runs TorchRec's planner exactly as training does (`planner.make_plan`: the same
sharders, constraints and storage reservation; a test checks the plans are identical) on an
unsharded model, ``meta`` included (nothing is allocated), and records the planner's own
per-shard storage estimate through a `Stats` hook. That estimate includes each shard's
fused-optimizer state (`optimizer_state.FusedOptimizerStateEstimator`: TorchRec alone does not
count the state our sharders carry; Adam on the full item table is 29 GiB), in the memory FBGEMM
keeps it in: HBM for the ``fused`` kernel on CUDA, host memory for the UVM kernels and on CPU.
The report adds:

* **Memory outside the tables.** What the planner's storage reservation sets aside per rank
  for everything but the embedding kernels (TorchRec's own estimate: dense parameters and KJTs;
  with ``dense_bytes`` from `rank_memory.spec_rank_overhead_bytes`, as training passes it: the
  process runtime, a step, the loader workers and a checkpoint's copy of the trainable tables)
  is reported as ``reserved_*_bytes``; ``predicted_*_bytes`` = tables + state + that
  reservation, the rank's whole memory.

Units: bytes everywhere; ``GiB`` = 2**30.

Example::

    report = plan_report(model_on_meta, make_topology(8, "cuda", hbm_bytes_per_rank=80 * GiB), sharders)
    print(format_report(report)); json.dumps(report_to_dict(report))
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from torch import nn
from torchrec.distributed.planner import Topology
from torchrec.distributed.planner.constants import BATCH_SIZE
from torchrec.distributed.planner.stats import EmbeddingStats
from torchrec.distributed.planner.types import ParameterConstraints, ShardingOption, Stats
from torchrec.distributed.types import ModuleSharder, ShardingPlan
from torchrec.modules.embedding_configs import DATA_TYPE_NUM_BITS

from muse_rec.distributed.optimizer_state import state_memory, state_optimizers_by_module
from muse_rec.distributed.planner import (
    PLANNER_RESERVED_FRACTION,
    GiB,
    TableSummary,
    embedding_tables,
    format_ranks,
    hosts_phrase,
    make_constraints,
    plan_summary,
    planner_logging,
    planner_reservation,
    sharding_planner,
)
from muse_rec.distributed.sharders import state_optimizer


@dataclass(frozen=True)
class ShardReport:
    """One shard: its rank, offsets/sizes (rows, cols) and the planner's storage estimate.

    ``planner_hbm_bytes``/``planner_ddr_bytes`` are the planner's numbers: weights (for a UVM cache
    the cached fraction in HBM and all rows in DDR), fused-optimizer state, lookup inputs/outputs,
    cache metadata.
    """

    rank: int
    row_offset: int
    col_offset: int
    rows: int
    cols: int
    weight_bytes: int
    planner_hbm_bytes: int
    planner_ddr_bytes: int


@dataclass(frozen=True)
class TableReport:
    """A table of the plan: `planner.TableSummary` plus its shards and where its state lives.

    ``state_memory``: where FBGEMM keeps the fused-optimizer state for this kernel: ``hbm``, ``ddr``,
    ``hbm+ddr`` (a UVM kernel's per-row moment in HBM, its per-element ones in host memory) or ``-``.
    """

    summary: TableSummary
    bytes_per_element: int
    shards: Tuple[ShardReport, ...]
    state_memory: str

    @property
    def total_bytes(self) -> int:
        """Weights + fused-optimizer state over all ranks."""
        return self.summary.weight_bytes + self.summary.optimizer_bytes


@dataclass(frozen=True)
class RankReport:
    """Memory of one rank. ``hbm_bytes``/``ddr_bytes``: the planner's estimate of its shards
    (weights, fused-optimizer state, lookup buffers); ``optimizer_bytes`` the state's share of them.

    ``usable_*``: what the planner may place there (cap minus its reservation); ``fits`` compares
    the totals with them.
    """

    rank: int
    weight_bytes: int
    optimizer_bytes: int
    hbm_bytes: int
    ddr_bytes: int
    usable_hbm_bytes: int
    usable_ddr_bytes: int
    reserved_hbm_bytes: int = 0  # the reservation's dense + KJT part (the margin percentage excluded)
    reserved_ddr_bytes: int = 0

    @property
    def fits(self) -> bool:
        return self.hbm_bytes <= self.usable_hbm_bytes and self.ddr_bytes <= self.usable_ddr_bytes

    @property
    def buffer_bytes(self) -> int:
        """What the planner's estimate holds beyond the weights and their state: the lookups' input and
        output buffers of one batch (TorchRec's pipeline I/O cost) and the HBM caches of UVM tables. Shown
        so that a rank's columns add up: HBM + DDR = weights + opt.state + buffers."""
        return self.hbm_bytes + self.ddr_bytes - self.weight_bytes - self.optimizer_bytes

    @property
    def predicted_hbm_bytes(self) -> int:
        """The rank's whole device memory: tables + state + what the reservation holds back."""
        return self.hbm_bytes + self.reserved_hbm_bytes

    @property
    def predicted_ddr_bytes(self) -> int:
        """The rank's whole host memory (on CPU, the process): tables + state + reservation."""
        return self.ddr_bytes + self.reserved_ddr_bytes


@dataclass(frozen=True)
class PlanReport:
    """A plan for one topology, with per-table and per-rank bytes. Caps are per rank."""

    world_size: int
    compute_device: str
    ranks_per_host: int
    hbm_cap_bytes: int
    ddr_cap_bytes: int
    optimizer: str
    tables: Tuple[TableReport, ...]
    ranks: Tuple[RankReport, ...]
    plan: ShardingPlan
    batch_size: int = BATCH_SIZE  # samples per rank the lookups' buffers and input batches are sized for

    @property
    def fits(self) -> bool:
        """True when every rank holds its tables and their fused-optimizer state."""
        return all(r.fits for r in self.ranks)

    def totals(self) -> Dict[str, int]:
        """Sums over ranks of every `RankReport` byte field."""
        keys = ("weight_bytes", "optimizer_bytes", "buffer_bytes", "hbm_bytes", "ddr_bytes")
        return {k: sum(getattr(r, k) for r in self.ranks) for k in keys}

    def overflow(self) -> List[str]:
        """One line per rank that does not fit, naming the memory and the bytes over."""
        out = []
        for r in self.ranks:
            for mem, used, usable in (("HBM", r.hbm_bytes, r.usable_hbm_bytes), ("DDR", r.ddr_bytes, r.usable_ddr_bytes)):
                if used > usable:
                    out.append(f"rank {r.rank}: {mem} {used / GiB:.2f} GiB > usable {usable / GiB:.2f} GiB")
        return out


class _BestPlanRecorder(Stats):
    """A planner `Stats` hook that keeps the chosen sharding options (with storage estimates)."""

    def __init__(self) -> None:
        self.best_plan: Optional[List[ShardingOption]] = None

    def log(self, sharding_plan: ShardingPlan, topology: Topology, batch_size: int, storage_reservation: Any,
            num_proposals: int, num_plans: int, run_time: float, best_plan: List[ShardingOption],
            *args: Any, **kwargs: Any) -> None:
        self.best_plan = best_plan


def usable_per_rank(
    module: nn.Module,
    topology: Topology,
    sharders: Sequence[ModuleSharder[nn.Module]],
    constraints: Optional[Dict[str, ParameterConstraints]] = None,
    dense_bytes: Optional[int] = None,
    batch_size: int = BATCH_SIZE,
) -> Tuple[int, int]:
    """(HBM, DDR) bytes per rank the planner may fill: the caps minus the planner's reservation
    (sized, as the planner's, for `batch_size` samples per rank).

    Raises TorchRec's `PlannerError` when the reservation alone exceeds the HBM cap.
    """
    reserved = planner_reservation(dense_bytes).reserve(
        topology=topology, batch_size=batch_size,
        module=module, sharders=list(sharders), constraints=constraints,
    )
    return reserved.devices[0].storage.hbm, reserved.devices[0].storage.ddr


def run_planner(
    module: nn.Module,
    topology: Topology,
    sharders: Sequence[ModuleSharder[nn.Module]],
    constraints: Optional[Dict[str, ParameterConstraints]] = None,
    verbose: bool = False,
    dense_bytes: Optional[int] = None,
    batch_size: int = BATCH_SIZE,
) -> Tuple[ShardingPlan, List[ShardingOption]]:
    """Plan like `planner.make_plan` (single process) and also return the chosen sharding options.

    `verbose` logs TorchRec's own plan tables (they print only at INFO).
    Raises TorchRec's `PlannerError` when nothing fits.
    """
    recorder = _BestPlanRecorder()
    stats: List[Stats] = [recorder] + ([EmbeddingStats()] if verbose else [])
    planner = sharding_planner(module, topology, sharders, constraints, stats=stats, dense_bytes=dense_bytes,
                               batch_size=batch_size)
    with planner_logging(verbose):
        plan = planner.plan(module, list(sharders))
    assert recorder.best_plan is not None  # the planner logs stats whenever it returns a plan
    return plan, recorder.best_plan


def plan_report(
    module: nn.Module,
    topology: Topology,
    sharders: Sequence[ModuleSharder[nn.Module]],
    constraints: Optional[Dict[str, ParameterConstraints]] = None,
    verbose: bool = False,
    dense_bytes: Optional[int] = None,
    batch_size: int = BATCH_SIZE,
) -> PlanReport:
    """Plan `module` on `topology` and account weights, optimizer state and memory per rank.

    `dense_bytes`: per-rank memory outside the tables, as training passes it (`make_plan`).
    `batch_size`: samples per rank, as training passes it (`rank_memory.planned_batch_size`).
    Raises TorchRec's `PlannerError` when the planner finds no plan (see `plan_fit.diagnose`).
    """
    constraints = constraints if constraints is not None else make_constraints(module)
    plan, options = run_planner(module, topology, sharders, constraints, verbose, dense_bytes, batch_size)
    usable_hbm, usable_ddr = usable_per_rank(module, topology, sharders, constraints, dense_bytes, batch_size)
    # The reservation without its HBM margin percentage: what the rest of the job holds.
    cap = topology.devices[0].storage
    reserved_hbm = max(0, int((1 - PLANNER_RESERVED_FRACTION) * cap.hbm) - usable_hbm)
    reserved_ddr = max(0, cap.ddr - usable_ddr)
    by_name = {o.name: o for o in options}
    optimizers = state_optimizers_by_module(sharders)
    configs = embedding_tables(module)
    tables: List[TableReport] = []
    for summary in plan_summary(module, plan, sharders):
        option = by_name[summary.table]
        elem = DATA_TYPE_NUM_BITS[configs[summary.table][1].data_type] // 8
        shards = tuple(
            ShardReport(
                rank=int(s.rank),  # type: ignore[arg-type]
                row_offset=s.offset[0], col_offset=s.offset[1], rows=s.size[0], cols=s.size[1],
                weight_bytes=s.size[0] * s.size[1] * elem,
                planner_hbm_bytes=s.storage.hbm if s.storage else 0,
                planner_ddr_bytes=s.storage.ddr if s.storage else 0,
            )
            for s in option.shards
        )
        optimizer = optimizers.get(type(module.get_submodule(summary.module)))
        tables.append(TableReport(summary=summary, bytes_per_element=elem, shards=shards,
                                  state_memory=state_memory(optimizer, topology.compute_device, summary.compute_kernel)))
    return PlanReport(
        world_size=topology.world_size,
        compute_device=topology.compute_device,
        ranks_per_host=topology.local_world_size,
        hbm_cap_bytes=topology.devices[0].storage.hbm,
        ddr_cap_bytes=topology.devices[0].storage.ddr,
        optimizer=_optimizer_name(sharders),
        tables=tuple(tables),
        ranks=_rank_reports(tables, topology.world_size, usable_hbm, usable_ddr, reserved_hbm, reserved_ddr),
        plan=plan,
        batch_size=batch_size,
    )


def _rank_reports(tables: Sequence[TableReport], world_size: int, usable_hbm: int, usable_ddr: int,
                  reserved_hbm: int = 0, reserved_ddr: int = 0) -> Tuple[RankReport, ...]:
    acc = {r: dict(weight=0, state=0, hbm=0, ddr=0) for r in range(world_size)}
    for t in tables:
        weights_on: Dict[int, int] = {}
        for s in t.shards:
            a = acc[s.rank]
            a["weight"] += s.weight_bytes
            a["hbm"] += s.planner_hbm_bytes
            a["ddr"] += s.planner_ddr_bytes
            weights_on[s.rank] = weights_on.get(s.rank, 0) + s.weight_bytes
        for rank, total in t.summary.bytes_per_rank.items():
            acc[rank]["state"] += total - weights_on.get(rank, 0)  # plan_summary's bytes = weights + state
    return tuple(
        RankReport(
            rank=r, weight_bytes=a["weight"], optimizer_bytes=a["state"], hbm_bytes=a["hbm"], ddr_bytes=a["ddr"],
            usable_hbm_bytes=usable_hbm, usable_ddr_bytes=usable_ddr,
            reserved_hbm_bytes=reserved_hbm, reserved_ddr_bytes=reserved_ddr,
        )
        for r, a in sorted(acc.items())
    )


def _optimizer_name(sharders: Sequence[ModuleSharder[nn.Module]]) -> str:
    """The fused optimizer of the trainable tables (the first sharder carrying one)."""
    for s in sharders:
        optim = state_optimizer(s)
        if optim is not None:
            return getattr(optim, "value", str(optim))
    return "none"


def report_to_dict(report: PlanReport) -> Dict[str, Any]:
    """JSON-ready form: topology, tables (with shards), ranks, totals, fits. Bytes are ints."""
    tables = []
    for t in report.tables:
        s = asdict(t.summary)
        s["ranks"] = list(t.summary.ranks)
        s["bytes_per_rank"] = {str(k): v for k, v in sorted(t.summary.bytes_per_rank.items())}
        s.update(bytes_per_element=t.bytes_per_element, total_bytes=t.total_bytes,
                 state_memory=t.state_memory,
                 planner_hbm_bytes=sum(x.planner_hbm_bytes for x in t.shards),
                 planner_ddr_bytes=sum(x.planner_ddr_bytes for x in t.shards),
                 shards=[asdict(x) for x in t.shards])
        tables.append(s)
    return {
        "world_size": report.world_size,
        "compute_device": report.compute_device,
        "ranks_per_host": report.ranks_per_host,
        "hbm_cap_bytes_per_rank": report.hbm_cap_bytes,
        "ddr_cap_bytes_per_rank": report.ddr_cap_bytes,
        "fused_optimizer": report.optimizer,
        "batch_size_per_rank": report.batch_size,
        "fits": report.fits,
        "overflow": report.overflow(),
        "tables": tables,
        "ranks": [dict(asdict(r), fits=r.fits, buffer_bytes=r.buffer_bytes, predicted_hbm_bytes=r.predicted_hbm_bytes,
                       predicted_ddr_bytes=r.predicted_ddr_bytes) for r in report.ranks],
        "totals": report.totals(),
    }


def format_report(report: PlanReport) -> str:
    """Text tables: one row per table, one per rank, a totals line and the verdict."""
    g = lambda b: f"{b / GiB:.3f}"  # noqa: E731
    head = (f"{'table':<10} {'rows':>11} {'dim':>4} {'dtype':>5} {'sharding':<17} {'kernel':<17} "
            f"{'ranks':<9} {'weights':>9} {'opt.state':>9} {'state in':>8}")
    where = hosts_phrase(report.world_size, report.ranks_per_host)
    lines = [f"plan: {report.world_size} x {report.compute_device}{where}, per rank HBM {g(report.hbm_cap_bytes)} GiB, "
             f"DDR {g(report.ddr_cap_bytes)} GiB; fused optimizer {report.optimizer}; buffers sized for a batch of "
             f"{report.batch_size:,} samples per rank  (sizes in GiB)", head, "-" * len(head)]
    for t in report.tables:
        s = t.summary
        lines.append(
            f"{s.table:<10} {s.rows:>11} {s.dim:>4} {s.dtype:>5} {s.sharding_type:<17} {s.compute_kernel:<17} "
            f"{format_ranks(s.ranks):<9} {g(s.weight_bytes):>9} {g(s.optimizer_bytes):>9} {t.state_memory:>8}"
        )
    rhead = (f"{'rank':>4} {'weights':>9} {'opt.state':>9} {'buffers':>9} {'HBM':>9} {'HBM usable':>10} "
             f"{'DDR':>9} {'DDR usable':>10}  fits")
    lines += ["", rhead, "-" * len(rhead)]
    for r in report.ranks:
        lines.append(
            f"{r.rank:>4} {g(r.weight_bytes):>9} {g(r.optimizer_bytes):>9} {g(r.buffer_bytes):>9} "
            f"{g(r.hbm_bytes):>9} {g(r.usable_hbm_bytes):>10} {g(r.ddr_bytes):>9} "
            f"{g(r.usable_ddr_bytes):>10}  {'yes' if r.fits else 'NO'}"
        )
    tot = report.totals()
    lines.append(f"{'all':>4} {g(tot['weight_bytes']):>9} {g(tot['optimizer_bytes']):>9} {g(tot['buffer_bytes']):>9} "
                 f"{g(tot['hbm_bytes']):>9} {'':>10} {g(tot['ddr_bytes']):>9}")
    # Without it a rank's HBM was weights + opt.state + an unnamed ~0.13 GiB (the full release on 8 GPUs).
    lines.append("HBM + DDR = weights + opt.state + buffers (TorchRec's estimate of the lookups' input and output "
                 f"buffers of one batch of {report.batch_size:,} samples, and the HBM caches of UVM tables)")
    r0 = report.ranks[0] if report.ranks else None
    if r0 is not None and (r0.reserved_hbm_bytes or r0.reserved_ddr_bytes):
        # On CPU the reservation is this project's measured rank overhead; elsewhere TorchRec's own estimate.
        what = ("runtime, activations, loader, dense state, checkpoint copy" if report.compute_device == "cpu" else
                f"TorchRec's estimate of the dense parameters and input batches, beside its {PLANNER_RESERVED_FRACTION:.0%} "
                "HBM margin")
        lines.append(f"outside the tables (planner's reservation: {what}) "
                     f"per rank: HBM {g(r0.reserved_hbm_bytes)}, DDR {g(r0.reserved_ddr_bytes)} GiB; predicted per rank "
                     + ", ".join(f"{r.rank}: HBM {g(r.predicted_hbm_bytes)} DDR {g(r.predicted_ddr_bytes)}"
                                 for r in report.ranks[:8]) + (" ..." if len(report.ranks) > 8 else ""))
    lines.append("verdict: fits" if report.fits else "verdict: DOES NOT FIT (" + "; ".join(report.overflow()) + ")")
    return "\n".join(lines)


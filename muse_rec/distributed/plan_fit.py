"""Will it fit? Plans over a range of world sizes, and a diagnosis with what would fit when not.

A `PlanSetup` is a topology minus its world size (device, memory per rank, whether UVM kernels
are allowed). `what_if` plans one setup for many world sizes; `diagnose` explains a failure:
which tables, how big, and what would fit instead: the minimum world size at the same memory
per rank, UVM caching (when it was off), and the largest item vocabulary that fits.

"Fits" always means `PlanReport.fits`: the planner found a plan, its shards' fused-optimizer
state included (`optimizer_state`), within what every rank may fill. Searches assume fitting is
monotone in the world size and in the item rows (more ranks / fewer rows never hurt); TorchRec's
greedy placement does not promise it, but each world size and vocabulary is planned with its own
reservation (`PlanSetup.rank_overhead`), so no search step reuses another one's figure.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from torch import nn
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.planner import Topology
from torchrec.distributed.planner.constants import BATCH_SIZE
from torchrec.distributed.planner.types import ParameterConstraints, PlannerError
from torchrec.distributed.types import ModuleSharder

from muse_rec.distributed.plan_report import PlanReport, plan_report, usable_per_rank
from muse_rec.distributed.planner import (PLANNER_RESERVED_FRACTION, GiB, hosts_phrase,
                                          make_constraints, make_topology, planner_error_line, rank_memory_line,
                                          ranks_per_host, training_constraints)
from muse_rec.memory import format_gib

# Memory per rank of the "unbounded" topology: sizes tables, and measures an HBM overdraft, without a real limit.
_UNBOUNDED_BYTES = 1 << 60
ModelFactory = Callable[[Mapping[str, int]], nn.Module]


@dataclass(frozen=True)
class PlanSetup:
    """Everything about the hardware but the world size.

    Attributes:
        compute_device: ``cuda`` or ``cpu``.
        hbm_bytes_per_rank: device memory per rank; None = TorchRec's default.
        ddr_bytes_per_rank: host memory per rank; None = TorchRec's default.
        allow_uvm: False restricts every table to the ``fused`` kernel (rows in HBM on CUDA):
            no ``fused_uvm``/``fused_uvm_caching``.
        dense_bytes: per-rank memory outside the tables for the planner's reservation, as
            training passes it (`rank_memory.rank_overhead_bytes`); None = TorchRec's estimate.
        rank_overhead: the same as a function of the model planned and the world size, which wins
            over `dense_bytes` when given: on CPU a rank's share of the checkpoint's copy of the
            tables shrinks with more ranks and fewer rows (`rank_memory.spec_rank_overhead_bytes`),
            so a search over world sizes or vocabularies must not reuse one plan's figure.
        ranks_per_host: ranks on one host, at most; a world size it does not divide gets equal
            hosts of fewer (`planner.ranks_per_host`). None = CUDA hosts of up to 8 GPUs, CPU one host.
        batch_size: samples per rank of the job's largest batch (`rank_memory.planned_batch_size`):
            what TorchRec sizes the lookups' buffers and its input-batch reservation with.
    """

    compute_device: str = "cuda"
    hbm_bytes_per_rank: Optional[int] = None
    ddr_bytes_per_rank: Optional[int] = None
    allow_uvm: bool = True
    dense_bytes: Optional[int] = None
    ranks_per_host: Optional[int] = None
    rank_overhead: Optional[Callable[[nn.Module, int], Optional[int]]] = None
    batch_size: int = BATCH_SIZE

    def dense_bytes_at(self, module: nn.Module, world_size: int) -> Optional[int]:
        """Per-rank memory outside the tables of `module` at `world_size` (see `rank_overhead`)."""
        return self.rank_overhead(module, world_size) if self.rank_overhead is not None else self.dense_bytes

    def local_world_size(self, world_size: int) -> int:
        return ranks_per_host(world_size, self.compute_device, self.ranks_per_host)

    def topology(self, world_size: int) -> Topology:
        return make_topology(world_size, self.compute_device, self.local_world_size(world_size),
                             hbm_bytes_per_rank=self.hbm_bytes_per_rank, ddr_bytes_per_rank=self.ddr_bytes_per_rank)

    def constraints(self, module: nn.Module, world_size: int = 1) -> Dict[str, ParameterConstraints]:
        """Training's constraints at `world_size` (`planner.training_constraints`: a row-wise SCL
        table on several ranks), narrowed to the ``fused`` kernel when UVM is off."""
        constraints = training_constraints(module, world_size) or make_constraints(module)
        if not self.allow_uvm:
            for c in constraints.values():
                c.compute_kernels = [EmbeddingComputeKernel.FUSED.value]
        return constraints

    def memory(self) -> str:
        """``HBM 80 GiB, DDR 512 GiB per rank[, UVM off]`` (the caps TorchRec plans with)."""
        uvm = "" if self.allow_uvm else ", UVM off"
        return rank_memory_line(self.topology(1)) + uvm

    def describe(self, world_size: int) -> str:
        """``16 x cuda on 2 hosts of 8 (HBM 80 GiB, ...)``; one host goes unsaid."""
        where = hosts_phrase(world_size, self.local_world_size(world_size))
        return f"{world_size} x {self.compute_device}{where} ({self.memory()})"


@dataclass(frozen=True)
class Attempt:
    """One world size tried: the report when the planner found a plan, else its error line."""

    world_size: int
    report: Optional[PlanReport]
    error: Optional[str]

    @property
    def fits(self) -> bool:
        return self.report is not None and self.report.fits

    @property
    def reason(self) -> str:
        """Why it does not fit ('' when it does)."""
        if self.error:
            return self.error
        return "" if self.fits else "; ".join(self.report.overflow())  # type: ignore[union-attr]


def attempt(module: nn.Module, setup: PlanSetup, world_size: int,
            sharders: Sequence[ModuleSharder[nn.Module]], verbose: bool = False) -> Attempt:
    """Plan `module` on `setup` at `world_size`; a planner failure becomes ``Attempt.error``."""
    try:
        report = plan_report(module, setup.topology(world_size), sharders, setup.constraints(module, world_size),
                             verbose, setup.dense_bytes_at(module, world_size), setup.batch_size)
    except PlannerError as e:
        return Attempt(world_size, None, f"TorchRec planner: {planner_error_line(e)}")
    return Attempt(world_size, report, None)


@dataclass(frozen=True)
class WhatIfRow:
    """One world size of the what-if table.

    ``big_tables``: (table, sharding type, kernel) of the largest tables; ``max_*_bytes``: the
    most loaded rank's HBM / DDR including fused-optimizer state (0 when no plan);
    ``ranks_per_host``: the hosts this row was planned on (`PlanSetup.local_world_size`: a world
    size that ``--local-world-size`` does not divide gets hosts of fewer ranks; 0 = not said).
    """

    world_size: int
    fits: bool
    big_tables: Tuple[Tuple[str, str, str], ...]
    max_hbm_bytes: int
    max_ddr_bytes: int
    reason: str
    ranks_per_host: int = 0


def what_if(module: nn.Module, setup: PlanSetup, world_sizes: Sequence[int],
            sharders: Sequence[ModuleSharder[nn.Module]], big_tables: int = 2) -> List[WhatIfRow]:
    """Plan `setup` at each world size; `big_tables` = how many of the largest tables to show."""
    rows = []
    for ws in world_sizes:
        a = attempt(module, setup, ws, sharders)
        big: Tuple[Tuple[str, str, str], ...] = ()
        hbm = ddr = 0
        if a.report is not None:
            largest = sorted(a.report.tables, key=lambda t: -t.total_bytes)[:big_tables]
            big = tuple((t.summary.table, t.summary.sharding_type, t.summary.compute_kernel) for t in largest)
            hbm = max(r.hbm_bytes for r in a.report.ranks)
            ddr = max(r.ddr_bytes for r in a.report.ranks)
        rows.append(WhatIfRow(ws, a.fits, big, hbm, ddr, a.reason, setup.local_world_size(ws)))
    return rows


def format_what_if(rows: Sequence[WhatIfRow]) -> str:
    head = (f"{'ranks':>5} {'hosts':>8} {'fits':<4} {'max HBM/rank':>12} {'max DDR/rank':>12}  "
            "largest tables (sharding/kernel)")
    lines = [head, "-" * len(head)]
    for r in rows:
        tables = ", ".join(f"{t}: {s}/{k}" for t, s, k in r.big_tables) or r.reason
        if r.big_tables and not r.fits:
            tables += f"  [{r.reason}]"
        # The hosts a row was planned on: TorchRec keeps table_row_wise shards inside one host, so
        # a row of hosts of 1 (11 ranks under --local-world-size 8) can hold more than its neighbours.
        per = r.ranks_per_host
        hosts = "?" if per <= 0 else ("1" if per >= r.world_size else f"{r.world_size // per}x{per}")
        lines.append(f"{r.world_size:>5} {hosts:>8} {'yes' if r.fits else 'NO':<4} {r.max_hbm_bytes / GiB:>12.2f} "
                     f"{r.max_ddr_bytes / GiB:>12.2f}  {tables}")
    return "\n".join(lines)


def table_bytes(module: nn.Module, setup: PlanSetup, sharders: Sequence[ModuleSharder[nn.Module]]) -> PlanReport:
    """A 1-rank plan with unbounded memory: per-table weights and optimizer state, no limit in play."""
    big = replace(setup, hbm_bytes_per_rank=_UNBOUNDED_BYTES, ddr_bytes_per_rank=_UNBOUNDED_BYTES)
    return plan_report(module, big.topology(1), sharders, setup.constraints(module), dense_bytes=setup.dense_bytes_at(module, 1),
                       batch_size=setup.batch_size)


def min_world_size(module: nn.Module, setup: PlanSetup, sharders: Sequence[ModuleSharder[nn.Module]],
                   total_bytes: int, limit: int, start: int = 1) -> Optional[Attempt]:
    """The smallest world size in [`start`, `limit`] that fits (its `Attempt`), or None.

    Starts at a true lower bound, `total_bytes` (weights + state) over the raw memory per rank
    that may hold rows (or `start` when larger), then doubles and bisects.
    """
    storage = setup.topology(1).devices[0].storage
    if setup.compute_device != "cuda":
        per_rank = storage.ddr
    else:
        per_rank = storage.hbm + (storage.ddr if setup.allow_uvm else 0)
    lo = max(start, math.ceil(total_bytes / max(per_rank, 1)))
    if lo > limit:
        return None
    failed, hi = lo - 1, lo
    found: Optional[Attempt] = None
    while hi <= limit:
        a = attempt(module, setup, hi, sharders)
        if a.fits:
            found = a
            break
        failed, hi = hi, hi * 2
    if found is None:
        a = attempt(module, setup, limit, sharders) if failed < limit else None
        if a is None or not a.fits:
            return None
        found = a
    while found.world_size - failed > 1:  # bisect (failed, found]
        mid = (failed + found.world_size) // 2
        a = attempt(module, setup, mid, sharders)
        if a.fits:
            found = a
        else:
            failed = mid
    return found


def max_rows_that_fit(build_model: ModelFactory, vocab_sizes: Mapping[str, int], table: str, setup: PlanSetup,
                      world_size: int, sharders: Sequence[ModuleSharder[nn.Module]],
                      rel_tolerance: float = 0.02) -> int:
    """The largest row count of `table` (others unchanged) that fits, within `rel_tolerance`; 0 = none."""
    def fits(rows: int) -> bool:
        sizes = dict(vocab_sizes, **{table: rows})
        return attempt(build_model(sizes), setup, world_size, sharders).fits

    lo, hi = 0, int(vocab_sizes[table])  # fits(lo) assumed, fits(hi) known False
    step = max(1, int(hi * rel_tolerance))
    while hi - lo > step:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(max(mid, 1)) else (lo, mid)
    return lo


@dataclass(frozen=True)
class FitDiagnosis:
    """Why a setup does not fit at a world size, and what would.

    Attributes:
        tables: (name, rows, dim, dtype, weight bytes, optimizer-state bytes), largest first.
        usable_bytes_per_rank: memory per rank the planner may fill with rows (HBM without
            UVM on CUDA, HBM + DDR with it, DDR on CPU).
        min_fit: the smallest fitting world size at the same memory per rank (None: > limit).
        uvm_fit: when UVM was off, the smallest fitting world size with UVM on.
        max_rows: the largest rows of `scaled_table` that fit at this world size.
        reserved_bytes_per_rank: what the planner reserves per rank before any row (the job's
            memory outside the tables, `PlanSetup.dense_bytes_at`, plus TorchRec's margins); when it
            alone exceeds the memory, no vocabulary fits and that search is skipped; more ranks are
            searched only where the reservation shrinks with them (`PlanSetup.rank_overhead`).
    """

    setup: PlanSetup
    world_size: int
    reason: str
    tables: Tuple[Tuple[str, int, int, str, int, int], ...]
    usable_bytes_per_rank: int
    limit: int
    min_fit: Optional[Attempt]
    uvm_fit: Optional[Attempt]
    scaled_table: str
    max_rows: Optional[int]
    reserved_bytes_per_rank: int = 0

    def message(self) -> str:
        g = format_gib
        total = sum(w + s for *_, w, s in self.tables)
        lines = [f"no plan fits on {self.setup.describe(self.world_size)}: {self.reason}",
                 "tables (weights + fused-optimizer state):"]
        for name, rows, dim, dtype, w, s in self.tables[:4]:
            lines.append(f"  {name}: {rows:,} rows x {dim} {dtype} = {g(w)}" + (f" + {g(s)} state" if s else ""))
        if self.usable_bytes_per_rank <= 0:
            # The reservation is per rank and comes first. More ranks or fewer rows help only where it
            # holds a share of the tables (a CPU rank's share of the checkpoint's copy).
            where = "of its HBM " if self.setup.compute_device == "cuda" else ""
            held = ("runtime, a step's batch x seq_len working set, loader workers, the dense layers' training state, "
                    "a checkpoint's copy" if self.setup.compute_device == "cpu" else
                    "TorchRec's estimate of the dense parameters and input batches")
            lines += [f"  all tables: {g(total)}; but each rank reserves {g(self.reserved_bytes_per_rank)} {where}outside "
                      f"the tables ({held}), "
                      f"more than its memory ({self.setup.memory()})",
                      "what would fit:"]
            if self.min_fit is not None:
                lines.append(f"  - more ranks (each holds a smaller share of the checkpoint's copy): "
                             f"{self.setup.describe(self.min_fit.world_size)}")
            if self.max_rows is not None:
                lines.append(f"  - a smaller {self.scaled_table} vocabulary (a smaller checkpoint copy): at most "
                             f"~{self.max_rows:,} rows fit on {self.setup.describe(self.world_size)}")
            lines.append("  - a smaller working set per rank: lower train.batch_size, train.eval_batch_size, data.seq_len "
                         "or data.num_workers, or a narrower model.tower_hidden"
                         + ("" if self.min_fit is not None else " (more ranks do not shrink it)") + ", or more memory per rank")
            return "\n".join(lines)
        usable = self.usable_bytes_per_rank * self.world_size
        culprits, acc = [], 0
        for name, *_, w, s in self.tables:
            culprits.append(name)
            acc += w + s
            if acc > usable:
                break
        lines.append(f"  all tables: {g(total)}; {self.world_size} rank(s) offer {g(usable)} for rows"
                     + (f": {' + '.join(culprits)} ({g(acc)}) already {'exceeds' if len(culprits) == 1 else 'exceed'} it"
                        if acc > usable else
                        " (enough in sum: the planner could not partition the tables)"))
        lines.append("what would fit:")
        if self.min_fit is not None:
            lines.append(f"  - more ranks: {self.setup.describe(self.min_fit.world_size)}")
        else:
            lines.append(f"  - more ranks: nothing up to {self.limit} ranks at this memory per rank")
        if not self.setup.allow_uvm:
            uvm = replace(self.setup, allow_uvm=True)
            lines.append("  - UVM caching (rows in host memory, a cache in HBM): "
                         + (f"{uvm.describe(self.uvm_fit.world_size)}" if self.uvm_fit else f"nothing up to {self.limit} ranks"))
        if self.max_rows is not None:
            lines.append(f"  - a smaller {self.scaled_table} vocabulary: at most ~{self.max_rows:,} rows fit on "
                         f"{self.setup.describe(self.world_size)} (a frequency cut-off, like the p90 vocabulary)")
        return "\n".join(lines)


def _usable_per_rank_signed(module: nn.Module, setup: PlanSetup, world_size: int,
                            sharders: Sequence[ModuleSharder[nn.Module]]) -> Tuple[int, int]:
    """(HBM, DDR) bytes per rank the planner may fill, HBM negative by what the reservation
    overdraws it (e.g. a tower too wide for one GPU). TorchRec raises instead of returning a
    negative figure, so an overdraft is measured under a cap it cannot reach and carried back to
    the real cap: the reservation is PLANNER_RESERVED_FRACTION of the cap plus fixed bytes."""
    args = (sharders, setup.constraints(module, world_size), setup.dense_bytes_at(module, world_size), setup.batch_size)
    try:
        return usable_per_rank(module, setup.topology(world_size), *args)
    except PlannerError:
        cap = setup.topology(1).devices[0].storage.hbm
        roomy = replace(setup, hbm_bytes_per_rank=_UNBOUNDED_BYTES)
        probe = roomy.topology(1).devices[0].storage.hbm
        try:
            hbm, ddr = usable_per_rank(module, roomy.topology(world_size), *args)
        except PlannerError:  # beyond even the probe: name at least that much
            hbm, ddr = 0, roomy.topology(1).devices[0].storage.ddr
        return hbm - round((1.0 - PLANNER_RESERVED_FRACTION) * (probe - cap)), ddr


def diagnose(build_model: ModelFactory, vocab_sizes: Mapping[str, int], setup: PlanSetup, world_size: int,
             sharders: Sequence[ModuleSharder[nn.Module]], failed: Attempt, limit: int = 128,
             scaled_table: str = "item") -> FitDiagnosis:
    """Explain `failed` (an `Attempt` that does not fit) and search what would fit (see module doc).

    Args:
        build_model: vocab sizes -> the unsharded model (``meta``), rebuilt for row searches.
        limit: the largest world size the searches try.
        scaled_table: the table whose rows the vocabulary search shrinks (skipped if not in `vocab_sizes`).
    """
    module = build_model(vocab_sizes)
    sized = table_bytes(module, setup, sharders)
    tables = tuple(sorted(
        ((t.summary.table, t.summary.rows, t.summary.dim, t.summary.dtype, t.summary.weight_bytes,
          t.summary.optimizer_bytes) for t in sized.tables),
        key=lambda x: -(x[4] + x[5]),
    ))
    total = sum(w + s for *_, w, s in tables)
    raw = setup.topology(1).devices[0].storage
    hbm, ddr = _usable_per_rank_signed(module, setup, world_size, sharders)
    if setup.compute_device != "cuda":
        usable, reserved = max(0, ddr), raw.ddr - ddr
    elif hbm < 0:  # TorchRec plans no table, UVM or not, once the reservation overdraws HBM
        usable, reserved = 0, raw.hbm - hbm
    else:
        usable = hbm + (max(0, ddr) if setup.allow_uvm else 0)
        reserved = raw.hbm - hbm + (raw.ddr - ddr if setup.allow_uvm else 0)
    if usable <= 0:
        # A reservation that depends on the world size and the tables (a CPU rank's share of the
        # checkpoint's copy) may shrink below the memory with more ranks or fewer rows; a fixed one cannot.
        min_fit = max_rows = None
        if setup.rank_overhead is not None:
            min_fit = min_world_size(module, setup, sharders, total, limit, start=world_size + 1)
            if scaled_table in vocab_sizes:
                max_rows = max_rows_that_fit(build_model, vocab_sizes, scaled_table, setup, world_size, sharders) or None
        return FitDiagnosis(setup, world_size, failed.reason, tables, 0, limit, min_fit, None, scaled_table, max_rows,
                            reserved)
    min_fit = min_world_size(module, setup, sharders, total, limit)
    uvm_fit = None
    if not setup.allow_uvm:
        uvm_fit = min_world_size(module, replace(setup, allow_uvm=True), sharders, total, limit)
    max_rows = None
    if scaled_table in vocab_sizes:
        max_rows = max_rows_that_fit(build_model, vocab_sizes, scaled_table, setup, world_size, sharders)
    return FitDiagnosis(setup, world_size, failed.reason, tables, usable, limit, min_fit, uvm_fit,
                        scaled_table, max_rows, reserved)

"""`muse-rec plan`: TorchRec's planner on the meta device at the real Taobao-MM scale.

The byte checks are computed independently of the code under test: rows x dim x bytes per
element from the spec's vocab sizes, and FBGEMM's fused-optimizer state per row (Adam: two
fp32 moments of the row's width; exact_row_wise_adagrad: one fp32 per row; exact_sgd: none).
"""
from __future__ import annotations

import json
import subprocess
import warnings
from pathlib import Path

import pytest
import torch

from muse_rec.cli import main
from muse_rec.cli.plan import parse_world_sizes
from muse_rec.distributed.plan_fit import PlanSetup, attempt
from muse_rec.distributed.plan_report import plan_report
from muse_rec.distributed.planner import GiB, make_plan
from muse_rec.distributed.rank_memory import planned_batch_size, rank_overhead_bytes, spec_rank_overhead_bytes
from muse_rec.distributed.sharders import FusedOptimizerConfig, make_sharders
from muse_rec.models.ctr_model import build_train_model
from muse_rec.models.sparse_arch import REQUIRED_TABLES
from muse_rec.spec import load_spec
from tests.conftest import subprocess_env, venv_bin

REPO = Path(__file__).resolve().parents[2]
FULL = "specs/taobao_mm_full/muse.yaml"
P90 = "specs/taobao_mm_p90/muse.yaml"
SCL_DIM = 128
# Fused-optimizer state bytes per row of width d (FBGEMM keeps fp32 state).
STATE_PER_ROW = {"adam": lambda d: 8 * d, "exact_row_wise_adagrad": lambda d: 4, "exact_sgd": lambda d: 0}

warnings.filterwarnings("ignore", category=FutureWarning)


def _plan_cli(*args: str) -> subprocess.CompletedProcess:
    """Through the installed console script (what a user runs)."""
    return subprocess.run([venv_bin("muse-rec"), "plan", *args], capture_output=True, text=True, cwd=REPO,
                          env=subprocess_env(), timeout=300)


def _plan_inproc(capsys, monkeypatch, *args: str) -> subprocess.CompletedProcess:
    """The same command line in this process (skips ~5 s of torchrec import per call)."""
    monkeypatch.chdir(REPO)
    try:
        code = main(["plan", *args])
    except SystemExit as e:  # argparse's usage error (exit 2), as the console script ends
        code = e.code
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def _expected_tables(spec_path: str, optimizer: str):
    """name -> (rows, dim, bytes per element, optimizer) from the spec alone."""
    spec = load_spec(REPO / spec_path)
    sizes, m = spec.data.vocab_sizes, spec.model
    out = {t: (sizes[t], m.small_dim if t in m.small_features else m.embedding_dim, 4, optimizer) for t in REQUIRED_TABLES}
    out["scl"] = (sizes["item"], SCL_DIM, 2, "exact_sgd")  # frozen fp16, stateless
    return out


def _model(spec_path: str, overrides=()):
    spec = load_spec(REPO / spec_path, overrides)
    return build_train_model(spec.model, spec.data.vocab_sizes, seq_len=spec.data.seq_len, device=torch.device("meta"))


def _dense_state_bytes(spec_path: str, overrides=()) -> int:
    """fp32 weight + gradient + AdamW's two moments (16 bytes) per parameter outside the ID tables."""
    model = _model(spec_path, overrides)
    return 16 * sum(p.numel() for name, p in model.named_parameters() if "sparse_arch" not in name)


def test_specs_carry_the_published_sizes():
    full, p90 = (load_spec(REPO / s).data.vocab_sizes for s in (FULL, P90))
    assert full["item"] == 243_363_020 + 1 and p90["item"] == 35_458_498 + 1
    for sizes in (full, p90):
        assert sizes["user_id"] == 6_929_671 + 1 and sizes["category"] == 26_397 + 1
        assert set(sizes) == set(REQUIRED_TABLES)


def test_full_vocabulary_on_8_h100_plans_and_accounts_every_byte(tmp_path):
    out = _plan_cli("--spec", FULL, "--world-size", "8", "--device", "cuda", "--hbm-gib", "80", "--ddr-gib", "512",
                    "--json", str(tmp_path / "plan.json"))
    assert out.returncode == 0, out.stderr
    assert "verdict: fits" in out.stdout and "scl" in out.stdout
    doc = json.loads((tmp_path / "plan.json").read_text())
    plan = doc["plan"]
    assert doc["fits"] is True and plan["world_size"] == 8 and plan["fused_optimizer"] == "adam"
    assert plan["hbm_cap_bytes_per_rank"] == 80 * GiB and plan["ddr_cap_bytes_per_rank"] == 512 * GiB

    want = _expected_tables(FULL, "adam")
    tables = {t["table"]: t for t in plan["tables"]}
    assert set(tables) == set(want)  # every table placed
    total_weights = total_state = 0
    for name, (rows, dim, elem, optim) in want.items():
        t = tables[name]
        weights, state = rows * dim * elem, rows * STATE_PER_ROW[optim](dim)
        assert (t["rows"], t["dim"], t["bytes_per_element"]) == (rows, dim, elem), name
        assert t["weight_bytes"] == weights and t["optimizer_bytes"] == state, name
        # The shards tile the table exactly, on valid ranks.
        assert sum(s["rows"] * s["cols"] for s in t["shards"]) == rows * dim, name
        assert sum(s["weight_bytes"] for s in t["shards"]) == weights, name
        assert {s["rank"] for s in t["shards"]} <= set(range(8)) and t["shards"], name
        assert sum(t["bytes_per_rank"].values()) == weights + state, name
        # The planner's estimate covers the rows it placed and their fused-optimizer state.
        assert t["planner_hbm_bytes"] + t["planner_ddr_bytes"] >= weights + state, name
        total_weights += weights
        total_state += state

    ranks, totals = plan["ranks"], plan["totals"]
    assert [r["rank"] for r in ranks] == list(range(8))
    assert totals["weight_bytes"] == total_weights and totals["optimizer_bytes"] == total_state
    for key, value in totals.items():  # per-rank sums equal the totals
        assert sum(r[key] for r in ranks) == value, key
    # The ranks' memory is the planner's own estimate, state included (nothing added after planning).
    assert totals["hbm_bytes"] + totals["ddr_bytes"] == sum(t["planner_hbm_bytes"] + t["planner_ddr_bytes"]
                                                            for t in plan["tables"])
    assert all(r["fits"] and r["hbm_bytes"] <= r["usable_hbm_bytes"] < 80 * GiB for r in ranks)


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_each_ranks_columns_add_up(tmp_path, device):
    """A rank's HBM was weights + opt.state + an unnamed ~0.13 GiB on the full release (8 GPUs; the lookups'
    I/O buffers in TorchRec's estimate), DDR the same on CPU: the printed columns did not add up. A buffers
    column now holds the rest, in the text (3 decimals: 4 rounded terms, so within 4 x 0.0005 GiB) and,
    exactly, in the JSON."""
    out = _plan_cli("--spec", FULL, "--world-size", "8", "--device", device, "--hbm-gib", "80", "--ddr-gib", "512",
                    "--json", str(tmp_path / "plan.json"))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.split()[:1] == ["rank"])
    assert lines[head].split()[:5] == ["rank", "weights", "opt.state", "buffers", "HBM"], lines[head]
    rows = [ln.split() for ln in lines[head + 2:head + 10]]
    assert [int(r[0]) for r in rows] == list(range(8))
    for r in rows:
        weights, state, buffers, hbm, ddr = (float(r[i]) for i in (1, 2, 3, 4, 6))
        assert buffers > 0 and abs(hbm + ddr - (weights + state + buffers)) <= 4 * 0.0005, r
    for r in json.loads((tmp_path / "plan.json").read_text())["plan"]["ranks"]:
        assert r["hbm_bytes"] + r["ddr_bytes"] == r["weight_bytes"] + r["optimizer_bytes"] + r["buffer_bytes"], r
        assert r["buffer_bytes"] > 0, r


def test_the_plan_does_not_depend_on_the_hash_seed(tmp_path):
    # TorchRec's enumerator lists a table's sharding types through a set: under PYTHONHASHSEED 1 the user
    # tables came out `table_wise` and under 2 `table_column_wise` (equal cost, the first listed wins).
    plans = []
    for seed in ("1", "2"):
        out = subprocess.run([venv_bin("muse-rec"), "plan", "--spec", FULL, "--world-size", "8", "--device", "cuda",
                              "--hbm-gib", "80", "--json", str(tmp_path / f"plan{seed}.json")],
                             capture_output=True, text=True, cwd=REPO, env=subprocess_env(PYTHONHASHSEED=seed),
                             timeout=300)
        assert out.returncode == 0, out.stderr
        plan = json.loads((tmp_path / f"plan{seed}.json").read_text())["plan"]
        plans.append({t["table"]: (t["sharding_type"], sorted((s["rank"], s["rows"], s["cols"]) for s in t["shards"]))
                      for t in plan["tables"]})
    assert plans[0] == plans[1]
    # Ties go to the simplest name: a table on one rank is `table_wise`.
    assert {plans[0][t][0] for t in ("user_id", "user_f1", "item_f213")} == {"table_wise"}


def test_report_plan_is_the_plan_training_gets():
    # shard_model plans with planner.make_plan: the report must show that very plan.
    model = _model(FULL)
    sharders = make_sharders(FusedOptimizerConfig(name="adam"), "cuda")
    topology = PlanSetup("cuda", 24 * GiB, 256 * GiB).topology(2)
    report = plan_report(model, topology, sharders)
    reference = make_plan(model, topology, sharders)
    assert set(report.plan.plan) == set(reference.plan)
    for module, params in reference.plan.items():
        for table, ps in params.items():  # type: ignore[union-attr]
            got = report.plan.plan[module][table]  # type: ignore[index]
            assert (got.sharding_type, got.compute_kernel, got.ranks) == (ps.sharding_type, ps.compute_kernel, ps.ranks)
            assert str(got.sharding_spec) == str(ps.sharding_spec), table


def test_what_if_over_world_sizes(capsys, monkeypatch):
    out = _plan_inproc(capsys, monkeypatch, "--spec", FULL, "--world-size", "2", "--what-if", "1-2,16", "--json", "-")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    rows = doc["what_if"]
    assert [r["world_size"] for r in rows] == [1, 2, 16]
    for r in rows:
        assert r["fits"] is True and r["max_hbm_bytes"] > 0
        assert {t["table"] for t in r["big_tables"]} == {"scl", "item"}  # the two largest tables
    # The what-if row at the main world size is the main plan.
    assert rows[1]["max_hbm_bytes"] == max(r["hbm_bytes"] for r in doc["plan"]["ranks"])
    # More ranks spread the rows: the most loaded rank at 16 holds far less than at 2.
    assert rows[2]["max_hbm_bytes"] < rows[1]["max_hbm_bytes"] / 4
    assert "what if" in out.stderr  # the text goes to stderr when JSON takes stdout


def test_too_small_topology_says_what_would_fit(tmp_path):
    out = _plan_cli("--spec", FULL, "--world-size", "1", "--hbm-gib", "16", "--no-uvm", "--json", str(tmp_path / "f.json"))
    assert out.returncode == 1
    err = out.stderr
    assert "no plan fits on 1 x cuda" in err and "UVM off" in err
    assert "scl: 243,363,021 rows x 128 FP16" in err and "item: 243,363,021 rows x 16 FP32" in err
    assert "more ranks:" in err and "UVM caching" in err and "smaller item vocabulary" in err
    doc = json.loads((tmp_path / "f.json").read_text())
    diag = doc["diagnosis"]
    assert doc["fits"] is False and doc["plan"] is None
    assert diag["min_world_size_with_uvm"] == 1  # UVM caching fits on the same single GPU
    n = diag["min_world_size"]
    assert isinstance(n, int) and n > 1
    # The claim holds: n ranks of 16 GiB fit, n - 1 do not.
    model = _model(FULL)
    sharders = make_sharders(FusedOptimizerConfig(name="adam"), "cuda")
    setup = PlanSetup("cuda", 16 * GiB, 512 * GiB, allow_uvm=False)
    assert attempt(model, setup, n, sharders).fits
    assert not attempt(model, setup, n - 1, sharders).fits
    max_item = diag["max_rows"]["item"]
    assert 0 < max_item < 243_363_021


def test_the_planner_places_rows_with_their_fused_optimizer_state():
    """p90 on one 16 GiB GPU, rows in HBM: the weights (~11 GiB) fit the 13.6 GiB the planner may fill,
    with Adam's two moments on the item table (+4.2 GiB) they do not. TorchRec's planner alone counts no
    state for our sharders and placed them; with `FusedOptimizerStateEstimator` it refuses."""
    model = _model(P90)
    sharders = make_sharders(FusedOptimizerConfig(name="adam"), "cuda")
    a = attempt(model, PlanSetup("cuda", 16 * GiB, 512 * GiB, allow_uvm=False), 1, sharders)
    assert a.report is None and not a.fits and a.error.startswith("TorchRec planner:"), a.error
    # Exact: each shard's estimate is TorchRec's plus rows x the optimizer's state per row, where it lives.
    roomy = attempt(model, PlanSetup("cuda", 80 * GiB, 512 * GiB, allow_uvm=False), 1, sharders)
    item = next(t for t in roomy.report.tables if t.summary.table == "item")
    assert item.summary.optimizer_bytes == 35_458_499 * 8 * 16 and item.state_memory == "hbm"
    assert sum(s.planner_hbm_bytes for s in item.shards) >= item.summary.weight_bytes + item.summary.optimizer_bytes


def test_cpu_full_vocabulary_fits_at_more_ranks_once_it_fits():
    """More ranks never hurt: the full vocabulary with Adam on 24 GiB CPU ranks fit at 8 and not at 12 or
    16, because the planner put the 243M-row item table table-wise on one rank (its weights fit, its
    29 GiB of state did not), and the advice then named fewer ranks as "more ranks"."""
    model = _model(FULL)
    sharders = make_sharders(FusedOptimizerConfig(name="adam"), "cpu")
    setup = PlanSetup("cpu", ddr_bytes_per_rank=24 * GiB, dense_bytes=2 * GiB)
    for world_size in (8, 12, 16):
        a = attempt(model, setup, world_size, sharders)
        assert a.fits, (world_size, a.reason)
        item = next(t for t in a.report.tables if t.summary.table == "item")
        per_rank = item.summary.bytes_per_rank
        assert max(per_rank.values()) <= 24 * GiB and len(per_rank) > 1, (world_size, item.summary.sharding_type)


def test_cpu_advice_counts_the_checkpoint_share_at_each_world_size(capsys, monkeypatch):
    """A CPU rank reserves its share of the checkpoint's copy of the tables (1/W of 43.5 GiB here), so
    one rank reserves more than its 24 GiB but more ranks fit. The advice reused one world size's
    reservation for every other one and said "more ranks do not shrink it"."""
    out = _plan_inproc(capsys, monkeypatch, "--spec", FULL, "--device", "cpu", "--ddr-gib", "24", "--world-size", "1",
                       "--json", "-")
    assert out.returncode == 1
    assert "each rank reserves" in out.stderr and "more ranks do not shrink it" not in out.stderr
    diagnosis = json.loads(out.stdout)["diagnosis"]
    n, rows = diagnosis["min_world_size"], diagnosis["max_rows"]["item"]
    assert isinstance(n, int) and n > 1 and f"more ranks (each holds a smaller share of the checkpoint's copy): {n} x cpu" in out.stderr
    # A smaller vocabulary shrinks the checkpoint's copy too: the search runs, and its answer fits on one rank.
    assert 0 < rows < 243_363_021 and f"at most ~{rows:,} rows fit on 1 x cpu" in out.stderr
    # The claim holds at each world size's own reservation: n fits, n - 1 does not.
    spec = load_spec(REPO / FULL)
    model = _model(FULL)
    sharders = make_sharders(FusedOptimizerConfig(name="adam"), "cpu")
    setup = PlanSetup("cpu", ddr_bytes_per_rank=24 * GiB,
                      rank_overhead=lambda module, w: spec_rank_overhead_bytes(spec, module, "cpu", w),
                      batch_size=planned_batch_size(spec))  # as `plan` sizes it
    assert attempt(model, setup, n, sharders).fits and not attempt(model, setup, n - 1, sharders).fits
    smaller = build_train_model(spec.model, dict(spec.data.vocab_sizes, item=rows), seq_len=spec.data.seq_len,
                                device=torch.device("meta"))
    assert attempt(smaller, setup, 1, sharders).fits


def test_cpu_largest_vocabulary_counts_its_own_checkpoint_share(capsys, monkeypatch):
    """The vocabulary search plans each candidate with that vocabulary's own reservation (its smaller
    checkpoint copy): it reused the full vocabulary's and named 110M item rows at 4 x 24 GiB, where 148M fit."""
    out = _plan_inproc(capsys, monkeypatch, "--spec", FULL, "--device", "cpu", "--ddr-gib", "24", "--world-size", "4",
                       "--json", "-")
    assert out.returncode == 1
    rows = json.loads(out.stdout)["diagnosis"]["max_rows"]["item"]
    spec = load_spec(REPO / FULL)
    sharders = make_sharders(FusedOptimizerConfig(name="adam"), "cpu")
    setup = PlanSetup("cpu", ddr_bytes_per_rank=24 * GiB,
                      rank_overhead=lambda module, w: spec_rank_overhead_bytes(spec, module, "cpu", w),
                      batch_size=planned_batch_size(spec))  # as `plan` sizes it

    def fits(item_rows: int) -> bool:
        sizes = dict(spec.data.vocab_sizes, item=item_rows)
        model = build_train_model(spec.model, sizes, seq_len=spec.data.seq_len, device=torch.device("meta"))
        return attempt(model, setup, 4, sharders).fits

    # The search bisects to 2% of the full rows (4.9M): the answer fits and 2% more does not.
    assert fits(rows) and not fits(rows + 243_363_021 // 50)


def test_cpu_topology_keeps_everything_in_host_memory(tmp_path, capsys, monkeypatch):
    out = _plan_inproc(capsys, monkeypatch, "--spec", P90, "--device", "cpu", "--world-size", "2",
                    "--set", "train.sparse_optimizer.name=exact_row_wise_adagrad", "--json", str(tmp_path / "c.json"))
    assert out.returncode == 0, out.stderr
    plan = json.loads((tmp_path / "c.json").read_text())["plan"]
    assert plan["compute_device"] == "cpu" and plan["fused_optimizer"] == "exact_row_wise_adagrad"
    want = _expected_tables(P90, "exact_row_wise_adagrad")
    for t in plan["tables"]:
        rows, dim, elem, optim = want[t["table"]]
        state = rows * STATE_PER_ROW[optim](dim)
        assert t["optimizer_bytes"] == state and t["state_memory"] == ("ddr" if state else "-")
    assert all(r["hbm_bytes"] == 0 and r["ddr_bytes"] >= r["weight_bytes"] + r["optimizer_bytes"] for r in plan["ranks"])
    # The whole rank: tables + state + the reservation for what a CPU rank holds outside them
    # (runtime, a step, loader workers, and a checkpoint's copy of the rank's half of the
    # trainable tables with their state: rank_memory), reported beside the tables.
    spec = load_spec(REPO / P90, ["train.sparse_optimizer.name=exact_row_wise_adagrad"])
    runtime = rank_overhead_bytes(planned_batch_size(spec), spec.data.seq_len, spec.data.num_workers, world_size=2)
    assert 0.5 * GiB < runtime < 1.5 * GiB
    trainable = sum(rows * (dim * elem + STATE_PER_ROW[optim](dim)) for name, (rows, dim, elem, optim) in want.items()
                    if name != "scl")
    outside = runtime + -(-trainable // 2) + _dense_state_bytes(P90)
    for r in plan["ranks"]:
        # No more: TorchRec's 20 copies of a batch's ids are in rank_memory's measured step already.
        assert r["reserved_ddr_bytes"] == outside, r
        assert r["predicted_ddr_bytes"] == r["ddr_bytes"] + r["reserved_ddr_bytes"]


def test_a_cpu_plan_does_not_depend_on_the_cpus_of_the_planning_host(tmp_path, capsys, monkeypatch):
    """`plan --device cpu` plans for the target machine, whose CPUs it is not told: each rank reserves for the
    spec's `data.num_workers` loader workers. Before, the reservation capped them at the CPUs of the host
    running `plan` (`loader.usable_workers`): the same command planned 7 x 27 MiB less per rank on a 1-CPU
    host than on a 64-CPU one for `data.num_workers` 8. Training still starts (and reserves) at most one
    worker per CPU of its own host."""
    import os

    workers = 8
    ranks = {}
    for cpus in (1, 64):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cpus: set(range(n)))
        monkeypatch.setattr(os, "cpu_count", lambda n=cpus: n)
        out = _plan_inproc(capsys, monkeypatch, "--spec", P90, "--device", "cpu", "--world-size", "2",
                           "--set", "train.sparse_optimizer.name=exact_row_wise_adagrad",
                           "--set", f"data.num_workers={workers}", "--json", str(tmp_path / f"{cpus}.json"))
        assert out.returncode == 0, out.stderr
        ranks[cpus] = json.loads((tmp_path / f"{cpus}.json").read_text())["plan"]["ranks"]
    assert ranks[1] == ranks[64]


def test_a_reservation_larger_than_the_rank_is_named_not_blamed_on_the_tables(tmp_path, capsys, monkeypatch):
    # A batch whose working set alone exceeds a CPU rank's memory. Before, the diagnosis left the
    # reservation out: "2 rank(s) offer 1024.0 GiB for rows (enough in sum: the planner could not
    # partition the tables)", and it searched world sizes and vocabularies that cannot help.
    overrides = ["train.sparse_optimizer.name=exact_row_wise_adagrad", "train.batch_size=100000000"]
    out = _plan_inproc(capsys, monkeypatch, "--spec", P90, "--device", "cpu", "--world-size", "2",
                       "--max-world-size", "4", *(a for o in overrides for a in ("--set", o)),
                       "--json", str(tmp_path / "r.json"))
    assert out.returncode == 1, out.stderr
    spec = load_spec(REPO / P90, overrides)
    runtime = rank_overhead_bytes(planned_batch_size(spec), spec.data.seq_len, spec.data.num_workers, world_size=2)
    assert runtime > 512 * GiB  # the premise: the step alone is larger than the rank
    want = _expected_tables(P90, "exact_row_wise_adagrad")
    trainable = sum(rows * (dim * elem + STATE_PER_ROW[optim](dim)) for name, (rows, dim, elem, optim) in want.items()
                    if name != "scl")
    reserved = runtime + -(-trainable // 2) + _dense_state_bytes(P90, overrides)
    assert f"each rank reserves {reserved / GiB:.1f} GiB outside the tables" in out.stderr, out.stderr
    assert "more than its memory (HBM 0 GiB, DDR 512 GiB per rank)" in out.stderr
    assert "lower train.batch_size" in out.stderr and "offer" not in out.stderr and "more ranks:" not in out.stderr
    diag = json.loads((tmp_path / "r.json").read_text())["diagnosis"]
    assert diag["min_world_size"] is None and diag["max_rows"] == {"item": None}


def test_a_tower_too_wide_for_the_gpu_is_named_with_uvm_on(tmp_path, capsys, monkeypatch):
    # TorchRec refuses a reservation that overdraws HBM without saying by how much to us. Before,
    # the diagnosis then counted the DDR that UVM offers as room for rows: "8 rank(s) offer 4096.0
    # GiB for rows (enough in sum: the planner could not partition the tables)", and advised "a
    # smaller item vocabulary: at most ~0 rows", while the dense layers alone overfill the GPU.
    import re

    out = _plan_inproc(capsys, monkeypatch, "--spec", P90, "--world-size", "8", "--max-world-size", "16",
                       "--set", "model.tower_hidden=[1048576,1048576]", "--json", str(tmp_path / "r.json"))
    assert out.returncode == 1, out.stderr
    # TorchRec's own figure: the HBM left after its reservation, negative (its "GB" are GiB).
    left = float(re.search(r"Storage\(hbm = (-[0-9.]+) GB", out.stderr).group(1))
    cap = float(re.search(r"no plan fits on 8 x cuda \(HBM ([0-9.]+) GiB", out.stderr).group(1))
    assert left < -1000
    assert f"each rank reserves {cap - left:.1f} GiB of its HBM outside the tables" in out.stderr, out.stderr
    assert "narrower model.tower_hidden" in out.stderr
    assert "offer" not in out.stderr and "more ranks:" not in out.stderr and "vocabulary" not in out.stderr
    diag = json.loads((tmp_path / "r.json").read_text())["diagnosis"]
    assert diag["min_world_size"] is None


def test_the_reservation_grows_with_the_dense_parameters(tmp_path, capsys, monkeypatch):
    # A 4x wider first tower layer is reserved for (weights, gradients, AdamW's two moments), not
    # discovered by the allocator mid-build. Its extra parameters, from the shapes alone (tower
    # input 308 = the spec's concatenated features): Linear 308 -> w (+ bias), Dice's per-unit g,
    # Linear w -> 128.
    reserved = {}
    for width in (256, 1024):
        out = _plan_inproc(capsys, monkeypatch, "--spec", P90, "--device", "cpu", "--world-size", "1",
                           "--set", "train.sparse_optimizer.name=exact_row_wise_adagrad",
                           "--set", f"model.tower_hidden=[{width},128,64]", "--json", str(tmp_path / f"{width}.json"))
        assert out.returncode == 0, out.stderr
        reserved[width] = json.loads((tmp_path / f"{width}.json").read_text())["plan"]["ranks"][0]["reserved_ddr_bytes"]
    extra = lambda w: 308 * w + w + w + w * 128  # noqa: E731
    assert reserved[1024] - reserved[256] == 16 * (extra(1024) - extra(256))


def test_bad_input_is_named(tmp_path, capsys, monkeypatch):
    run = lambda *a: _plan_inproc(capsys, monkeypatch, *a)  # noqa: E731
    spec = tmp_path / "nosizes.yaml"
    spec.write_text(f"extends: {REPO / 'specs/demo/muse.yaml'}\ndata:\n  prepared: {tmp_path / 'absent'}\n")
    out = run("--spec", str(spec))
    assert out.returncode == 2 and "data.vocab_sizes" in out.stderr and "data.prepared" in out.stderr
    out = run("--spec", FULL, "--device", "cpu", "--set", "train.sparse_optimizer.name=lamb")  # fused LAMB is CUDA-only
    assert out.returncode == 2 and "train.sparse_optimizer.name" in out.stderr and "lamb" in out.stderr
    out = run("--spec", FULL, "--device", "cpu", "--set", "train.sparse_optimizer.name=exact_row_wise_adagrad",
              "--set", "train.sparse_optimizer.weight_decay=0.1")  # FBGEMM's CPU Adagrad would drop it
    assert out.returncode == 2 and "train.sparse_optimizer.weight_decay: 0.1 would be ignored" in out.stderr
    partial = tmp_path / "partial.yaml"
    partial.write_text(f"extends: {REPO / 'specs/demo/muse.yaml'}\ndata:\n  vocab_sizes: {{item: 100}}\n")
    out = run("--spec", str(partial))
    assert out.returncode == 2 and "data.vocab_sizes lacks" in out.stderr and "category" in out.stderr
    # nan / inf were int(nan) / int(inf) tracebacks, 1e300 an OverflowError in int(gib * GiB)
    for flag, value in (("--hbm-gib", "nan"), ("--ddr-gib", "inf"), ("--hbm-gib", "1e300"), ("--ddr-gib", "1e300")):
        out = run("--spec", FULL, flag, value)
        assert out.returncode == 2 and f"{flag} {float(value)}: must be a number > 0 and <= 1048576 (GiB per rank: 1 PiB)" in out.stderr, \
            out.stderr


def test_parse_world_sizes():
    assert parse_world_sizes("1-16") == list(range(1, 17))
    assert parse_world_sizes("8,1-2,2") == [1, 2, 8]
    for bad in ("0-4", "4-2", "x", "1-", ""):  # "" was accepted: no what-if table, exit 0
        with pytest.raises(ValueError, match="--what-if"):
            parse_world_sizes(bad)
    # Each size, and all of them together, within what one command plans: 1-10^8 built a set of 10^8
    # sizes, and one huge size ran the planner until the kernel killed it.
    assert parse_world_sizes("1-180")[-1] == 180  # 16,290 ranks in all
    for bad, needle in (("16385", "goes past 16,384 ranks"), ("1-100000000", "goes past"),
                        ("1-181", "add up to more than 16,384")):
        with pytest.raises(ValueError, match=needle):
            parse_world_sizes(bad)


def test_huge_world_sizes_and_tables_are_refused_in_one_line(tmp_path, capsys, monkeypatch):
    # 10^8 ranks: the planner grew until the OOM killer ended it (rc 137, no output); 10^20 ranks and
    # 10^20 rows: OverflowError / TypeError tracebacks.
    run = lambda *a: _plan_inproc(capsys, monkeypatch, *a)  # noqa: E731
    for flag, value in (("--world-size", "100000000"), ("--max-world-size", "16385")):
        out = run("--spec", P90, flag, value)
        assert out.returncode == 2 and f"{flag} {value}: must be in 1..16,384" in out.stderr, out.stderr
    out = run("--spec", P90, "--world-size", str(10**20))  # past int64: refused as every integer flag is
    assert out.returncode == 2 and f"argument --world-size: {10**20}: outside the 64-bit integers" in out.stderr, out.stderr
    out = run("--spec", P90, "--set", f"data.vocab_sizes.item={10**20}")
    assert out.returncode == 2 and "data.vocab_sizes: {'item': 100000000000000000000}: rows must be in 1.." in out.stderr
    meta = tmp_path / "p" / "meta.json"
    meta.parent.mkdir()
    meta.write_text(json.dumps({"vocab_sizes": {**{t: 10 for t in REQUIRED_TABLES}, "item": 10**20}}))
    out = run("--spec", P90, "--prepared", str(meta.parent))
    assert out.returncode == 2 and "vocab_sizes.item must be an integer in 1..8,796,093,022,207" in out.stderr, out.stderr


def test_prepared_sizes_override_the_spec(tmp_path, capsys, monkeypatch):
    # --prepared reads the counts `muse-rec prepare` recorded (only meta.json is needed).
    sizes = {t: 7 + i for i, t in enumerate(REQUIRED_TABLES)}
    prepared = tmp_path / "prep"
    prepared.mkdir()
    (prepared / "meta.json").write_text(json.dumps({"vocab_sizes": sizes}))
    out = _plan_inproc(capsys, monkeypatch, "--spec", P90, "--prepared", str(prepared), "--device", "cpu",
                       "--world-size", "1", "--set", "train.sparse_optimizer.name=exact_row_wise_adagrad",
                       "--json", str(tmp_path / "p.json"))
    assert out.returncode == 0, out.stderr
    doc = json.loads((tmp_path / "p.json").read_text())
    assert doc["vocab_sizes"] == sizes and "--prepared" in doc["vocab_source"]
    assert {t["table"]: t["rows"] for t in doc["plan"]["tables"]}["item"] == sizes["item"]
    bad = _plan_inproc(capsys, monkeypatch, "--spec", P90, "--prepared", str(tmp_path / "absent"))
    assert bad.returncode == 2 and "absent" in bad.stderr and "meta.json" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_prepared_as_a_file_uri_is_the_local_directory(tmp_path, capsys, monkeypatch):
    # train and check read data.prepared=file:///abs as /abs; plan --prepared opened the URI as a
    # relative file name: "cannot read file:///abs/meta.json", exit 2.
    sizes = {t: 7 + i for i, t in enumerate(REQUIRED_TABLES)}
    prepared = tmp_path / "prep"
    prepared.mkdir()
    (prepared / "meta.json").write_text(json.dumps({"vocab_sizes": sizes}))
    out = _plan_inproc(capsys, monkeypatch, "--spec", P90, "--prepared", f"file://{prepared}", "--device", "cpu",
                       "--world-size", "1", "--set", "train.sparse_optimizer.name=exact_row_wise_adagrad",
                       "--json", str(tmp_path / "p.json"))
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "p.json").read_text())["vocab_sizes"] == sizes


def test_plan_uses_the_constraints_training_shards_with():
    # Two ranks: training forces a row-wise SCL table (fp16 frozen lookups); the plan must too,
    # else it predicts a table-wise SCL on one rank and the per-rank memory is wrong.
    from muse_rec.distributed.plan_fit import PlanSetup as Setup

    model = _model(P90)
    sharders = make_sharders(FusedOptimizerConfig(name="exact_row_wise_adagrad"), "cpu")
    report = attempt(model, Setup(compute_device="cpu"), 2, sharders).report
    scl = next(t for t in report.tables if t.summary.table == "scl")
    assert scl.summary.sharding_type == "row_wise" and sorted({s.rank for s in scl.shards}) == [0, 1]


def test_a_cuda_plan_beyond_128_ranks_fills_hosts_of_8(capsys, monkeypatch):
    """A CUDA world used to be planned as one host of every rank: beyond 128 ranks TorchRec's
    placement then built torch.device("cuda", 128), past torch's int8 device index (a traceback:
    "Invalid device string: 'cuda:-128'"), and below it table_row_wise shards spanned the world."""
    out = _plan_inproc(capsys, monkeypatch, "--spec", FULL, "--world-size", "136", "--json", "-")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["setup"]["ranks_per_host"] == doc["plan"]["ranks_per_host"] == 8  # 136 = 17 hosts of 8
    assert "plan: 136 x cuda on 17 hosts of 8," in out.stderr
    placed = {s["rank"] for t in doc["plan"]["tables"] for s in t["shards"]}
    assert max(placed) > 128
    for t in doc["plan"]["tables"]:
        if t["sharding_type"] == "table_row_wise":  # TorchRec shards these over one host's ranks
            assert len({s["rank"] // 8 for s in t["shards"]}) == 1, t["table"]


def test_ranks_per_host_can_be_set_and_is_checked(capsys, monkeypatch):
    from muse_rec.distributed.planner import ranks_per_host

    assert [ranks_per_host(w, "cuda") for w in (1, 6, 8, 9, 12, 14, 16, 17, 136)] == [1, 6, 8, 3, 6, 7, 8, 1, 8]
    assert ranks_per_host(300, "cpu") == 300  # a CPU plan: one host
    assert [ranks_per_host(w, "cpu", at_most=4) for w in (2, 8, 12, 6)] == [2, 4, 4, 3]  # --local-world-size 4
    run = lambda *a: _plan_inproc(capsys, monkeypatch, "--spec", FULL, *a)  # noqa: E731
    out = run("--world-size", "16", "--local-world-size", "16", "--json", "-")
    assert out.returncode == 0 and json.loads(out.stdout)["plan"]["ranks_per_host"] == 16, out.stderr
    assert "plan: 16 x cuda, per rank" in out.stderr  # one host goes unsaid
    for ws, local, said in (("16", "0", "must divide --world-size 16"), ("4", "8", "must divide --world-size 4"),
                            ("16", "6", "must divide --world-size 16"),
                            ("256", "256", "torch numbers at most 128 CUDA devices per host")):
        out = run("--world-size", ws, "--local-world-size", local)
        assert out.returncode == 2 and f"--local-world-size {local}: {said}" in out.stderr, out.stderr


def test_each_what_if_row_says_the_hosts_it_was_planned_on(capsys, monkeypatch):
    """Under --local-world-size 8 a what-if row of 11 ranks is planned on 11 hosts of 1 and one of 12
    on 2 hosts of 6: TorchRec keeps table_row_wise shards inside a host, so 11 and 13 ranks held more
    than 10 and 12 (a whole user table on one rank), and neither the text nor the JSON said why."""
    out = _plan_inproc(capsys, monkeypatch, "--spec", FULL, "--world-size", "16", "--local-world-size", "8",
                       "--what-if", "1,8,11,12,16", "--json", "-")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)["what_if"]
    assert [(r["world_size"], r["ranks_per_host"]) for r in rows] == [(1, 1), (8, 8), (11, 1), (12, 6), (16, 8)]
    text = out.stderr[out.stderr.index("what if"):]
    assert "hosts" in text.splitlines()[1]
    said = {line.split()[0]: line.split()[1] for line in text.splitlines()[3:] if line.strip()}
    assert said == {"1": "1", "8": "1", "11": "11x1", "12": "2x6", "16": "2x8"}, text


@pytest.mark.parametrize("world_size", [4, 16])
def test_the_item_table_is_spread_over_every_cpu_rank(world_size):
    # The planner costs a table by its ids per sample (`LifelongCTRModel.lookups_per_sample`).
    # Costed at one id per sample per table (TorchRec's default), it put the item table (~100 ids
    # per sample) whole on one rank: at 16 ranks column-wise on rank 0, 47 GiB there against
    # 3.6 GiB on every other rank, and every history lookup through that one rank.
    model = _model(FULL)
    sharders = make_sharders(FusedOptimizerConfig(name="exact_row_wise_adagrad"), "cpu")
    report = attempt(model, PlanSetup(compute_device="cpu"), world_size, sharders).report
    for name in ("item", "scl"):
        table = next(t for t in report.tables if t.summary.table == name)
        assert table.summary.sharding_type == "row_wise", (name, table.summary)
        assert sorted({s.rank for s in table.shards}) == list(range(world_size)), name


def test_the_reservation_line_names_what_each_device_reserves(capsys, monkeypatch):
    # On CUDA the reservation is TorchRec's own estimate; the line listed the CPU rank's parts (loader,
    # checkpoint copy), which a GPU plan does not reserve.
    cuda = _plan_inproc(capsys, monkeypatch, "--spec", FULL, "--world-size", "8", "--device", "cuda")
    line = next(ln for ln in cuda.stdout.splitlines() if ln.startswith("outside the tables"))
    assert "TorchRec's estimate of the dense parameters and input batches, beside its 15% HBM margin" in line
    assert "checkpoint copy" not in line
    cpu = _plan_inproc(capsys, monkeypatch, "--spec", FULL, "--world-size", "64", "--device", "cpu", "--ddr-gib", "512")
    line = next(ln for ln in cpu.stdout.splitlines() if ln.startswith("outside the tables"))
    assert "runtime, activations, loader, dense state, checkpoint copy" in line

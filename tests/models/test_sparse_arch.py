"""SparseArch on one process: construction, shapes, masking, table sharing, SCL loading."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from muse_rec.data.batch import POOLED_FEATURES, pooled_kjt
from muse_rec.models.sparse_arch import SparseArch
from muse_rec.models.sparse_ids import dense_from_jagged, masked_kjt

SIZES = {"item": 60, "category": 7, **{f: 11 for f in POOLED_FEATURES}}
B, K, R, L = 4, 5, 3, 10


def ids(high: int, *shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, high, shape, generator=torch.Generator().manual_seed(seed))


def masks(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, K, generator=g) > 0.4, torch.rand(B, R, generator=g) > 0.4


@pytest.fixture()
def arch() -> SparseArch:
    torch.manual_seed(0)
    return SparseArch(SIZES, dim_overrides={"user_f1": 8, "user_f2": 8, "user_f3": 8})


def test_builds_on_meta_without_storage() -> None:
    arch = SparseArch({**SIZES, "item": 243_000_000}, device=torch.device("meta"))
    w = arch.scl.collection.embeddings["scl"].weight
    assert w.is_meta and tuple(w.shape) == (243_000_000, 128) and w.dtype == torch.float16
    assert arch.token_dim == 32 and arch.scl.bytes_per_row == 256


def test_rejects_missing_and_unknown_tables() -> None:
    with pytest.raises(KeyError, match="user_f5"):
        SparseArch({k: v for k, v in SIZES.items() if k != "user_f5"})
    with pytest.raises(KeyError, match="user_f9"):
        SparseArch(SIZES, dim_overrides={"user_f9": 8})
    with pytest.raises(ValueError, match="category dim 8"):
        SparseArch(SIZES, dim_overrides={"category": 8})


def test_pooled_widths_follow_overrides(arch: SparseArch) -> None:
    kt = arch.pooled_embeddings(pooled_kjt(ids(11, B, len(POOLED_FEATURES))))
    assert kt.values().shape == (B, arch.pooled_dim) == (B, 8 * 16 - 3 * 8)
    assert kt.to_dict()["user_f2"].shape == (B, 8) and kt.to_dict()["user_id"].shape == (B, 16)


def test_id_tokens_shapes_zeros_and_shared_tables(arch: SparseArch) -> None:
    gm, rm = masks()
    gi, gc, ri, rc = ids(60, B, K, seed=2), ids(7, B, K, seed=3), ids(60, B, R, seed=4), ids(7, B, R, seed=5)
    # Sample 0's target equals its first retrieved behaviour: same rows -> same token.
    gm[0, 0] = True
    ti, tc = ids(60, B, seed=6), ids(7, B, seed=7)
    ti[0], tc[0] = gi[0, 0], gc[0, 0]
    tok = arch.id_tokens(ti, tc, gi, gc, gm, ri, rc, rm)
    assert tok.target.shape == (B, 32) and tok.gsu.shape == (B, K, 32) and tok.recent.shape == (B, R, 32)
    assert torch.count_nonzero(tok.gsu[~gm]) == 0 and torch.count_nonzero(tok.recent[~rm]) == 0
    assert torch.all(tok.gsu[gm].abs().sum(-1) > 0)
    assert torch.equal(tok.target[0], tok.gsu[0, 0])
    item_w = arch.ids.embeddings["item"].weight
    cat_w = arch.ids.embeddings["category"].weight
    assert torch.equal(tok.recent[rm], torch.cat([item_w[ri[rm]], cat_w[rc[rm]]], dim=-1))


def test_only_valid_ids_get_gradients(arch: SparseArch) -> None:
    gm, rm = masks()
    gi, gc, ri, rc = ids(60, B, K, seed=2), ids(7, B, K, seed=3), ids(60, B, R, seed=4), ids(7, B, R, seed=5)
    tok = arch.id_tokens(ids(60, B, seed=6), ids(7, B, seed=7), gi, gc, gm, ri, rc, rm)
    (tok.gsu.sum() + tok.recent.sum()).backward()
    grad = arch.ids.embeddings["item"].weight.grad
    touched = set(gi[gm].tolist()) | set(ri[rm].tolist())
    got = set(grad.abs().sum(1).nonzero().squeeze(1).tolist())
    assert got == touched


def test_whole_sequence_lookup_has_no_grad_and_matches(arch: SparseArch) -> None:
    si, sc = ids(60, B, L, seed=8), ids(7, B, L, seed=9)
    sm = torch.arange(L).unsqueeze(0) >= torch.tensor([[0], [3], [9], [10]])
    whole = arch.sequence_tokens_no_grad(si, sc, sm)
    assert whole.shape == (B, L, arch.token_dim) and not whole.requires_grad
    assert torch.count_nonzero(whole[~sm]) == 0
    expect = torch.cat([arch.ids.embeddings["item"].weight[si], arch.ids.embeddings["category"].weight[sc]], -1)
    assert torch.equal(whole[sm], expect[sm])


def test_eval_lookups_send_no_padding_to_the_tables(arch: SparseArch) -> None:
    """In evaluation too only valid ids reach the ID tables (the whole-sequence lookup of SIM-soft / TWIN
    is [B, L]): padding as row 0 went, row-wise sharded, to the rank holding row 0 from every rank."""
    arch.eval()
    si, sc = ids(60, B, L, seed=8), ids(7, B, L, seed=9)
    sm = torch.arange(L).unsqueeze(0) >= torch.tensor([[0], [3], [9], [10]])
    seen = []
    hook = arch.ids.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        whole = arch.sequence_tokens_no_grad(si, sc, sm)
    finally:
        hook.remove()
    (kjt,) = seen
    assert kjt["gsu_item"].lengths().tolist() == sm.sum(1).tolist()
    assert torch.equal(kjt["gsu_item"].values(), si[sm]) and torch.equal(kjt["gsu_cat"].values(), sc[sm])
    assert torch.count_nonzero(whole[~sm]) == 0
    expect = torch.cat([arch.ids.embeddings["item"].weight[si], arch.ids.embeddings["category"].weight[sc]], -1)
    assert torch.equal(whole[sm], expect[sm])


def test_scl_load_and_lookup_exact(arch: SparseArch) -> None:
    rng = np.random.default_rng(0)
    table = rng.integers(-127, 128, size=(60, 128), dtype=np.int8)
    table[0] = 0
    assert arch.load_scl_(table) == 60
    si = ids(60, B, L, seed=10)
    sm = torch.arange(L).unsqueeze(0) >= torch.tensor([[0], [2], [5], [10]])
    tgt, seq = arch.scl_vectors(si[:, -1], si, sm)
    # Output dtype is the lookup's (fp32 or fp16); either holds the int8 values exactly.
    assert tgt.dtype == seq.dtype and seq.dtype in (torch.float32, torch.float16)
    assert seq.shape == (B, L, 128) and not seq.requires_grad
    full = torch.from_numpy(table.astype(np.float32))
    assert torch.equal(seq[sm].float(), full[si[sm]])  # int8 values are exact in fp16
    assert torch.count_nonzero(seq[~sm]) == 0
    assert torch.equal(tgt.float(), full[si[:, -1]])


def test_scl_lookup_sends_no_padding_to_the_table(arch: SparseArch) -> None:
    """Only the B targets and the real behaviours reach the SCL table: padding looked up as row 0
    went, in a row-wise sharded table, to the one rank holding row 0 from every rank."""
    rng = np.random.default_rng(1)
    table = rng.integers(-127, 128, size=(60, 128), dtype=np.int8)
    table[0] = 0
    arch.load_scl_(table)
    U = B - 1  # fewer histories than targets, as a batch with a user's several impressions has
    si = ids(60, U, L, seed=11)
    sm = torch.arange(L).unsqueeze(0) >= torch.tensor([[3], [9], [10]])  # 7, 1 and 0 behaviours
    seen = []
    hook = arch.scl.collection.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        tgt, seq = arch.scl_vectors(ids(60, B, seed=12), si, sm)
    finally:
        hook.remove()
    (kjt,) = seen
    seq_ids = kjt["scl_seq"]
    assert seq_ids.lengths().tolist() == [7, 1, 0, 0]
    assert torch.equal(seq_ids.values(), si[sm])
    assert torch.count_nonzero(seq_ids.values() == 0) == 0
    full = torch.from_numpy(table.astype(np.float32))
    assert seq.shape == (U, L, 128)
    assert torch.equal(seq[sm].float(), full[si[sm]]) and torch.count_nonzero(seq[~sm]) == 0


def test_scl_load_rejects_bad_arrays(arch: SparseArch) -> None:
    with pytest.raises(ValueError, match=r"shape \(59, 128\).*\(60, 128\)"):
        arch.load_scl_(np.zeros((59, 128), np.int8))
    bad = np.ones((60, 128), np.int8)
    with pytest.raises(ValueError, match="row 0"):
        arch.load_scl_(bad)


def test_scl_load_converts_the_rows_without_copying_them(tmp_path) -> None:
    """`load_` converts the prepared rows (memory-mapped: read-only) straight into the table, without a warning
    and without a copy of a chunk. Before, each chunk was converted to an fp16 tensor first: 256 B per row of a
    1M-row chunk at once, the peak of loading a model for export (a 4 MiB allocation here)."""
    import tracemalloc
    import warnings

    from torch.profiler import ProfilerActivity, profile

    from tests.conftest import memory_mapped_scl

    scl, table, mapped = memory_mapped_scl(tmp_path)
    rows = table.shape[0]
    # One chunk: a copy of it (int8: rows x dim bytes, 2 MiB) is far above what else `load_` allocates (its
    # checks and the state_dict's Python objects, a few KiB, whatever the table's size).
    chunk_bytes = rows * scl.dim
    tracemalloc.start()  # numpy's array memory is traced; torch's tensors are counted by the profiler
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof, warnings.catch_warnings():
            warnings.simplefilter("error")
            assert scl.load_(mapped, chunk_rows=rows) == rows
        numpy_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    torch_allocated = sum(max(0, e.self_cpu_memory_usage) for e in prof.events())
    assert numpy_peak < chunk_bytes, f"numpy held {numpy_peak:,} B: a copy of the {chunk_bytes:,} B chunk"
    assert torch_allocated < chunk_bytes, f"torch allocated {torch_allocated:,} B: a copy of the chunk"
    weight = scl.collection.embeddings["scl"].weight
    assert torch.equal(weight.float(), torch.from_numpy(table).float())  # int8 values are exact in fp16


def test_masked_kjt_round_trip() -> None:
    x = torch.arange(12).view(3, 4)
    m = torch.tensor([[True, False, True, False], [False] * 4, [True] * 4])
    kjt = masked_kjt(["a"], [x], [m])
    assert kjt.lengths().tolist() == [2, 0, 4] and kjt.values().tolist() == [0, 2, 8, 9, 10, 11]
    dense = dense_from_jagged(kjt.values().float().unsqueeze(1), m).squeeze(-1)
    assert torch.equal(dense, (x * m).float())
    with pytest.raises(ValueError, match="'a'"):
        masked_kjt(["a"], [x], [m[:, :2]])


@pytest.mark.parametrize("method", ["din", "din_ref", "sim_hard", "sim_soft", "twin", "miss", "muse"])
def test_only_models_that_read_scl_vectors_hold_the_scl_table(method: str) -> None:
    """DIN and TWIN read no SCL vector, yet built, sharded, planned and exported the frozen SCL table:
    58 GiB (fp16) of a full-vocabulary plan and ~35 GB of an int8 ranker, dead weight. The table is
    now there exactly when the model reads SCL vectors (`uses_scl`), so the planner sees no other."""
    from muse_rec.distributed.planner import embedding_tables
    from muse_rec.models.ctr_model import build_train_model
    from muse_rec.spec import load_spec

    spec = load_spec(f"specs/taobao_mm_full/{method}.yaml")
    model = build_train_model(spec.model, {**SIZES, "item": 243_363_021}, seq_len=spec.data.seq_len,
                              device=torch.device("meta"))
    uses_scl = model.model.uses_scl
    assert uses_scl == (method not in ("din", "twin"))
    assert ("scl" in embedding_tables(model)) == uses_scl
    assert (model.model.sparse_arch.scl is None) == (not uses_scl)
    if not uses_scl:  # the trainer and export load the prepared SCL array into every model: nothing to fill
        assert model.model.sparse_arch.load_scl_(np.zeros((1, 128), np.int8)) == 0


def test_dense_from_jagged_allocates_its_output_once() -> None:
    """The scatter of looked-up rows into the dense [B, N, D] layout writes into its zeros in place: an
    out-of-place index_copy held a second output while it ran (one rank's peak 2,422 -> 3,871 MiB at batch 64,
    L = 100K, where the SCL lookup's output is the largest tensor of a step)."""
    from torch.profiler import ProfilerActivity, profile

    B, N, D = 64, 1000, 128
    mask = torch.rand(B, N, generator=torch.Generator().manual_seed(0)) < 0.1
    values = torch.randn(int(mask.sum()), D, dtype=torch.float16)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = dense_from_jagged(values, mask)
    allocated = sum(e.self_cpu_memory_usage for e in prof.key_averages()
                    if e.key != "[memory]" and e.self_cpu_memory_usage > 0)
    output_bytes = B * N * D * values.element_size()
    positions_bytes = 8 * values.shape[0]  # the int64 positions of the valid slots
    assert allocated <= output_bytes + positions_bytes, (allocated, output_bytes)
    assert torch.equal(out[mask], values) and torch.count_nonzero(out[~mask]) == 0

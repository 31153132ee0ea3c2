"""The per-step GSU + ESU forward is free of host syncs: it compiles as ONE graph
(``torch.compile(fullgraph=True)``: any ``.item()``, ``.tolist()``, data-dependent
``torch.unique`` or Python loop over data would break the graph and fail the test) and, on CUDA,
runs under ``torch.cuda.set_sync_debug_mode("error")``.

The batch's history grouping comes from the loader (`Batch.hist_index` / `hist_members`); the ID
and SCL lookups (TorchRec) happen outside the compiled function, as the pipeline runs them.
"""
from __future__ import annotations

import pytest
import torch
from torch._dynamo.backends.common import aot_autograd

from muse_rec.models.ctr_model import build_train_model
from muse_rec.modules.search import Histories, SearchInputs
from muse_rec.spec import load_spec
from tests.benchmarks.test_plain_torch_muse import REPO, SIZES, make_batch, scl_array

L = 80


def build(device: str):
    spec = load_spec(REPO / "specs" / "demo" / "muse.yaml", [f"data.seq_len={L}"])
    torch.manual_seed(0)
    model = build_train_model(spec.model, SIZES, L, device=torch.device("cpu")).model
    model.sparse_arch.load_scl_(scl_array())
    batch = make_batch()
    with torch.no_grad():
        pooled = model.sparse_arch.in_feature_order(model.sparse_arch.pooled(batch.pooled)).values()
        h = Histories.of(batch)
        scl_t, scl_seq = model.sparse_arch.scl_vectors(batch.target_item, h.items, h.mask)
        seq_tok = model.sparse_arch.sequence_tokens_no_grad(h.items, h.cats, h.mask)  # [U, L, D_tok]
        tgt_tok = model.sparse_arch.sequence_tokens_no_grad(
            batch.target_item.unsqueeze(1), batch.target_cat.unsqueeze(1),
            torch.ones_like(batch.target_item, dtype=torch.bool).unsqueeze(1))[:, 0]
    args = (pooled, batch.target_item, batch.target_cat, scl_t, scl_seq, seq_tok, tgt_tok,
            h.items, h.cats, h.mask, h.index, h.members)
    return model.to(device), tuple(a.to(device) for a in args)


def gsu_esu(model, pooled, target_item, target_cat, scl_t, scl_seq, seq_tok, tgt_tok, items, cats, mask,
            index, members):
    """GSU (`CosineGSU.retrieve`) -> the picks' tokens -> ESU + tower (`OverArch`): ``[B]`` logits."""
    hist = Histories(items, cats, mask, index, members)
    search = SearchInputs(hist, target_item, target_cat, scl_t, scl_seq)
    res = model.gsu.retrieve(search)
    gsu_tok = hist.at(seq_tok, res.indices) * res.valid.unsqueeze(2)
    R = model.recent
    rec_mask = hist.per_sample(mask[:, mask.shape[1] - R:])
    rec_tok = hist.per_sample(seq_tok[:, seq_tok.shape[1] - R:])
    return model.over_arch(pooled, tgt_tok, gsu_tok, rec_tok, rec_mask, res, search)


# ATen ops that read device data on the host (a sync on an accelerator): scalar reads
# (.item(), int(t), .tolist()) and data-dependent output shapes. torch 2.13's dynamo captures
# scalar reads into the graph instead of breaking it, so fullgraph=True alone does not catch
# them: the test also inspects the captured ATen graph.
HOST_SYNC_OPS = ("_local_scalar_dense", "nonzero", "unique", "masked_select", "bincount", "repeat_interleave")


def test_gsu_esu_compiles_as_one_graph_without_host_syncs():
    torch._dynamo.reset()
    model, args = build("cpu")
    eager = gsu_esu(model, *args)
    ops = []

    def forward_compiler(gm, example_inputs):
        ops.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    # aot_eager-like: dynamo must capture ONE graph (fullgraph=True), lowered to ATen for the
    # check above, without paying inductor's C++ compile on a 2-core box.
    compiled = torch.compile(lambda *a: gsu_esu(model, *a), fullgraph=True, dynamic=True,
                             backend=aot_autograd(fw_compiler=forward_compiler))
    out = compiled(*args)
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    assert any("topk" in op for op in ops)  # the GSU is in the graph
    syncs = [op for op in ops if any(bad in op for bad in HOST_SYNC_OPS)]
    assert not syncs, f"host syncs in the step's graph: {syncs}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (host-sync detection)")
def test_gsu_esu_has_no_host_sync_on_cuda():
    model, args = build("cuda")
    gsu_esu(model, *args)  # warm-up (allocator, kernels)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        gsu_esu(model, *args)
    finally:
        torch.cuda.set_sync_debug_mode("default")

"""One rank of the 2-rank equivalence test: sharded lookups == unsharded lookups, same weights.

Run by `test_sharded_equivalence.py` as ``python -m tests.distributed.sharded_lookup_worker
OUT_DIR`` with RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT set. Writes
``OUT_DIR/rank<r>.json`` with, per sharding type, the plan summary and the max differences.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Dict

import numpy as np
import torch
from fbgemm_gpu.split_embedding_configs import SparseType
from torch.distributed._shard.sharded_tensor import ShardedTensor

from muse_rec.distributed.env import DistEnv, destroy_distributed, init_distributed
from muse_rec.distributed.model_parallel import shard_model
from muse_rec.distributed.planner import make_constraints, make_plan, plan_summary, topology_for
from muse_rec.distributed.sharders import FusedOptimizerConfig, make_sharders
from tests.distributed.harness import RetrievalHarness, make_batch, table_sizes

SIZES = table_sizes(items=300)
# (report key, sharding type of every table, output dtype of frozen lookups)
CASES = [
    ("table_wise", "table_wise", SparseType.FP32),
    ("row_wise", "row_wise", SparseType.FP32),
    ("column_wise", "column_wise", SparseType.FP32),
    ("row_wise_fp16_out", "row_wise", SparseType.FP16),
]


def copy_tables(src: Dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    """Write the unsharded weights into this rank's shards of the sharded model."""
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if isinstance(t, ShardedTensor):
                for s in t.local_shards():
                    (r, c), (n, m) = s.metadata.shard_offsets, s.metadata.shard_sizes
                    s.tensor.copy_(src[key][r : r + n, c : c + m])
            elif key in src:
                t.copy_(src[key])


def max_diff(a: torch.Tensor, b: torch.Tensor) -> object:
    # Frozen lookups come out in the sharder's output dtype (fp16 or fp32): values must match exactly.
    if a.shape != b.shape or a.is_floating_point() != b.is_floating_point():
        return f"sharded {tuple(a.shape)} {a.dtype} vs reference {tuple(b.shape)} {b.dtype}"
    d = (a.float() - b.float()).abs()
    if a.numel() and not torch.isfinite(d).all():
        bad = (~torch.isfinite(d)).nonzero()[:3].squeeze(-1).tolist()
        return f"non-finite at {bad}: sharded {a[bad].tolist()} reference {b[bad].tolist()}, n_bad={(~torch.isfinite(d)).sum()}, n={a.numel()}, n_diff={(d>0).sum()}"
    return float(d.max()) if a.numel() else 0.0


def main(out_dir: Path) -> None:
    env = init_distributed(DistEnv.from_environ(device_type="cpu"))
    torch.manual_seed(0)
    reference = RetrievalHarness(SIZES)
    scl = np.random.default_rng(0).integers(-127, 128, size=(SIZES["item"], 128), dtype=np.int8)
    scl[0] = 0
    reference.sparse.load_scl_(scl)
    ref_state = {k: v.detach().clone() for k, v in reference.state_dict().items()}
    report = {}
    for case, stype, frozen_out in CASES:
        sharders = make_sharders(FusedOptimizerConfig(), "cpu", frozen_output_dtype=frozen_out)
        model = RetrievalHarness(SIZES, device=torch.device("meta"))
        tables = make_constraints(model)
        plan = make_plan(model, topology_for(env), sharders, make_constraints(model, {t: [stype] for t in tables}))
        summary = {s.table: [s.sharding_type, list(s.ranks)] for s in plan_summary(model, plan, sharders)}
        dmp = shard_model(model, env, plan=plan, sharders=sharders)
        copy_tables(ref_state, dmp.module)
        rows_written = dmp.module.sparse.load_scl_(scl)
        batch = make_batch(6, 20, SIZES, seed=10 + env.rank, unique_items=False)
        args = (batch["target_item"], batch["target_cat"])
        pos = torch.randint(0, 20, (6, 4), generator=torch.Generator().manual_seed(env.rank))
        sel = (batch["seq_items"].gather(1, pos), batch["seq_cats"].gather(1, pos), batch["seq_mask"].gather(1, pos))
        rec = (batch["seq_items"][:, -5:], batch["seq_cats"][:, -5:], batch["seq_mask"][:, -5:])
        seq = (batch["seq_items"], batch["seq_cats"], batch["seq_mask"])
        diffs = {}
        for name, arch in (("sharded", dmp.module.sparse), ("reference", reference.sparse)):
            out = {
                "pooled": arch.pooled_embeddings(batch["pooled"]).values(),
                "pooled_keys": arch.pooled_embeddings(batch["pooled"]).keys(),
                "tokens": torch.cat([t.flatten() for t in arch.id_tokens(*args, *sel, *rec)]),
                "whole": arch.sequence_tokens_no_grad(*seq),
                "scl": torch.cat([t.flatten() for t in arch.scl_vectors(batch["target_item"], batch["seq_items"], batch["seq_mask"])]),
            }
            diffs[name] = out
        report[case] = {
            "max_diff": {k: max_diff(diffs["sharded"][k].detach(), diffs["reference"][k].detach()) for k in diffs["reference"] if k != "pooled_keys"},
            "keys": [diffs["sharded"]["pooled_keys"], diffs["reference"]["pooled_keys"]],
            "scl_rows_written": rows_written,
            "plan": summary,
        }
    # fp16 frozen output under a table-wise plan is refused before anything is sharded.
    model = RetrievalHarness(SIZES, device=torch.device("meta"))
    sharders = make_sharders(FusedOptimizerConfig(), "cpu", frozen_output_dtype=SparseType.FP16)
    plan = make_plan(model, topology_for(env), sharders, make_constraints(model, {"scl": ["table_wise"]}))
    try:
        shard_model(model, env, plan=plan, sharders=sharders)
        report["fp16_table_wise_refused"] = False
    except ValueError as e:
        report["fp16_table_wise_refused"] = "scl" in str(e)
    (out_dir / f"rank{env.rank}.json").write_text(json.dumps(report, indent=1))
    destroy_distributed()


if __name__ == "__main__":
    main(Path(sys.argv[1]))

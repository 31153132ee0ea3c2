"""Through DMP (one gloo rank): only selected rows move; the SCL table never does."""
from __future__ import annotations

from typing import Dict, Set

import numpy as np
import pytest
import torch
from torch.distributed._shard.sharded_tensor import ShardedTensor

from muse_rec.distributed.env import DistEnv, destroy_distributed, init_distributed
from muse_rec.distributed.model_parallel import combined_optimizer, dense_parameters, shard_model
from tests.distributed.harness import RetrievalHarness, make_batch, table_sizes

SIZES = table_sizes(items=400)
B, L, K, R = 8, 12, 3, 2


@pytest.fixture(scope="module")
def env():
    e = init_distributed(DistEnv.from_environ({}, device_type="cpu"))
    yield e
    destroy_distributed()


def full(state: Dict[str, object], key: str) -> torch.Tensor:
    """A whole table from a one-rank state_dict (ShardedTensor shards placed by offset)."""
    t = state[key]
    if not isinstance(t, ShardedTensor):
        return t.detach().clone()
    out = torch.zeros(t.size(), dtype=t.dtype)
    for s in t.local_shards():
        (r, c), (n, m) = s.metadata.shard_offsets, s.metadata.shard_sizes
        out[r : r + n, c : c + m] = s.tensor
    return out


def scl_array(rows: int, dim: int = 128, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.integers(-127, 128, size=(rows, dim), dtype=np.int8)
    a[0] = 0
    return a


@pytest.mark.parametrize("optimizer", ["exact_row_wise_adagrad", "exact_adagrad"])
def test_steps_move_only_selected_rows(env, optimizer: str) -> None:
    torch.manual_seed(0)
    model = RetrievalHarness(SIZES, k=K, recent=R, device=torch.device("meta"))
    dmp = shard_model(model, env, fused_optimizer=optimizer, fused_lr=0.1)
    assert dmp.module.sparse.load_scl_(scl_array(SIZES["item"])) == SIZES["item"]
    opt = combined_optimizer(dmp, dense_lr=1e-2)
    # No table reaches the dense optimizer (DMP would hand data_parallel tables to it).
    assert all("sparse" not in name for name in dense_parameters(dmp)), list(dense_parameters(dmp))

    before = {k: full(dmp.state_dict(), k) for k in ("sparse.ids.embeddings.item.weight", "sparse.scl.collection.embeddings.scl.weight")}
    selected: Set[int] = set()
    seen: Set[int] = set()
    for step in range(3):
        batch = make_batch(B, L, SIZES, seed=100 + step)
        with torch.no_grad():
            pos, valid = dmp.module.select(batch["target_item"], batch["seq_items"], batch["seq_mask"])
        picked = batch["seq_items"].gather(1, pos)[valid]
        recent = batch["seq_items"][:, -R:][batch["seq_mask"][:, -R:]]
        selected |= set(picked.tolist()) | set(recent.tolist()) | set(batch["target_item"].tolist())
        seen |= set(batch["seq_items"][batch["seq_mask"]].tolist())
        loss, _ = dmp(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    # A forward without backward (evaluation) must not move anything either.
    with torch.no_grad():
        dmp(make_batch(B, L, SIZES, seed=999))

    after = {k: full(dmp.state_dict(), k) for k in before}
    scl_key = "sparse.scl.collection.embeddings.scl.weight"
    assert after[scl_key].dtype == torch.float16
    assert torch.equal(before[scl_key], after[scl_key]), "frozen SCL table changed"
    assert torch.equal(after[scl_key], torch.from_numpy(scl_array(SIZES["item"])).half())

    item_before, item_after = before["sparse.ids.embeddings.item.weight"], after["sparse.ids.embeddings.item.weight"]
    unselected = sorted(seen - selected)
    assert len(unselected) > 10, "test batch too small to have unselected sequence rows"
    # Looked up by the whole-sequence no-grad call and present in the batch, yet not selected.
    assert torch.equal(item_before[unselected], item_after[unselected])
    changed = (item_before[sorted(selected)] != item_after[sorted(selected)]).any(dim=1)
    assert bool(changed.all()), f"{int((~changed).sum())} selected rows did not move"
    untouched = sorted(set(range(SIZES["item"])) - seen - selected)
    assert torch.equal(item_before[untouched], item_after[untouched])


def test_cuda_only_optimizer_on_cpu_is_refused_with_the_supported_list(env) -> None:
    model = RetrievalHarness(SIZES, device=torch.device("meta"))
    with pytest.raises(ValueError, match=r"'lamb' is not supported on cpu.*exact_row_wise_adagrad.*adam"):
        shard_model(model, env, fused_optimizer="lamb")

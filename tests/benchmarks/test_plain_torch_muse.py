"""The plain-PyTorch MUSE baseline is the same model as the TorchRec one, on nn.Embedding."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.plain_torch_muse import PlainTrainStep, build_plain_model, plain_sparse_arch
from muse_rec.data.batch import POOLED_FEATURES, Batch, pooled_kjt
from muse_rec.models.ctr_model import build_train_model
from muse_rec.spec import load_spec
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SIZES = {"item": 200, "category": 9, **{f: 13 for f in POOLED_FEATURES}}
L = 80


def make_batch(seed: int = 0) -> Batch:
    """12 samples of 6 users (impressions of a user share one history), some short or empty."""
    g = torch.Generator().manual_seed(seed)
    users = torch.tensor([1, 1, 1, 2, 2, 3, 3, 3, 3, 4, 5, 5])
    B = users.numel()
    lens = torch.tensor([0, 80, 30, 0, 60, 70, 10])[users]
    mask = torch.arange(L)[None] >= (L - lens)[:, None]
    items = torch.randint(1, SIZES["item"], (7, L), generator=g)[users] * mask
    cats = torch.randint(1, SIZES["category"], (7, L), generator=g)[users] * mask
    return Batch(labels=(torch.rand(B, generator=g) < 0.3).float(), weights=torch.ones(B), user_keys=users,
                 item_keys=torch.arange(B), target_item=torch.randint(1, SIZES["item"], (B,), generator=g),
                 pooled=pooled_kjt(torch.randint(0, 13, (B, len(POOLED_FEATURES)), generator=g)),
                 target_cat=torch.randint(1, SIZES["category"], (B,), generator=g),
                 seq_items=items, seq_cats=cats, seq_lengths=lens)


def scl_array() -> np.ndarray:
    a = np.random.default_rng(0).integers(-127, 128, (SIZES["item"], 128)).astype(np.int8)
    a[0] = 0
    a[5:40] = 0  # items without an SCL vector
    return a


@pytest.fixture(scope="module")
def spec():
    return load_spec(REPO / "specs" / "demo" / "muse.yaml")


@pytest.fixture(scope="module")
def twins(spec):
    torch.manual_seed(0)
    ref = build_train_model(spec.model, SIZES, seq_len=L, device=torch.device("cpu"))
    ref.model.sparse_arch.load_scl_(scl_array())
    plain = build_plain_model(spec.model, SIZES, seq_len=L)
    plain_sparse_arch(plain).copy_from_torchrec(ref.model.sparse_arch)
    dense = {k: v for k, v in ref.state_dict().items() if ".sparse_arch." not in k}
    result = plain.load_state_dict(dense, strict=False)
    assert not result.unexpected_keys
    assert all(".sparse_arch." in k for k in result.missing_keys)
    return ref, plain


def test_same_parameters_and_tables(twins) -> None:
    ref, plain = twins
    dense_ref = {k: v.shape for k, v in ref.named_parameters() if ".sparse_arch." not in k}
    dense_plain = {k: v.shape for k, v in plain.named_parameters() if ".sparse_arch." not in k}
    assert dense_ref == dense_plain and len(dense_ref) > 20
    arch = plain_sparse_arch(plain)
    assert arch.item.weight.shape == (200, 16) and arch.pooled.tables["user_f2"].weight.shape == (13, 8)
    assert arch.scl.dtype == torch.float16 and not arch.scl.requires_grad
    assert all(t.sparse for t in arch.trainable_tables())
    assert not any("torchrec" in type(m).__module__ for m in plain.modules())


def test_same_logits_loss_and_dense_gradients(twins) -> None:
    ref, plain = twins
    batch = make_batch()
    loss_ref, (_, logits_ref, _) = ref(batch)
    loss_plain, (_, logits_plain, _) = plain(batch)
    torch.testing.assert_close(logits_plain, logits_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss_plain, loss_ref)
    ref.zero_grad(), plain.zero_grad()
    loss_ref.backward()
    loss_plain.backward()
    grads_ref = dict(ref.named_parameters())
    compared = 0
    for name, p in plain.named_parameters():
        if ".sparse_arch." not in name:
            torch.testing.assert_close(p.grad, grads_ref[name].grad, rtol=1e-4, atol=1e-7)
            compared += 1
    assert compared > 20


def test_step_moves_only_looked_up_rows_and_never_scl(spec) -> None:
    torch.manual_seed(0)
    model = build_plain_model(spec.model, SIZES, seq_len=L)
    arch = plain_sparse_arch(model)
    arch.load_scl_(scl_array())
    before_items, before_scl = arch.item.weight.detach().clone(), arch.scl.clone()
    step = PlainTrainStep(model, spec.train.dense_optimizer, "sparse_adam", sparse_lr=1e-2)
    batch = make_batch()
    losses = [float(step(batch)) for _ in range(5)]
    assert losses[-1] < losses[0]
    moved = (arch.item.weight.detach() != before_items).any(1).nonzero().squeeze(1)
    seen = set(batch.target_item.tolist()) | set(batch.seq_items[batch.seq_mask()].tolist())
    assert len(moved) > 0 and set(moved.tolist()) <= seen
    assert torch.equal(arch.scl, before_scl)


def test_bad_scl_shape_and_optimizer_are_named(spec) -> None:
    model = build_plain_model(spec.model, SIZES, seq_len=L)
    with pytest.raises(ValueError, match=r"\(200, 128\)"):
        plain_sparse_arch(model).load_scl_(np.zeros((10, 128), np.int8))
    with pytest.raises(ValueError, match="sparse_optimizer 'sgd'"):
        PlainTrainStep(model, spec.train.dense_optimizer, "sgd")

"""`LifelongCTRModel.lookups_per_sample`: the ids per sample the sharding planner costs each table with.

Checked against what a training forward really sends to each embedding collection: forward
pre-hooks count the ids of every KeyedJaggedTensor key over one forward of a batch built at the
stated worst case (every sample its own user, L behaviours, every item with an SCL vector, one
category everywhere so SIM-hard's category match finds L candidates).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from muse_rec.data.batch import POOLED_FEATURES, Batch, pooled_kjt
from muse_rec.distributed.planner import feature_lookups, make_constraints
from muse_rec.models.ctr_model import LifelongCTRModel
from muse_rec.models.sparse_arch import GSU_ITEM, REQUIRED_TABLES
from muse_rec.spec import load_spec

SPECS = Path(__file__).resolve().parents[2] / "specs"
SPEC_FILES = sorted(str(p.relative_to(SPECS)) for d in ("methods", "ablations") for p in (SPECS / d).glob("*.yaml"))
L, B, ITEMS = 120, 3, 400  # L >= 2K (K = 50): a union of two top-K can hold 2K distinct positions


def _model(spec_file: str) -> LifelongCTRModel:
    spec = load_spec(SPECS / spec_file, [f"data.seq_len={L}"])
    sizes = {t: ITEMS if t in ("item", "category") else 50 for t in REQUIRED_TABLES}
    torch.manual_seed(0)
    model = LifelongCTRModel(spec.model, sizes, seq_len=L)
    rng = np.random.default_rng(0)
    scl = rng.integers(-127, 128, size=(ITEMS, 128), dtype=np.int8)
    scl[0] = 0
    scl[1:][np.all(scl[1:] == 0, axis=1), 0] = 1  # every real item has a vector
    model.sparse_arch.load_scl_(scl)
    return model.train()


def _worst_case_batch() -> Batch:
    g = torch.Generator().manual_seed(1)
    items = torch.stack([torch.randperm(ITEMS - 1, generator=g)[:L] + 1 for _ in range(B)])  # distinct, no row 0
    return Batch(
        labels=torch.tensor([1.0, 0.0, 1.0]), weights=torch.ones(B),
        user_keys=torch.arange(B, dtype=torch.int64), item_keys=torch.arange(B, dtype=torch.int64),
        pooled=pooled_kjt(torch.ones(B, len(POOLED_FEATURES), dtype=torch.int64)),
        target_item=torch.tensor([5, 6, 7]), target_cat=torch.full((B,), 3),
        seq_items=items, seq_cats=torch.full((B, L), 3), seq_lengths=torch.full((B,), L))


def _ids_sent(model: LifelongCTRModel, batch: Batch) -> Counter:
    sent: Counter = Counter()

    def count(_module, args):
        kjt = args[0]
        for key, n in zip(kjt.keys(), kjt.length_per_key()):
            sent[key] += int(n)

    for collection in model.sparse_arch.collections():
        collection.register_forward_pre_hook(count)
    model(batch)
    return sent


@pytest.mark.parametrize("spec_file", SPEC_FILES)
def test_stated_lookups_are_what_a_worst_case_forward_sends(spec_file):
    model = _model(spec_file)
    stated = model.lookups_per_sample()
    sent = _ids_sent(model, _worst_case_batch())
    features = {name for c in model.sparse_arch.collections()
                for config in (c.embedding_bag_configs() if hasattr(c, "embedding_bag_configs") else c.embedding_configs())
                for name in config.feature_names}
    assert set(stated) == features
    per_sample = {f: sent[f] / B for f in features}
    if getattr(model.gsu, "rule", None) == "union":
        # The union keeps a position both sides picked once: 2K is its bound, reached only where
        # the two top-K are disjoint.
        assert model.top_k < per_sample[GSU_ITEM] - (stated[GSU_ITEM] - model.gsu.slots) <= model.gsu.slots
        per_sample = {f: v for f, v in per_sample.items() if f not in ("gsu_item", "gsu_cat")}
    assert per_sample == {f: stated[f] for f in per_sample}, spec_file


def test_the_planner_gets_them_as_pooling_factors_in_each_tables_feature_order():
    model = _model("methods/sim_soft.yaml")  # an ID-scoring GSU: the item table's gsu feature reads L + 1 + K
    constraints = make_constraints(model)
    assert feature_lookups(model) == model.lookups_per_sample()
    assert constraints["item"].pooling_factors == [1.0, 50.0 + L + 1.0, 50.0]
    assert constraints["scl"].pooling_factors == [1.0, float(L)]
    assert constraints["user_id"].pooling_factors == [1.0]


def test_collections_without_a_model_keep_torchrecs_default():
    from muse_rec.models.sparse_arch import SparseArch

    arch = SparseArch({t: 10 for t in REQUIRED_TABLES}, device=torch.device("meta"))
    assert feature_lookups(arch) is None
    assert make_constraints(arch)["item"].pooling_factors == [1.0]  # TorchRec's POOLING_FACTOR

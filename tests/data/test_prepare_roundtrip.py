"""prepare -> load round-trips every id, label and sequence against the pure-Python reference."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List

import numpy as np
import pyarrow.parquet as pq
import pytest

from muse_rec.data import schema as S
from muse_rec.data.loader import make_loader
from muse_rec.data.prepare import PrepareConfig, prepare
from muse_rec.data.prepared import PreparedData
from tests.data.rawgen import reference_samples, reference_vocabs, write_raw_release

SEQ_LEN = 32  # shorter than the generator's longest histories (70), so truncation is exercised
CFG = PrepareConfig(batch_rows=50, partition_bits=3, spill_buffer_bytes=4096, progress=False)


def _loaded(out: str, split: str, batch_size: int = 64) -> List[Dict[str, object]]:
    """Every real sample the loader yields, as plain Python values, in delivery order."""
    rows: List[Dict[str, object]] = []
    for b in make_loader(out, split, batch_size, SEQ_LEN):
        t = b.tensors()
        pooled = b.pooled.to_dict()
        for i in range(b.batch_size):
            if t["weights"][i] == 0:
                continue
            n = int(t["seq_lengths"][i])
            rows.append({
                "label": int(t["labels"][i]), "user_key": int(t["user_keys"][i]), "item_key": int(t["item_keys"][i]),
                "user_id": int(pooled["user_id"].values()[i]),
                "user_fields": [int(pooled[f"user_f{k}"].values()[i]) for k in range(1, 6)],
                "target_item": int(t["target_item"][i]), "target_cat": int(t["target_cat"][i]),
                "item_f213": int(pooled["item_f213"].values()[i]), "item_f214": int(pooled["item_f214"].values()[i]),
                "seq_items": t["seq_items"][i, SEQ_LEN - n:].tolist(),
                "seq_cats": t["seq_cats"][i, SEQ_LEN - n:].tolist(),
            })
            assert not t["seq_items"][i, : SEQ_LEN - n].any(), "padding must be 0 and on the left"
    return rows


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, str]:
    root = tmp_path_factory.mktemp("raw")
    write_raw_release(str(root))
    outs = {}
    for mode in ("full", "p90"):
        out = str(root.parent / f"prepared_{mode}")
        with pytest.warns(UserWarning, match="no row in"):
            prepare(str(root), out, PrepareConfig(**{**CFG.__dict__, "vocab": mode}))
        outs[mode] = out
    return {"raw": str(root), **outs}


@pytest.mark.parametrize("mode", ["full", "p90"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_synthetic_round_trip(synthetic: Dict[str, str], mode: str, split: str) -> None:
    expected = reference_samples(synthetic["raw"], split, SEQ_LEN, mode)
    got = _loaded(synthetic[mode], split)
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert g == e, f"sample {i} of {split} differs"
    # The data must actually exercise the edge cases the reference encodes.
    assert any(len(e["seq_items"]) == SEQ_LEN for e in expected)
    assert any(e["user_fields"] == [0] * 5 and not e["seq_items"] for e in expected)
    assert any(e["target_cat"] == 0 for e in expected) and any(e["target_cat"] > 0 for e in expected)


@pytest.mark.parametrize("mode", ["full", "p90"])
def test_vocab_sizes_scl_and_popularity(synthetic: Dict[str, str], mode: str) -> None:
    raw, data = synthetic["raw"], PreparedData(synthetic[mode])
    vocabs = reference_vocabs(raw, mode)
    assert data.vocab_sizes == {k: len(v) + 1 for k, v in vocabs.items()}
    # SCL rows aligned to the item vocabulary; row 0 and items without a vector are zero.
    scl, present = data.scl(), data.scl_present()
    ref = {r[S.ITEM]: r[S.SCL_VECTOR] for r in pq.read_table(os.path.join(raw, S.TABLES["scl"].file)).to_pylist()}
    for key, row in vocabs["item"].items():
        if key in ref:
            assert present[row] and scl[row].tolist() == ref[key]
        else:
            assert not present[row] and not scl[row].any()
    assert not present[0] and not scl[0].any()
    targets = pq.read_table(os.path.join(raw, S.TABLES["train_samples"].file)).column(S.ITEM).to_pylist()
    pop = np.zeros(len(vocabs["item"]) + 1, np.int64)
    for t in targets:
        pop[vocabs["item"].get(t, 0)] += 1
    np.testing.assert_array_equal(data.item_popularity(), pop)


def test_user_history_matches_raw(synthetic: Dict[str, str]) -> None:
    data = PreparedData(synthetic["full"])
    vocabs = reference_vocabs(synthetic["raw"], "full")
    rows = pq.read_table(os.path.join(synthetic["raw"], S.TABLES["test_user_features"].file)).to_pylist()
    for r in rows[:25]:
        items, cats, fields = data.user_history("test", r[S.USER])
        assert items.dtype == np.int32 and cats.dtype == np.int32 and fields.shape == (5,)
        assert items.tolist() == [vocabs["item"].get(i, 0) for i in r[S.SEQ_ITEMS]]
        assert cats.tolist() == [vocabs["category"].get(c, 0) for c in r[S.SEQ_CATS]]
        assert fields.tolist() == [vocabs[f"user_f{k + 1}"].get(r[f], 0) for k, f in enumerate(S.USER_FIELDS)]
    assert data.user_history("test", 0) is None


def test_meta_counts(synthetic: Dict[str, str]) -> None:
    meta = PreparedData(synthetic["full"]).meta
    raw = synthetic["raw"]
    for split in S.SPLITS:
        samples = pq.read_table(os.path.join(raw, S.TABLES[f"{split}_samples"].file)).to_pylist()
        users = {r[S.USER] for r in pq.read_table(os.path.join(raw, S.TABLES[f"{split}_user_features"].file))
                 .select([S.USER]).to_pylist()}
        m = meta["splits"][split]
        assert m["samples"] == len(samples)
        assert m["positive_rate"] == pytest.approx(sum(s[S.LABEL][1] for s in samples) / len(samples))
        assert m["samples_without_user_row"] == sum(s[S.USER] not in users for s in samples) > 0
    train_users = set(reference_vocabs(raw)["user_id"])
    test_users = pq.read_table(os.path.join(raw, S.TABLES["test_user_features"].file)).column(S.USER).to_pylist()
    assert meta["test_users_unseen_in_train"] == sum(u not in train_users for u in test_users) > 0
    assert 0 < meta["splits"]["train"]["scl_coverage_behaviours"] < 1
    # The SCL counts (packed-bit gathers in prepare) against a plain count over the prepared arrays.
    present = np.load(os.path.join(synthetic["full"], "items", "scl_present.npy"))
    for split in S.SPLITS:
        seq = np.load(os.path.join(synthetic["full"], split, "seq_items.npy"))
        targets = np.load(os.path.join(synthetic["full"], split, "sample_items.npy"))
        m = meta["splits"][split]
        assert m["behaviours_with_scl"] == int(present[seq].sum()) > 0
        assert m["targets_with_scl"] == int(present[targets].sum()) > 0


def test_p90_that_cuts_nothing_is_warned(synthetic: Dict[str, str], tmp_path: Path) -> None:
    """`--vocab p90` takes the SCL table's items plus the targets; it counts no frequencies. The
    release's SCL table is its p90 cut, but an SCL table with a row for every behaviour item
    (`synth --preset scale`, embeddings of one's own) made "p90" the full vocabulary without a word."""
    import shutil

    import pyarrow as pa

    raw = tmp_path / "raw"
    shutil.copytree(synthetic["raw"], raw)
    seq = pq.read_table(raw / S.TABLES["train_user_features"].file).column(S.SEQ_ITEMS).to_pylist()
    scl = pq.read_table(raw / S.TABLES["scl"].file)
    have = set(scl.column(S.ITEM).to_pylist())
    missing = sorted({i for row in seq for i in row if i != 0} - have)
    assert missing, "the generator's SCL table must leave behaviour items out"
    vec = scl.column(S.SCL_VECTOR).to_pylist()[0]
    pq.write_table(pa.concat_tables([scl, pa.Table.from_pylist([{S.ITEM: i, S.SCL_VECTOR: vec} for i in missing],
                                                                schema=scl.schema)]),
                   raw / S.TABLES["scl"].file)
    with pytest.warns(UserWarning) as caught:
        meta = prepare(str(raw), str(tmp_path / "p90"), PrepareConfig(**{**CFG.__dict__, "vocab": "p90"}))
    said = " | ".join(str(w.message) for w in caught)
    train = meta["splits"]["train"]
    assert train["behaviours_unknown_item"] == train["behaviours_without_item_id"] > 0  # raw id 0 only
    assert "--vocab p90: every train behaviour item is in the vocabulary" in said, said
    assert "cuts nothing" in said, said
    # The release-like table (a cut) is not warned about.
    with pytest.warns(UserWarning) as caught:
        prepare(synthetic["raw"], str(tmp_path / "p90_cut"), PrepareConfig(**{**CFG.__dict__, "vocab": "p90"}))
    assert not any("cuts nothing" in str(w.message) for w in caught)


def test_fixture_tables_round_trip(taobao_fixtures: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "prepared")
    with pytest.warns(UserWarning, match="no row in"):
        prepare(str(taobao_fixtures), out, CFG)
    for split in S.SPLITS:
        assert _loaded(out, split, batch_size=4) == reference_samples(str(taobao_fixtures), split, SEQ_LEN)
    data = PreparedData(out)
    vocabs = reference_vocabs(str(taobao_fixtures))
    assert data.vocab_sizes == {k: len(v) + 1 for k, v in vocabs.items()}
    # Fixture users have full 1000-long histories: check one against the raw table end to end.
    first = pq.read_table(taobao_fixtures / "train_user_features.parquet").to_pylist()[0]
    items, _, _ = data.user_history("train", first[S.USER])
    assert items.tolist() == [vocabs["item"][i] for i in first[S.SEQ_ITEMS]] and len(items) == 1000


def test_file_uri_input(taobao_fixtures: Path, tmp_path: Path) -> None:
    with pytest.warns(UserWarning):
        meta = prepare(f"file://{taobao_fixtures}", str(tmp_path / "p"), CFG)
    assert meta["splits"]["train"]["samples"] == 10
    assert PreparedData(f"file://{tmp_path / 'p'}").num_samples("test") == 10


def test_duplicate_rows_are_counted_and_resolved_as_documented(synthetic: Dict[str, str], tmp_path: Path) -> None:
    """A release from elsewhere may list an item or a user twice, with other values: the last
    item_features / SCL row of an item is used, the first user row of a user; each is counted in
    meta.json and warned about (the item rows were silently resolved before)."""
    import shutil

    import pyarrow as pa

    raw = tmp_path / "raw"
    shutil.copytree(synthetic["raw"], raw)
    items = pq.read_table(raw / S.TABLES["item_features"].file)
    first = items.slice(0, 1).to_pylist()[0]
    other_cat = next(c for c in items.column(S.ITEM_CAT).to_pylist() if c != first[S.ITEM_CAT])
    pq.write_table(pa.concat_tables([items, pa.Table.from_pylist([{**first, S.ITEM_CAT: other_cat}],
                                                                  schema=items.schema)]),
                   raw / S.TABLES["item_features"].file)
    scl = pq.read_table(raw / S.TABLES["scl"].file)
    scl_first = scl.slice(0, 1).to_pylist()[0]
    flipped = [-v if v != -128 else 127 for v in scl_first[S.SCL_VECTOR]]
    pq.write_table(pa.concat_tables([scl, pa.Table.from_pylist([{**scl_first, S.SCL_VECTOR: flipped}] * 2,
                                                                schema=scl.schema)]),
                   raw / S.TABLES["scl"].file)
    users = pq.read_table(raw / S.TABLES["train_user_features"].file)
    pq.write_table(pa.concat_tables([users, users.slice(0, 3)]), raw / S.TABLES["train_user_features"].file)

    out = str(tmp_path / "prepared")
    with pytest.warns(UserWarning) as caught:
        meta = prepare(str(raw), out, CFG)
    said = " | ".join(str(w.message) for w in caught)
    assert "item_features.parquet: 1 duplicate item row(s); the last row" in said, said
    assert "scl_embedding_int8_p90.parquet: 2 duplicate item row(s)" in said, said
    assert "train_user_features: 3 duplicate user row(s)" in said, said
    assert (meta["items"]["duplicate_item_rows"], meta["items"]["duplicate_scl_rows"]) == (1, 2)
    assert meta["splits"]["train"]["duplicate_user_rows"] == 3

    data = PreparedData(out)
    row = int(data.vocab("item").rows(np.array([first[S.ITEM]]))[0])
    cat_row = int(data.vocab("category").rows(np.array([other_cat]))[0])
    assert int(data.item_attrs()[row, 0]) == cat_row  # the last row's category
    scl_row = int(data.vocab("item").rows(np.array([scl_first[S.ITEM]]))[0])
    assert data.scl()[scl_row].tolist() == flipped  # the last SCL row

"""Test helpers: write a small raw release with pyarrow, and a slow, obviously-correct reference.

The reference re-derives every expected field of every sample with plain Python dicts and
lists straight from the raw tables, following docs/data.md, so the vectorised pipeline can be
compared against it value by value.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Dict, List, Optional

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from muse_rec.data import schema as S

I64_MIN, I64_MAX = -(2**63), 2**63 - 1


def _ids(rng: random.Random, n: int) -> List[int]:
    out: set = set()
    while len(out) < n:
        v = rng.randint(I64_MIN, I64_MAX)
        if v != 0:
            out.add(v)
    return sorted(out, key=lambda _: rng.random())


def table_of(spec_name: str, columns: Dict[str, list]) -> pa.Table:
    spec = S.TABLES[spec_name]
    return pa.table({c: pa.array(columns[c], type=spec.columns[c]) for c in spec.columns})


def write_table(root: str, spec_name: str, table: pa.Table, row_group_size: int = 37) -> str:
    path = os.path.join(root, S.TABLES[spec_name].file)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def write_raw_release(root: str, n_train_users: int = 200, n_test_users: int = 60, n_items: int = 1500,
                      n_cats: int = 40, max_len: int = 70, samples_per_user: int = 3, seed: int = 0) -> None:
    """A raw release in the exact Taobao-MM layout with the edge cases the pipeline must handle:
    empty and long histories, raw id 0 inside sequences, users with samples but no feature row,
    targets without item_features or SCL rows, test users unseen in train, extreme int64 ids."""
    rng = random.Random(seed)
    os.makedirs(root, exist_ok=True)
    items = _ids(rng, n_items) + [I64_MIN, I64_MAX]
    cats = _ids(rng, n_cats)
    cat_of = {it: rng.choice(cats) for it in items}
    attr213, attr214 = _ids(rng, 7), _ids(rng, 5)
    in_features = items[: int(0.8 * len(items))] + [I64_MIN]
    write_table(root, "item_features", table_of("item_features", {
        S.ITEM: in_features, S.ITEM_CAT: [cat_of[i] for i in in_features],
        "213": [rng.choice(attr213) for _ in in_features], "214": [rng.choice(attr214) for _ in in_features]}))
    scl_items = items[len(items) // 3:] + _ids(rng, 30)  # some SCL items appear nowhere else
    write_table(root, "scl", table_of("scl", {
        S.ITEM: scl_items, S.SCL_VECTOR: [[rng.randint(-127, 127) for _ in range(S.SCL_DIM)] for _ in scl_items]}))
    fields = [_ids(rng, k) for k in (4, 3, 9, 12, 6)]
    train_users = _ids(rng, n_train_users)
    test_users = train_users[: n_test_users // 2] + _ids(rng, n_test_users - n_test_users // 2)

    def users_table(name: str, keys: List[int]) -> None:
        cols: Dict[str, list] = {S.USER: keys, S.SEQ_ITEMS: [], S.SEQ_CATS: []}
        for f, vals in zip(S.USER_FIELDS, fields):
            cols[f] = [rng.choice(vals + [0]) for _ in keys]
        for k, _ in enumerate(keys):
            n = 0 if k % 17 == 0 else (max_len if k % 5 == 0 else rng.randint(1, max_len))
            seq = [rng.choice(items) if rng.random() > 0.02 else 0 for _ in range(n)]
            cols[S.SEQ_ITEMS].append(seq)
            cols[S.SEQ_CATS].append([cat_of.get(i, 0) for i in seq])
        write_table(root, name, table_of(name, cols))

    users_table("train_user_features", train_users)
    users_table("test_user_features", test_users)
    targets = items + _ids(rng, 20)  # a few targets with neither item_features nor SCL rows

    def samples_table(name: str, users: List[int]) -> None:
        pool = users + _ids(rng, 5)  # users with samples but no feature row
        us = [u for u in pool for _ in range(rng.randint(1, 2 * samples_per_user))]
        ys = [1 if rng.random() < 0.15 else 0 for _ in us]
        write_table(root, name, table_of(name, {
            S.LABEL: [[1 - y, y] for y in ys], S.USER: us, S.ITEM: [rng.choice(targets) for _ in us]}))

    samples_table("train_samples", train_users)
    samples_table("test_samples", test_users)


def prepare_small_release(root: Path, seed: int) -> Path:
    """A 12-train-user release written to ``root/raw`` and prepared into ``root/out`` (small spill batches, so
    the external sort's every step runs); returns ``root/out``. Its edge cases make prepare warn."""
    from muse_rec.data.prepare import PrepareConfig, prepare

    write_raw_release(str(root / "raw"), n_train_users=12, n_test_users=4, n_items=60, seed=seed)
    with pytest.warns(UserWarning):
        prepare(str(root / "raw"), str(root / "out"), PrepareConfig(batch_rows=40, partition_bits=2, progress=False))
    return root / "out"


def _rows(raw: str, name: str) -> List[dict]:
    return pq.read_table(os.path.join(raw, S.TABLES[name].file)).to_pylist()


def _index(values: set) -> Dict[int, int]:
    return {v: r + 1 for r, v in enumerate(sorted(v for v in values if v != 0))}


def reference_vocabs(raw: str, mode: str = "full") -> Dict[str, Dict[int, int]]:
    """Raw id -> row for every vocabulary, by the definitions in docs/data.md."""
    tu, itf = _rows(raw, "train_user_features"), _rows(raw, "item_features")
    trs, tes, scl = _rows(raw, "train_samples"), _rows(raw, "test_samples"), _rows(raw, "scl")
    item = {r[S.ITEM] for r in scl} | {r[S.ITEM] for r in trs} | {r[S.ITEM] for r in tes}
    if mode == "full":
        item |= {r[S.ITEM] for r in itf} | {i for r in tu for i in r[S.SEQ_ITEMS]}
    v = {"item": _index(item),
         "category": _index({c for r in tu for c in r[S.SEQ_CATS]} | {r[S.ITEM_CAT] for r in itf}),
         "user_id": _index({r[S.USER] for r in tu} | {r[S.USER] for r in trs}),
         "item_f213": _index({r["213"] for r in itf}), "item_f214": _index({r["214"] for r in itf})}
    for k, f in enumerate(S.USER_FIELDS):
        v[f"user_f{k + 1}"] = _index({r[f] for r in tu})
    return v


def reference_samples(raw: str, split: str, seq_len: int, mode: str = "full") -> List[dict]:
    """Expected loader fields of every sample of `split`, in file order."""
    v = reference_vocabs(raw, mode)
    users: Dict[int, dict] = {}
    for r in _rows(raw, f"{split}_user_features"):
        users.setdefault(r[S.USER], r)  # first row of a duplicated user wins
    item_rows = {r[S.ITEM]: r for r in _rows(raw, "item_features")}
    out = []
    for s in _rows(raw, f"{split}_samples"):
        u: Optional[dict] = users.get(s[S.USER])
        it = item_rows.get(s[S.ITEM])
        seq = (u[S.SEQ_ITEMS] if u else [])[-seq_len:]
        cseq = (u[S.SEQ_CATS] if u else [])[-seq_len:]
        out.append({
            "label": s[S.LABEL][1], "user_key": s[S.USER], "item_key": s[S.ITEM],
            "user_id": v["user_id"].get(s[S.USER], 0),
            "user_fields": [v[f"user_f{k + 1}"].get(u[f], 0) if u else 0 for k, f in enumerate(S.USER_FIELDS)],
            "target_item": v["item"].get(s[S.ITEM], 0),
            "target_cat": v["category"].get(it[S.ITEM_CAT], 0) if it else 0,
            "item_f213": v["item_f213"].get(it["213"], 0) if it else 0,
            "item_f214": v["item_f214"].get(it["214"], 0) if it else 0,
            "seq_items": [v["item"].get(i, 0) for i in seq],
            "seq_cats": [v["category"].get(c, 0) for c in cseq],
        })
    return out

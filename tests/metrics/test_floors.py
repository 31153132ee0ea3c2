"""Model-free floors (`muse_rec.metrics.floors`) against a brute-force computation, and bad input."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Dict

import numpy as np
import pytest

from muse_rec.cli import main as cli_main
from muse_rec.data.prepared import PreparedData
from muse_rec.metrics.floor_options import EVERYTHING, LONG_HISTORY, SCL, floor_reads
from muse_rec.metrics.floor_regression import fit_logistic, lr_features
from muse_rec.metrics.floors import (FLOORS_VERSION, FloorOptions, FloorsError, ItemCtr, below_floor_message, cached_floors,
                                     compute_floors, split_scores)
from tests.conftest import REPO

NO_VEC = -1.1
NO_CAT = -1.0
# Small windows so the seq_len cap, the recent window and K all bind on the tiny release
# (histories there are up to 200 long); small chunks so both chunk bounds cut the split.
OPTS = FloorOptions(seq_len=60, recent=7, top_k=9, prior_strength=5.0, chunk_samples=97, chunk_slots=2000)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _rewrite(path: Path, fn) -> None:
    a = np.load(path)
    np.save(path, fn(a.copy()))


@pytest.fixture(scope="module")
def holes(tiny: Path, tmp_path_factory) -> Path:
    """The tiny set with the edge cases the floors must handle: targets and behaviour items
    without an SCL vector, test samples whose user has no history row, items and behaviours of
    unknown category (row 0), and test users whose history row is empty."""
    d = _copy(tiny, tmp_path_factory.mktemp("holes") / "prepared")
    rng = np.random.default_rng(3)
    n_items = np.load(d / "items/scl.npy", mmap_mode="r").shape[0]
    drop = rng.choice(np.arange(1, n_items), n_items // 5, replace=False)  # 20% of items lose their vector

    def zero_rows(a):
        a[drop] = 0
        return a

    _rewrite(d / "items/scl.npy", zero_rows)
    _rewrite(d / "items/scl_present.npy", zero_rows)
    no_user = rng.choice(np.load(d / "test/labels.npy").size, 40, replace=False)

    def orphan(a):
        a[no_user] = -1
        return a

    _rewrite(d / "test/sample_users.npy", orphan)
    unknown_cat = rng.choice(np.arange(1, n_items), n_items // 6, replace=False)  # targets of unknown category

    def no_category(a):
        a[unknown_cat, 0] = 0
        return a

    _rewrite(d / "items/attrs.npy", no_category)
    b = np.load(d / "test/seq_cats.npy").size
    _rewrite(d / "test/seq_cats.npy", lambda a: (a.__setitem__(rng.choice(b, b // 10, replace=False), 0), a)[1])
    users = np.load(d / "test/sample_users.npy")
    emptied = np.unique(users[users >= 0])[[2, 9]]  # two users with test samples lose their history: the next
    _rewrite(d / "test/seq_offsets.npy", lambda a: (a.__setitem__(emptied + 1, a[emptied]), a)[1])  # gets it
    return d


# ----------------------------------------------------------------------------------------------
# Brute force: one sample at a time, float64, no shared code with floors.py.
# ----------------------------------------------------------------------------------------------


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return NO_VEC if na == 0 or nb == 0 else float(np.clip(a @ b / (na * nb), -1, 1))


def brute_scores(d: Path, split: str, opts: FloorOptions, fit_split: str = "train") -> Dict[str, np.ndarray]:
    ld = lambda rel: np.load(d / rel)  # noqa: E731
    scl = ld("items/scl.npy")
    tr_items, tr_labels = ld(f"{fit_split}/sample_items.npy"), ld(f"{fit_split}/labels.npy")
    prior = tr_labels.sum() / tr_labels.size
    imps: Dict[int, int] = {}
    clicks: Dict[int, int] = {}
    for i, y in zip(tr_items.tolist(), tr_labels.tolist()):
        imps[i] = imps.get(i, 0) + 1
        clicks[i] = clicks.get(i, 0) + y
    items, users = ld(f"{split}/sample_items.npy"), ld(f"{split}/sample_users.npy")
    off, seq = ld(f"{split}/seq_offsets.npy"), ld(f"{split}/seq_items.npy")
    seq_cats, item_cat = ld(f"{split}/seq_cats.npy"), ld("items/attrs.npy")[:, 0]
    out = {k: [] for k in ("popularity", "category_share", "cos_mean_history", "cos_mean_recent",
                           "mean_topk_similarity")}
    for item, u in zip(items.tolist(), users.tolist()):
        a = opts.prior_strength
        out["popularity"].append((clicks.get(item, 0) + a * prior) / (imps.get(item, 0) + a))
        hist = seq[off[u]:off[u + 1]][-opts.seq_len:] if u >= 0 else seq[:0]
        cats = seq_cats[off[u]:off[u + 1]][-opts.seq_len:] if u >= 0 else seq_cats[:0]
        c = int(item_cat[item])  # SIM-hard: an unknown category (0) matches nothing
        out["category_share"].append(sum(1 for x in cats.tolist() if x == c) / len(cats)
                                     if c != 0 and len(cats) else NO_CAT)
        vecs = scl[hist].astype(np.float64)
        t = scl[item]
        out["cos_mean_history"].append(_cos(t, vecs.mean(0)) if len(hist) else NO_VEC)
        out["cos_mean_recent"].append(_cos(t, vecs[-opts.recent:].mean(0)) if len(hist) else NO_VEC)
        sims = sorted((_cos(t, v) for v in vecs if np.any(v) and np.any(t)), reverse=True)[:opts.top_k]
        out["mean_topk_similarity"].append(float(np.mean(sims)) if sims else NO_VEC)
    return {k: np.array(v) for k, v in out.items()}


def brute_gauc(users: np.ndarray, s: np.ndarray, y: np.ndarray) -> float:
    num = den = 0.0
    for u in np.unique(users):
        m = users == u
        pos, neg = s[m][y[m] == 1], s[m][y[m] == 0]
        if len(pos) and len(neg):
            diff = pos[:, None] - neg[None, :]
            num += m.sum() * ((diff > 0).mean() + 0.5 * (diff == 0).mean())
            den += m.sum()
    return num / den


def brute_auc(s: np.ndarray, y: np.ndarray) -> float:
    diff = s[y == 1][:, None] - s[y == 0][None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


# Every score is float64 from exact integer sums: the floors round once (`tie_exact_cosine`), brute
# force rounds its two norms and a division; both within a few ulps of the exact value (~1e-16), far
# inside 1e-12. (The top-K are chosen by the GSU's fp32 cosines: a near-tie within ~1e-7 at the K-th
# slot could swap a slot; this fixed fixture has none, so a swap would show as a failure here.)
COS_TOL = {"popularity": 1e-12, "cos_mean_history": 1e-12, "cos_mean_recent": 1e-12, "mean_topk_similarity": 1e-12,
           "category_share": 0}  # a share: one division of two integers in both


@pytest.mark.parametrize("which", ["tiny", "holes"])
def test_scores_and_metrics_match_brute_force(which, tiny, holes):
    d = tiny if which == "tiny" else holes
    data = PreparedData(str(d))
    n = data.num_samples("test")
    ctr = ItemCtr.from_train(data, "train", OPTS.prior_strength)
    ours = split_scores(data, "test", np.arange(n), OPTS, ctr, with_scl=True)
    ref = brute_scores(d, "test", OPTS)
    for k, v in ref.items():
        np.testing.assert_allclose(ours[k], v, rtol=0, atol=COS_TOL[k], err_msg=k)
    if which == "holes":  # the edge cases really occur
        assert (ref["mean_topk_similarity"] == NO_VEC).sum() >= 40
        assert (ref["cos_mean_history"] == NO_VEC).any() and (ref["cos_mean_history"] > NO_VEC).any()
        assert (ref["category_share"] == NO_CAT).sum() >= 100 and (ref["category_share"] > 0).sum() >= 100

    result = compute_floors(data, "test", OPTS)
    users, y = np.load(d / "test/sample_user_keys.npy"), np.load(d / "test/labels.npy")
    for k, v in ours.items():
        # The metrics of the scores just checked, by pairwise counting (the scores themselves
        # differ from fp64 by <= 1e-6, which can flip near-ties between users, so the metric is
        # checked on the scores the floor produced).
        f = result["floors"][k]
        assert f["gauc"] == pytest.approx(brute_gauc(users, v, y), abs=1e-12), k
        assert f["auc"] == pytest.approx(brute_auc(v, y), abs=1e-12), k
    p = np.clip(ref["popularity"], 1e-7, 1 - 1e-7)
    assert result["floors"]["popularity"]["logloss"] == pytest.approx(
        -np.mean(np.where(y == 1, np.log(p), np.log(1 - p))), rel=1e-12)
    assert result["floors"]["cos_mean_history"]["logloss"] is None  # not a probability
    best = max(result["floors"], key=lambda k: result["floors"][k]["gauc"])
    assert result["best"]["name"] == best


def test_a_k_beyond_every_history_is_the_mean_of_all_cosines(tiny):
    """K larger than any history (here 10^9): the mean over every behaviour with a vector, as brute
    force says. Before, the selection was padded to K slots: a [chunk, 10^9] allocation traceback."""
    from dataclasses import replace

    data = PreparedData(str(tiny))
    opts = replace(OPTS, top_k=10**9)
    n = data.num_samples("test")
    ours = split_scores(data, "test", np.arange(n), opts, ItemCtr.from_train(data, "train", opts.prior_strength),
                        with_scl=True)
    ref = brute_scores(tiny, "test", opts)["mean_topk_similarity"]
    np.testing.assert_allclose(ours["mean_topk_similarity"], ref, rtol=0, atol=COS_TOL["mean_topk_similarity"])


def test_user_chunks_hold_whole_users_within_both_bounds():
    """Chunks keep both bounds and hold whole users, as many as fit; a user who alone breaks a bound
    is split into pieces that keep them (it formed one chunk of samples x its whole history: 5.4 GB
    for 800 impressions over a 300k history at `baselines --seq-len 0`)."""
    from muse_rec.metrics.floor_scores import _user_chunks

    rng = np.random.default_rng(1)
    users = np.sort(np.concatenate([rng.integers(-1, 60, 700), np.full(120, 9), np.full(3, 7)]))
    per_user_len = rng.integers(0, 300, 61)
    lengths = np.where(users >= 0, per_user_len[users + 1], 0)
    lengths[users == 7] = 5000  # one history alone exceeds the slot budget: one sample per chunk
    lengths[users == 9] = 100  # 120+ samples x 100: pieces of 30 samples (3000 slots)
    cuts = list(_user_chunks(users, lengths, 50, 3000))
    assert cuts[0].start == 0 and cuts[-1].stop == users.size
    assert all(a.stop == b.start for a, b in zip(cuts, cuts[1:]))
    count = {int(u): int((users == u).sum()) for u in np.unique(users)}
    ulen = {int(u): int(lengths[users == u][0]) for u in np.unique(users)}
    too_big = {u for u in count if count[u] > 50 or count[u] * ulen[u] > 3000}
    assert {7, 9} <= too_big
    split = {u: 0 for u in too_big}
    for c in cuts:
        u, ln = users[c], lengths[c]
        n = c.stop - c.start
        assert n <= 50 and (n * ln.max() <= 3000 or n == 1), (c, n, ln.max())
        whole = (c.start == 0 or users[c.start - 1] != u[0]) and (c.stop == users.size or users[c.stop] != u[-1])
        if int(u[0]) in too_big:  # a user who alone breaks a bound is cut, and its pieces hold nothing else
            assert np.unique(u).size == 1
            split[int(u[0])] += 1
        else:
            assert whole
    for u in too_big:
        assert split[u] == -(-count[u] // max(1, min(50, 3000 // max(ulen[u], 1)))), u
    assert split[7] == count[7] and split[9] == 5  # 123 samples in pieces of 30
    # Greedy: merging any chunk of whole users with the next user's samples would break a bound.
    for a, b in zip(cuts, cuts[1:]):
        if users[a.start] in split or users[b.start] in split:
            continue
        nxt = users[b.start:b.stop] == users[b.start]
        n = a.stop - a.start + int(nxt.sum())
        assert n > 50 or n * max(lengths[a].max(), lengths[b.start]) > 3000


def test_popularity_is_leave_one_out_on_train(tiny):
    data = PreparedData(str(tiny))
    ctr = ItemCtr.from_train(data, "train", 5.0)
    items, y = np.load(tiny / "train/sample_items.npy"), np.load(tiny / "train/labels.npy").astype(float)
    i = int(np.flatnonzero(y == 1)[0])
    same = items == items[i]
    clicks_others, imps_others = y[same].sum() - 1, same.sum() - 1
    want = (clicks_others + 5.0 * ctr.prior) / (imps_others + 5.0)
    got = ctr.ctr(items[i:i + 1], y[i:i + 1])[0]
    assert got == pytest.approx(want, rel=1e-12)
    # Unseen item -> the prior.
    unseen = np.flatnonzero(np.asarray(data.item_popularity()) == 0)[:1]
    assert ctr.ctr(unseen)[0] == pytest.approx(ctr.prior, rel=1e-12)


@pytest.mark.parametrize("chunk", [7, 1 << 22])
def test_popularity_fitted_on_another_split_counts_its_impressions_there(tiny, chunk):
    """`baselines --train-split test` took clicks from test but impressions from items/popularity.npy,
    which counts train targets: a smoothed CTR above 1 (2.16 for an item clicked 40 times in test and
    never shown in train). Both counts now come from the split the floor is fitted on, also when
    its samples are counted in chunks (7 samples: many partial counts merged)."""
    data = PreparedData(str(tiny))
    n = data.num_samples("test")
    ctr = ItemCtr.from_train(data, "test", OPTS.prior_strength, chunk=chunk)
    ours = split_scores(data, "test", np.arange(n), OPTS, ctr, with_scl=True)["popularity"]
    ref = brute_scores(tiny, "test", OPTS, fit_split="test")["popularity"]
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)
    assert ours.max() <= 1.0
    # The data really has test targets the train split never showed, or shows a different number of times.
    items = np.load(tiny / "test/sample_items.npy")
    assert (np.bincount(items, minlength=data.item_popularity().size) != np.asarray(data.item_popularity())).any()


def test_logistic_regression_reaches_the_penalised_optimum():
    """Newton's answer has zero gradient of its objective (checked independently here) and
    recovers a planted model."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20000, 3)) * [1.0, 3.0, 0.5] + [0.0, 2.0, -1.0]
    w_true = np.array([1.0, -0.5, 2.0])
    y = (rng.random(20000) < 1 / (1 + np.exp(-(x @ w_true - 0.3)))).astype(float)
    m = fit_logistic(x, y, l2=1e-4)
    z = (x - m.mean) / m.scale
    p = m.predict(x)
    grad_w = z.T @ (p - y) / y.size + 1e-4 * m.weights
    grad_b = np.mean(p - y)
    assert np.max(np.abs(grad_w)) < 1e-9 and abs(grad_b) < 1e-9
    # The planted weights lie within 5 standard errors (inverse Fisher information) of the fit.
    zb = np.concatenate([z, np.ones((y.size, 1))], axis=1)
    se = np.sqrt(np.diag(np.linalg.inv((zb * (p * (1 - p))[:, None]).T @ zb)))[:3] / m.scale
    assert np.all(np.abs(m.weights / m.scale - w_true) < 5 * se), (m.weights / m.scale, se)


def test_regression_floor_is_fitted_on_train_features(tiny):
    data = PreparedData(str(tiny))
    result = compute_floors(data, "test", OPTS)
    lr = result["logistic_regression"]
    ctr = ItemCtr.from_train(data, "train", OPTS.prior_strength)
    n = data.num_samples("train")
    feats = split_scores(data, "train", np.arange(n), OPTS, ctr, with_scl=True, leave_one_out=True)
    m = fit_logistic(lr_features(feats), np.load(tiny / "train/labels.npy").astype(float), OPTS.lr_l2)
    np.testing.assert_allclose(lr["weights"], m.weights, rtol=1e-9)
    assert lr["fitted_on"] == n and 0.0 < result["floors"]["logistic_regression"]["logloss"] < 1.0


def test_descriptions_name_the_history_window_and_the_fit_split(tiny):
    """A run's check sees the newest data.seq_len behaviours and `--train-split` may fit on another
    split: both show in the names, so a run's floor row and the CLI's whole-history one are told apart."""
    whole = compute_floors(PreparedData(str(tiny)), "test", FloorOptions(top_k=9))["floors"]
    assert whole["cos_mean_history"]["description"] == "cos(target, mean history SCL)"
    assert whole["category_share"]["description"] == "share of the history in the target's category"
    assert whole["logistic_regression"]["description"] == "logistic regression on the floors above, fitted on train"
    capped = compute_floors(PreparedData(str(tiny)), "test", FloorOptions(seq_len=60, top_k=9), "test")["floors"]
    assert capped["cos_mean_history"]["description"] == "cos(target, mean history SCL), newest 60"
    assert capped["mean_topk_similarity"]["description"] == "mean of the top-9 SCL cosines (GSU rule), newest 60"
    assert capped["category_share"]["description"] == "share of the history in the target's category, newest 60"
    assert capped["popularity"]["description"] == "smoothed test CTR of the target item"
    assert capped["logistic_regression"]["description"].endswith("fitted on test")


def test_message_says_below_or_above():
    floors = {"best": {"name": "cos_mean_history", "description": "cos(target, mean history SCL)", "gauc": 0.63}}
    below, msg = below_floor_message(0.61, floors)
    assert below and "GAUC 0.6100 is below the model-free floor 'cos(target, mean history SCL)' 0.6300" in msg
    below, msg = below_floor_message(0.65, floors)
    assert not below and "above" in msg


def test_message_measures_a_model_without_scl_vectors_against_the_floor_without_them():
    """DIN below a floor of SCL cosines was told to check its learning rates, the number of steps and the data,
    though it reads no SCL vectors: above the popularity floor it has learned what its inputs carry."""
    twin = frozenset({LONG_HISTORY})  # a GSU over the whole history, no SCL vectors
    floors = {"best": {"name": "cos_mean_history", "description": "cos(target, mean history SCL)", "gauc": 0.63},
              "floors": {"popularity": {"description": "smoothed train CTR of the target item", "gauc": 0.55},
                         "cos_mean_history": {"description": "cos(target, mean history SCL)", "gauc": 0.63}}}
    below, msg = below_floor_message(0.60, floors, reads=twin)
    assert below and "GAUC 0.6000 is below the model-free floor 'cos(target, mean history SCL)' 0.6300" in msg, msg
    assert ("which reads SCL vectors; this model does not, and it is above the best floor without them, 'smoothed "
            "train CTR") in msg, msg
    assert "0.5500 (+0.0500)" in msg and "check the learning rates" not in msg, msg
    assert msg.endswith("SCL vectors carry signal this model cannot see"), msg
    below, msg = below_floor_message(0.50, floors, reads=twin)  # below the floor without vectors too
    assert below and "below the best floor without SCL vectors (this model does not read them)" in msg, msg
    assert "0.5500 (-0.0500)" in msg and "check the learning rates" in msg, msg
    for reads in (EVERYTHING, twin):  # a model that reads them, or a best floor without them: as before
        assert "check the learning rates" in below_floor_message(0.60, floors, reads=EVERYTHING)[1]
        pop_best = {**floors, "best": {"name": "popularity", **floors["floors"]["popularity"]}}
        below, msg = below_floor_message(0.50, pop_best, reads=reads)
        assert below and "check the learning rates" in msg and "SCL vectors" not in msg, msg


def test_cache_is_reused_and_keyed_by_options(tiny, tmp_path):
    data = PreparedData(str(tiny))
    a = cached_floors(data, "test", OPTS, str(tmp_path))
    files = list(tmp_path.glob("floors-test-*.json"))
    assert len(files) == 1 and a == json.loads(files[0].read_text())
    text = files[0].read_text()
    assert f'"version": {FLOORS_VERSION}' in text
    files[0].write_text(text.replace(f'"version": {FLOORS_VERSION}', f'"version": {FLOORS_VERSION}, "marker": 7'))
    assert cached_floors(data, "test", OPTS, str(tmp_path))["marker"] == 7  # read, not recomputed
    cached_floors(data, "test", FloorOptions(top_k=3), str(tmp_path))
    assert len(list(tmp_path.glob("floors-test-*.json"))) == 2


@pytest.mark.parametrize("damage", ["binary", "a list", "an empty object", "floors of numbers", "best null",
                                    "best not a floor"])
def test_a_damaged_cache_file_is_recomputed(tiny, tmp_path, caplog, damage):
    """A cache file that is not the floors it cached: non-UTF-8 bytes were a UnicodeDecodeError (only a
    JSONDecodeError was caught), other JSON a TypeError / KeyError in its reader; at the end of a
    training run (`check_run_against_floors`) either was a traceback, exit 1, before metrics.json."""
    data = PreparedData(str(tiny))
    want = cached_floors(data, "test", OPTS, str(tmp_path))
    path, = tmp_path.glob("floors-test-*.json")
    doc = json.loads(path.read_text())
    if damage == "binary":
        path.write_bytes(b"\xff\xfe{")
    else:
        doc = {"a list": [], "an empty object": {}, "floors of numbers": {**doc, "floors": {"popularity": 0.5}},
               "best null": {**doc, "best": None},
               "best not a floor": {**doc, "best": {**doc["best"], "name": "absent"}}}[damage]
        path.write_text(json.dumps(doc))
    with caplog.at_level("WARNING", logger="muse_rec"):
        assert cached_floors(data, "test", OPTS, str(tmp_path)) == want
    assert f"{path}: " in caplog.text and "unreadable cached floors, recomputing" in caplog.text, caplog.text
    assert json.loads(path.read_text()) == want  # written again


def test_a_cache_that_cannot_be_written_is_said_and_the_floors_returned(tiny, tmp_path, caplog):
    """A file where the cache directory goes (or no room, a read-only directory): the FileExistsError of
    its mkdir was a traceback at the end of a training run (`check_run_against_floors`), exit 1, before
    metrics.json; the floors are only cached there."""
    data = PreparedData(str(tiny))
    want = cached_floors(data, "test", OPTS, str(tmp_path / "writable"))
    blocked = tmp_path / ".floors"
    blocked.write_text("not a directory")
    with caplog.at_level("WARNING", logger="muse_rec"):
        assert cached_floors(data, "test", OPTS, str(blocked)) == want
    assert f"floors not cached, {blocked}/floors-test-" in caplog.text, caplog.text
    assert blocked.read_text() == "not a directory"


# ----------------------------------------------------------------------------------------------
# CLI and bad input.
# ----------------------------------------------------------------------------------------------


def test_cli_prints_table_and_writes_strict_json(tiny, tmp_path, capsys):
    out = tmp_path / "floors.json"
    assert cli_main(["baselines", str(tiny), "--top-k", "9", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for name in ("popularity", "category_share", "cos_mean_history", "cos_mean_recent", "mean_topk_similarity",
                 "logistic_regression"):
        assert name in text
    assert "(best)" in text
    got = json.loads(out.read_text())  # strict JSON: json.loads would reject NaN only if parse_constant says so
    assert "NaN" not in out.read_text() and got["options"]["top_k"] == 9


def test_cli_warns_when_the_floors_are_fitted_on_the_split_they_score(tiny, capsys):
    # Popularity fitted on the scored split counts each sample's own click: GAUC far above any honest model,
    # printed as "(best)" with no word.
    assert cli_main(["baselines", str(tiny), "--top-k", "9"]) == 0
    assert "in-sample" not in capsys.readouterr().err
    assert cli_main(["baselines", str(tiny), "--top-k", "9", "--train-split", "test"]) == 0
    err = capsys.readouterr().err
    assert "WARNING: --split and --train-split are both 'test'" in err and "in-sample" in err


def test_cli_says_how_the_cosine_floors_rank_targets_without_a_vector(tiny, holes, capsys):
    assert cli_main(["baselines", str(holes)]) == 0
    text = capsys.readouterr().out
    data = PreparedData(str(holes))
    missing = 100 * float(1 - np.asarray(data.scl_present())[data.item_rows("test", slice(None))].mean())
    assert 5 < missing < 50  # the fixture drops 20% of the items' vectors
    assert f"{100 - missing:.1f}% of targets have an SCL vector" in text
    assert f"rank the {missing:.1f}% of targets without an SCL vector below every target with one" in text
    assert cli_main(["baselines", str(tiny)]) == 0
    full = capsys.readouterr().out
    assert "100.0% of targets have an SCL vector" in full and "without an SCL vector" not in full


def test_cli_reports_progress_while_it_scores(tiny, capsys, monkeypatch):
    """A progress line per interval on stderr while the splits are scored (here: every chunk), ending at
    the split's size; the table stays alone on stdout. It printed nothing until the end (93 s at 1.2M
    test samples)."""
    from muse_rec.metrics import floors

    monkeypatch.setattr(floors, "PROGRESS_EVERY_S", 0.0)
    assert cli_main(["baselines", str(tiny), "--top-k", "9"]) == 0
    out = capsys.readouterr()
    n = PreparedData(str(tiny)).num_samples("test")
    lines = [ln for ln in out.err.splitlines() if ln.startswith("floors: split test: ")]
    assert len(lines) >= 2, out.err  # the tiny split spans several chunks of users
    done = [int(re.search(r"split test: ([0-9,]+) of", ln).group(1).replace(",", "")) for ln in lines]
    assert done == sorted(done) and done[-1] == n and f"of {n:,} samples scored (100%)" in lines[-1]
    assert any(ln.startswith("floors: split train (the regression's fit): ") for ln in out.err.splitlines())
    assert "floors:" not in out.out
    monkeypatch.setattr(floors, "PROGRESS_EVERY_S", 3600.0)
    assert cli_main(["baselines", str(tiny), "--top-k", "9"]) == 0
    assert "floors:" not in capsys.readouterr().err  # faster than the interval: no line at all


def test_no_scl_vectors_skips_those_floors_with_a_warning(tiny, tmp_path, capsys):
    d = _copy(tiny, tmp_path / "prepared")
    _rewrite(d / "items/scl.npy", lambda a: np.zeros_like(a))
    _rewrite(d / "items/scl_present.npy", lambda a: np.zeros_like(a))
    assert cli_main(["baselines", str(d), "--out", str(tmp_path / "f.json")]) == 0
    captured = capsys.readouterr()
    assert "floor cos_mean_history skipped: the prepared data has no SCL vectors" in captured.err
    assert "floor logistic_regression skipped: it combines the SCL floors with the others" in captured.err
    got = json.loads((tmp_path / "f.json").read_text())
    # The floors without SCL vectors are still reported, the category floor as on the data with them.
    assert list(got["floors"]) == ["popularity", "category_share"]
    assert got["best"]["name"] == max(got["floors"], key=lambda k: got["floors"][k]["gauc"])
    assert all(v is not None for v in got["floors"]["popularity"].values())
    with_vectors = compute_floors(PreparedData(str(tiny)), "test", FloorOptions())["floors"]["category_share"]
    assert got["floors"]["category_share"]["gauc"] == with_vectors["gauc"]


def test_one_class_test_users_is_a_clear_error(tiny, tmp_path, capsys):
    d = _copy(tiny, tmp_path / "prepared")
    users = np.load(d / "test/sample_user_keys.npy")
    # Every user's impressions get that user's first label: each user is one-class.
    first = {u: y for u, y in zip(users[::-1].tolist(), np.load(d / "test/labels.npy")[::-1].tolist())}
    _rewrite(d / "test/labels.npy", lambda a: np.array([first[u] for u in users.tolist()], dtype=a.dtype))
    out = tmp_path / "f.json"
    assert cli_main(["baselines", str(d), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "split 'test': none of its" in err and "GAUC is undefined" in err
    assert "Traceback" not in err and not out.exists()
    with pytest.raises(FloorsError):
        compute_floors(PreparedData(str(d)), "test", OPTS)


@pytest.mark.parametrize("args, words", [
    (["--split", "valid"], "--split = 'valid': "),
    (["--train-split", "valid"], "--train-split = 'valid': "),
    (["--top-k", "0"], "--top-k must be > 0"),
    (["--prior-strength", "inf"], "--prior-strength must be a finite number > 0, got inf"),  # was a NaN traceback
])
def test_bad_arguments_exit_2(tiny, capsys, args, words):
    assert cli_main(["baselines", str(tiny), *args]) == 2
    assert words in capsys.readouterr().err


def test_not_a_prepared_directory_exits_2(tmp_path, capsys):
    assert cli_main(["baselines", str(tmp_path)]) == 2
    assert "no meta.json" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Beside the models: compare, the reproduce report, a trained run's check.
# ----------------------------------------------------------------------------------------------

FAKE_FLOORS = {
    "popularity": {"description": "smoothed train CTR of the target item", "gauc": 0.52, "auc": 0.53, "logloss": 0.41},
    "cos_mean_history": {"description": "cos(target, mean history SCL)", "gauc": 0.63, "auc": 0.62, "logloss": None},
}


def _fake_run(d: Path, method: str, gauc: float, floors=None, spec_data=None) -> Path:
    d.mkdir(parents=True)
    m = {"method": method, "gauc": gauc, "auc": gauc, "logloss": 0.4, "train_samples_per_s": 100.0}
    if floors:
        m["floors"] = floors
    (d / "metrics.json").write_text(json.dumps(m))
    if spec_data:
        import yaml

        (d / "spec.yaml").write_text(yaml.safe_dump({"data": spec_data}))
    return d


def test_compare_shows_recorded_floors_and_who_is_below(tmp_path, capsys):
    din = _fake_run(tmp_path / "din", "DIN", 0.61, FAKE_FLOORS)
    muse = _fake_run(tmp_path / "muse", "MUSE", 0.66, FAKE_FLOORS)
    assert cli_main(["compare", str(din), str(muse), "--out", str(tmp_path / "cmp")]) == 0
    text = capsys.readouterr().out
    assert "| floor: cos(target, mean history SCL)" in text and "0.6300" in text
    assert "best model-free floor: cos(target, mean history SCL) GAUC 0.6300; BELOW it: DIN (0.6100)" in text
    assert ("(a model that does not read SCL vectors and the long-term history, as DIN, cannot see what that floor "
            "reads: the best floor without them is smoothed train CTR of the target item GAUC 0.5200)") in text, text
    assert "MUSE (" not in text.split("BELOW it:")[1].split("\n")[0]
    saved = json.loads((tmp_path / "cmp.json").read_text())
    assert saved["floors"] == FAKE_FLOORS and any(r["method"].startswith("floor: ") for r in saved["rows"])
    assert cli_main(["compare", str(din), "--no-floors"]) == 0
    assert "floor:" not in capsys.readouterr().out


def _run_of_spec(d: Path, spec_file: str, method: str, gauc: float) -> Path:
    """A fake finished run whose spec.yaml is ``spec_file`` resolved, as `train` writes it."""
    import yaml

    from muse_rec.spec import load_spec

    _fake_run(d, method, gauc, FAKE_FLOORS)
    (d / "spec.yaml").write_text(yaml.safe_dump(load_spec(REPO / spec_file).to_dict()))
    return d


def test_compare_does_not_doubt_the_training_of_an_id_only_model_above_the_floor_without_scl(tmp_path, capsys):
    """DIN (reads no SCL vectors) below the best floor, a floor of SCL cosines, but above popularity, the best
    floor without them: the run's own line says the SCL vectors carry signal it cannot see; compare said
    "BELOW it: DIN ... - check the learning rates, the number of steps and the data" (an outside probe's DIN,
    0.7050 under the regression's 0.7878 and above popularity's 0.6571). A model that reads SCL vectors, or one
    below the floor without them too, is still told to check its training."""
    din = _run_of_spec(tmp_path / "din", "specs/methods/din.yaml", "DIN", 0.61)
    muse = _run_of_spec(tmp_path / "muse", "specs/methods/muse.yaml", "MUSE", 0.60)
    assert cli_main(["compare", str(din), str(muse), "--no-floors"]) == 0  # the specs load
    capsys.readouterr()
    assert cli_main(["compare", str(din), str(muse)]) == 0
    verdict = [line for line in capsys.readouterr().out.splitlines() if line.startswith("best model-free floor")]
    assert len(verdict) == 1, verdict
    # DIN reads neither the SCL vectors nor the history beyond its newest 50 behaviours (no GSU)
    doubted, _, blind = verdict[0].partition("below it only for want of SCL vectors and the long-term history: ")
    assert "BELOW it: MUSE (0.6000) - check the learning rates, the number of steps and the data" in doubted, verdict
    assert "DIN" not in doubted, verdict
    assert blind.startswith("DIN (0.6100), which does not read them and is above the best floor without them, "
                            "smoothed train CTR of the target item GAUC 0.5200"), verdict
    low = _run_of_spec(tmp_path / "din_low", "specs/methods/din.yaml", "DIN", 0.50)
    assert cli_main(["compare", str(low)]) == 0
    out = capsys.readouterr().out
    assert "BELOW it: DIN (0.5000) - check the learning rates, the number of steps and the data" in out, out
    assert "for want of SCL vectors" not in out, out


def test_compare_names_the_model_below_the_floor_it_can_see_not_din(tmp_path, capsys):
    """TWIN (the long-term history, no SCL vectors) below the regression and below popularity, the best floor
    without SCL vectors, as its own run's line says: compare's verdict added "(a model that does not read SCL
    vectors, as DIN, cannot see what that floor reads: the best floor without them is ...)", naming DIN, which
    was not below it, and offering TWIN an excuse its GAUC rules out (an outside world: TWIN 0.5943, popularity
    0.5987). Now the row is named and said to be below that floor too; a row of unknown model keeps the hint."""
    twin = _run_of_spec(tmp_path / "twin", "specs/methods/twin.yaml", "TWIN", 0.50)
    din = _run_of_spec(tmp_path / "din", "specs/methods/din.yaml", "DIN", 0.55)
    assert cli_main(["compare", str(twin), str(din)]) == 0
    verdict = [line for line in capsys.readouterr().out.splitlines() if line.startswith("best model-free floor")]
    doubted = verdict[0].split("; below it only for want of")[0]
    assert doubted == ("best model-free floor: cos(target, mean history SCL) GAUC 0.6300; BELOW it: TWIN (0.5000) - "
                       "check the learning rates, the number of steps and the data (TWIN (0.5000) does not read SCL "
                       "vectors and is below the best floor without them too, smoothed train CTR of the target item "
                       "GAUC 0.5200)"), verdict
    unknown = _fake_run(tmp_path / "unknown", "TWIN", 0.50, FAKE_FLOORS)
    assert cli_main(["compare", str(unknown)]) == 0
    assert "(a model that does not read SCL vectors and the long-term history, as DIN, cannot see" in capsys.readouterr().out


def test_compare_refuses_a_run_given_twice_and_an_absent_baseline(tmp_path, capsys):
    """Both went through before: the same run twice became a method with 2 seeds and a spread of 0,
    and a --baseline no run has silently dropped the margins."""
    din = _fake_run(tmp_path / "din", "DIN", 0.61)
    muse = _fake_run(tmp_path / "muse", "MUSE", 0.66)
    assert cli_main(["compare", str(din), str(muse), str(tmp_path / "muse" / ".." / "din"), "--no-floors"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'muse' / '..' / 'din'}: the same run as {din}, given twice" in err, err
    assert cli_main(["compare", str(din), str(muse), "--no-floors", "--baseline", "TWIN"]) == 2
    assert "--baseline 'TWIN': no run of that method (the runs': DIN, MUSE)" in capsys.readouterr().err
    assert cli_main(["compare", str(din), str(muse), "--no-floors", "--baseline", "muse"]) == 0  # case-insensitive
    assert "DIN - MUSE: -0.0500 GAUC" in capsys.readouterr().out
    assert cli_main(["compare", str(muse), "--no-floors"]) == 0  # the default baseline may be absent


def test_compare_computes_floors_for_the_runs_data_once(tiny, tmp_path, capsys):
    spec_data = {"prepared": str(tiny), "eval_split": "test", "train_split": "train", "seq_len": 60}
    run = _fake_run(tmp_path / "runs" / "din", "DIN", 0.5, spec_data=spec_data)
    assert cli_main(["compare", str(run)]) == 0
    assert "floor: cos(target, mean history SCL)" in capsys.readouterr().out
    cached = list((tmp_path / "runs" / ".floors").glob("floors-test-*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["options"]["seq_len"] == 60
    stamp = cached[0].stat().st_mtime_ns
    assert cli_main(["compare", str(run)]) == 0
    assert cached[0].stat().st_mtime_ns == stamp  # read from the cache, not recomputed


def _fake_evaluation(d: Path, method: str, gauc: float, data: dict, max_batches: int = 0) -> Path:
    """An `evaluate --out` directory: metrics.json naming its checkpoint and the data it scored, no spec.yaml."""
    run = _fake_run(d, method, gauc)
    m = json.loads((run / "metrics.json").read_text())
    m.update(checkpoint=str(d.parent / f"{d.name}-run" / "checkpoints" / "step-00000003"), max_batches=max_batches,
             eval_split=data.get("eval_split", "test"), data=data)
    (run / "metrics.json").write_text(json.dumps(m))
    return run


def test_compare_computes_floors_for_evaluations_from_the_data_they_recorded(tiny, tmp_path, capsys):
    """`muse-rec evaluate` writes no spec.yaml: evaluations compared (alone, or beside a run) showed no floors,
    "spec.yaml not found, so the runs' data is unknown", though each names the data it scored."""
    data = {"prepared": str(tiny), "eval_split": "test", "train_split": "train", "seq_len": 60}
    din = _fake_evaluation(tmp_path / "evals" / "din", "DIN", 0.5, data)
    muse = _fake_evaluation(tmp_path / "evals" / "muse", "MUSE", 0.9, data)
    run = _fake_run(tmp_path / "evals" / "sim", "SIM-hard", 0.5, spec_data=data)
    for runs in ((din, muse), (run, din)):
        assert cli_main(["compare", *map(str, runs)]) == 0
        out = capsys.readouterr()
        assert "floor: cos(target, mean history SCL), newest 60" in out.out and "floors not shown" not in out.err, out
    other = _fake_evaluation(tmp_path / "evals" / "other", "TWIN", 0.5, {**data, "seq_len": 20})
    assert cli_main(["compare", str(din), str(other)]) == 0
    out = capsys.readouterr()
    assert "floor:" not in out.out and "floors not shown: the runs are of different data, split or seq_len" in out.err
    # A partial evaluation (--max-batches) is not judged by floors of the whole split.
    part = _fake_evaluation(tmp_path / "evals" / "part", "DIN", 0.5, data, max_batches=2)
    assert cli_main(["compare", str(part)]) == 0
    out = capsys.readouterr()
    assert "floor:" not in out.out and f"floors not shown: {part} scored only part of the split" in out.err, out.err
    # Recorded data that does not say: named, not a traceback.
    bad = _fake_evaluation(tmp_path / "evals" / "bad", "DIN", 0.5, {"seq_len": "x"})
    assert cli_main(["compare", str(bad)]) == 0
    err = capsys.readouterr().err
    assert f"cannot compute them, the data is not known: {bad / 'metrics.json'}: KeyError" in err, err


def test_compare_computes_no_one_floor_for_runs_of_different_seq_len(tiny, tmp_path, capsys):
    """Runs that recorded no floors (train.check_floors false) of one data set at seq_len 60 and 20: the
    first run's floors judged both, so the verdict and the floor rows changed with the order the runs
    were given in."""
    def spec_data(seq_len: int) -> dict:
        return {"prepared": str(tiny), "eval_split": "test", "train_split": "train", "seq_len": seq_len}

    a = _fake_run(tmp_path / "runs" / "a", "DIN", 0.5, spec_data=spec_data(60))
    b = _fake_run(tmp_path / "runs" / "b", "MUSE", 0.5, spec_data=spec_data(20))
    for runs in ((a, b), (b, a)):
        assert cli_main(["compare", *map(str, runs)]) == 0
        out = capsys.readouterr()
        assert "floor:" not in out.out and "BELOW" not in out.out, out.out
        assert "floors not shown: the runs are of different data, split or seq_len" in out.err, out.err
    c = _fake_run(tmp_path / "runs" / "c", "MUSE", 0.5, spec_data=spec_data(60))  # one data set: shown
    assert cli_main(["compare", str(a), str(c)]) == 0
    assert "floor: cos(target, mean history SCL), newest 60" in capsys.readouterr().out


def test_compare_floors_cache_is_checked_as_an_output_directory(tiny, tmp_path, capsys):
    """--floors-cache PREPARED wrote its floors-*.json into the prepared data (an artifact nothing may be
    written into; `prepare` then refused it), --floors-cache RUN into a run, and a file there was a
    FileExistsError traceback."""
    spec_data = {"prepared": str(tiny), "eval_split": "test", "train_split": "train", "seq_len": 60}
    run = _fake_run(tmp_path / "runs" / "din", "DIN", 0.5, spec_data=spec_data)
    (run / "run.json").write_text("{}")  # a run directory's confirmed markers (output_paths.CLOSED_CONFIRMED_BY)
    blocked = tmp_path / "file.json"
    blocked.write_text("{}")
    before = sorted(p.name for p in tiny.iterdir())
    for cache, words in ((tiny, "holds prepared data (meta.json)"), (tiny / "sub", f"inside {tiny}, which holds"),
                         (run, "holds a training run (run.json)"), (blocked, "exists and is not a directory")):
        assert cli_main(["compare", str(run), "--floors-cache", str(cache)]) == 2
        err = capsys.readouterr().err
        assert f"--floors-cache {cache}: {words}" in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tiny.iterdir()) == before
    cache = tmp_path / "cache"
    for _ in range(2):  # a new directory, then its own cache again
        assert cli_main(["compare", str(run), "--floors-cache", str(cache)]) == 0
        assert "floor: cos(target, mean history SCL)" in capsys.readouterr().out
    names = sorted(p.name for p in cache.iterdir())  # one entry: its floors and their per-user AUCs
    assert [n.startswith("floors-test-") for n in names] == [True, True], names
    assert [n.split(".", 1)[1] for n in names] == ["json", "users.npz"], names


@pytest.mark.parametrize("content, words", [
    (None, "no such file"), ("{]", "not valid JSON"), ('{"rows": []}', "no 'floors' entry"),
    ("[1]", "expected a JSON object, got list"),
    ("DIR", "cannot read"),  # was an IsADirectoryError traceback
    (b"\xff\xfe\x00garbage", "not valid JSON")])  # was one line naming neither the flag nor the file
def test_compare_bad_floors_file_exits_2(tmp_path, capsys, content, words):
    run = _fake_run(tmp_path / "din", "DIN", 0.6)
    f = tmp_path / "floors.json"
    if content == "DIR":
        f.mkdir()
    elif isinstance(content, bytes):
        f.write_bytes(content)
    elif content is not None:
        f.write_text(content)
    assert cli_main(["compare", str(run), "--floors", str(f)]) == 2
    err = capsys.readouterr().err
    assert f"--floors {f}" in err and words in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("content, words", [
    ('{"gauc": 0.6', "metrics.json: not valid JSON"),
    ("[1, 2]", "metrics.json: expected a JSON object, got list"),
    ('{"gauc": 0.6}', "metrics.json: method: expected the method's name, got None"),
    ('{"method": 5, "gauc": 0.6}', "metrics.json: method: expected the method's name, got 5"),
    ('{"method": "DIN", "gauc": "0.6"}', "metrics.json: gauc: expected a finite number or null, got '0.6'"),
    ('{"method": "DIN", "gauc": NaN}', "metrics.json: gauc: expected a finite number or null, got nan"),
    ('{"method": "DIN", "gauc": 0.6, "floors": {"x": {"gauc": "a"}}}', "metrics.json: floors.x.gauc: expected"),
    ('{"method": "DIN", "gauc": 0.6, "floors": [1]}', "metrics.json: floors: expected {name:"),
    # Finite but impossible: tabulated as the run's result before.
    ('{"method": "DIN", "gauc": 1e30}', "metrics.json: gauc: expected a value in [0, 1] or null, got 1e+30"),
    ('{"method": "DIN", "gauc": 0.6, "auc": -3}', "metrics.json: auc: expected a value in [0, 1] or null, got -3"),
    ('{"method": "DIN", "gauc": 0.6, "logloss": -0.5}', "metrics.json: logloss: expected a value in [0, inf] or null"),
    ('{"method": "DIN", "gauc": 0.6, "floors": {"x": {"gauc": 2}}}', "metrics.json: floors.x.gauc: expected a value in"),
])
def test_compare_names_the_key_of_a_malformed_metrics_json(tmp_path, capsys, content, words):
    """A run directory from elsewhere is untrusted: one line naming file and key, not a traceback."""
    good = _fake_run(tmp_path / "din", "DIN", 0.6)
    bad = tmp_path / "other"
    bad.mkdir()
    (bad / "metrics.json").write_text(content)
    assert cli_main(["compare", str(good), str(bad), "--no-floors"]) == 2
    err = capsys.readouterr().err
    assert f"{bad / 'metrics.json'}" in err and words in err and "Traceback" not in err, err


@pytest.mark.parametrize("name", ["spec.yaml", "run.json"])
def test_compare_names_a_runs_spec_yaml_or_run_json_that_is_a_directory(tmp_path, capsys, name):
    """A directory in place of a run's spec.yaml or run.json: an IsADirectoryError traceback (exit 1)."""
    # run.json is read beside a spec.yaml only
    run = _fake_run(tmp_path / "din", "DIN", 0.6, spec_data={"seq_len": 50} if name == "run.json" else None)
    (run / name).mkdir()
    assert cli_main(["compare", str(run), "--no-floors"]) == 2
    err = capsys.readouterr().err
    assert f"{run / name}: cannot read (Is a directory)" in err and "Traceback" not in err, err


@pytest.mark.parametrize("text, words", [
    ("data:\n  seq_len: " + "[" * 5000 + "]" * 5000 + "\n", "spec.yaml: not valid YAML (nested too deeply to parse)"),
    ("data:\n  seq_len: 50\n  seq_len: 1000\n", "spec.yaml: not valid YAML (duplicate key 'seq_len' (a second value would silently win)"),
])
def test_compare_names_a_runs_spec_yaml_nested_too_deeply_or_with_a_key_twice(tmp_path, capsys, text, words):
    """A run's spec.yaml nested thousands deep was a RecursionError traceback (exit 1), and a key given twice was
    silently its last value (the run grouped and its floors computed by it), where `train --resume` and a spec
    refuse both."""
    run = _fake_run(tmp_path / "din", "DIN", 0.6)
    (run / "spec.yaml").write_text(text)
    assert cli_main(["compare", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"muse-rec compare: {run / words}"), err
    assert err.count("\n") == 1 and "Traceback" not in err, err


def test_compare_names_a_file_given_as_a_run_directory(tmp_path, capsys):
    """`compare some.json` asked whether the run had finished ("no metrics.json"): it is no run at all."""
    given = tmp_path / "some.json"
    given.write_text(json.dumps({"method": "DIN", "gauc": 0.6}))
    assert cli_main(["compare", str(given), "--no-floors"]) == 2
    err = capsys.readouterr().err
    assert f"muse-rec compare: {given}: is a file, not a run directory" in err and "Traceback" not in err, err


def test_compare_refuses_floors_of_another_split_or_data_set(tmp_path, capsys):
    """`compare RUN --floors F` with F of other prepared data (the tiny set's 1,650 test samples beside a
    demo run of 18,952) judged the run by another data set's floors, exit 0 ("every method is above it").
    Now one line, exit 2, naming the file, its split and samples and the run; floors of the run's own
    split and sample count are shown as before."""
    run = _fake_run(tmp_path / "muse", "MUSE", 0.66)
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**metrics, "eval_split": "test", "samples": 18952}))
    f = tmp_path / "floors.json"
    for split, samples, ok in (("test", 1650, False), ("train", 18952, False), ("test", 18952, True)):
        f.write_text(json.dumps({"prepared": "data/x", "split": split, "samples": samples, "floors": FAKE_FLOORS}))
        assert cli_main(["compare", str(run), "--floors", str(f)]) == (0 if ok else 2)
        out = capsys.readouterr()
        if ok:
            assert "| floor: cos(target, mean history SCL)" in out.out, out
            continue
        assert out.err == (f"muse-rec compare: --floors {f}: floors of split {split!r} of data/x ({samples:,} samples), "
                           f"but {run} scored 18,952 samples of split 'test': they would judge it by other data; pass "
                           "the floors of the runs' data (`muse-rec baselines PREPARED --out FILE`) or leave --floors "
                           "out\n"), out.err


def test_compare_refuses_floors_of_other_data_with_the_same_split_and_sample_count(tiny, tmp_path, capsys):
    """`compare RUN --floors F` with F of one world's prepared data beside runs of the same world at 4x the train
    users (the same test split: same name, same 19,983 samples) showed the other data's popularity and
    regression floors (0.6208 / 0.7058 for the runs' 0.5987 / 0.6924) and called a run below them, exit 0.
    `baselines --out` now records the data's fingerprint and a run of other data is refused, naming both;
    a file without one (written before) is compared as before."""
    data = PreparedData(str(tiny))
    result = compute_floors(data, "test", OPTS)
    assert result["data_fingerprint"] == data.fingerprint
    run = _fake_run(tmp_path / "muse", "MUSE", 0.66)
    metrics = json.loads((run / "metrics.json").read_text())
    n = result["samples"]
    f = tmp_path / "floors.json"
    for fingerprint, ok in (("0" * 20, False), (data.fingerprint, True), (None, True)):
        (run / "metrics.json").write_text(json.dumps({**metrics, "eval_split": "test", "samples": n,
                                                      "data_fingerprint": data.fingerprint}))
        doc = {**result, "floors": FAKE_FLOORS}
        if fingerprint is None:
            del doc["data_fingerprint"]
        else:
            doc["data_fingerprint"] = fingerprint
        f.write_text(json.dumps(doc))
        assert cli_main(["compare", str(run), "--floors", str(f)]) == (0 if ok else 2)
        out = capsys.readouterr()
        if ok:
            assert "| floor: cos(target, mean history SCL)" in out.out and not out.err, out
            continue
        assert out.err == (f"muse-rec compare: --floors {f}: floors of {tiny} (data fingerprint {'0' * 20}), but {run} "
                           f"scored data {data.fingerprint}: they would judge it by other data; pass the floors of the "
                           "runs' data (`muse-rec baselines PREPARED --out FILE`) or leave --floors out\n"), out.err


def test_compare_refuses_floors_of_another_history_window_or_fit_split(tiny, tmp_path, capsys):
    """`compare RUN --floors F` with F of the whole history (`baselines --seq-len 0`, the default) beside a run
    of data.seq_len 60 judged it by behaviours its model never reads, exit 0. Windows that both hold every
    history of the split (0 and one at least the longest) give the same floors and are accepted; a window that
    cannot be told apart (the run's data unreadable) and floors fitted on another split are refused."""
    longest = int(np.diff(np.load(tiny / "test" / "seq_offsets.npy")).max())
    assert 60 < longest  # the tiny release's histories are longer than the short window
    f = tmp_path / "floors.json"

    def compare(window: int, seq_len: int, prepared: Path = tiny, fitted_on: str = "train") -> str:
        f.write_text(json.dumps({"split": "test", "train_split": fitted_on, "options": {"seq_len": window},
                                 "floors": FAKE_FLOORS}))
        run = tmp_path / f"run-{window}-{seq_len}-{prepared.name}-{fitted_on}"
        _fake_run(run, "MUSE", 0.66, spec_data={"prepared": str(prepared), "eval_split": "test",
                                                 "train_split": "train", "seq_len": seq_len})
        code = cli_main(["compare", str(run), "--floors", str(f)])
        out = capsys.readouterr()
        assert code == (0 if not out.err else 2) and "Traceback" not in out.err, out
        return out.err

    for window, seq_len in ((0, longest), (0, 1000), (longest, 1000), (60, 60)):  # the same floors
        assert compare(window, seq_len) == "", (window, seq_len)
    run = tmp_path / "run-0-60-prepared-train"
    assert compare(0, 60) == (f"muse-rec compare: --floors {f}: floors of the whole history, but {run} reads the newest "
                              "60 behaviours (data.seq_len 60): they would judge it by what its model does not see; "
                              "pass floors of its window (`muse-rec baselines PREPARED --seq-len 60 --out FILE`) or "
                              "leave --floors out\n")
    assert "floors of the newest 60 behaviours, but" in compare(60, 1000)
    assert f"floors of the newest {longest - 1:,} behaviours, but" in compare(longest - 1, 0)
    gone = tmp_path / "moved"
    assert f"(and {gone} cannot be read to tell whether every history fits both)" in compare(0, 1000, gone)
    assert "floors fitted on split 'test', but" in compare(0, 1000, fitted_on="test")


def test_compare_names_a_run_directory_that_does_not_exist(tmp_path, capsys):
    """`compare runs/demo/muse-sed1` (a typo) asked whether the run had finished and advised `muse-rec
    train --resume`: there is no run there to finish. Now it says the directory does not exist; a run
    directory without metrics.json keeps the question."""
    typo, unfinished = tmp_path / "muse-sed1", tmp_path / "muse-seed2"
    unfinished.mkdir()
    assert cli_main(["compare", str(typo), "--no-floors"]) == 2
    err = capsys.readouterr().err
    assert err == f"muse-rec compare: {typo}/metrics.json: no metrics.json: {typo} does not exist (give a run directory)\n"
    assert not typo.exists()
    assert cli_main(["compare", str(unfinished), "--no-floors"]) == 2
    assert "did the run finish? evaluate it with `muse-rec train --resume`" in capsys.readouterr().err


def test_reproduce_report_shows_floors_in_its_tables(tmp_path):
    from muse_rec.reproduce.plan import build_plan
    from muse_rec.reproduce.report import write_report
    from muse_rec.reproduce.results import load_metrics
    from tests.reproduce.test_report import write_fake_runs

    plan = build_plan(["table5"], seeds=2)
    write_fake_runs(tmp_path, plan)  # GAUC: DIN 0.55, ..., MUSE 0.64
    for f in (tmp_path / "runs").glob("*/metrics.json"):
        m = json.loads(f.read_text())
        f.write_text(json.dumps({**m, "floors": FAKE_FLOORS}))
    md = write_report(plan, load_metrics(tmp_path, plan), tmp_path).markdown
    assert "## Model-free floors" in md
    table5 = md[md.index("## Table 5"):]
    assert "| floor: cos(target, mean history SCL) | - | - | 0.6300 (model-free) |" in table5
    below = md[md.index("**Below the best floor**"):].split("\n")[0]
    assert "`din`" in below and "`muse`" not in below


def test_trained_run_records_its_floor_check(tiny, tmp_path):
    import subprocess

    from tests.conftest import REPO, subprocess_env, venv_bin

    def train(name: str, *extra: str) -> subprocess.CompletedProcess:
        sets = [f"data.prepared={tiny}", f"output_dir={tmp_path}/{{name}}", f"name={name}", "data.seq_len=60",
                "train.batch_size=64", "train.eval_batch_size=512", "model.tower_hidden=[32]", "train.max_steps=3",
                "model.gsu.top_k=20", *extra]
        cmd = [venv_bin("muse-rec"), "train", "--spec", "specs/demo/din.yaml"] + [a for s in sets for a in ("--set", s)]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=subprocess_env(), timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        return out

    log = train("checked").stderr
    m = json.loads((tmp_path / "checked" / "metrics.json").read_text())
    best = m["best_floor"]
    assert set(m["floors"]) == {"popularity", "category_share", "cos_mean_history", "cos_mean_recent",
                                "mean_topk_similarity", "logistic_regression"}
    assert best["gauc"] == max(f["gauc"] for f in m["floors"].values())
    assert m["below_floor"] == (m["gauc"] < best["gauc"])
    words = "is below the model-free floor" if m["below_floor"] else "is above the best model-free floor"
    assert f"GAUC {m['gauc']:.4f} {words}" in log
    # Each gap's paired error over the split's users, from the run's own predictions (`floor_noise`).
    assert best["gap_se"] == m["floor_gap_se"][best["name"]] > 0 and set(m["floor_gap_se"]) == set(m["floors"])
    assert f"standard errors of {best['gap_se']:.4f})" in log, log
    if m["below_floor"] and floor_reads(best["name"]):  # DIN reads neither: measured against the floor it can see
        assert "this model does not" in log, log
    # Same floors as `muse-rec baselines` at the run's seq_len, cached beside the run.
    want = compute_floors(PreparedData(str(tiny)), "test", FloorOptions(seq_len=60))
    assert m["floors"]["cos_mean_history"]["gauc"] == pytest.approx(want["floors"]["cos_mean_history"]["gauc"], abs=0)
    assert list((tmp_path / ".floors").glob("floors-test-*.json"))
    # Another seed's run records the same floors (its own gap errors apart from them), so `compare` shows them
    # for both as recorded; with the errors inside `floors` every run's differed and compare showed none.
    train("seed1", "train.seed=1")
    other = json.loads((tmp_path / "seed1" / "metrics.json").read_text())
    assert other["floors"] == m["floors"] and other["floor_gap_se"] != m["floor_gap_se"]
    out = subprocess.run([venv_bin("muse-rec"), "compare", str(tmp_path / "checked"), str(tmp_path / "seed1")],
                         capture_output=True, text=True, cwd=REPO, env=subprocess_env(), timeout=300)
    assert out.returncode == 0 and "(floors recorded by the runs)" in out.stdout, out.stdout + out.stderr

    train("unchecked", "train.check_floors=false", "train.max_steps=1")
    assert "floors" not in json.loads((tmp_path / "unchecked" / "metrics.json").read_text())


def test_compare_without_known_data_says_why_floors_are_missing(tmp_path, capsys):
    run = _fake_run(tmp_path / "din", "DIN", 0.6)  # no floors recorded, no spec.yaml
    assert cli_main(["compare", str(run)]) == 0
    captured = capsys.readouterr()
    assert "model-free floors not shown:" in captured.err and "spec.yaml not found" in captured.err
    assert "floor:" not in captured.out


def test_chunks_are_scored_on_torchs_threads_with_the_same_result(holes, monkeypatch):
    """`split_scores` scores whole chunks on `torch.get_num_threads()` threads, each op on one
    intra-op thread (2 intra-op threads on 2 shared cores ran 4-10x slower than one: every op's
    barrier waited for a descheduled thread). Same scores as one thread, progress in order,
    torch's thread count given back."""
    import threading

    import torch

    from muse_rec.metrics import floor_scores

    data = PreparedData(str(holes))
    n = data.num_samples("test")
    ctr = ItemCtr.from_train(data, "train", OPTS.prior_strength)
    seen = []
    real = floor_scores.scl_scores

    def spy(*args, **kwargs):
        seen.append((threading.get_ident(), torch.get_num_threads()))
        return real(*args, **kwargs)

    monkeypatch.setattr(floor_scores, "scl_scores", spy)
    before = torch.get_num_threads()
    results = {}
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            seen.clear()
            done = []
            results[threads] = split_scores(data, "test", np.arange(n), OPTS, ctr, with_scl=True, on_chunk=done.append)
            assert torch.get_num_threads() == threads  # given back
            assert done == sorted(done) and done[-1] == n and len(done) == len(seen) > 3
            assert {t for _, t in seen} == {1}  # each chunk's ops on one intra-op thread
    finally:
        torch.set_num_threads(before)
    assert len({ident for ident, _ in seen}) > 1  # 3 threads really shared the chunks
    for k in results[1]:
        np.testing.assert_array_equal(results[3][k], results[1][k], err_msg=k)


def _vectors_whose_fp32_self_cosine_is_and_is_not_one() -> tuple:
    """Two int8 vectors: the GSU's fp32 kernel gives one of them cos(v, v) = 1.0, the other not."""
    import torch

    from muse_rec.modules.cosine import grouped_cosine

    v = np.random.default_rng(0).integers(-127, 128, size=(256, 128)).astype(np.int8)
    cos, _ = grouped_cosine(torch.from_numpy(v), torch.from_numpy(v[:, None, :]), torch.arange(len(v)))
    exact_one = (cos[:, 0] == 1.0).numpy()
    assert exact_one.any() and not exact_one.all()  # else this test would show nothing
    return v[np.flatnonzero(exact_one)[0]], v[np.flatnonzero(~exact_one)[0]]


def test_tie_exact_cosine_rounds_equal_cosines_to_equal_floats():
    from muse_rec.metrics.floor_scores import tie_exact_cosine

    one, other = _vectors_whose_fp32_self_cosine_is_and_is_not_one()
    for v in (one, other):
        w = v.astype(np.float64)
        assert tie_exact_cosine(w @ w, w @ w, w @ w) == 1.0
        assert tie_exact_cosine(-(w @ w), w @ w, w @ w) == -1.0
        assert tie_exact_cosine(3 * (w @ w), w @ w, 9 * (w @ w)) == 1.0  # the history's sum: 3 copies
    # cos = 1/2 from different integers: (dot, |a|^2 |b|^2) = (1, 2 x 2) and (3, 6 x 6)
    assert tie_exact_cosine(np.float64(1), 2.0, 2.0) == tie_exact_cosine(np.float64(3), 6.0, 6.0) == 0.5
    assert tie_exact_cosine(np.float64(0), 0.0, 5.0) == NO_VEC  # a zero vector: the GSU's sentinel
    a, b = one.astype(np.float64), other.astype(np.float64)
    assert tie_exact_cosine(a @ b, a @ a, b @ b) == pytest.approx(a @ b / np.sqrt(a @ a) / np.sqrt(b @ b), abs=1e-15)


def test_equal_cosines_of_repeated_items_tie_in_the_top_k_floor(tiny, tmp_path):
    """A target that is also in the history has cosine exactly 1 with it. The GSU's fp32 kernel gives
    1.0 for some vectors and 0.99999994 for others, and GAUC then ordered pairs that are ties
    (0.0004-0.0012 GAUC of mean_topk_similarity on a set with repeated items). One test user's
    history is made of copies of its two targets a and b (a's vector gets fp32 self-cosine 1.0, b's
    not): both samples must score exactly 1.0 in the top-K floor, and 1.0 in cos_mean_history for a
    window of only a."""
    d = _copy(tiny, tmp_path / "prepared")
    users, items = np.load(d / "test/sample_users.npy"), np.load(d / "test/sample_items.npy")
    off = np.load(d / "test/seq_offsets.npy")
    u = next(int(u) for u in np.unique(users[users >= 0])
             if off[u + 1] - off[u] >= 2 * OPTS.top_k and np.unique(items[users == u]).size >= 2)
    a, b = np.unique(items[users == u])[:2]
    va, vb = _vectors_whose_fp32_self_cosine_is_and_is_not_one()

    def put(arr):
        arr[a], arr[b] = va, vb
        return arr

    _rewrite(d / "items/scl.npy", put)
    _rewrite(d / "items/scl_present.npy", lambda arr: (arr.__setitem__([a, b], 1), arr)[1])
    n_hist = int(off[u + 1] - off[u])

    def history(arr):
        arr[off[u]:off[u + 1]] = np.resize([a, b], n_hist)  # alternating: at least K copies of each
        return arr

    _rewrite(d / "test/seq_items.npy", history)
    data = PreparedData(str(d))
    n = data.num_samples("test")
    ctr = ItemCtr.from_train(data, "train", OPTS.prior_strength)
    scores = split_scores(data, "test", np.arange(n), OPTS, ctr, with_scl=True)["mean_topk_similarity"]
    mine = (users == u) & np.isin(items, [a, b])
    assert set(items[mine].tolist()) == {a, b}
    assert (scores[mine] == 1.0).all(), scores[mine]

    _rewrite(d / "test/seq_items.npy", lambda arr: (arr.__setitem__(slice(off[u], off[u + 1]), b), arr)[1])
    only_b = split_scores(PreparedData(str(d)), "test", np.arange(n), OPTS, ctr, with_scl=True)
    assert (only_b["cos_mean_history"][mine & (items == b)] == 1.0).all()
    assert (only_b["mean_topk_similarity"][mine & (items == b)] == 1.0).all()


def test_a_samples_top_k_mean_does_not_depend_on_its_chunk(tiny):
    """The top-K mean of a sample is the same float whether its chunk's histories are padded to its own
    length or to a longer user's (more empty slots): ties across chunks stay ties."""
    from dataclasses import replace

    from muse_rec.metrics.floor_scores import scl_scores

    data = PreparedData(str(tiny))
    opts = replace(OPTS, seq_len=0, top_k=40)
    users = data.user_rows("test", np.arange(data.num_samples("test")))
    start, end = data.history_bounds("test", np.where(users >= 0, users, 0))
    length = np.where(users >= 0, end - start, 0)
    short = np.flatnonzero((length >= opts.top_k // 2) & (length < opts.top_k))  # fewer than K behaviours
    longest = int(np.argmax(length))
    assert short.size >= 20 and length[longest] > 3 * opts.top_k
    for i in short[:20]:
        alone = scl_scores(data, "test", np.array([i]), opts)["mean_topk_similarity"][0]
        padded = scl_scores(data, "test", np.array([i, longest]), opts)["mean_topk_similarity"][0]
        assert alone == padded, (i, alone, padded)


def test_the_verdict_names_a_floor_without_a_description_by_its_key():
    """A hand-written floors file may give a floor no description: the verdict names the best floor by its key,
    and named the best floor without SCL vectors (added in the same change) by an empty string."""
    from muse_rec.cli.compare_floors import floor_verdict

    floors = {"mean_topk_similarity": {"gauc": 0.70}, "popularity": {"gauc": 0.60}}
    text = floor_verdict([{"method": "DIN", "gauc": 0.65}], floors)
    assert "best model-free floor: mean_topk_similarity GAUC 0.7000; BELOW it: DIN (0.6500)" in text, text
    assert "the best floor without them is popularity GAUC 0.6000" in text, text


@pytest.mark.parametrize("fit_samples", [200_000, 150])
def test_floors_of_the_fit_split_score_its_samples_once(tiny, monkeypatch, fit_samples):
    """`baselines --split train` scored the SCL floors of the train samples twice: once as the split, once
    as the regression's fit (25.5 s on train against 12.9 s on test, a 250k/80k set). Only the fit's
    popularity differs (leave-one-out): each sample is scored once now, and the regression and every floor
    are what scoring the fit on its own gives (all of train, or a subsample scored in other chunks)."""
    from muse_rec.metrics import floor_scores

    data = PreparedData(str(tiny))
    n = data.num_samples("train")
    opts = FloorOptions(**{**OPTS.__dict__, "lr_train_samples": fit_samples})
    scored = []
    real = floor_scores.scl_scores
    monkeypatch.setattr(floor_scores, "scl_scores",
                        lambda d, s, idx, o: (scored.append(idx.size), real(d, s, idx, o))[1])
    result = compute_floors(data, "train", opts, "train")
    assert sum(scored) == n, (sum(scored), n)
    monkeypatch.setattr(floor_scores, "scl_scores", real)
    # The reference: the fit scored on its own, as before.
    fit_idx = (np.arange(n) if n <= fit_samples
               else np.sort(np.random.default_rng(opts.seed).choice(n, fit_samples, replace=False)))
    ctr = ItemCtr.from_train(data, "train", opts.prior_strength)
    feats = split_scores(data, "train", fit_idx, opts, ctr, with_scl=True, leave_one_out=True)
    m = fit_logistic(lr_features(feats), np.load(tiny / "train/labels.npy")[fit_idx].astype(float), opts.lr_l2)
    assert result["logistic_regression"]["fitted_on"] == fit_idx.size
    np.testing.assert_array_equal(result["logistic_regression"]["weights"], m.weights)
    assert result["logistic_regression"]["bias"] == m.bias


@pytest.mark.parametrize("best_name", ["cos_mean_history", "category_share", "popularity"])
@pytest.mark.parametrize("reads", [EVERYTHING, frozenset({LONG_HISTORY}), frozenset({SCL}), frozenset(), None])
@pytest.mark.parametrize("gauc", [0.50, 0.55, 0.58, 0.60, 0.63, 0.70, float("nan")])
def test_a_run_line_and_the_compare_verdict_apply_one_rule(best_name, reads, gauc):
    """A run's floor line (`below_floor_message`) and `compare`'s verdict classify a model the same way: above the
    best floor, below it only for want of what it does not read, or below it (training in doubt). Both read
    `floor_options.floor_standing`; before, each had its own copy of the rule."""
    from muse_rec.cli.compare_floors import floor_verdict

    best_gauc = {"cos_mean_history": 0.63, "category_share": 0.62, "popularity": 0.66}[best_name]
    inner = {"popularity": {"description": "pop", "gauc": 0.55 if best_name != "popularity" else best_gauc},
             "category_share": {"description": "cat", "gauc": 0.57 if best_name != "category_share" else best_gauc},
             "cos_mean_history": {"description": "cos", "gauc": 0.59 if best_name != "cos_mean_history" else best_gauc}}
    result = {"best": {"name": best_name, **inner[best_name]}, "floors": inner}
    row = {"method": "M", "gauc": gauc}
    if reads is not None:
        row["reads"] = sorted(reads)
        below, msg = below_floor_message(gauc, result, reads=reads)
    else:
        below, msg = below_floor_message(gauc, result)  # a run always knows its model; unknown = held to the best
    verdict = floor_verdict([row], inner)
    blind_line = "signal this model cannot see" in msg
    blind_verdict = "only for want of" in verdict
    if reads is not None:
        assert blind_line == blind_verdict, (msg, verdict)
    assert below == ("BELOW it: M" in verdict or blind_verdict), (msg, verdict)
    assert below == (gauc < best_gauc)  # NaN: neither
    # Brute force: the floors the model can see are those reading nothing beyond what it reads.
    needs = {"popularity": set(), "category_share": {LONG_HISTORY}, "cos_mean_history": {SCL, LONG_HISTORY}}
    seen = [inner[k]["gauc"] for k in inner if reads is not None and needs[k] <= reads]
    want_blind = bool(below and reads is not None and not needs[best_name] <= reads and seen and gauc >= max(seen))
    assert blind_verdict == want_blind, (verdict, reads)


# ----------------------------------------------------------------------------------------------
# The category floor (SIM-hard's GSU rule).
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seq_len, chunk_slots", [(0, 150), (60, 150), (5, 20)])
def test_category_floor_matches_brute_force_with_users_split_over_chunks(holes, seq_len, chunk_slots):
    """`category_share`: the share of the history window in the target's category. An outside check's world,
    where clicks follow category affinity, had a model-free count of the history's behaviours in the target's
    category at GAUC 0.7012, above every floor reported (best 0.6482) and above MUSE (0.6581): the floors did
    not warn. SIM-hard's GSU rule (`CategoryGSU`) is now a floor: brute force, sample by sample, on a set with
    targets and behaviours of unknown category, empty histories and samples without a user row, at the whole
    history and two windows, with chunks so small that users are cut into pieces; with and without the SCL
    floors beside it."""
    import torch

    from muse_rec.metrics.floor_scores import _history_lengths, _user_chunks

    data = PreparedData(str(holes))
    n = data.num_samples("test")
    opts = FloorOptions(**{**OPTS.__dict__, "seq_len": seq_len, "chunk_slots": chunk_slots})
    users = data.user_rows("test", np.arange(n))
    us = np.sort(users)
    cuts = list(_user_chunks(us, _history_lengths(data, "test", us, seq_len), opts.chunk_samples,
                             max(1, opts.chunk_slots // max(1, torch.get_num_threads()))))
    assert any(us[c.start] >= 0 and us[c.start - 1] == us[c.start] for c in cuts[1:])  # a user in pieces
    ref = brute_scores(holes, "test", opts)["category_share"]
    ctr = ItemCtr.from_train(data, "train", opts.prior_strength)
    for with_scl in (False, True):
        ours = split_scores(data, "test", np.arange(n), opts, ctr, with_scl=with_scl)
        assert ("cos_mean_history" in ours) == with_scl
        np.testing.assert_array_equal(ours["category_share"], ref)
    # The edge cases occur, and score -1: unknown target category, no user row, an empty history.
    target_cat = np.load(holes / "items/attrs.npy")[np.load(holes / "test/sample_items.npy"), 0]
    off = np.load(holes / "test/seq_offsets.npy")
    length = np.where(users >= 0, off[users + 1] - off[np.maximum(users, 0)], 0)
    for edge in (target_cat == 0, users < 0, (users >= 0) & (length == 0)):
        assert edge.sum() >= 2 and (ref[edge] == NO_CAT).all()
    assert ((ref > 0) & (ref < 1)).sum() > 100
    if seq_len == 5:  # the window binds: a share is a multiple of 1/5
        assert np.allclose((ref[ref >= 0] * 5) % 1, 0) and (length[ref >= 0] > 5).any()


def test_behaviours_of_unknown_category_never_match(tiny, tmp_path):
    """A behaviour of category 0 matches nothing, not even a target whose category was also never known
    (SIM-hard's rule: "both unknown" says nothing about relevance); it still counts in the window."""
    d = _copy(tiny, tmp_path / "prepared")
    items, users = np.load(d / "test/sample_items.npy"), np.load(d / "test/sample_users.npy")
    off = np.load(d / "test/seq_offsets.npy")
    i = int(np.flatnonzero((users >= 0) & (off[users + 1] - off[users] >= 4))[0])
    u, item = int(users[i]), int(items[i])
    lo, hi = int(off[u]), int(off[u + 1])
    cat = int(np.load(d / "items/attrs.npy")[item, 0])
    assert cat != 0

    def history(arr):  # three of the target's category, the rest unknown
        arr[lo:hi] = 0
        arr[hi - 3:hi] = cat
        return arr

    _rewrite(d / "test/seq_cats.npy", history)
    data = PreparedData(str(d))
    ctr = ItemCtr.from_train(data, "train", 5.0)
    opts = FloorOptions(seq_len=0)
    mine = np.flatnonzero((users == u) & (items == item))
    got = split_scores(data, "test", mine, opts, ctr, with_scl=False)["category_share"]
    assert (got == 3 / (hi - lo)).all(), got
    _rewrite(d / "items/attrs.npy", lambda a: (a.__setitem__((item, 0), 0), a)[1])  # now the target is unknown
    got = split_scores(PreparedData(str(d)), "test", mine, opts, ctr, with_scl=False)["category_share"]
    assert (got == NO_CAT).all(), got


def test_category_floor_is_a_floor_of_the_table_and_a_feature_of_the_regression(holes, capsys):
    """`category_share` is reported (after popularity, before the SCL floors, named with its window), and the
    regression reads it with a "missing" indicator of its own: -1 is not read as a share."""
    data = PreparedData(str(holes))
    result = compute_floors(data, "test", OPTS)
    assert list(result["floors"]) == ["popularity", "category_share", "cos_mean_history", "cos_mean_recent",
                                      "mean_topk_similarity", "logistic_regression"]
    assert (result["floors"]["category_share"]["description"]
            == "share of the history in the target's category, newest 60")
    assert result["floors"]["category_share"]["logloss"] is None  # a share, not a probability
    n = data.num_samples("test")
    ours = split_scores(data, "test", np.arange(n), OPTS, ItemCtr.from_train(data, "train", OPTS.prior_strength),
                        with_scl=True)
    users, y = np.load(holes / "test/sample_user_keys.npy"), np.load(holes / "test/labels.npy")
    assert result["floors"]["category_share"]["gauc"] == pytest.approx(
        brute_gauc(users, ours["category_share"], y), abs=1e-12)
    x = lr_features(ours)
    gone = ours["category_share"] == NO_CAT
    assert x.shape[1] == 7 and gone.any()
    np.testing.assert_array_equal(x[:, 1], np.where(gone, 0.0, ours["category_share"]))
    np.testing.assert_array_equal(x[:, 2], gone.astype(float))
    assert len(result["logistic_regression"]["weights"]) == 7
    cats = np.load(holes / "items/attrs.npy")[np.load(holes / "test/sample_items.npy"), 0]
    assert result["targets_with_category"] == pytest.approx(float((cats != 0).mean()), abs=1e-15)
    assert cli_main(["baselines", str(holes), "--top-k", "9"]) == 0
    out = capsys.readouterr().out
    assert "| category_share" in out and "share of the history in the target's category" in out
    assert f"the category floor ranks the {100 * (1 - result['targets_with_category']):.1f}% of targets of " \
           "unknown category below every target of a known one" in out, out


def test_the_category_floor_holds_a_model_with_a_gsu_not_one_that_reads_only_its_newest_behaviours():
    """The category floor reads no SCL vector but the whole history window: TWIN (a GSU over the history, no SCL)
    below it is in doubt; DIN (the newest 50 behaviours only) below it but above popularity only lacks the
    long-term history. A DIN below it, though above popularity, was told "the SCL vectors carry signal this model
    cannot see"; with the floor among those without SCL vectors alone it would have been told to check its
    learning rates."""
    from muse_rec.cli.compare_floors import floor_verdict

    assert floor_reads("category_share") == frozenset({LONG_HISTORY})  # no SCL vector, the long-term history
    inner = {"popularity": {"description": "smoothed train CTR of the target item", "gauc": 0.54},
             "category_share": {"description": "share of the history in the target's category", "gauc": 0.62},
             "mean_topk_similarity": {"description": "mean of the top-50 SCL cosines (GSU rule)", "gauc": 0.66}}
    result = {"best": {"name": "mean_topk_similarity", **inner["mean_topk_similarity"]}, "floors": inner}
    twin, din = frozenset({LONG_HISTORY}), frozenset()
    below, msg = below_floor_message(0.58, result, reads=twin)
    assert below and ("below the best floor without SCL vectors (this model does not read them), 'share of the "
                      "history in the target's category' 0.6200 (-0.0400)") in msg, msg
    assert "check the learning rates" in msg and "cannot see" not in msg, msg
    verdict = floor_verdict([{"method": "TWIN", "gauc": 0.58, "reads": sorted(twin)},
                             {"method": "DIN", "gauc": 0.58, "reads": sorted(din)}], inner)
    assert "BELOW it: TWIN (0.5800) - check the learning rates" in verdict, verdict
    assert ("below it only for want of SCL vectors and the long-term history: DIN (0.5800), which does not read "
            "them and is above the best floor without them, smoothed train CTR of the target item GAUC 0.5400") \
        in verdict, verdict
    # Above the category floor, below the SCL one: only for want of SCL vectors, measured against the category floor.
    below, msg = below_floor_message(0.63, result, reads=twin)
    assert below and "carry signal this model cannot see" in msg and "'share of the history" in msg, msg
    # The category floor itself the best: TWIN below it is in doubt; DIN only lacks the long-term history.
    cat_best = {"best": {"name": "category_share", **inner["category_share"]}, "floors": inner}
    below, msg = below_floor_message(0.58, cat_best, reads=twin)
    assert below and "check the learning rates" in msg and "SCL vectors" not in msg, msg
    below, msg = below_floor_message(0.58, cat_best, reads=din)
    assert below and msg.endswith("the long-term history carries signal this model cannot see"), msg
    assert "which reads the long-term history; this model does not, and it is above the best floor without it" in msg

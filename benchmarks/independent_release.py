"""Write a synthetic data release in the Taobao-MM six-table layout, from a world of its own.

Why: this generator was written apart from `muse-rec synth`, so the accuracy checks can run
on a world that the project's own generator did not shape. It must not import muse_rec.

The world (sizes at the defaults):
- 40,000 items with an 8-d latent vector z. The 128-d SCL vector is a per-item norm
  (log-normal, clipped to [0.15, 3]) times normalize(A z + noise). The release stores it as
  int8 = trunc(127 * clip(v, -1, 1)), so norms are not 1. About 25% of items have no SCL row
  and about 22% have no item_features row (the two are independent).
- 300 categories: each item takes the nearest of 300 random latent anchors; 15% take a
  random category instead. Item fields 213 and 214 are noise (50 and 2,000 values).
- Popularity follows a Zipf law (exponent 1.05) over a random order of the items.
- Users have 1-4 latent interests and a recent drift. Histories are log-uniform in [1, 2000)
  and built from 6-item sessions drawn near an interest (the last 10% near the drift, 20%
  random "browsing"). 25% of positions repeat 2-4 times in a row.
- 6,800 train users and 2,300 test users. Half the test users are train users whose history
  grew by up to 60 newer items; the other half are new. Each user sees 1 + Poisson(10)
  impressions: half drawn near an interest or the drift, half by popularity.
- Clicks: logit = 0.6 * cos(target, mean of the whole history) + 0.45 * log-popularity
  + 0.4 * recency-weighted similarity to the last 30 items (each term standardised)
  + per-user bias N(0, 0.4) + per-impression noise N(0, 1). A shared offset sets the
  mean click probability to 12.5%. Similarities use the unit SCL directions, not int8 rows.
- Profile fields 130_1..130_5 are noise, 10% missing (0). 0.5% of train users have no
  user_features row.

Usage: python independent_release.py OUT [--seed 2024] [--users 6800]

OUT is new, or a folder this script wrote before (its `_independent_release.json`), whose tables
are replaced; a folder holding release tables written otherwise is refused.
"""
import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

N_ITEMS = 40_000                # items in the catalogue
LATENT_DIM = 8                  # rank of the latent item space
SCL_DIM = 128                   # width of the released SCL vectors
N_CATEGORIES = 300              # categories (field 206)
N_F213, N_F214 = 50, 2_000      # distinct values of the noise item fields 213 and 214
TRAIN_USERS = 6_800             # train users at the default scale
TEST_USERS = 2_300              # test users at the default scale (half seen in train)
ID_LOW, ID_HIGH = -2**63, 2**63 - 1  # range of hashed ids (high end exclusive; 0 is never used)

SCL_NOISE = 0.45 * np.sqrt(LATENT_DIM)  # std of the full-rank noise added to A z
NORM_LOG_MEAN, NORM_LOG_SD = -0.2, 0.6  # log-normal SCL norm per item
NORM_MIN, NORM_MAX = 0.15, 3.0          # clip range of the SCL norms
INT8_SCALE = 127                        # int8 = trunc(INT8_SCALE * clip(v, -1, 1))
NO_SCL_SHARE = 0.25                     # share of items without an SCL row
NO_FEATURE_SHARE = 0.22                 # share of items without an item_features row
CATEGORY_NOISE = 0.15                   # share of items whose category is random
ZIPF_EXPONENT = 1.05                    # popularity of the item at rank r is r ** -ZIPF_EXPONENT

N_CANDIDATES = 200           # popularity-drawn candidates per draw near a direction
SIM_SHARPNESS = 7.0          # softmax sharpness of the latent cosine over the candidates
MAX_INTERESTS = 4            # a user has 1..MAX_INTERESTS latent interests
INTEREST_JITTER = 0.3        # std of the noise around the item an interest is seeded from
DRIFT_FROM_INTEREST = 0.6    # chance the recent drift is one of the interests (else random)
SESSION_LEN = 6              # items per history session
DRIFT_SESSION_SHARE = 0.1    # share of the newest sessions drawn near the drift (at least 1)
BROWSE_SESSION_SHARE = 0.2   # share of sessions drawn near a random direction
REPEAT_SHARE = 0.25          # share of history positions repeated in a row
REPEAT_MIN, REPEAT_MAX = 2, 4  # copies of a repeated position
MAX_HISTORY = 2_000          # histories are log-uniform in [1, MAX_HISTORY) and cut to it
MAX_EXTENSION = 60           # a returning test user's history grows by up to this many items

MEAN_IMPRESSIONS = 11.0      # impressions per user: 1 + Poisson(MEAN_IMPRESSIONS - 1)
INTENT_SHARE = 0.5           # chance an impression is drawn near an interest or the drift
INTENT_JITTER = 0.5          # std of the noise around that direction
RECENCY_WINDOW = 30          # newest history items in the recency feature
RECENCY_DECAY = 8.0          # e-folding length (items) of the recency weights
EPS = 1e-12                  # guards the history-mean normalisation

W_HISTORY = 0.6              # logit weight of the standardised cos(target, history mean)
W_POPULARITY = 0.45          # logit weight of the standardised log-popularity
W_RECENCY = 0.4              # logit weight of the standardised recency similarity
USER_BIAS_SD = 0.4           # std of the per-user logit bias
IMPRESSION_NOISE_SD = 1.0    # std of the per-impression logit noise
TARGET_CLICK_RATE = 0.125    # mean click probability over all impressions
OFFSET_LOW, OFFSET_HIGH = -10, 5  # bisection bracket for the shared logit offset
BISECTION_STEPS = 60         # bisection steps for that offset

USER_FIELD_VOCABS = (8, 3, 12, 40, 200)  # distinct values of profile fields 130_1..130_5
USER_FIELD_MISSING = 0.1     # share of profile values left missing (0)
TRAIN_ROW_DROP = 0.005       # share of train users without a user_features row


@dataclass(frozen=True)
class Items:
    ids: np.ndarray           # hashed item id per item index
    category_ids: np.ndarray  # hashed id per category index
    category: np.ndarray      # category index per item
    f213: np.ndarray          # field 213 value per item
    f214: np.ndarray          # field 214 value per item
    latent: np.ndarray        # (N_ITEMS, LATENT_DIM) latent z
    latent_unit: np.ndarray   # z / |z|: used to draw items near a direction
    scl_unit: np.ndarray      # unit SCL directions: the truth the click model sees
    scl_int8: np.ndarray      # released int8 SCL rows (non-unit norms)
    has_scl: np.ndarray       # item has an SCL row
    has_features: np.ndarray  # item has an item_features row
    popularity: np.ndarray    # probability of each item in a popularity draw
    pop_score: np.ndarray     # standardised log-popularity


@dataclass(frozen=True)
class User:
    history: np.ndarray       # item indices, oldest first
    interests: np.ndarray     # (k, LATENT_DIM) interest directions
    weights: np.ndarray       # mixture weights of the interests
    drift: np.ndarray         # (LATENT_DIM,) direction of the recent drift


@dataclass(frozen=True)
class UserRows:
    user_id: int              # hashed user id (field 129_1)
    history: np.ndarray       # item indices shown as the user's history
    targets: np.ndarray       # item indices of the impressions
    cos_history: np.ndarray   # cos(target, history mean) per impression
    recency_sim: np.ndarray   # recency-weighted similarity per impression


def hashed_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    """n distinct non-zero random int64 ids in random order (0 means 'missing')."""
    ids: set[int] = set()
    while len(ids) < n:
        draw = rng.integers(ID_LOW, ID_HIGH, size=n, dtype=np.int64)
        ids.update(int(v) for v in draw if v != 0)
    return np.array(sorted(ids)[:n], dtype=np.int64)[rng.permutation(n)]


def scl_vectors(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Latent z, unit SCL directions normalize(A z + noise), and their int8 release."""
    latent = rng.standard_normal((N_ITEMS, LATENT_DIM))
    mixing = rng.standard_normal((SCL_DIM, LATENT_DIM))
    unit = latent @ mixing.T + SCL_NOISE * rng.standard_normal((N_ITEMS, SCL_DIM))
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    norms = np.clip(np.exp(rng.normal(NORM_LOG_MEAN, NORM_LOG_SD, N_ITEMS)), NORM_MIN, NORM_MAX)
    released = np.trunc(INT8_SCALE * np.clip(unit * norms[:, None], -1, 1)).astype(np.int8)
    return latent, unit, released


def item_fields(rng: np.random.Generator,
                latent: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Category index (nearest random anchor, some random) and the noise fields 213, 214."""
    anchors = rng.standard_normal((N_CATEGORIES, LATENT_DIM))
    category = np.argmax(latent @ anchors.T, axis=1)
    flip = rng.random(N_ITEMS) < CATEGORY_NOISE
    category[flip] = rng.integers(0, N_CATEGORIES, flip.sum())
    f213_values, f214_values = hashed_ids(rng, N_F213), hashed_ids(rng, N_F214)
    f213 = f213_values[rng.integers(0, N_F213, N_ITEMS)]
    f214 = f214_values[rng.integers(0, N_F214, N_ITEMS)]
    return category, f213, f214


def popularity(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Zipf probabilities over a random item order, and standardised log-popularity."""
    order = rng.permutation(N_ITEMS)
    prob = np.empty(N_ITEMS)
    prob[order] = (np.arange(N_ITEMS) + 1.0) ** -ZIPF_EXPONENT
    prob /= prob.sum()
    log_prob = np.log(prob)
    return prob, (log_prob - log_prob.mean()) / log_prob.std()


def make_items(rng: np.random.Generator) -> Items:
    """The item catalogue, drawn in a fixed order."""
    ids = hashed_ids(rng, N_ITEMS)
    category_ids = hashed_ids(rng, N_CATEGORIES)
    latent, scl_unit, scl_int8 = scl_vectors(rng)
    has_scl = rng.random(N_ITEMS) > NO_SCL_SHARE
    has_features = rng.random(N_ITEMS) > NO_FEATURE_SHARE
    category, f213, f214 = item_fields(rng, latent)
    prob, pop_score = popularity(rng)
    latent_unit = latent / np.linalg.norm(latent, axis=1, keepdims=True)
    return Items(ids=ids, category_ids=category_ids, category=category, f213=f213, f214=f214,
                 latent=latent, latent_unit=latent_unit,
                 scl_unit=scl_unit, scl_int8=scl_int8, has_scl=has_scl,
                 has_features=has_features, popularity=prob, pop_score=pop_score)


def draw_near(rng: np.random.Generator, items: Items, directions: np.ndarray,
              counts: list[int] | np.ndarray) -> list[np.ndarray]:
    """For each latent direction, draw counts[j] items from popularity-drawn candidates,
    weighted by softmax(SIM_SHARPNESS * latent cosine)."""
    cand = rng.choice(N_ITEMS, size=(len(directions), N_CANDIDATES), p=items.popularity)
    unit = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    score = np.einsum('mcr,mr->mc', items.latent_unit[cand], unit) * SIM_SHARPNESS
    score -= score.max(1, keepdims=True)
    weight = np.exp(score)
    weight /= weight.sum(1, keepdims=True)
    return [cand[j, rng.choice(N_CANDIDATES, size=k, p=weight[j])] for j, k in enumerate(counts)]


def make_user(rng: np.random.Generator, items: Items) -> User:
    """A new user: interests, drift, and a session-built history of log-uniform length."""
    length = int(np.exp(rng.uniform(0, np.log(MAX_HISTORY))))  # in [1, MAX_HISTORY)
    k = rng.integers(1, MAX_INTERESTS + 1)
    seeds = items.latent[rng.integers(0, N_ITEMS, k)]
    interests = seeds + INTEREST_JITTER * rng.standard_normal((k, LATENT_DIM))
    weights = rng.dirichlet(np.ones(k))
    if rng.random() < DRIFT_FROM_INTEREST:
        drift = interests[rng.choice(k, p=weights)]
    else:
        drift = rng.standard_normal(LATENT_DIM)
    n_sessions = -(-length // SESSION_LEN)
    session_len = np.full(n_sessions, SESSION_LEN)
    session_len[-1] = length - SESSION_LEN * (n_sessions - 1)
    directions = interests[rng.choice(k, size=n_sessions, p=weights)]
    directions[-max(1, int(DRIFT_SESSION_SHARE * n_sessions)):] = drift
    browse = rng.random(n_sessions) < BROWSE_SESSION_SHARE
    directions[browse] = rng.standard_normal((browse.sum(), LATENT_DIM))
    history = np.concatenate(draw_near(rng, items, directions, session_len))
    copies = np.where(rng.random(len(history)) < REPEAT_SHARE,
                      rng.integers(REPEAT_MIN, REPEAT_MAX + 1, len(history)), 1)
    history = np.repeat(history, copies)[-length:]  # repeats push the oldest items out
    return User(history, interests, weights, drift)


def extend_history(rng: np.random.Generator, items: Items, user: User) -> np.ndarray:
    """A returning user's history plus newer sessions near the drift.

    The draw is rounded up to whole sessions, so it adds 0 or 6..60 items, not 0..60."""
    n_new = rng.integers(0, MAX_EXTENSION + 1)
    if not n_new:
        return user.history
    n_sessions = -(-n_new // SESSION_LEN)
    more = draw_near(rng, items, np.tile(user.drift, (n_sessions, 1)), [SESSION_LEN] * n_sessions)
    return np.concatenate([user.history, *more])[-MAX_HISTORY:]


def draw_targets(rng: np.random.Generator, items: Items, user: User, n: int) -> np.ndarray:
    """n impression targets: some near an interest or the drift, the rest by popularity."""
    n_intent = rng.binomial(n, INTENT_SHARE)
    parts: list[np.ndarray] = []
    if n_intent:
        directions = np.vstack([user.interests, user.drift[None]])
        pick = rng.integers(0, len(directions), n_intent)
        jittered = directions[pick] + INTENT_JITTER * rng.standard_normal((n_intent, LATENT_DIM))
        parts += draw_near(rng, items, jittered, [1] * n_intent)
    parts.append(rng.choice(N_ITEMS, size=n - n_intent, p=items.popularity))
    targets = np.concatenate(parts).astype(np.int64)
    rng.shuffle(targets)
    return targets


def similarity_features(items: Items, history: np.ndarray,
                        targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cos(target, history mean) and recency-weighted similarity to the newest items."""
    mean = items.scl_unit[history].mean(0)
    mean /= (np.linalg.norm(mean) + EPS)
    cos_history = items.scl_unit[targets] @ mean
    recent = history[-RECENCY_WINDOW:][::-1]
    weight = np.exp(-np.arange(len(recent)) / RECENCY_DECAY)
    weight /= weight.sum()
    recency = (items.scl_unit[targets] @ items.scl_unit[recent].T) @ weight
    return cos_history, recency


def observe(rng: np.random.Generator, items: Items, user_id: int, user: User,
            history: np.ndarray) -> UserRows:
    """Draw a user's impressions and the features the click model reads."""
    n = 1 + rng.poisson(MEAN_IMPRESSIONS - 1)
    targets = draw_targets(rng, items, user, n)
    cos_history, recency = similarity_features(items, history, targets)
    return UserRows(user_id, history, targets, cos_history, recency)


def simulate_train(rng: np.random.Generator, items: Items,
                   user_ids: np.ndarray) -> tuple[list[UserRows], dict[int, User]]:
    """Train users: a fresh user and its impressions each."""
    rows, users = [], {}
    for uid in user_ids:
        user = make_user(rng, items)
        users[int(uid)] = user
        rows.append(observe(rng, items, int(uid), user, user.history))
    return rows, users


def simulate_test(rng: np.random.Generator, items: Items, n_returning: int,
                  train_ids: np.ndarray, new_ids: np.ndarray,
                  train_users: dict[int, User]) -> list[UserRows]:
    """Test users: returning train users (history extended) shuffled among new users."""
    test_ids = np.concatenate([rng.choice(train_ids, n_returning, replace=False), new_ids])
    rng.shuffle(test_ids)
    rows = []
    for uid in test_ids:
        if int(uid) in train_users:
            user = train_users[int(uid)]
            history = extend_history(rng, items, user)
        else:
            user = make_user(rng, items)
            history = user.history
        rows.append(observe(rng, items, int(uid), user, history))
    return rows


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function (one formula for the calibration and the click draw)."""
    return 1 / (1 + np.exp(-x))


def click_offset(logits: np.ndarray) -> float:
    """Shared logit offset that brings the mean click probability to TARGET_CLICK_RATE."""
    low, high = OFFSET_LOW, OFFSET_HIGH
    for _ in range(BISECTION_STEPS):
        mid = (low + high) / 2
        if sigmoid(logits + mid).mean() > TARGET_CLICK_RATE:
            high = mid
        else:
            low = mid
    return mid


def draw_clicks(rng: np.random.Generator, items: Items, rows: list[UserRows]) -> np.ndarray:
    """0/1 click per impression (all users, in order), from the logistic click model."""
    cos_history = np.concatenate([r.cos_history for r in rows])
    recency = np.concatenate([r.recency_sim for r in rows])
    targets = np.concatenate([r.targets for r in rows])
    per_user = [len(r.targets) for r in rows]
    user_bias = np.repeat(rng.normal(0, USER_BIAS_SD, len(rows)), per_user)
    logits = (W_HISTORY * (cos_history - cos_history.mean()) / cos_history.std()
              + W_POPULARITY * items.pop_score[targets]
              + W_RECENCY * (recency - recency.mean()) / recency.std()
              + user_bias)
    logits = logits + rng.normal(0, IMPRESSION_NOISE_SD, len(logits))
    prob = sigmoid(logits + click_offset(logits))
    return (rng.random(len(prob)) < prob).astype(np.int8)


def list_column(arrays: list[np.ndarray]) -> pa.ListArray:
    """list<int64> column from one int64 array per row."""
    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    offsets[1:] = np.cumsum([len(a) for a in arrays])
    values = np.concatenate([np.zeros(0, dtype=np.int64), *arrays])
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.int64()))


def write_samples(path: Path, items: Items, rows: list[UserRows], clicks: np.ndarray) -> None:
    """{split}_samples: one row per impression, label_0 = [1 - click, click]."""
    offsets = np.arange(len(clicks) + 1, dtype=np.int32) * 2
    labels = np.column_stack([1 - clicks, clicks]).ravel()
    users = np.repeat(np.array([r.user_id for r in rows], dtype=np.int64),
                      [len(r.targets) for r in rows])
    pq.write_table(pa.table({
        'label_0': pa.ListArray.from_arrays(pa.array(offsets), pa.array(labels, pa.int8())),
        '129_1': pa.array(users, pa.int64()),
        '205': pa.array(items.ids[np.concatenate([r.targets for r in rows])], pa.int64()),
    }), path)


def write_user_features(rng: np.random.Generator, path: Path, items: Items,
                        rows: list[UserRows], vocabs: list[np.ndarray], drop: float) -> None:
    """{split}_user_features: one row per user (a `drop` share left out), shuffled."""
    kept = [rows[i] for i in np.flatnonzero(rng.random(len(rows)) >= drop)]
    columns = {'129_1': pa.array(np.array([r.user_id for r in kept], dtype=np.int64))}
    for j, vocab in enumerate(vocabs, start=1):
        values = vocab[rng.integers(0, len(vocab), len(kept))]
        values[rng.random(len(kept)) < USER_FIELD_MISSING] = 0
        columns[f'130_{j}'] = pa.array(values, pa.int64())
    columns['150_2_180'] = list_column([items.ids[r.history] for r in kept])
    columns['151_2_180'] = list_column([items.category_ids[items.category[r.history]]
                                        for r in kept])
    order = rng.permutation(len(kept))
    pq.write_table(pa.table(columns).take(pa.array(order)), path)


def write_item_tables(out: Path, items: Items) -> None:
    """item_features and scl_embedding_int8_p90, each for its own subset of items."""
    feat = np.flatnonzero(items.has_features)
    pq.write_table(pa.table({
        '205': pa.array(items.ids[feat], pa.int64()),
        '206': pa.array(items.category_ids[items.category[feat]], pa.int64()),
        '213': pa.array(items.f213[feat], pa.int64()),
        '214': pa.array(items.f214[feat], pa.int64()),
    }), out / 'item_features.parquet')
    scl = np.flatnonzero(items.has_scl)
    offsets = np.arange(len(scl) + 1, dtype=np.int32) * SCL_DIM
    vectors = pa.ListArray.from_arrays(pa.array(offsets),
                                       pa.array(items.scl_int8[scl].ravel(), pa.int8()))
    pq.write_table(pa.table({'205': pa.array(items.ids[scl], pa.int64()), '205_c': vectors}),
                   out / 'scl_embedding_int8_p90.parquet')


# The six tables of a release (muse_rec.data.schema's file names, spelled here: this script imports nothing of
# muse_rec; a test compares them), and the file that says this script wrote them (it may replace only those).
RELEASE_TABLES = ('train_samples.parquet', 'train_user_features.parquet', 'test_samples.parquet',
                  'test_user_features.parquet', 'item_features.parquet', 'scl_embedding_int8_p90.parquet')
MARKER = '_independent_release.json'


def refused_out(out: Path) -> str:
    """Why OUT cannot take the release ('' when it can): a file, or a folder holding release tables that
    this script did not write (a downloaded release, `muse-rec synth`'s), which the run would overwrite."""
    if out.exists() and not out.is_dir():
        return f'OUT {out}: exists and is not a directory'
    if out.is_dir() and not (out / MARKER).is_file():
        theirs = [t for t in RELEASE_TABLES if (out / t).exists()]
        if theirs:
            return (f'OUT {out} holds release tables this script did not write ({", ".join(theirs)}): '
                    'refusing to overwrite them; choose another OUT')
    return ''


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('out', metavar='OUT', type=Path,
                        help='folder for the six tables (new, or one this script wrote: replaced)')
    parser.add_argument('--seed', type=int, default=2024, help='random seed (default 2024)')
    parser.add_argument('--users', type=int, default=TRAIN_USERS,
                        help=f'train users (default {TRAIN_USERS}); test users scale with it')
    args = parser.parse_args()
    if args.users < 3:
        parser.error('--users must be at least 3 (so the test split is not empty)')
    if args.seed < 0:  # numpy's generators take no negative seed (a ValueError traceback)
        parser.error(f'--seed must be >= 0, got {args.seed}')
    why = refused_out(args.out)
    if why:
        parser.error(why)
    return args


def claim(out: Path, seed: int, users: int) -> None:
    """Make OUT and write the marker, before the tables: a run killed while writing them leaves a folder
    the next run may replace. An OUT the OS refuses (a file above it, no permission) exits 2."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / MARKER).write_text(json.dumps({'seed': seed, 'users': users}) + '\n')
    except OSError as e:
        print(f'independent_release.py: error: OUT {out}: cannot write ({e.strerror}: {e.filename})',
              file=sys.stderr)
        sys.exit(2)


def main() -> None:
    args = parse_args()
    claim(args.out, args.seed, args.users)
    rng = np.random.default_rng(args.seed)
    n_train, n_test = args.users, args.users * TEST_USERS // TRAIN_USERS
    items = make_items(rng)
    user_ids = hashed_ids(rng, n_train + n_test // 2)
    vocabs = [hashed_ids(rng, n) for n in USER_FIELD_VOCABS]
    train_rows, train_users = simulate_train(rng, items, user_ids[:n_train])
    test_rows = simulate_test(rng, items, n_test - n_test // 2, user_ids[:n_train],
                              user_ids[n_train:], train_users)
    clicks = draw_clicks(rng, items, train_rows + test_rows)
    n_train_imps = sum(len(r.targets) for r in train_rows)
    train_clicks, test_clicks = clicks[:n_train_imps], clicks[n_train_imps:]
    write_samples(args.out / 'train_samples.parquet', items, train_rows, train_clicks)
    write_user_features(rng, args.out / 'train_user_features.parquet', items, train_rows,
                        vocabs, TRAIN_ROW_DROP)
    write_samples(args.out / 'test_samples.parquet', items, test_rows, test_clicks)
    write_user_features(rng, args.out / 'test_user_features.parquet', items, test_rows,
                        vocabs, 0.0)
    write_item_tables(args.out, items)
    print(f'train: {n_train_imps} impressions, {train_clicks.sum()} clicks '
          f'(rate {train_clicks.mean():.4f}); test: {len(test_clicks)} impressions, '
          f'{test_clicks.sum()} clicks (rate {test_clicks.mean():.4f})')


if __name__ == '__main__':
    main()

"""The latent world behind a synthetic Taobao-MM release: catalogue, users, histories, clicks.

Everything here works on dense internal indices (item 0..I-1, user 0..U-1, ...); hashing to
raw int64 ids and writing Parquet happen in `synth_release`. All sampling is vectorised NumPy;
every stage draws from its own stream ``default_rng([seed, stage])`` so the output is a pure
function of the config.

Generative story (the structure the models are meant to discover):

* **Catalogue.** ``clusters`` latent semantic clusters with log-normal sizes. A cluster's centroid
  is a unit vector partly along its primary category's direction; an item's SCL vector is
  ``normalise(centroid + item_noise * g)``. Categories are coarser than clusters and some
  clusters spread over several categories, so category match != semantic match. Item popularity
  inside a cluster is Zipf (a long tail of rare ids); clusters have Zipf popularity too.
* **Users.** A few long-term interest clusters (Dirichlet weights) expressed in sessions spread
  over the whole history, plus one recent interest concentrated in the newest ``recent_span``
  behaviours; other sessions browse popular clusters. Histories are oldest -> newest.
* **Clicks.** ``logit = b + long_weight * max_k cos(target, long-interest centroid_k)
  + recent_weight * cos(target, recent centroid) + user bias + item bias + noise``, with the
  intercept ``b`` solved so that the mean click probability equals ``positive_rate``. Targets are
  drawn from a long-term interest (uniformly, so rarely-expressed interests count as much as
  frequent ones), the recent interest, or cluster popularity.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from muse_rec.data.schema import SCL_DIM
from muse_rec.data.synth_config import MAX_LOGIT_SCALE, SynthConfig

# 130_x user-field vocabulary sizes (130_4 grows with the user count, 130_5 reuses 130_1's
# vocabulary as the real release does); user_field_cardinalities() fills in 130_4.
USER_FIELD_VOCAB = (8, 3, 40, 0, 8)
USER_GROUP_EFFECT_STD = 0.3  # logit effect of the 130_1 group on click propensity
_INTERCEPT_BRACKET = (-MAX_LOGIT_SCALE, MAX_LOGIT_SCALE)
_CHUNK = 65536  # samples per block when gathering [n, D] vectors
# Items per independently seeded block of SCL vectors in the streaming world (`item_vector_block`):
# any block can be regenerated alone, so 30M+ item vectors never need to sit in memory at once.
VECTOR_BLOCK = 262_144
_VECTOR_STAGE = 10


def stage_rng(cfg: SynthConfig, stage: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, stage])


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32)."""
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32)


def ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + n)`` for each (s, n), vectorised."""
    lengths = lengths.astype(np.int64)
    total = int(lengths.sum())
    before = np.cumsum(lengths) - lengths
    return np.repeat(starts.astype(np.int64) - before, lengths) + np.arange(total, dtype=np.int64)


def user_field_cardinalities(cfg: SynthConfig) -> Tuple[int, ...]:
    return tuple(v if v else max(10, (cfg.users + 49) // 50) for v in USER_FIELD_VOCAB)


@dataclass
class Catalogue:
    """Items in dense rows. I items, C clusters, K categories, D = SCL_DIM (the release's width)."""

    centroid: np.ndarray  # [C, D] float32 unit cluster centroids
    cluster_cdf: np.ndarray  # [C] float64 cumulative cluster popularity (ends at 1)
    item_cluster: np.ndarray  # [I] int64, items are contiguous blocks per cluster
    item_category: np.ndarray  # [I] int64
    item_vec: Optional[np.ndarray]  # [I, D] float32 unit SCL vectors (before int8 quantisation);
    # None in the streaming world, where `item_vector_block` regenerates any block on demand
    item_key: np.ndarray  # [I] float64 cluster + within-cluster Zipf CDF, for sampling
    item_bias: np.ndarray  # [I] float32 logit
    item_shop: np.ndarray  # [I] int64 attribute 213 value index
    item_attr214: np.ndarray  # [I] int64 attribute 214 value index
    cluster_primary: np.ndarray  # [C] int64 primary category of each cluster
    category_offsets: np.ndarray  # [K + 1] CSR offsets into `category_clusters`
    category_clusters: np.ndarray  # [C] clusters grouped by primary category

    def sample_items(self, clusters: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One item per entry of `clusters`, Zipf-distributed inside its cluster."""
        u = clusters.astype(np.float64) + rng.random(clusters.shape[0])
        return np.searchsorted(self.item_key, u, side="right").astype(np.int64)

    def sample_siblings(self, clusters: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A uniformly drawn cluster of the same primary category for each of `clusters`."""
        k = self.cluster_primary[clusters]
        size = self.category_offsets[k + 1] - self.category_offsets[k]
        return self.category_clusters[self.category_offsets[k] + np.floor(rng.random(k.shape[0]) * size).astype(np.int64)]

    def sample_clusters(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """`n` clusters drawn by popularity."""
        idx = np.searchsorted(self.cluster_cdf, rng.random(n), side="right")
        return np.minimum(idx, self.cluster_cdf.shape[0] - 1).astype(np.int64)


def scl_vectors(cfg: SynthConfig, centre: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Item SCL vectors [n, D]: ``normalise(centre + item_noise * noise)``; `centre` [n, D] is each
    item's cluster centroid, `noise` [n, D] a unit Gaussian scaled by 1/sqrt(D) (norm ~1), so
    item_noise is the noise-to-signal norm ratio."""
    return unit_rows(centre + np.float32(cfg.item_noise) * noise)


def _unit_noise(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    return rng.standard_normal((n, d)).astype(np.float32) / np.float32(np.sqrt(d))


def item_vector_block(cfg: SynthConfig, cat: "Catalogue", block: int) -> np.ndarray:
    """SCL vectors [n, D] of items ``[block * VECTOR_BLOCK, ...)`` of a streaming catalogue, drawn
    from the block's own stream so each block is regenerated identically on every call."""
    lo = block * VECTOR_BLOCK
    hi = min(cat.item_cluster.shape[0], lo + VECTOR_BLOCK)
    noise = _unit_noise(np.random.default_rng([cfg.seed, _VECTOR_STAGE, block]), hi - lo, SCL_DIM)
    return scl_vectors(cfg, cat.centroid[cat.item_cluster[lo:hi]], noise)


def build_catalogue(cfg: SynthConfig, with_vectors: bool = True) -> Catalogue:
    """The catalogue; ``with_vectors=False`` (streaming world) leaves ``item_vec`` None and skips its
    [I, D] draw, so the later draws (and thus that world) differ from the in-memory one."""
    rng = stage_rng(cfg, 1)
    C, K, I, D = cfg.clusters, cfg.categories, cfg.items, SCL_DIM
    size_w = rng.lognormal(0.0, cfg.cluster_size_sigma, C)
    sizes = 1 + rng.multinomial(I - C, size_w / size_w.sum())
    item_cluster = np.repeat(np.arange(C, dtype=np.int64), sizes)
    block_start = np.cumsum(sizes) - sizes

    # Every category owns at least one cluster; the rest go to categories by log-normal weight.
    cat_w = rng.lognormal(0.0, cfg.cluster_size_sigma, K)
    primary = np.empty(C, dtype=np.int64)
    perm = rng.permutation(C)
    primary[perm[:K]] = np.arange(K)
    primary[perm[K:]] = rng.choice(K, size=C - K, p=cat_w / cat_w.sum())

    cat_dir = unit_rows(rng.standard_normal((K, D)))
    own_dir = unit_rows(rng.standard_normal((C, D)))
    w = cfg.category_semantic_weight
    centroid = unit_rows(np.sqrt(w) * cat_dir[primary] + np.sqrt(1.0 - w) * own_dir)
    item_vec = scl_vectors(cfg, centroid[item_cluster], _unit_noise(rng, I, D)) if with_vectors else None

    multi = rng.random(C) < cfg.multi_category_fraction
    secondary = rng.integers(0, K, size=(C, cfg.secondary_categories))
    item_category = primary[item_cluster].copy()
    spread = multi[item_cluster] & (rng.random(I) >= cfg.primary_category_share)
    pick = rng.integers(0, cfg.secondary_categories, size=int(spread.sum()))
    item_category[spread] = secondary[item_cluster[spread], pick]

    rank = np.arange(I) - block_start[item_cluster]
    pop = (rank + 1.0) ** -cfg.item_zipf
    csum = np.cumsum(pop)
    before = (csum - pop)[block_start]  # cumulative mass before each block
    totals = np.bincount(item_cluster, weights=pop, minlength=C)
    cdf_in = (csum - before[item_cluster]) / totals[item_cluster]
    cdf_in[block_start + sizes - 1] = 1.0  # exact block ends keep the sampler inside the block
    item_key = item_cluster + cdf_in

    cluster_pop = (rng.permutation(C) + 1.0) ** -cfg.cluster_zipf
    cluster_cdf = np.cumsum(cluster_pop / cluster_pop.sum())
    cluster_cdf[-1] = 1.0
    return Catalogue(
        centroid=centroid,
        cluster_cdf=cluster_cdf,
        item_cluster=item_cluster,
        item_category=item_category,
        item_vec=item_vec,
        item_key=item_key,
        item_bias=rng.normal(0.0, cfg.item_bias_std, I).astype(np.float32),
        item_shop=item_cluster * cfg.shops_per_cluster + rng.integers(0, cfg.shops_per_cluster, I),
        item_attr214=rng.integers(0, cfg.attr214_values, I),
        cluster_primary=primary,
        category_offsets=np.concatenate([[0], np.cumsum(np.bincount(primary, minlength=K))]).astype(np.int64),
        category_clusters=np.argsort(primary, kind="stable").astype(np.int64),
    )


@dataclass
class Users:
    """U users: rows [0, users) are train users, the rest are test users unseen in train."""

    n_train: int
    in_test: np.ndarray  # [U] bool
    interest_offsets: np.ndarray  # [U + 1] CSR offsets into the interest arrays
    interest_cluster: np.ndarray  # [sum n_u] int64 long-term interest clusters
    interest_key: np.ndarray  # [sum n_u] float64 user + cumulative Dirichlet weight, for sampling
    recent: np.ndarray  # [U] int64 recent interest cluster
    bias: np.ndarray  # [U] float32 logit
    fields: np.ndarray  # [U, 5] int64 130_1..130_5 value indices, -1 = missing
    train_len: np.ndarray  # [U] behaviours in the train snapshot (0 for unseen users)
    total_len: np.ndarray  # [U] behaviours up to the test snapshot

    @property
    def n_users(self) -> int:
        return int(self.in_test.shape[0])

    def n_interests(self) -> np.ndarray:
        return np.diff(self.interest_offsets)

    def slice(self, lo: int, hi: int) -> "Users":
        """Users ``[lo, hi)`` re-indexed from 0 (the streaming writer builds histories chunk by chunk)."""
        a, b = int(self.interest_offsets[lo]), int(self.interest_offsets[hi])
        return dataclasses.replace(
            self, n_train=int(np.clip(self.n_train - lo, 0, hi - lo)), in_test=self.in_test[lo:hi],
            interest_offsets=self.interest_offsets[lo:hi + 1] - a, interest_cluster=self.interest_cluster[a:b],
            interest_key=self.interest_key[a:b] - lo, recent=self.recent[lo:hi], bias=self.bias[lo:hi],
            fields=self.fields[lo:hi], train_len=self.train_len[lo:hi], total_len=self.total_len[lo:hi])


def build_users(cfg: SynthConfig, cat: Catalogue) -> Users:
    rng = stage_rng(cfg, 2)
    n_train = cfg.users
    n_from_train = cfg.test_users_from_train
    n_unseen = cfg.unseen_test_users
    U = n_train + n_unseen
    in_test = np.zeros(U, dtype=bool)
    in_test[rng.choice(n_train, size=n_from_train, replace=False)] = True
    in_test[n_train:] = True

    n_int = np.minimum(1 + rng.poisson(cfg.mean_long_interests - 1.0, U), cfg.max_long_interests)
    offsets = np.concatenate([[0], np.cumsum(n_int)]).astype(np.int64)
    owner = np.repeat(np.arange(U, dtype=np.int64), n_int)
    # Interest clusters ~ popularity^power: flatter than popularity so users differ.
    pop = np.diff(np.concatenate([[0.0], cat.cluster_cdf])) ** cfg.interest_popularity_power
    flat_cdf = np.cumsum(pop / pop.sum())
    interest_cluster = np.minimum(np.searchsorted(flat_cdf, rng.random(owner.shape[0]), side="right"),
                                  cfg.clusters - 1).astype(np.int64)
    weight = rng.gamma(1.0, size=owner.shape[0])  # Dirichlet(1) after per-user normalisation
    wsum = np.bincount(owner, weights=weight, minlength=U)
    cum = np.cumsum(weight)
    cum_in = (cum - (cum - weight)[offsets[:-1]][owner]) / wsum[owner]
    cum_in[offsets[1:] - 1] = 1.0
    interest_key = owner + cum_in

    lo, hi = np.log(cfg.min_seq_len), np.log(cfg.max_seq_len)
    drawn = np.rint(np.exp(rng.uniform(lo, hi, U))).astype(np.int64)
    length = np.where(rng.random(U) < cfg.full_history_share, cfg.max_seq_len, drawn)
    length = np.clip(length, cfg.min_seq_len, cfg.max_seq_len)
    extra = np.where(in_test[:U] & (np.arange(U) < n_train), rng.poisson(cfg.test_extra_behaviours, U), 0)
    train_len = np.where(np.arange(U) < n_train, length, 0)

    cards = user_field_cardinalities(cfg)
    fields = np.stack([rng.integers(0, c, U) for c in cards], axis=1).astype(np.int64)
    fields[rng.random(fields.shape) < cfg.user_field_missing] = -1
    group_effect = rng.normal(0.0, USER_GROUP_EFFECT_STD, cards[0])
    latent_group = rng.integers(0, cards[0], U)  # used where 130_1 is missing
    group = np.where(fields[:, 0] >= 0, fields[:, 0], latent_group)
    bias = (rng.normal(0.0, cfg.user_bias_std, U) + group_effect[group]).astype(np.float32)
    return Users(
        n_train=n_train,
        in_test=in_test,
        interest_offsets=offsets,
        interest_cluster=interest_cluster,
        interest_key=interest_key,
        recent=cat.sample_clusters(U, rng),
        bias=bias,
        fields=fields,
        train_len=train_len,
        total_len=length + extra,
    )


def build_timelines(cfg: SynthConfig, cat: Catalogue, users: Users,
                    rng: Optional[np.random.Generator] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Every user's behaviour items up to the test snapshot, oldest -> newest (`rng`: the stream
    to draw from; default the stage's own, the streaming writer passes one per user chunk).

    Returns:
        (offsets [U + 1], items [sum total_len] int64): user u's timeline is
        ``items[offsets[u]:offsets[u + 1]]``; the train snapshot is its first ``train_len[u]``.
    """
    rng = stage_rng(cfg, 3) if rng is None else rng
    U = users.n_users
    T = users.total_len
    offsets = np.concatenate([[0], np.cumsum(T)]).astype(np.int64)
    N = int(offsets[-1])
    owner = np.repeat(np.arange(U, dtype=np.int64), T)
    pos = np.arange(N, dtype=np.int64) - offsets[owner]

    new_session = rng.random(N) < 1.0 / cfg.session_len
    new_session[offsets[:-1][T > 0]] = True
    session = np.cumsum(new_session) - 1
    s_user = owner[new_session]
    S = s_user.shape[0]
    kind = rng.random(S)
    k = np.searchsorted(users.interest_key, s_user + rng.random(S), side="right")
    interest = users.interest_cluster[k]
    # Sibling sessions browse another cluster of an interest's category without being an interest:
    # they inflate category match but not semantic match.
    s_cluster = np.where(kind < cfg.long_session_share, interest,
                         np.where(kind < cfg.long_session_share + cfg.sibling_session_share,
                                  cat.sample_siblings(interest, rng), cat.sample_clusters(S, rng)))
    cluster = s_cluster[session]

    # The recent interest fills the newest end of the train snapshot and continues to the test one.
    anchor = np.where(users.train_len > 0, users.train_len, T)
    recent_zone = pos >= (anchor - cfg.recent_span)[owner]
    take_recent = recent_zone & (rng.random(N) < cfg.recent_share)
    cluster = np.where(take_recent, users.recent[owner], cluster)

    items = cat.sample_items(cluster, rng)
    prev_cluster = np.concatenate([[-1], cluster[:-1]])
    repeat = (rng.random(N) < cfg.repeat_share) & ~new_session & (cluster == prev_cluster)
    source = np.maximum.accumulate(np.where(repeat, 0, np.arange(N)))
    return offsets, items[source]


@dataclass
class Impressions:
    user: np.ndarray  # [n] int64
    item: np.ndarray  # [n] int64
    prob: np.ndarray  # [n] float32 click probability without the per-impression noise
    label: np.ndarray  # [n] int8


def _draw_targets(cfg: SynthConfig, cat: Catalogue, users: Users, sample_user: np.ndarray,
                  rng: np.random.Generator) -> np.ndarray:
    n = sample_user.shape[0]
    r = rng.random(n)
    pick = np.floor(rng.random(n) * users.n_interests()[sample_user]).astype(np.int64)
    long_cluster = users.interest_cluster[users.interest_offsets[sample_user] + pick]
    edges = np.cumsum([cfg.target_long_share, cfg.target_recent_share, cfg.target_sibling_share])
    source = np.searchsorted(edges, r, side="right")  # 0 long, 1 recent, 2 sibling, 3 popular
    choices = [long_cluster, users.recent[sample_user], cat.sample_siblings(long_cluster, rng),
               cat.sample_clusters(n, rng)]
    return cat.sample_items(np.choose(source, choices), rng)


def affinities_of(cat: Catalogue, users: Users, u: np.ndarray, v: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(max cosine to the long-term centroids, cosine to the recent centroid), each [n], of users
    `u` [n] and target vectors `v` [n, D]."""
    n_int = users.n_interests()
    aff_recent = np.einsum("nd,nd->n", v, cat.centroid[users.recent[u]]).astype(np.float32)
    best = np.full(u.shape[0], -1.0, dtype=np.float32)
    for m in range(int(n_int[u].max(initial=0))):
        has = n_int[u] > m
        c = users.interest_cluster[users.interest_offsets[u[has]] + m]
        best[has] = np.maximum(best[has], np.einsum("nd,nd->n", v[has], cat.centroid[c]))
    return best, aff_recent


def affinities_in_chunks(cat: Catalogue, users: Users, sample_user: np.ndarray, item: np.ndarray,
                         vectors: Callable[[np.ndarray], np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """`affinities_of` for targets `item` [n], gathering their vectors (`vectors(items) -> [m, D]`)
    _CHUNK samples at a time: the [n, D] gathers would otherwise hold ~1 KB per impression at once."""
    n = item.shape[0]
    aff_long = np.full(n, -1.0, dtype=np.float32)
    aff_recent = np.empty(n, dtype=np.float32)
    for lo in range(0, n, _CHUNK):
        sl = slice(lo, min(n, lo + _CHUNK))
        aff_long[sl], aff_recent[sl] = affinities_of(cat, users, sample_user[sl], vectors(item[sl]))
    return aff_long, aff_recent


def _affinities(cat: Catalogue, users: Users, sample_user: np.ndarray, item: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """`affinities_of` for targets `item` [n] of an in-memory catalogue."""
    return affinities_in_chunks(cat, users, sample_user, item, lambda rows: cat.item_vec[rows])


Affinities = Callable[[Catalogue, Users, np.ndarray, np.ndarray], Tuple[np.ndarray, np.ndarray]]


def _solve_intercept(logit: np.ndarray, rate: float) -> float:
    """b with mean(sigmoid(logit + b)) == rate, by bisection (the mean is monotone in b)."""
    lo, hi = _INTERCEPT_BRACKET
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if np.mean(1.0 / (1.0 + np.exp(-(logit + mid)))) < rate:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def build_impressions(cfg: SynthConfig, cat: Catalogue, users: Users,
                      affinities: Affinities = _affinities) -> Dict[str, Impressions]:
    """Train impressions for every train user and test impressions for every test user
    (`affinities`: how target vectors are found; the streaming world regenerates them by block)."""
    rng = stage_rng(cfg, 4)
    split_users = {"train": np.arange(users.n_train, dtype=np.int64),
                   "test": np.flatnonzero(users.in_test).astype(np.int64)}
    parts = {}
    for split, us in split_users.items():
        us = us[rng.permutation(us.shape[0])]  # rows grouped by user, users in random order
        counts = 1 + rng.poisson(cfg.samples_per_user - 1.0, us.shape[0])
        su = np.repeat(us, counts)
        item = _draw_targets(cfg, cat, users, su, rng)
        aff_long, aff_recent = affinities(cat, users, su, item)
        clean = cfg.long_weight * aff_long + cfg.recent_weight * aff_recent + users.bias[su] + cat.item_bias[item]
        noisy = clean + rng.normal(0.0, cfg.impression_noise_std, su.shape[0])
        parts[split] = (su, item, clean, noisy)
    b = _solve_intercept(np.concatenate([p[3] for p in parts.values()]), cfg.positive_rate)
    out = {}
    for split, (su, item, clean, noisy) in parts.items():
        label = (rng.random(su.shape[0]) < 1.0 / (1.0 + np.exp(-(noisy + b)))).astype(np.int8)
        # The reported probability leaves out the per-impression noise: it is the best score
        # any model could learn, so its GAUC is the ceiling of this release.
        prob = (1.0 / (1.0 + np.exp(-(clean + b)))).astype(np.float32)
        out[split] = Impressions(user=su, item=item, prob=prob, label=label)
    return out

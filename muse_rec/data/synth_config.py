"""`SynthConfig`: every knob of the synthetic Taobao-MM generator, with presets.

Each field carries its documentation in ``metadata["help"]``; the `muse-rec synth` CLI turns
every field into a ``--flag`` from it, so the generator, the CLI and docs/synth.md never drift.
Sizes are counts, shares are probabilities in [0, 1], ``*_std`` are standard deviations in
logit units (the click model is a logistic model).
"""
from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List


# The largest count knob (and Poisson mean) synth takes: `prepare` writes ids, vocabulary rows and
# per-user positions as int32, so a release with more users, items or behaviours is of no use.
MAX_COUNT = 2**31 - 1
# The largest log-normal sigma of the cluster and category weights: exp(sigma * z), summed over up to
# MAX_COUNT of them, stays finite in float64 for draws up to 10 standard deviations (more than any of
# ~1e23 draws reaches); past it the weights overflowed to inf and NumPy's sampler refused the NaN
# probabilities with a traceback (--cluster-size-sigma 1e30).
_LARGEST_DRAW_SIGMAS = 10
MAX_LOGNORMAL_SIGMA = (math.log(sys.float_info.max) - math.log(MAX_COUNT)) / _LARGEST_DRAW_SIGMAS
# The largest click-model weight (it multiplies a cosine, at most 1), and the half-width of the bracket the
# logit intercept is solved in: sigmoid(30) = 1 - 9e-14, so a term past it makes clicks a deterministic step
# and leaves the intercept no room to reach positive_rate (long_weight 1e30 gave 98% positives for a 13.7%
# target, user_bias_std 1e30 a ceiling GAUC of nan, exit 0).
MAX_LOGIT_SCALE = 30.0
_WEIGHT_KNOBS = ("long_weight", "recent_weight")
# The largest logit standard deviation: its largest draw (_LARGEST_DRAW_SIGMAS of them) stays in that bracket
# (user_bias_std 30 missed a 13.7% positive_rate by 3 points, with an overflow warning).
MAX_LOGIT_STD = MAX_LOGIT_SCALE / _LARGEST_DRAW_SIGMAS
_STD_KNOBS = ("user_bias_std", "item_bias_std", "impression_noise_std")
# The largest popularity exponent (cluster_zipf, item_zipf, interest_popularity_power): float64 holds 52
# fraction bits, so past 52 the second-ranked weight (2^-exponent of the first) is below the first's
# resolution and the draw is the most popular one only, a release with one item per cluster.
MAX_POPULARITY_EXPONENT = float(sys.float_info.mant_dig - 1)
_EXPONENT_KNOBS = ("cluster_zipf", "item_zipf", "interest_popularity_power")
# The largest item_noise: the within-cluster cosine 1 / (1 + noise^2) falls below float32's epsilon (the
# SCL vectors are float32) past 2^11.5, so the vectors hold no cluster signal (scl_quality 0 asks for that).
MAX_ITEM_NOISE = 2.0 ** (23 / 2)  # 1 / sqrt(float32 epsilon, 2^-23)
# Knobs no count or size: the seed (NumPy takes any non-negative integer) and the row caps of the
# oracle diagnostics and of Parquet row groups, which only bound what is read or written at once.
_UNBOUNDED = ("seed", "diagnostics_max_users", "row_group_rows", "user_row_group_rows")
# The float knobs that are a mean count (NumPy's Poisson sampler refuses a mean past ~9e18).
_MEANS = ("samples_per_user", "mean_long_interests", "test_extra_behaviours", "session_len")


def _knob(default: Any, help: str) -> Any:  # noqa: A002 - `help` mirrors argparse
    return field(default=default, metadata={"help": help})


@dataclass
class SynthConfig:
    """All knobs of the synthetic release. Defaults = the `demo` preset."""

    # --- sizes -------------------------------------------------------------------------
    users: int = _knob(4500, "number of train users (each has a train_user_features row)")
    items: int = _knob(30000, "number of items in the latent catalogue (only items that occur are written)")
    categories: int = _knob(300, "number of categories (coarser than clusters: must be <= clusters)")
    clusters: int = _knob(1200, "number of latent semantic clusters (SCL vectors = centroid + noise)")
    max_seq_len: int = _knob(1000, "longest behaviour sequence kept per user (newest end)")
    min_seq_len: int = _knob(5, "shortest behaviour sequence")
    samples_per_user: float = _knob(11.0, "mean impressions per user and split (1 + Poisson(mean - 1))")
    test_user_fraction: float = _knob(0.35, "share of train users that also get test impressions")
    unseen_test_fraction: float = _knob(0.1, "test users not in train, as a share of the test users taken from train")
    seed: int = _knob(0, "random seed; the same seed gives byte-identical Parquet files")
    # --- semantic space ----------------------------------------------------------------
    item_noise: float = _knob(0.8, "item SCL = centroid + item_noise * unit Gaussian; within-cluster cosine ~ 1/(1+noise^2)")
    category_semantic_weight: float = _knob(0.2, "share of a cluster centroid along its category direction (same-category clusters are closer)")
    multi_category_fraction: float = _knob(0.3, "share of clusters whose items spread over several categories")
    primary_category_share: float = _knob(0.6, "in a multi-category cluster, the share of items in its primary category")
    secondary_categories: int = _knob(2, "extra categories a multi-category cluster spreads into")
    cluster_size_sigma: float = _knob(0.8, "log-normal sigma of cluster sizes")
    cluster_zipf: float = _knob(0.8, "Zipf exponent of cluster popularity")
    item_zipf: float = _knob(1.1, "Zipf exponent of item popularity inside a cluster (long tail of rare items)")
    shops_per_cluster: int = _knob(4, "values of item attribute 213 (a shop) per cluster")
    attr214_values: int = _knob(12, "distinct values of item attribute 214")
    # --- users and behaviour sequences -------------------------------------------------
    full_history_share: float = _knob(0.5, "share of users whose history reaches max_seq_len; the rest are log-uniform in [min_seq_len, max_seq_len]")
    mean_long_interests: float = _knob(6.0, "mean number of long-term interest clusters per user (1 + Poisson)")
    max_long_interests: int = _knob(12, "cap on long-term interests per user")
    interest_popularity_power: float = _knob(0.5, "interest clusters are drawn with prob ~ popularity^power (flatter than popularity)")
    session_len: float = _knob(8.0, "mean behaviours per session (a session stays on one cluster)")
    long_session_share: float = _knob(0.55, "share of sessions on a long-term interest")
    sibling_session_share: float = _knob(0.15, "share of sessions on another cluster of an interest's category (category match without semantic match); the rest browse popular clusters")
    recent_span: int = _knob(30, "behaviours at the newest end of the train history where the recent interest is concentrated")
    recent_share: float = _knob(0.7, "share of the recent span's behaviours on the recent interest")
    repeat_share: float = _knob(0.25, "share of behaviours that repeat the previous item of the session")
    test_extra_behaviours: float = _knob(10.0, "mean behaviours a train user adds between the train and the test snapshot (Poisson)")
    # --- impressions and clicks --------------------------------------------------------
    target_long_share: float = _knob(0.3, "share of impressions drawn from one of the user's long-term interests (uniformly, rare ones included)")
    target_recent_share: float = _knob(0.1, "share of impressions drawn from the recent interest")
    target_sibling_share: float = _knob(0.2, "share of impressions from another cluster of an interest's category; the rest follow cluster popularity")
    positive_rate: float = _knob(0.137, "target click rate; the logit intercept is solved to hit it (Taobao-MM: 13.7%)")
    long_weight: float = _knob(4.0, "logit weight of max cosine(target, long-term interest centroids)")
    recent_weight: float = _knob(1.5, "logit weight of cosine(target, recent interest centroid)")
    user_bias_std: float = _knob(0.5, "per-user click propensity (logit)")
    item_bias_std: float = _knob(0.3, "per-item attractiveness (logit), learnable from ids")
    impression_noise_std: float = _knob(0.5, "per-impression logit noise (unpredictable label noise)")
    # --- missing values ----------------------------------------------------------------
    scl_quality: float = _knob(1.0, "share of each written SCL vector that is its item's cluster signal: written = normalise(sqrt(Q) * item vector + sqrt(1 - Q) * unit noise); 1 = informative, 0 = useless (the click model keeps the true vectors)")
    scl_behaviour_coverage: float = _knob(0.9, "the SCL table holds the most frequent behaviour items covering this share of behaviours, plus every target ('p90')")
    item_features_missing: float = _knob(0.02, "share of items without an item_features row")
    user_field_missing: float = _knob(0.02, "share of 130_x user fields set to 0 (missing)")
    item_attr_missing: float = _knob(0.01, "share of 213/214 item attributes set to 0 (missing)")
    # --- output ------------------------------------------------------------------------
    row_group_rows: int = _knob(65536, "Parquet row-group size of the sample and item tables")
    user_row_group_rows: int = _knob(2048, "Parquet row-group size of the user-feature tables (long lists)")
    diagnostics_max_users: int = _knob(3000, "test users scored by the oracle diagnostics written to the manifest (0 = skip)")
    writer: str = _knob("memory", "'memory': build the world in memory, write each table at once (<= a few M items "
                        "and ~100k users: ~45 KB per user at histories up to 1,000, 3.2 GB at 72k users; refused up front "
                        "where that exceeds the memory available); "
                        "'stream': bounded memory, one row group at a time, every catalogue item in item_features "
                        "and the SCL table (muse_rec.data.synth_stream; the scale preset)")

    PRESETS = ("tiny", "demo", "medium", "scale")
    WRITERS = ("memory", "stream")

    @classmethod
    def preset(cls, name: str) -> "SynthConfig":
        """`tiny` (unit tests, < 1 s), `demo` (README demo, ~50k train samples), `medium` (~5x demo),
        `scale` (release-shaped, streamed: 30M items, 1M users with histories up to 1000, ~11M train
        impressions; 8.7 GB of Parquet as measured in docs/benchmarks.md)."""
        if name == "demo":
            return cls()
        if name == "tiny":
            return cls(users=400, items=3000, categories=25, clusters=100, max_seq_len=200,
                       recent_span=20, row_group_rows=1024, user_row_group_rows=128,
                       diagnostics_max_users=0)
        if name == "medium":
            return cls(users=22500, items=150000, categories=800, clusters=5000)
        if name == "scale":
            # Row groups as a writer's default makes them (~1M rows; 32k users = ~300 MB of ids per
            # user-feature row group): prepare must cope with large row groups.
            return cls(users=1_000_000, items=30_000_000, categories=10_000, clusters=250_000,
                       row_group_rows=1 << 20, user_row_group_rows=32_768, diagnostics_max_users=0,
                       writer="stream")
        raise ValueError(f"unknown synth preset '{name}' (choose from {', '.join(cls.PRESETS)})")

    def replace(self, **overrides: Any) -> "SynthConfig":
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise KeyError(f"unknown SynthConfig field(s): {unknown}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def test_users_from_train(self) -> int:
        """Train users that also get test impressions: ``round(users x test_user_fraction)``."""
        return int(round(self.users * self.test_user_fraction))

    @property
    def unseen_test_users(self) -> int:
        """Test users not in train: ``round(test_users_from_train x unseen_test_fraction)``."""
        return int(round(self.test_users_from_train * self.unseen_test_fraction))

    def expected_behaviours(self) -> float:
        """The mean total length of every user's timeline up to the test snapshot (`build_users`): a
        history length per user (`full_history_share` at `max_seq_len`, the rest log-uniform from
        `min_seq_len`), plus `test_extra_behaviours` for each train user in the test split."""
        lo, hi = self.min_seq_len, self.max_seq_len
        log_uniform_mean = (hi - lo) / math.log(hi / lo) if hi > lo else float(hi)  # mean of exp(U(ln lo, ln hi))
        per_user = self.full_history_share * hi + (1.0 - self.full_history_share) * log_uniform_mean
        return ((self.users + self.unseen_test_users) * per_user
                + self.test_users_from_train * self.test_extra_behaviours)

    def expected_impressions(self) -> float:
        """The mean impressions of both splits: `samples_per_user` for each train and each test user."""
        return (self.users + self.test_users_from_train + self.unseen_test_users) * self.samples_per_user

    def validate(self) -> None:
        """Raise ValueError naming the first knob that is out of range."""
        problems: List[str] = []

        def need(ok: bool, msg: str) -> None:
            if not ok:
                problems.append(msg)

        for f in dataclasses.fields(self):  # inf reached NumPy's samplers as a traceback
            v = getattr(self, f.name)
            need(not isinstance(v, float) or math.isfinite(v), f"{f.name}={v} must be finite")
            # A count or a Poisson mean past int32 was a NumPy traceback ("array is too big", "lam value too
            # large", an int64 overflow), and no release that large could be prepared anyway.
            counted = (isinstance(v, int) and f.name not in _UNBOUNDED) or f.name in _MEANS
            need(not counted or v <= MAX_COUNT or not math.isfinite(v),  # a non-finite one is named above
                 f"{f.name}={v} must be <= {MAX_COUNT:,} (prepared data holds ids and positions as int32)")
        if problems:  # the checks below compute with the knobs (inf * a share was an OverflowError)
            raise ValueError("invalid SynthConfig: " + "; ".join(problems))
        need(self.seed >= 0, f"seed={self.seed} must be >= 0")  # NumPy's generators take no negative seed
        need(self.users >= 1, f"users={self.users} must be >= 1")
        # `muse-rec prepare` refuses a release without test impressions (it has nothing to evaluate).
        need(self.test_users_from_train >= 1, f"users={self.users} x test_user_fraction={self.test_user_fraction} "
             "rounds to 0 test users; the release needs a test split")
        need(self.clusters >= 1, f"clusters={self.clusters} must be >= 1")
        need(1 <= self.categories <= self.clusters,
             f"categories={self.categories} must be in [1, clusters={self.clusters}] (categories are coarser than clusters)")
        need(self.items >= self.clusters, f"items={self.items} must be >= clusters={self.clusters}")
        need(1 <= self.min_seq_len <= self.max_seq_len,
             f"need 1 <= min_seq_len={self.min_seq_len} <= max_seq_len={self.max_seq_len}")
        need(self.writer in self.WRITERS, f"writer={self.writer!r} must be one of {self.WRITERS}")
        need(self.samples_per_user >= 1, f"samples_per_user={self.samples_per_user} must be >= 1")
        need(self.max_long_interests >= 1, f"max_long_interests={self.max_long_interests} must be >= 1")
        need(self.mean_long_interests >= 1, f"mean_long_interests={self.mean_long_interests} must be >= 1")
        need(self.session_len >= 1, f"session_len={self.session_len} must be >= 1")
        need(self.secondary_categories >= 1, f"secondary_categories={self.secondary_categories} must be >= 1")
        need(self.shops_per_cluster >= 1 and self.attr214_values >= 1, "shops_per_cluster and attr214_values must be >= 1")
        need(self.recent_span >= 0, f"recent_span={self.recent_span} must be >= 0")
        need(self.row_group_rows >= 1 and self.user_row_group_rows >= 1, "row-group sizes must be >= 1")
        need(self.diagnostics_max_users >= 0, "diagnostics_max_users must be >= 0")
        for name in ("test_user_fraction", "unseen_test_fraction", "category_semantic_weight",
                     "multi_category_fraction", "primary_category_share", "full_history_share",
                     "long_session_share", "sibling_session_share", "recent_share", "repeat_share",
                     "target_long_share", "target_recent_share", "target_sibling_share",
                     "user_field_missing", "item_attr_missing", "scl_quality"):
            v = getattr(self, name)
            need(0.0 <= v <= 1.0, f"{name}={v} must be in [0, 1]")
        # 1 wrote an item_features table of 0 rows, which `muse-rec prepare` refuses ("empty table").
        need(0.0 <= self.item_features_missing < 1.0, f"item_features_missing={self.item_features_missing} must be "
             "in [0, 1): the release needs item_features rows")
        need(0.0 < self.positive_rate < 1.0, f"positive_rate={self.positive_rate} must be in (0, 1)")
        need(0.0 < self.scl_behaviour_coverage <= 1.0, f"scl_behaviour_coverage={self.scl_behaviour_coverage} must be in (0, 1]")
        need(self.target_long_share + self.target_recent_share + self.target_sibling_share <= 1.0,
             "target_long_share + target_recent_share + target_sibling_share must be <= 1")
        need(self.long_session_share + self.sibling_session_share <= 1.0,
             "long_session_share + sibling_session_share must be <= 1")
        for name in ("item_noise", "cluster_size_sigma", "cluster_zipf", "item_zipf", "interest_popularity_power",
                     "test_extra_behaviours", "long_weight", "recent_weight", "user_bias_std", "item_bias_std",
                     "impression_noise_std"):
            v = getattr(self, name)
            need(v >= 0.0, f"{name}={v} must be >= 0")
        for name, most in [(k, MAX_LOGIT_SCALE) for k in _WEIGHT_KNOBS] + [(k, MAX_LOGIT_STD) for k in _STD_KNOBS]:
            v = getattr(self, name)
            need(v <= most, f"{name}={v} must be <= {most:g} (logit units: past it clicks are a deterministic step "
                 "and positive_rate cannot be reached)")
        for name in _EXPONENT_KNOBS:
            v = getattr(self, name)
            need(v <= MAX_POPULARITY_EXPONENT, f"{name}={v} must be <= {MAX_POPULARITY_EXPONENT:g} (past it every "
                 "draw is the most popular one: float64 cannot hold the second's weight)")
        need(self.item_noise <= MAX_ITEM_NOISE, f"item_noise={self.item_noise} must be <= {MAX_ITEM_NOISE:.0f} (past it "
             "the within-cluster cosine is below float32's epsilon: no cluster signal; scl_quality 0 asks for that)")
        need(self.cluster_size_sigma <= MAX_LOGNORMAL_SIGMA,
             f"cluster_size_sigma={self.cluster_size_sigma} must be <= {MAX_LOGNORMAL_SIGMA:.1f} (the log-normal "
             "cluster and category weights overflow float64 past it)")
        if problems:
            raise ValueError("invalid SynthConfig: " + "; ".join(problems))

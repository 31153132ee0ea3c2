"""The run spec's schema: one dataclass per section, each field a key of the YAML file.

Defaults are the paper's reference settings (MUSE.md) unless a comment says why not. Loading,
``extends:`` and ``--set`` overrides are `muse_rec.spec.load`; validation, `muse_rec.spec.coerce`
(types) and `muse_rec.spec.value_checks` (values).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Literal, Optional, Sequence, Tuple


class SpecError(ValueError):
    """A spec file or override is malformed; the message names the file and the key."""


@dataclass
class DataSpec:
    prepared: str = "data/demo/prepared"  # iopath path to the output of `muse-rec prepare`
    seq_len: int = 1000  # behaviours kept per user (the newest)
    num_workers: int = 1  # loader worker processes per rank
    train_split: str = "train"
    eval_split: str = "test"
    # Rows per embedding table (row 0 included) for planning without prepared data at hand
    # (`muse-rec plan` at the real Taobao-MM scale). Training always sizes its tables from the
    # prepared data, and a resumed or evaluated checkpoint must match that data exactly.
    vocab_sizes: Dict[str, int] = field(default_factory=dict)


# GSU kinds that read the frozen SCL vectors of the whole history.
SCL_GSU_KINDS = ("cosine_scl", "cooccurrence_scl", "scl_attention", "fusion")


@dataclass
class GSUSpec:
    """General Search Unit: which behaviours of the whole sequence reach the ESU."""

    kind: Literal["none", "cosine_scl", "category", "id_cosine", "attention", "cooccurrence_scl",
                  "scl_attention", "fusion"] = "cosine_scl"
    top_k: int = 50
    # cosine_scl only: add an ID relevance to the multimodal cosine before the top-K (the
    # paper's GSU-scoring ablation: MM cos + ID cos, MM cos + ID attention).
    id_score: Literal["none", "cosine", "attention"] = "none"
    id_weight: float = 1.0
    chunk_size: int = 4096  # positions scored per chunk (bounds the GSU's working memory)
    # kind fusion only (docs/fusion.md): "branches" = MUSE's K picks and SIM-soft's K picks, each
    # read by its own ESU pass, the tower sees both; "union" = both top-K as one set of 2K slots
    # (a behaviour picked by both once); "half" = each similarity's best K/2 (K slots); "gated" =
    # top-K of the gated sum of both, standardised per user (gate: the ESU's).
    fusion: Literal["branches", "union", "half", "gated"] = "branches"


@dataclass
class ESUSpec:
    """Exact Search Unit over the K retrieved behaviours."""

    simtier: bool = True  # SimTier histogram of the retrieved behaviours' similarities
    attention: Literal["none", "ta", "sa_ta"] = "sa_ta"  # ID target attention / semantic-aware TA
    sa_ta_variant: Literal["paper", "reference"] = "reference"
    # R, the similarities SimTier and SA-TA read: cosine of the frozen SCL vectors (MUSE) or of the
    # (detached) trainable ID tokens (the ID-only baselines, e.g. TWIN's TA + SimTier).
    # "fusion": both, R [B, K, 2]; SimTier per similarity, SA-TA over lam * R_mm + (1 - lam) * R_id.
    similarity: Literal["scl", "id", "fusion"] = "scl"
    fusion_gate_init: float = 0.5  # similarity fusion: initial lam, the multimodal share
    num_tiers: int = 22
    tier_width: float = 0.1
    attention_hidden: int = 32  # width of the W_q / W_k / W_v projections
    temperature_init: float = 0.1  # reference variant: R / temperature


@dataclass
class ShortTermSpec:
    """The recent-behaviour branch (the newest end of the sequence)."""

    recent: int = 50
    attention: bool = True  # target attention over the recent behaviours (DIN's branch)
    mean_pool: bool = True  # mean pooling of the recent and of the retrieved behaviours
    simtier: bool = True  # the reference applies SimTier to the recent 50 too


@dataclass
class ParametrizationSpec:
    """How the dense layers start and how the output is shaped (docs/accuracy.md has the study).

    The reference's list (MUSE.md) vs torch's defaults: at the published lr (AdamW 2e-4,
    batch 1000, one epoch) these decide how fast the dense part learns. Defaults are the
    reference's except ``linear_bias`` (what trains best at the published settings:
    docs/accuracy.md) and ``output_head`` (the reference's is discontinuous, see below), plus
    ``output_bias`` (ours: the logit starts at the train click rate). Each knob's comment names
    torch's value, which `benchmarks/accuracy_study.py` ablates.
    """

    # "normal_fan_in": W ~ N(0, 1) / sqrt(fan_in) (the reference); "torch": nn.Linear's default
    # kaiming-uniform, U(+-1/sqrt(fan_in)), i.e. std 1/sqrt(3 fan_in). Every Linear: tower and
    # attention projections.
    linear_init: Literal["torch", "normal_fan_in"] = "normal_fan_in"
    # Constant bias init (the reference: 0.1) or None = torch's U(+-1/sqrt(fan_in)). None by default:
    # a constant bias feeds Dice's LayerNorm (no affine, eps 1e-12) an almost constant vector
    # while the ID inputs are ~1e-3, so its gates follow amplified noise; the ID-only DIN loses
    # 0.05 GAUC at the published settings with 0.1, MUSE is unchanged (docs/accuracy.md).
    linear_bias: Optional[float] = None
    attention_bias: bool = True  # W_q / W_k / W_v carry a bias (the reference's do)
    dice_alpha_init: float = -0.25  # Dice's per-feature g on the negative side (reference -0.25)
    dice_norm_affine: bool = False  # learnable scale/shift in Dice's LayerNorm (reference: none)
    dice_norm_eps: float = 1e-12  # Dice's LayerNorm epsilon (reference 1e-12)
    # "one_logit": Linear(., 1) + BCE. "two_logits_dice": the reference's Linear(., 2) -> Dice(2)
    # -> softmax CE; the model returns z1 - z0 (softmax CE over [z0, z1] == BCE on z1 - z0).
    # Default one_logit: Dice's LayerNorm over 2 features maps z1 - z0 to about +-1 whatever its
    # size, so the reference head jumps by ~1.16 z where z0 = z1 = z (a discontinuous model: an
    # int8 table or a different summation order flips it), and it moves GAUC by +0.01 at most.
    output_head: Literal["one_logit", "two_logits_dice"] = "one_logit"
    # Bias of the one output logit. "train_prior": log(p / (1 - p)), p = the click rate of the
    # prepared train split (its meta.json), so the model starts at the base rate. With "linear"
    # (as every other Linear; the reference) the model starts near p = 0.5 while ~14% click, and at
    # the published lr (2e-4: a weight moves ~0.01 in 50 steps) the first epoch is spent moving
    # the mean logit to ~-1.8 instead of ranking: MUSE 0.634 -> 0.662 GAUC (docs/accuracy.md).
    output_bias: Literal["linear", "train_prior"] = "train_prior"
    # Init gain of the tower's Linears that read an activation (every hidden layer after the first,
    # and the output layer). "unit": std 1/sqrt(fan_in) as the reference; that keeps the scale only
    # through a linear map, and each Dice (alpha -0.25) passes on E[Dice(z)^2] = 0.31 of its input's
    # second moment, so the output layer reads activations 1.81^3 = 5.9x smaller (in std) than the
    # first layer's pre-activations. "activation" (ours): He's rule for the tower's activation, gain = 1/sqrt(E[act(z)^2]),
    # z ~ N(0,1) (Dice at alpha -0.25: 1.81; ReLU: sqrt(2)), so every layer starts at the first
    # layer's scale: MUSE +0.004 to +0.011 GAUC at the published settings, level when trained
    # longer (docs/accuracy.md).
    tower_gain: Literal["unit", "activation"] = "activation"
    # Which inputs make the fan-in of the tower's FIRST Linear. "all" (the default): every column,
    # LeCun's rule and the reference's (std 1/sqrt(in_dim)). "scl_histograms" (ours, an option): the
    # weights reading the SimTier histograms of SCL cosines (the only columns at unit scale at step 0;
    # ID-derived ones start at the tables' ~1e-3) start at std 1/sqrt(their count), the rest stay
    # 1/sqrt(in_dim). Not the default: it starts the tower 2.6x more sensitive to the SCL histograms
    # than to the ID columns, a prior for semantic signal; on synthetic sets where item popularity
    # carries the clicks, as on the real release (the paper's DIN, ID-only, is 0.007 GAUC below MUSE),
    # it cost MUSE 0.010-0.013 GAUC at the published settings, against -0.002 to +0.003 in its favour
    # (mean +0.0001) where the semantics carry them (docs/accuracy.md). Models without such columns
    # (DIN, TWIN, MISS) are unchanged.
    tower_fan_in: Literal["all", "scl_histograms"] = "all"
    # How every SimTier's tier weights w start (the histogram is log1p(count) * w). "uniform": each
    # w ~ U(0, 1), the reference. Under Adam a weight moves ~lr per step whatever its size, so a tier
    # drawn at w ~ 0.05 stays almost invisible to the tower for the whole epoch at lr 2e-4 (w moves
    # <= 0.02 in 80 steps): which tiers the model can use depends on the seed. "constant" (ours):
    # every w starts at 1/sqrt(3), the RMS of U(0, 1), so the histograms keep the reference's
    # second moment without the draw: MUSE +0.004 to +0.009 GAUC at the published settings on five
    # synthetic sets (docs/accuracy.md).
    simtier_init: Literal["uniform", "constant"] = "constant"


@dataclass
class ModelSpec:
    method: str = "muse"  # a label for tables and plots; behaviour comes from the keys below
    embedding_dim: int = 16  # item / category / user id dims
    small_dim: int = 8  # dim of the `small_features`
    small_features: List[str] = field(default_factory=lambda: ["user_f2", "user_f3", "user_f4"])
    init_std: float = 1e-3  # trunc-normal std of every ID table
    gsu: GSUSpec = field(default_factory=GSUSpec)
    esu: ESUSpec = field(default_factory=ESUSpec)
    short_term: ShortTermSpec = field(default_factory=ShortTermSpec)
    tower_hidden: List[int] = field(default_factory=lambda: [256, 128, 64])
    tower_activation: Literal["dice", "relu"] = "dice"
    dropout: float = 0.0
    parametrization: ParametrizationSpec = field(default_factory=ParametrizationSpec)

    @property
    def reads_scl(self) -> bool:
        """Whether the model looks the frozen SCL vectors up (its GSU searches by them, or its ESU or the
        recent SimTier reads their similarities): not DIN or TWIN."""
        e = self.esu
        return self.gsu.kind in SCL_GSU_KINDS or (
            e.similarity in ("scl", "fusion") and (e.simtier or e.attention == "sa_ta" or self.short_term.simtier))


# Names `train.sparse_optimizer.name` may take: FBGEMM's fused embedding optimizers
# (`muse_rec.env.fused_optimizers("cuda")`, which CPU narrows further) plus ``adam``, which CPU
# runs as `RowSparseAdam` (torch SparseAdam's update on touched rows). Kept literal so loading a
# spec never imports FBGEMM; a test checks it against FBGEMM's list.
SPARSE_OPTIMIZER_NAMES = ("adam", "ema_in_place_row_wise_adagrad", "exact_adagrad", "exact_row_wise_adagrad",
                          "exact_sgd", "lamb", "lars_sgd", "partial_row_wise_adam", "partial_row_wise_lamb")


# The ID tables every model has (rows per table: `data.vocab_sizes`), in
# `muse_rec.models.sparse_arch.REQUIRED_TABLES` order. Kept literal so loading a spec never
# imports torch; a test checks it against the model's list.
ID_TABLES = ("item", "category", "user_id", "user_f1", "user_f2", "user_f3", "user_f4", "user_f5",
             "item_f213", "item_f214")
# The widest ID-table row a spec may ask for. TorchRec's planner enumerates column-wise shards of
# 128 columns and deep-copies every option: measured on `muse-rec plan` (1 CPU rank), 3.3 s at 1,024,
# 5.2 s at 65,536, past 100 s at 1,048,576 with no output. The paper's tables are 16-128 wide.
MAX_EMBEDDING_DIM = 65536
# The widest dense layer a spec may ask for (a `model.tower_hidden` width, `model.esu.attention_hidden`):
# 4,096x the paper's widest (256). At it, with the widest ID rows, every layer's byte count stays far
# inside the int64 sizes torch and TorchRec's planner compute with, so `plan` and `train` say what does
# not fit; 2^70 overflowed torch's storage size building the model on the meta device (a traceback).
MAX_LAYER_WIDTH = 2**20
# The most hidden layers `model.tower_hidden` may list: 330x the paper's 3. Measured on the tiny release
# (widths 4, one CPU rank): 1,000 layers trained 2 steps in 17 s, 10,000 in 86 s and 1.9 GB, and 100,000
# printed nothing for 11 minutes inside torch's DDP set-up, where SIGTERM did not stop it.
MAX_TOWER_LAYERS = 1000
# The most rows a table may have: every byte count of the widest table (rows x MAX_EMBEDDING_DIM
# x 16 B: the fp32 weight, Adam's two moments and a checkpoint's copy) fits in an int64, as torch
# sizes and TorchRec's plans need (2^43 - 1, ~8.8e12 rows: 36,000x the release's 243M items). Above
# it the model's tables could not even be described on the meta device (an overflow traceback).
MAX_TABLE_ROWS = (2**63 - 1) // (MAX_EMBEDDING_DIM * 16)
# The narrowest SimTier tier (cosine units): float32's spacing just below 1, so no narrower tier parts two
# of the (float32) cosines it bins there. The tier index, about 2 / tier_width, then fits int64 many times
# over; 5e-324 divided into inf (an OverflowError traceback loading the spec), 1e-20 overflowed SimTier's
# int64 tier offset in the first step (a traceback once the run had started).
MIN_TIER_WIDTH = 2.0**-24
# The largest `train.seed`: torch's generator seed is an unsigned 64-bit integer. torch.manual_seed refuses
# more (a ValueError traceback once the run had started) and takes a negative seed modulo 2^64, so -1
# trained the same model as 2^64 - 1 under another name.
MAX_SEED = 2**64 - 1
# `train.collective_timeout_s` (seconds). The default is what every run waited before it was a key
# (10 minutes: a checkpoint save or a large table's initialisation on one rank keeps the others
# waiting that long in its barrier).
DEFAULT_COLLECTIVE_TIMEOUT_S = 600.0
# gloo and the c10d store count the timeout in whole milliseconds: less would be 0 ms.
MIN_COLLECTIVE_TIMEOUT_S = 1e-3
# c10d adds the timeout to a nanosecond clock (int64, ~292 years): measured, 1e9 s (~32 years)
# waits as asked, 9e12 s overflows and every rank's store connection "times out" at once.
MAX_COLLECTIVE_TIMEOUT_S = 1e9
# The longest name of one file or directory, in bytes, that the filesystems runs are written to take
# (NAME_MAX of ext4, XFS, btrfs, APFS, NFS): a longer `output_dir` part (or `name` filled into it) was an
# OSError traceback ("File name too long") from train and launch.
MAX_PATH_PART_BYTES = 255
# Tables `model.small_features` may shrink: item and category share one EmbeddingCollection,
# which needs one dim for both.
SMALL_DIM_TABLES = ID_TABLES[2:]


@dataclass
class OptimizerSpec:
    name: str
    lr: float
    weight_decay: float = 0.0
    eps: float = 1e-8
    betas: Tuple[float, float] = (0.9, 0.999)


@dataclass
class TrainSpec:
    batch_size: int = 1000  # per rank
    eval_batch_size: int = 1000
    epochs: int = 1
    max_steps: int = 0  # 0 = whole epochs; >0 stops early (quick runs, tests)
    # The paper trains embeddings with SparseAdam (lr 2e-3): `{name: adam, lr: 2.0e-3}` runs as
    # FBGEMM's fused Adam on CUDA and as RowSparseAdam on CPU (same lazy update, touched rows
    # only; docs/sharding.md). Other names are FBGEMM fused optimizers; the run logs its route.
    sparse_optimizer: OptimizerSpec = field(
        default_factory=lambda: OptimizerSpec(name="exact_row_wise_adagrad", lr=2e-2, eps=1e-8)
    )
    dense_optimizer: OptimizerSpec = field(default_factory=lambda: OptimizerSpec(name="adamw", lr=2e-4))
    shuffle_seed: Optional[int] = None  # None = file order, as the reference (no shuffle)
    seed: int = 0
    log_every: int = 20  # batches between progress/TensorBoard updates (and eval progress lines in a log)
    checkpoint_every: int = 0  # batches; 0 = only at the end
    eval_at_end: bool = True
    check_floors: bool = True  # after eval: compare GAUC with the model-free floors (muse-rec baselines)
    # The start of a run warns when it trains on fewer clicks than this (0 = never): how far one
    # epoch gets at a fixed dense lr follows its clicks (docs/accuracy.md). specs/base.yaml sets it.
    warn_below_clicks: int = 0
    pipeline: Literal["sparse_dist", "base"] = "sparse_dist"
    # Seconds a rank waits in a collective (and in the start's rendezvous) for the other ranks before
    # it fails: a hung or SIGSTOPped rank holds the job this long (docs/launch.md, "A hung rank").
    collective_timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S


@dataclass
class Spec:
    name: str = "muse"
    output_dir: str = "runs/{name}"  # {name} is replaced by the spec's name
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)

    @property
    def run_dir(self) -> str:
        """The local run directory: ``output_dir`` with {name} filled in, a ``file://`` URI as its path
        (`muse_rec.output_paths.strip_file_uri`, the readers' rule)."""
        from muse_rec.output_paths import strip_file_uri

        return strip_file_uri(self.output_dir.format(name=self.name))

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


# Keys of a resolved spec that name or place a run, or change only what it logs, checks or
# writes and how fast, never what it trains: two runs that differ only in them are the same
# configuration (`training_settings`). A key names its whole subtree. `data.raw` is no key any more
# (nothing read it); the spec.yaml of older runs still holds it.
NON_TRAINING_KEYS = ("name", "output_dir", "data.vocab_sizes", "data.num_workers", "train.eval_batch_size",
                     "train.log_every", "train.checkpoint_every", "train.check_floors", "train.warn_below_clicks",
                     "train.collective_timeout_s", "data.raw")


# Keys of ``model`` that set only how a model starts (its init), how it trains (dropout) or how fast it
# computes (the GSU's chunking): a checkpoint's weights replace what they chose, so a checkpoint
# evaluated or served under a spec that differs only in them is the same model (`model_settings`).
MODEL_INIT_KEYS = ("model.init_std", "model.dropout", "model.gsu.chunk_size", "model.esu.fusion_gate_init",
                   "model.esu.temperature_init", "model.parametrization.linear_init",
                   "model.parametrization.linear_bias", "model.parametrization.dice_alpha_init",
                   "model.parametrization.output_bias", "model.parametrization.tower_gain",
                   "model.parametrization.tower_fan_in", "model.parametrization.simtier_init")


def model_settings(resolved: Dict[str, Any]) -> Dict[str, Any]:
    """The ``model.*`` keys of a resolved spec (or of ``{"model": <a checkpoint's model.json>}``) that
    decide what a trained model computes, as ``{dotted.key: value}``: `MODEL_INIT_KEYS` left out."""
    model = resolved.get("model")
    return dict(dotted_items(model, skip=MODEL_INIT_KEYS, prefix="model.")) if isinstance(model, dict) else {}


def training_settings(resolved: Dict[str, Any], leave_out: Sequence[str] = ()) -> Dict[str, Any]:
    """A resolved spec (``Spec.to_dict()``, or a run's spec.yaml) as ``{dotted.key: value}``
    without `NON_TRAINING_KEYS` and ``leave_out``: what decides the trained model."""
    return dict(dotted_items(resolved, skip=tuple(NON_TRAINING_KEYS) + tuple(leave_out)))


def dotted_items(tree: Dict[str, Any], skip: Sequence[str] = (), prefix: str = "") -> Iterator[Tuple[str, Any]]:
    """The leaves of a nested mapping as ``("a.b.c", value)``, depth first in the mapping's order;
    a key in ``skip`` (dotted) is left out with everything below it, an empty mapping yields nothing."""
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if key in skip:
            continue
        if isinstance(v, dict):
            yield from dotted_items(v, skip, key + ".")
        else:
            yield key, v


def literal_choices(cls: type, name: str) -> Tuple[Any, ...]:
    """The values the ``Literal`` field ``name`` of spec dataclass ``cls`` allows, in declaration
    order. Modules that also run without a spec check their arguments against this instead of a
    copy of the list, so a new choice is added in one place."""
    tp = typing.get_type_hints(cls).get(name)
    if typing.get_origin(tp) is not Literal:
        raise TypeError(f"{cls.__name__}.{name} is not a Literal field of the spec")
    return typing.get_args(tp)

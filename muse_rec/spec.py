"""The run spec: one declarative YAML file drives a run, from data paths to learning rates.

A spec file may ``extends:`` another (path relative to itself); mappings are deep-merged,
the child winning. ``--set key.path=value`` overrides apply last. Every key is validated
against the dataclasses below: unknown keys, wrong types and bad values raise `SpecError`
naming the file and the dotted key, e.g. ``specs/muse.yaml: model.gsu.top_k: expected int, got 'fifty'``.

Example::

    spec = load_spec("specs/muse.yaml", overrides=["train.batch_size=256"])
    spec.model.gsu.top_k  # 50
"""
from __future__ import annotations

import dataclasses
import math
import os
import string
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Literal, Optional, Sequence, Tuple, Union

import yaml


class SpecError(ValueError):
    """A spec file or override is malformed; the message names the file and the key."""


# ----------------------------------------------------------------------------------------------
# The schema. Defaults are the paper's reference settings (MUSE.md) unless a comment says why not.
# ----------------------------------------------------------------------------------------------


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


@dataclass
class Spec:
    name: str = "muse"
    output_dir: str = "runs/{name}"  # {name} is replaced by the spec's name
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)

    @property
    def run_dir(self) -> str:
        return self.output_dir.format(name=self.name)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


# Keys of a resolved spec that name or place a run, or change only what it logs, checks or
# writes and how fast, never what it trains: two runs that differ only in them are the same
# configuration (`training_settings`). A key names its whole subtree. `data.raw` is no key any more
# (nothing read it); the spec.yaml of older runs still holds it.
NON_TRAINING_KEYS = ("name", "output_dir", "data.vocab_sizes", "data.num_workers", "train.eval_batch_size",
                     "train.log_every", "train.checkpoint_every", "train.check_floors", "train.warn_below_clicks",
                     "data.raw")


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


# ----------------------------------------------------------------------------------------------
# Loading and validation.
# ----------------------------------------------------------------------------------------------


def literal_choices(cls: type, name: str) -> Tuple[Any, ...]:
    """The values the ``Literal`` field ``name`` of spec dataclass ``cls`` allows, in declaration
    order. Modules that also run without a spec check their arguments against this instead of a
    copy of the list, so a new choice is added in one place."""
    tp = typing.get_type_hints(cls).get(name)
    if typing.get_origin(tp) is not Literal:
        raise TypeError(f"{cls.__name__}.{name} is not a Literal field of the spec")
    return typing.get_args(tp)


def load_spec(path: Union[str, os.PathLike], overrides: Sequence[str] = ()) -> Spec:
    """Read a spec file (following ``extends:``), apply ``key.path=value`` overrides, validate.

    An invalid value set by an override is reported as ``--set key=value: key: ...`` (the
    override is what to fix), anything else as ``<spec file>: key: ...``.
    """
    raw = _read_with_extends(Path(path), seen=())
    for ov in overrides:
        _apply_override(raw, ov, str(path))
    try:
        return from_dict(raw, source=str(path))
    except SpecError as e:
        prefix, msg = f"{path}: ", str(e)
        if msg.startswith(prefix):
            rest = msg[len(prefix):]
            ov = _override_of(rest.split(": ", 1)[0], overrides)
            if ov is not None:
                raise SpecError(f"--set {ov}: {rest}") from None
        raise


def _override_of(key: str, overrides: Sequence[str]) -> Optional[str]:
    """The last override that set ``key`` (or a mapping above it, or a key below it), if any."""
    key = key.split("[", 1)[0]
    for ov in reversed(list(overrides)):
        k = ov.split("=", 1)[0].strip()
        if k == key or key.startswith(k + ".") or k.startswith(key + "."):
            return ov
    return None


def from_dict(raw: Dict[str, Any], source: str = "<spec>") -> Spec:
    spec = _build(Spec, raw, source, prefix="")
    _check_values(spec, source)
    return spec


class _UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (a second value would silently win)", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_with_extends(path: Path, seen: Tuple[Path, ...], referenced_by: Optional[Path] = None) -> Dict[str, Any]:
    if not path.exists():
        if referenced_by is not None:
            raise SpecError(f"{referenced_by}: extends: {path}: spec file not found")
        raise SpecError(f"{path}: spec file not found")
    if path.resolve() in seen:
        raise SpecError(f"{path}: 'extends' cycle: " + " -> ".join(str(p) for p in seen + (path,)))
    try:
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"{path}: cannot read ({e})") from None
    if not isinstance(doc, dict):
        raise SpecError(f"{path}: top level must be a mapping, got {type(doc).__name__}")
    parents = doc.pop("extends", None)
    if parents is None:
        return doc
    # One parent or a list (e.g. a method spec + a data/scale profile), merged in order.
    parents = [parents] if isinstance(parents, str) else parents
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise SpecError(f"{path}: extends: expected a path or a list of paths, got {parents!r}")
    merged: Dict[str, Any] = {}
    for parent in parents:
        merged = _deep_merge(merged, _read_with_extends(path.parent / parent, seen + (path.resolve(),), path))
    return _deep_merge(merged, doc)


def _deep_merge(base: Dict[str, Any], child: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for k, v in child.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _apply_override(raw: Dict[str, Any], override: str, source: str) -> None:
    if "=" not in override:
        raise SpecError(f"override {override!r}: expected key.path=value")
    key, value = override.split("=", 1)
    node = raw
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise SpecError(f"override {override!r}: {p} is not a mapping")
    try:
        node[parts[-1]] = yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise SpecError(f"override {override!r}: value is not valid YAML ({e.problem})") from None


def _build(cls: type, raw: Any, source: str, prefix: str) -> Any:
    where = prefix.rstrip(".") or "<top level>"
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: {where}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise SpecError(f"{source}: {prefix}{unknown[0]}: unknown key (known under {where}: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in raw:
            value = raw[f.name]
            # A partial mapping for a nested section keeps the defaults of the keys it omits.
            if isinstance(value, dict) and f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                default = f.default_factory()  # type: ignore[misc]
                if dataclasses.is_dataclass(default):
                    value = _deep_merge(dataclasses.asdict(default), value)
            kwargs[f.name] = _coerce(hints[f.name], value, source, prefix + f.name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            raise SpecError(f"{source}: {prefix}{f.name}: required key is missing")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, source: str, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    bad = lambda what: SpecError(f"{source}: {key}: expected {what}, got {value!r}")  # noqa: E731
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, source, key + ".")
    if origin is Union:  # Optional[X]
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, source, key)
    if origin is Literal:
        if value not in args:
            raise SpecError(f"{source}: {key}: must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin in (list, List):
        if not isinstance(value, list):
            raise bad("a list")
        return [_coerce(args[0], v, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (tuple, Tuple):
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise bad(f"a list of {len(args)}")
        return tuple(_coerce(a, v, source, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise bad("a mapping")
        return {str(k): _coerce(args[1], v, source, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if tp is float:
        # YAML reads 2e-3 as a string (it wants 2.0e-3); accept both spellings.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise bad("a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        try:
            number = float(value)
        except OverflowError:
            raise bad("a finite number") from None
        if not math.isfinite(number):  # YAML's .inf / .nan, or 'inf' / 'nan' strings
            raise bad("a finite number")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    raise SpecError(f"{source}: {key}: unsupported type {tp}")  # a schema bug, not a user error


def _only_name_field(template: str) -> bool:
    """``template.format(name=...)`` works: balanced braces, no placeholder but a plain ``{name}``."""
    try:
        return all(field in (None, "name") and not fmt and not conv
                   for _, field, fmt, conv in string.Formatter().parse(template))
    except ValueError:  # an unbalanced brace
        return False


def _check_values(spec: Spec, source: str) -> None:
    """Range checks that types cannot express."""

    def need(cond: bool, key: str, msg: str) -> None:
        if not cond:
            raise SpecError(f"{source}: {key}: {msg}")

    m, t, d = spec.model, spec.train, spec.data
    need(d.seq_len > 0, "data.seq_len", "must be > 0")
    need(d.num_workers >= 0, "data.num_workers", "must be >= 0")
    need(m.gsu.top_k > 0, "model.gsu.top_k", "must be > 0")
    need(m.gsu.top_k <= d.seq_len, "model.gsu.top_k", f"must be <= data.seq_len ({d.seq_len})")
    need(m.gsu.chunk_size > 0, "model.gsu.chunk_size", "must be > 0")
    need(m.gsu.id_score == "none" or m.gsu.kind == "cosine_scl", "model.gsu.id_score",
         "an added ID score needs model.gsu.kind: cosine_scl")
    need(m.gsu.id_score != "attention" or m.esu.attention != "none", "model.gsu.id_score",
         "'attention' scores with the ESU's ID attention (TWIN-style): set model.esu.attention")
    need(m.gsu.kind != "fusion" or m.gsu.fusion != "gated"
         or (m.esu.attention == "sa_ta" and m.esu.similarity == "fusion"), "model.gsu.fusion",
         "'gated' reads the gate of the fusion SA-TA: set model.esu.attention: sa_ta and model.esu.similarity: fusion")
    need(0.0 < m.esu.fusion_gate_init < 1.0, "model.esu.fusion_gate_init", "must be in (0, 1)")
    need(m.gsu.kind != "attention" or m.esu.attention == "ta", "model.gsu.kind",
         "'attention' (TWIN) retrieves with the ESU's target attention: set model.esu.attention: ta")
    need(0 < m.short_term.recent <= d.seq_len, "model.short_term.recent", f"must be in 1..data.seq_len ({d.seq_len})")
    need(m.embedding_dim > 0, "model.embedding_dim", "must be > 0")
    need(m.small_dim > 0, "model.small_dim", "must be > 0")
    # FBGEMM's table kernels (CPU and CUDA) take rows whose width is a multiple of 4; TorchRec
    # asserts it only when the tables are sharded, after the run has started.
    need(m.embedding_dim % 4 == 0, "model.embedding_dim", f"{m.embedding_dim} must be a multiple of 4 (FBGEMM's row width)")
    need(not m.small_features or m.small_dim % 4 == 0, "model.small_dim",
         f"{m.small_dim} must be a multiple of 4 (FBGEMM's row width; it sizes {', '.join(m.small_features)})")
    unknown = [f for f in m.small_features if f not in SMALL_DIM_TABLES]
    need(not unknown, "model.small_features", f"{', '.join(map(repr, unknown))} cannot take model.small_dim; "
         f"choose from {', '.join(SMALL_DIM_TABLES)} (item and category share one dim)")
    need(len(set(m.small_features)) == len(m.small_features), "model.small_features", "lists a table twice")
    need(m.init_std > 0, "model.init_std", "must be > 0 (the ID tables' trunc-normal std)")
    need(m.esu.attention_hidden > 0, "model.esu.attention_hidden", "must be > 0")
    need(m.esu.temperature_init > 0, "model.esu.temperature_init", "must be > 0 (SA-TA divides by it)")
    unknown = [k for k in d.vocab_sizes if k not in ID_TABLES]
    need(not unknown, "data.vocab_sizes", f"unknown table {unknown[0]!r} (tables: {', '.join(ID_TABLES)})" if unknown else "")
    small = {k: v for k, v in d.vocab_sizes.items() if v < 1}
    need(not small, "data.vocab_sizes", f"{small}: rows must be >= 1 (row 0 = padding)")
    need(all(h > 0 for h in m.tower_hidden) and m.tower_hidden, "model.tower_hidden", "a non-empty list of positive widths")
    need(0.0 <= m.dropout < 1.0, "model.dropout", "must be in [0, 1)")
    need(m.parametrization.dice_norm_eps > 0, "model.parametrization.dice_norm_eps", "must be > 0")
    need(m.parametrization.output_bias != "train_prior" or m.parametrization.output_head == "one_logit",
         "model.parametrization.output_bias", "'train_prior' needs output_head: one_logit (Dice's LayerNorm over "
         "two logits erases a constant bias); set output_bias: linear with two_logits_dice")
    need(m.esu.num_tiers > 0, "model.esu.num_tiers", "must be > 0")
    need(m.esu.tier_width > 0, "model.esu.tier_width", "must be > 0")
    need(m.gsu.kind != "none" or not m.esu.simtier, "model.esu.simtier",
         "SimTier needs retrieved similarities: set model.gsu.kind or esu.simtier: false")
    need(m.gsu.kind != "none" or m.esu.attention == "none", "model.esu.attention",
         "an ESU attention needs a GSU: set model.gsu.kind or esu.attention: none")
    need(t.batch_size > 0, "train.batch_size", "must be > 0")
    need(t.eval_batch_size > 0, "train.eval_batch_size", "must be > 0")
    need(t.epochs > 0, "train.epochs", "must be > 0")
    need(t.max_steps >= 0, "train.max_steps", "must be >= 0")
    need(t.log_every > 0, "train.log_every", "must be > 0")
    need(t.checkpoint_every >= 0, "train.checkpoint_every", "must be >= 0 (0 = only at the end)")
    need(t.warn_below_clicks >= 0, "train.warn_below_clicks", "must be >= 0 (0 = never warn)")
    need(t.shuffle_seed is None or t.shuffle_seed >= 0, "train.shuffle_seed", "must be >= 0 (or null: file order)")
    for k, o in (("train.sparse_optimizer", t.sparse_optimizer), ("train.dense_optimizer", t.dense_optimizer)):
        need(o.lr > 0, f"{k}.lr", "must be > 0")
        need(all(0.0 <= b < 1.0 for b in o.betas), f"{k}.betas", "each must be in [0, 1)")
        need(o.eps > 0, f"{k}.eps", "must be > 0")
        need(o.weight_decay >= 0, f"{k}.weight_decay", "must be >= 0")
    need(t.sparse_optimizer.name in SPARSE_OPTIMIZER_NAMES, "train.sparse_optimizer.name",
         f"unknown {t.sparse_optimizer.name!r}; one of {', '.join(SPARSE_OPTIMIZER_NAMES)} "
         "(adam = SparseAdam semantics on CPU and CUDA)")
    need(t.dense_optimizer.name in ("adam", "adamw", "sgd", "adagrad"), "train.dense_optimizer.name",
         "must be one of adam, adamw, sgd, adagrad")
    need(spec.name.replace("-", "").replace("_", "").isalnum(), "name", "letters, digits, - and _ only")
    need(_only_name_field(spec.output_dir), "output_dir",
         f"{spec.output_dir!r}: the only placeholder is {{name}} (write a literal brace as {{{{ or }}}})")

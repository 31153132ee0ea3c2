"""Reading a spec file: ``extends:`` chains, ``--set`` overrides, type coercion, value checks.

Every key is checked against the dataclasses of `muse_rec.spec.schema`; an error names the file
(or the override) and the dotted key.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import reprlib
import string
import typing
from collections.abc import Hashable
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union

import yaml

from muse_rec.json_files import refuse_special_file
from muse_rec.spec.schema import (ID_TABLES, MAX_COLLECTIVE_TIMEOUT_S, MAX_EMBEDDING_DIM, MAX_LAYER_WIDTH,
                                  MAX_PATH_PART_BYTES, MAX_SEED, MAX_TABLE_ROWS, MIN_COLLECTIVE_TIMEOUT_S,
                                  MIN_TIER_WIDTH, SMALL_DIM_TABLES, SPARSE_OPTIMIZER_NAMES, Spec, SpecError)


def load_spec(path: Union[str, os.PathLike], overrides: Sequence[str] = ()) -> Spec:
    """Read a spec file (following ``extends:``), apply ``key.path=value`` overrides, validate.

    An invalid value set by an override is reported as ``--set key=value: key: ...`` (the
    override is what to fix), one set by a file that the spec extends as ``<that file> (extended by
    <spec file>): key: ...``, anything else as ``<spec file>: key: ...``.
    """
    files: List[Tuple[Path, Dict[str, Any]]] = []
    raw = _read_with_extends(Path(path), seen=(), files=files)
    before_overrides = copy.deepcopy(raw)
    for ov in overrides:
        _apply_override(raw, ov, str(path))
    try:
        return from_dict(raw, source=str(path))
    except SpecError as e:
        prefix, msg = f"{path}: ", str(e)
        if msg.startswith(prefix):
            rest = msg[len(prefix):]
            key = rest.split(": ", 1)[0]
            ov = _override_of(key, overrides)
            if ov is None:  # a check across keys: a file's value refused because of an override's
                ov = _override_that_broke(key, before_overrides, overrides, str(path))
            if ov is not None:
                raise SpecError(f"--set {ov}: {rest}") from None
            # A parent's key was reported against the file given, where the user found no such line.
            origin = next((f for f, doc in reversed(files) if _file_sets(doc, key)), None)
            if origin is not None and origin != Path(path):
                raise SpecError(f"{origin} (extended by {path}): {rest}") from None
        raise


def _file_sets(doc: Dict[str, Any], key: str) -> bool:
    """Whether a file's own keys (``doc``) set ``key`` of an error (``a.b[0]``): the key, a mapping
    holding it or a value above it. A walk down the key's path: aliases may nest a file's values
    without bound (or in a cycle), so its tree is never walked whole."""
    node: Any = doc
    for part in key.split("[", 1)[0].split("."):
        if not isinstance(node, dict):
            return True  # a value above the key, where the merged spec has a mapping no more
        if part not in node:
            return False
        node = node[part]
    return True


def _override_that_broke(key: str, before: Dict[str, Any], overrides: Sequence[str], source: str) -> Optional[str]:
    """The last override without which ``key`` is no longer refused, where the spec files alone pass
    (``--set data.seq_len=10`` against the files' ``model.gsu.top_k: 50``); None otherwise. ``before`` is
    the merged files' spec before any override."""
    def refused(kept: Sequence[str]) -> bool:
        raw = copy.deepcopy(before)
        try:
            for ov in kept:
                _apply_override(raw, ov, source)
            from_dict(raw, source=source)
        except SpecError as e:
            return str(e).startswith(f"{source}: {key}: ")
        return False

    if refused(()):
        return None  # the files' own values conflict: the file names it
    for i in reversed(range(len(overrides))):
        if not refused([*overrides[:i], *overrides[i + 1:]]):
            return overrides[i]
    return None


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


# How an error quotes a bad value: enough to recognise it, bounded whatever the file holds (a 200,000-item
# list was a 1.4 MB error "line"; YAML aliases nesting lists ten-fold per level, the "billion laughs",
# ran out of memory spelling the value out).
_SHOWN = reprlib.Repr()
_SHOWN.maxlevel = 2
_SHOWN.maxstring = _SHOWN.maxother = 120


def _shown(value: Any) -> str:
    """``repr(value)``, cut to a line's length (`_SHOWN`'s limits)."""
    return _SHOWN.repr(value)


# What a spec nested past PyYAML's (recursive) parser is told; no spec key nests more than 4 deep.
TOO_DEEP = "nested too deeply to parse"


class UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: its keys may be overridden here
                continue
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if not isinstance(key, Hashable):  # `? [a, b]`: SafeLoader's own check below refuses it in
                break  # one line ("found unhashable key"); `key in seen` raised a bare TypeError
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (a second value would silently win)", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class YAMLTextError(ValueError):
    """Text that is not a YAML document this project reads; its message is the one-line reason."""


def parse_yaml(text: str) -> Any:
    """``text`` as YAML, every YAML file of the project read alike (specs, a run's spec.yaml, launch
    profiles): a key given twice in a mapping is refused (`UniqueKeyLoader`), not silently its last value.
    `YAMLTextError` with a one-line reason for invalid YAML, for nesting past PyYAML's recursive parser
    (thousands of ``[[[...]]]`` were a RecursionError traceback) and for a scalar its constructors cannot
    convert (an integer past Python's 4,300-digit bound, a date 2026-13-01: a bare ValueError)."""
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)
    except RecursionError:
        raise YAMLTextError(TOO_DEEP) from None
    except (yaml.YAMLError, ValueError) as e:
        raise YAMLTextError(" ".join(str(e).split())) from None


def _read_with_extends(path: Path, seen: Tuple[Path, ...], files: List[Tuple[Path, Dict[str, Any]]],
                       referenced_by: Optional[Path] = None) -> Dict[str, Any]:
    """``path`` merged over its ``extends:`` chain; ``files`` gets ``(file, its own keys)`` of each file
    in the order they are merged (the last one that sets a key is the one whose value wins)."""
    # A parent that cannot be read is named as its child's `extends:` names it: that is the line to fix.
    where = str(path) if referenced_by is None else f"{referenced_by}: extends: {path}"
    try:
        found = path.exists()
    except OSError as e:  # a name longer than the filesystem takes (ENAMETOOLONG) was a traceback
        raise SpecError(f"{where}: cannot read ({e})") from None
    if not found:
        raise SpecError(f"{where}: spec file not found")
    # The command line's --spec is asked already; a parent it extends is not.
    refuse_special_file(path, SpecError, "; name a spec file", label=where)
    if path.resolve() in seen:
        raise SpecError(f"{path}: 'extends' cycle: " + " -> ".join(str(p) for p in seen + (path,)))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"{where}: cannot read ({e})") from None
    try:
        doc = parse_yaml(text)
    except YAMLTextError as e:
        raise SpecError(f"{path}: not valid YAML: {e}") from None
    if doc is None or doc == {}:  # an empty or comment-only file: truncated, or the wrong file
        raise SpecError(f"{path}: empty spec (no keys); a spec extends another or sets its keys "
                        "(e.g. extends: ../base.yaml and data.prepared)")
    if not isinstance(doc, dict):
        raise SpecError(f"{path}: top level must be a mapping, got {type(doc).__name__}")
    parents = doc.pop("extends", None)
    # One parent or a list (e.g. a method spec + a data/scale profile), merged in order.
    parents = [] if parents is None else [parents] if isinstance(parents, str) else parents
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise SpecError(f"{path}: extends: expected a path or a list of paths, got {_shown(parents)}")
    if not all(p.strip() for p in parents):  # '' named the spec's own directory: "cannot read (Is a directory)"
        raise SpecError(f"{path}: extends: an empty path; name the spec file this one extends")
    merged: Dict[str, Any] = {}
    for parent in parents:
        merged = _deep_merge(merged, _read_with_extends(path.parent / parent, seen + (path.resolve(),), files, path))
    files.append((path, doc))
    return _deep_merge(merged, doc)


def _deep_merge(base: Dict[str, Any], child: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for k, v in child.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _apply_override(raw: Dict[str, Any], override: str, source: str) -> None:
    """``key.path=value`` set in ``raw`` (the merged spec file); a mapping value is merged into the
    mapping there key by key, as a file that extends the spec would merge it."""
    if "=" not in override:
        raise SpecError(f"override {override!r}: expected key.path=value")
    key, value = override.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise SpecError(f"override {override!r}: expected key.path=value, with a name between every two dots")
    node = raw
    for i, p in enumerate(parts[:-1]):
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise SpecError(f"override {override!r}: {'.'.join(parts[:i + 1])} is not a mapping in {source} "
                            f"(it holds {_shown(node)})")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise SpecError(f"override {override!r}: value is not valid YAML ({e.problem})") from None
    except RecursionError:
        raise SpecError(f"override {override!r}: value is not valid YAML ({TOO_DEEP})") from None
    except ValueError as e:  # as in a spec file: an integer of too many digits, an impossible date
        raise SpecError(f"override {override!r}: value is not valid YAML ({' '.join(str(e).split())})") from None
    old = node.get(parts[-1])
    node[parts[-1]] = _deep_merge(old, parsed) if isinstance(parsed, dict) and isinstance(old, dict) else parsed


def _build(cls: type, raw: Any, source: str, prefix: str) -> Any:
    where = prefix.rstrip(".") or "<top level>"
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: {where}: expected a mapping, got {_shown(raw)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    # By their text: YAML keys need not be strings (`1:`, `~:`, `yes:` -> True), and sorting a mix of
    # types raised a bare TypeError (a traceback in every command reading the spec).
    unknown = sorted(set(raw) - names, key=str)
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
    bad = lambda what: SpecError(f"{source}: {key}: expected {what}, got {_shown(value)}")  # noqa: E731
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, source, key + ".")
    if origin is Union:  # Optional[X]
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, source, key)
    if origin is Literal:
        if value not in args:
            raise SpecError(f"{source}: {key}: must be one of {', '.join(map(repr, args))}, got {_shown(value)}")
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
    # Only a model with a long-term search reads K (DIN's gsu.kind none keeps the base spec's 50).
    need(m.gsu.kind == "none" or m.gsu.top_k <= d.seq_len, "model.gsu.top_k", f"must be <= data.seq_len ({d.seq_len})")
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
    for key, dim in (("model.embedding_dim", m.embedding_dim), ("model.small_dim", m.small_dim)):
        need(0 < dim <= MAX_EMBEDDING_DIM, key, f"must be in 1..{MAX_EMBEDDING_DIM} (a table row's width; "
             "TorchRec's planning time grows with it)")
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
    need(0 < m.esu.attention_hidden <= MAX_LAYER_WIDTH, "model.esu.attention_hidden", f"must be in 1..{MAX_LAYER_WIDTH}")
    need(m.esu.temperature_init > 0, "model.esu.temperature_init", "must be > 0 (SA-TA divides by it)")
    unknown = [k for k in d.vocab_sizes if k not in ID_TABLES]
    need(not unknown, "data.vocab_sizes", f"unknown table {unknown[0]!r} (tables: {', '.join(ID_TABLES)})" if unknown else "")
    small = {k: v for k, v in d.vocab_sizes.items() if not 1 <= v <= MAX_TABLE_ROWS}
    need(not small, "data.vocab_sizes", f"{small}: rows must be in 1..{MAX_TABLE_ROWS:,} (row 0 = padding; "
         "the most a table's byte counts can describe)")
    need(all(0 < h <= MAX_LAYER_WIDTH for h in m.tower_hidden) and m.tower_hidden, "model.tower_hidden",
         f"a non-empty list of widths in 1..{MAX_LAYER_WIDTH}")
    need(0.0 <= m.dropout < 1.0, "model.dropout", "must be in [0, 1)")
    need(m.parametrization.dice_norm_eps > 0, "model.parametrization.dice_norm_eps", "must be > 0")
    need(m.parametrization.output_bias != "train_prior" or m.parametrization.output_head == "one_logit",
         "model.parametrization.output_bias", "'train_prior' needs output_head: one_logit (Dice's LayerNorm over "
         "two logits erases a constant bias); set output_bias: linear with two_logits_dice")
    need(m.esu.num_tiers > 0, "model.esu.num_tiers", "must be > 0")
    need(MIN_TIER_WIDTH <= m.esu.tier_width <= 2, "model.esu.tier_width",
         f"must be in [2^-24 = {MIN_TIER_WIDTH!r}, 2] (cosine units; float32 cosines near 1 are that far apart)")
    # SimTier puts cosine r in tier ceil(r / w) + round(1 / w): cosine 1 lands in tier ceil(1/w) + round(1/w)
    # and no tier past it is ever filled. One spare is allowed, as the reference's 22 tiers at w = 0.1.
    last = math.ceil(1.0 / m.esu.tier_width) + round(1.0 / m.esu.tier_width)
    need(m.esu.num_tiers <= last + 2, "model.esu.num_tiers", f"{m.esu.num_tiers} tiers at tier_width "
         f"{m.esu.tier_width:g}: cosine 1 falls in tier {last} (counting from 0) and no later tier is ever filled; "
         f"at most {last + 2} (one spare, as the reference's 22 at 0.1)")
    # Fewer tiers clamp every cosine above the last tier's lower edge into it: 22 tiers at 0.05 binned 0.1
    # and 1.0 alike, a histogram blind to the similarities it exists to tell apart.
    lower_edge = (m.esu.num_tiers - 2 - round(1.0 / m.esu.tier_width)) * m.esu.tier_width
    need(m.esu.num_tiers >= last + 1, "model.esu.num_tiers", f"{m.esu.num_tiers} tiers at tier_width "
         f"{m.esu.tier_width:g}: every cosine above {lower_edge:g} falls in the last tier and cosine 1 needs tier "
         f"{last} (counting from 0); at least {last + 1}")
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
    need(MIN_COLLECTIVE_TIMEOUT_S <= t.collective_timeout_s <= MAX_COLLECTIVE_TIMEOUT_S, "train.collective_timeout_s",
         f"must be in [{MIN_COLLECTIVE_TIMEOUT_S:g}, {MAX_COLLECTIVE_TIMEOUT_S:g}] seconds (gloo counts milliseconds; "
         "c10d's clock overflows past the top)")
    need(t.shuffle_seed is None or t.shuffle_seed >= 0, "train.shuffle_seed", "must be >= 0 (or null: file order)")
    need(0 <= t.seed <= MAX_SEED, "train.seed",
         f"must be in 0..{MAX_SEED} (torch's generator seed, an unsigned 64-bit integer)")
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
    # The OS takes no path with a NUL byte: "embedded null byte" tracebacks wherever the run directory was opened.
    need("\0" not in spec.output_dir, "output_dir", f"{spec.output_dir!r}: holds a NUL character, which no path can")
    long = [part for part in Path(spec.run_dir).parts
            if len(part.encode("utf-8", "surrogateescape")) > MAX_PATH_PART_BYTES]
    need(not long, "output_dir", f"{spec.output_dir!r} (name {_shown(spec.name)}): a file name in a path is at most "
         f"{MAX_PATH_PART_BYTES} bytes, {_shown(long[0] if long else '')} is longer")
    need("://" not in spec.run_dir, "output_dir",
         f"{spec.output_dir!r}: not a local path; a run is written to a local directory (a file:// URI names one)")

"""A typed spec's values checked where types cannot say it: ranges, keys that constrain each other, paths.

Each refusal is `SpecError` naming the source and the dotted key, e.g.
``specs/muse.yaml: model.dropout: must be in [0, 1)``.
"""
from __future__ import annotations

import math
import string
from pathlib import Path

from muse_rec.spec.coerce import shown
from muse_rec.spec.schema import (ID_TABLES, MAX_COLLECTIVE_TIMEOUT_S, MAX_EMBEDDING_DIM, MAX_LAYER_WIDTH,
                                  MAX_PATH_PART_BYTES, MAX_SEED, MAX_TABLE_ROWS, MAX_TOWER_LAYERS,
                                  MIN_COLLECTIVE_TIMEOUT_S, MIN_TIER_WIDTH, SMALL_DIM_TABLES, SPARSE_OPTIMIZER_NAMES,
                                  Spec, SpecError)


def _only_name_field(template: str) -> bool:
    """``template.format(name=...)`` works: balanced braces, no placeholder but a plain ``{name}``."""
    try:
        return all(field in (None, "name") and not fmt and not conv
                   for _, field, fmt, conv in string.Formatter().parse(template))
    except ValueError:  # an unbalanced brace
        return False


def check_values(spec: Spec, source: str) -> None:
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
    # The label every run's metrics.json carries: compare and reproduce refuse a run whose method is empty.
    need(m.method != "", "model.method", "empty: name the method (a label for tables, e.g. muse)")
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
    need(len(m.tower_hidden) <= MAX_TOWER_LAYERS, "model.tower_hidden",
         f"{len(m.tower_hidden):,} layers: at most {MAX_TOWER_LAYERS:,} (100,000 hung in torch's DDP set-up)")
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
    need(not long, "output_dir", f"{spec.output_dir!r} (name {shown(spec.name)}): a file name in a path is at most "
         f"{MAX_PATH_PART_BYTES} bytes, {shown(long[0] if long else '')} is longer")
    # '', '.', '/' and '..' (a file:// URI of one too) name a directory that is not a run's own: --overwrite moves a
    # run aside to the sibling <name>.old-<time>, which such a path has none of (a ValueError traceback, and the
    # lock file left in the directory), and a run would fill the current directory or its parent with its files.
    need(Path(spec.run_dir).name not in ("", ".."), "output_dir",
         f"{spec.output_dir!r}: names no directory of the run's own (the current directory, a parent or /); "
         "give one such as runs/{name}")
    need("://" not in spec.run_dir, "output_dir",
         f"{spec.output_dir!r}: not a local path; a run is written to a local directory (a file:// URI names one)")

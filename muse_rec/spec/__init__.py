"""The run spec: one declarative YAML file drives a run, from data paths to learning rates.

A spec file may ``extends:`` another (path relative to itself); mappings are deep-merged,
the child winning. ``--set key.path=value`` overrides apply last (a mapping value is merged
key by key, as a child file's would be). An empty file is refused. Every key is validated
against the dataclasses of `muse_rec.spec.schema`: unknown keys, wrong types and bad values raise `SpecError`
naming the file and the dotted key, e.g. ``specs/muse.yaml: model.gsu.top_k: expected int, got 'fifty'``.

Example::

    spec = load_spec("specs/muse.yaml", overrides=["train.batch_size=256"])
    spec.model.gsu.top_k  # 50

`schema` holds the dataclasses (what a key may hold, its default); `load` reads, merges and overrides
a file, `coerce` types it into the dataclasses and `value_checks` checks what types cannot express;
`yaml_text` parses every YAML file of the project.
"""
from __future__ import annotations

from muse_rec.spec.load import from_dict, load_spec
from muse_rec.spec.schema import (ID_TABLES, NON_TRAINING_KEYS, SMALL_DIM_TABLES, SPARSE_OPTIMIZER_NAMES, DataSpec,
                                  ESUSpec, GSUSpec, ModelSpec, OptimizerSpec, ParametrizationSpec, ShortTermSpec, Spec,
                                  SpecError, TrainSpec, dotted_items, literal_choices, model_settings,
                                  training_settings)

__all__ = ["DataSpec", "ESUSpec", "GSUSpec", "ID_TABLES", "ModelSpec", "NON_TRAINING_KEYS", "OptimizerSpec",
           "ParametrizationSpec", "SMALL_DIM_TABLES", "SPARSE_OPTIMIZER_NAMES", "ShortTermSpec", "Spec", "SpecError",
           "TrainSpec", "dotted_items", "from_dict", "literal_choices", "load_spec", "model_settings",
           "training_settings"]

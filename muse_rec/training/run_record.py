"""What a run directory records about its run, and the checks a resume or an evaluation makes on it.

``run.json`` (the run's id and vocabularies), the checkpoint's data fingerprint and its place in
the epoch must agree with the data and the ranks now at hand; each check raises `RunError`
naming the file where they do not.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml

from muse_rec.data.epochs import resume_batch, steps_per_epoch
from muse_rec.data.prepared import PreparedData, PreparedDataError
from muse_rec.json_files import read_json_object, refuse_special_file
from muse_rec.spec import Spec, model_settings, training_settings
from muse_rec.spec.yaml_text import parse_yaml
from muse_rec.training.checkpoint_latest import checkpoint_to_resume, latest_checkpoint
from muse_rec.training.checkpoint_position import MODEL_RECORD, Position, read_position

logger = logging.getLogger("muse_rec")


class RunError(RuntimeError):
    """The run cannot start as asked (data, spec and checkpoint disagree); the message says why."""


def open_spec_data(spec: Spec) -> PreparedData:
    """The spec's prepared data, with its ``data.train_split`` and ``data.eval_split`` present; `RunError`
    naming ``data.prepared`` or the split otherwise (every rank, and `muse-rec launch` before it submits: here,
    beside the run's other checks, where importing it costs no torch)."""
    try:
        data = PreparedData(spec.data.prepared)
    except (FileNotFoundError, PreparedDataError) as e:
        if isinstance(e, PreparedDataError) and "no meta.json" not in str(e):
            # Prepared, but damaged or inconsistent: the message names the file.
            raise RunError(f"data.prepared = {spec.data.prepared!r}: {e}") from None
        raise RunError(
            f"data.prepared = {spec.data.prepared!r}: no prepared data there ({e}). "
            "Prepare the release into it with `muse-rec prepare RAW PREPARED` (the Taobao-MM tables as downloaded, or "
            "a synthetic release from `muse-rec synth RAW`), or point the spec at prepared data: --set "
            "data.prepared=PREPARED."
        ) from None
    try:
        for key in ("train_split", "eval_split"):
            data.require_split(getattr(spec.data, key), f"data.{key}")
    except PreparedDataError as e:
        raise RunError(str(e)) from None
    return data


def read_run_json(run_json: Path) -> Dict:
    """A run directory's run.json ({} when absent); RunError naming it when unreadable."""
    if not run_json.exists():
        return {}
    prev = read_json_object(run_json, RunError)
    # The two entries a resumed or evaluated run reads back (the rest is for people).
    run_id = prev.get("run_id")
    if run_id is not None and not isinstance(run_id, str):
        raise RunError(f"{run_json}: run_id must be a string, got {run_id!r}")
    sizes = prev.get("vocab_sizes")
    if sizes is not None and not (isinstance(sizes, dict) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in sizes.values())):
        raise RunError(f"{run_json}: vocab_sizes must map each table to its row count, got {sizes!r}")
    return prev


def check_data_fingerprint(ck: Path, data: PreparedData, allow: bool) -> None:
    """The checkpoint was trained on this prepared data (same fingerprint), unless ``allow``."""
    recorded = read_position(ck).data_fingerprint
    if recorded and not data.made_from(recorded):
        if allow:
            logger.warning("%s was trained on other prepared data (fingerprint %s, %s has %s); "
                           "continuing because of --allow-data-mismatch", ck, recorded, data.path, data.fingerprint)
            return
        raise RunError(f"{ck}: trained on other prepared data (fingerprint {recorded}) than data.prepared = "
                       f"{data.path!r} (fingerprint {data.fingerprint}); use the same data or pass "
                       "--allow-data-mismatch if that is intended")


def _recorded_model(ck: Path) -> Tuple[Optional[Dict[str, Any]], Optional[Path]]:
    """(`model_settings` the checkpoint was trained with, the file they come from): its model.json, else
    the spec.yaml of the run directory it lies in; (None, None) for an older checkpoint outside its run."""
    record = ck / MODEL_RECORD
    if record.exists():
        return model_settings({"model": read_json_object(record, RunError)}), record
    spec_yaml = ck.parent.parent / "spec.yaml"
    if ck.parent.name != "checkpoints" or not spec_yaml.exists():
        return None, None
    return model_settings(_read_spec_yaml(spec_yaml)), spec_yaml


_SECTION = "<a mapping>"  # how a section is shown where the other side holds a single value


def _value_vs_section(a: Dict[str, Any], b: Dict[str, Any]) -> List[str]:
    """Dotted keys that hold a value in one of the flattened mappings ``a``, ``b`` and a section in the other."""
    def clashes(x: Dict[str, Any], y: Dict[str, Any]) -> List[str]:
        return [k for k in x if k not in y and any(other.startswith(k + ".") for other in y)]
    return sorted(clashes(a, b) + clashes(b, a))


def scored_checkpoint(run_dir: Path, checkpoint: Optional[str]) -> Optional[Path]:
    """The checkpoint `evaluate`, `export` and `rank` read: ``checkpoint`` as named, else the newest complete
    one of the run that ``run_dir``'s run.json names (of any run where it names none). A run directory can also
    hold an earlier run's later steps, which pruning leaves alone (`save_checkpoint`): not this run's model."""
    if checkpoint:
        return Path(checkpoint)
    run_id = read_run_json(run_dir / "run.json").get("run_id")
    return latest_checkpoint(str(run_dir / "checkpoints"), run_id=run_id)


def check_scored_model(run_dir: Path, checkpoint: Optional[str], spec: Spec) -> None:
    """Before the imports of torch and TorchRec (seconds) of `evaluate`, `export` and `rank`: the checkpoint
    they will read (`scored_checkpoint`) holds ``spec``'s model (`check_model_settings`). Where there is no
    such checkpoint, nothing is said here: they check again, whole, once they choose one."""
    ck = scored_checkpoint(run_dir, checkpoint)
    if ck is not None and (ck / "position.json").exists():
        check_model_settings(ck, spec)


def check_model_settings(ck: Path, spec: Spec) -> None:
    """``spec``'s model is the one checkpoint ``ck`` was trained with (`model_settings`: keys that only
    set the init aside); RunError naming the keys that differ. Loading alone checks only the tensors'
    shapes, so another method whose tensors happen to fit (MUSE's weights under SIM-hard's spec) or
    another top-k would be scored, exported or served under the wrong name without it. Keys only one
    side knows are not compared."""
    was, source = _recorded_model(ck)
    if was is None:
        return
    now = model_settings(json.loads(json.dumps(spec.to_dict())))  # as the record holds it (tuples as lists)
    # Keys only one side knows (a record of another version of this project) are not compared, as on --resume.
    diff = {k: (was[k], now[k]) for k in was if k in now and was[k] != now[k]}
    # But a value on one side where the other has a section (`"gsu": "x"` in a damaged record) is known to
    # both: skipped as unknown, it let the record pass without comparing that section at all.
    diff.update({k: (was.get(k, _SECTION), now.get(k, _SECTION)) for k in _value_vs_section(was, now)})
    if diff:
        shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(diff.items())[:4])
        more = f" and {len(diff) - 4} more" if len(diff) > 4 else ""
        run_spec = ck.parent.parent / "spec.yaml"
        use = f"--spec {run_spec}" if ck.parent.name == "checkpoints" and run_spec.exists() else "the spec it was trained with"
        raise RunError(f"{ck}: trained with other model settings than the spec ({shown}{more}; from {source.name}); "
                       f"use {use}")


def check_run_compat(run_json: Path, data: PreparedData, scoring: bool = False) -> None:
    """A resumed run, or one whose checkpoint is scored (``scoring``: `evaluate`, `export`, `rank`), must
    see the same vocabularies it was started with. Tables of other sizes cannot load at all, so the
    refusal points at the run's own data, not at --allow-data-mismatch (which admits other data of
    the same vocabularies)."""
    # A run.json without vocab_sizes (empty, or another writer's) has nothing to compare, as with no
    # run.json at all: the checkpoint's data fingerprint, checked apart, still ties the run to its data.
    # (It was compared as all None: "(None, 2631)" per table, where an empty run.json passed.)
    recorded = read_run_json(run_json).get("vocab_sizes")
    if recorded is None:
        return
    if recorded != dict(data.vocab_sizes):
        diff = {k: (recorded.get(k), v) for k, v in data.vocab_sizes.items() if recorded.get(k) != v}
        instead = (f"score it with the spec it was trained with, whose data.prepared names its data "
                   f"(--spec {run_json.parent / 'spec.yaml'}); --allow-data-mismatch cannot load tables of "
                   "other sizes") if scoring else "re-prepare the same data or start a new run directory"
        raise RunError(f"{run_json}: the checkpoint was trained on other vocabularies than data.prepared now has "
                       f"(table: (checkpoint, data)) {diff}; {instead}")


# What a resume may change of the run's spec.yaml: how far it trains, where its data lies (its
# identity is the fingerprint, checked apart), what and whether it evaluates at the end, the step
# pipeline (the same math), and the batch size (`place_in_epoch` refuses one the epoch cannot
# continue at). Any other training setting (`muse_rec.spec.training_settings`) would make the run
# one thing and its spec.yaml, which `compare` groups runs by, another.
RESUMABLE_CHANGES = ("train.max_steps", "train.epochs", "train.batch_size", "data.prepared", "data.eval_split",
                     "train.eval_at_end", "train.pipeline")


def check_resume_settings(spec_yaml: Path, spec: Spec, overwrite: bool = True) -> None:
    """A resumed run trains on with the settings it was started with (its ``spec.yaml``), up to
    `RESUMABLE_CHANGES`; RunError naming the keys that differ. Keys only one side knows (a spec
    written by another version of this project) are not compared. ``overwrite``: whether the
    refusing command has ``--overwrite`` to offer (`muse-rec train` has; `launch` and `torchx run` have not)."""
    if not spec_yaml.exists():
        return
    was = training_settings(_read_spec_yaml(spec_yaml), leave_out=RESUMABLE_CHANGES)
    # Compared as spec.yaml will hold it (a tuple is a list in YAML).
    now = training_settings(yaml.safe_load(yaml.safe_dump(spec.to_dict())), leave_out=RESUMABLE_CHANGES)
    diff = {k: (was[k], now[k]) for k in was if k in now and was[k] != now[k]}
    if diff:
        shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(diff.items())[:4])
        more = f" and {len(diff) - 4} more" if len(diff) > 4 else ""
        instead = "another output_dir, or --overwrite" if overwrite else "another output_dir"
        raise RunError(f"{spec_yaml}: --resume with other training settings than the run was started with "
                       f"({shown}{more}); resume with its settings (--spec {spec_yaml}), or train them as a new run "
                       f"({instead})")


def _read_spec_yaml(spec_yaml: Path) -> Dict[str, Any]:
    """A run directory's spec.yaml (its resolved spec); RunError naming it when unreadable."""
    refuse_special_file(spec_yaml, RunError)  # a FIFO there blocked `train --resume` forever
    try:
        # As a spec is read (`parse_yaml`): a key given twice is refused, not silently its last value.
        doc: Any = parse_yaml(spec_yaml.read_text(encoding="utf-8"))
    # ValueError: not UTF-8, or not YAML (`YAMLTextError`, nesting too deep included)
    except (OSError, ValueError) as e:
        raise RunError(f"{spec_yaml}: unreadable ({' '.join(str(e).split())[:200]})") from None
    if not isinstance(doc, dict):
        raise RunError(f"{spec_yaml}: expected a mapping (the run's resolved spec), got {type(doc).__name__}")
    return doc


def place_in_epoch(position: Position, ck: Path, split_samples: int, batch_size: int, world_size: int,
                    steps: int) -> None:
    """Re-express a loaded checkpoint's place in its epoch in this run's steps (``steps`` an epoch at
    ``batch_size`` x ``world_size``), in place; RunError where the epoch cannot continue exactly."""
    saved_len = steps_per_epoch(split_samples, position.batch_size or batch_size, position.world_size)
    if position.batch_in_epoch == saved_len:  # saved on an epoch's last step before the roll-over moved in
        position.epoch, position.batch_in_epoch = position.epoch + 1, 0
    try:
        position.batch_in_epoch = resume_batch(position.batch_in_epoch, position.batch_size, position.world_size,
                                               batch_size, world_size)
    except ValueError as e:
        raise RunError(f"{ck}: {e}") from None
    if position.batch_in_epoch > steps:
        raise RunError(f"{ck}: position.json puts the run at batch {position.batch_in_epoch} of an epoch of "
                       f"{steps} batches; resume with the batch size and data it was trained with")
    if position.batch_in_epoch == steps:
        # Exactly the epoch's end (an older checkpoint, its batch size unrecorded, resumed at another):
        # the next epoch's start; the step loop would otherwise find no step left in this one, forever.
        position.epoch, position.batch_in_epoch = position.epoch + 1, 0
    position.world_size, position.batch_size = world_size, batch_size


def resume_place(position: Position, ck: Path, spec: Spec, split_samples: int, world_size: int, steps: int) -> None:
    """`place_in_epoch` for a resume of ``spec``'s run on ``world_size`` ranks (``steps`` an epoch of
    them), unless the checkpoint has trained its ``train.max_steps``, or stands in an epoch at or past
    its ``train.epochs`` (lowered on resume): nothing is left to continue then (3 steps of 1 rank
    cannot go on evenly on 2, and need not: the resume only evaluates)."""
    t = spec.train
    if t.max_steps and position.step >= t.max_steps:
        return
    if position.epoch >= t.epochs:
        return
    place_in_epoch(position, ck, split_samples, t.batch_size, world_size, steps)


def check_resume_place(run_dir: Path, spec: Spec, world_size: int) -> None:
    """`resume_place` of the run's latest checkpoint on ``world_size`` ranks, checked before a job
    is submitted, from the checkpoint's position.json and the prepared data's meta.json alone (no
    weights, no arrays read): RunError naming the checkpoint where the epoch cannot continue there.
    Nothing to check where the run has no checkpoint yet."""
    ck = checkpoint_to_resume(str(run_dir / "checkpoints"), read_run_json(run_dir / "run.json").get("run_id"))
    if ck is None:
        return
    data = PreparedData(spec.data.prepared)
    split_samples = data.num_samples(spec.data.train_split)
    resume_place(read_position(ck), ck, spec, split_samples, world_size,
                 steps_per_epoch(split_samples, spec.train.batch_size, world_size))

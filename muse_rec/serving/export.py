"""Checkpoint -> quantized `InferenceModel` -> `torch.export` program on disk, and back.

`muse-rec export` writes a directory::

    ranker.pt2        the ExportedProgram (torch.export.save): the one-user signature of
                      `muse_rec.serving.inference`, a dynamic candidate count B, history length L fixed
    manifest.json     inputs (names, shapes, dtypes), L, B range, table bytes per row, source run
    SHA256SUMS.json   SHA-256 of both (muse_rec.integrity): checked before the program is unpickled

Loading and running the program needs torch, torchrec and fbgemm only (not muse_rec)::

    import torch, torchrec, fbgemm_gpu                      # registers the fbgemm/torchrec ops
    from torchrec.pt2.utils import register_fake_classes
    register_fake_classes()
    program = torch.export.load("DIR/ranker.pt2").module()
    scores = program(seq_items, seq_cats, seq_length, user_fields, cand_items, cand_cats, cand_attrs[, seq_scl])

The checkpoint (DCP, written by any number of ranks) is loaded into an unsharded model on CPU:
DCP resolves sharded tensors into plain tensors. The frozen SCL table is not in checkpoints;
it is reloaded from the prepared data (`PreparedData.scl()`).
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch
import torchrec

from muse_rec.data.batch import ITEM_FEATURES, USER_FEATURES
from muse_rec.data.files import write_binary
from muse_rec.data.prepared import PreparedData
from muse_rec.data.schema import SCL_DIM
from muse_rec.dirlock import DirLock
from muse_rec.integrity import IntegrityError, verify, write_manifest
from muse_rec.json_files import read_json_object
from muse_rec.memory import available_memory_bytes, format_gib
from muse_rec.models.ctr_model import LifelongCTRModel, build_train_model, is_frozen_key
from muse_rec.output_paths import check_output_path, output_of_another_command
from muse_rec.serving.export_layout import (EXPORT_FILES, INTEGRITY_MANIFEST, MANIFEST_FILE, MANIFEST_FORMAT,
                                             MIN_CANDIDATES, OLD_LEFTOVERS, PROGRAM_FILE, STAGING_DIR, ExportError,
                                             check_max_candidates, no_checkpoint, no_named_checkpoint)
from muse_rec.serving.inference import InferenceModel
from muse_rec.serving.int8_check import check_requests, deviation_report, score_requests, warning_text
from muse_rec.serving.program_file import save_program
from muse_rec.serving.quantize import (DEFAULT_ROW_ALIGNMENT, exact_float_lookups_, quantize_for_serving,
                                       without_table_views)
from muse_rec.spec import Spec
from muse_rec.training.checkpoint import load_checkpoint
from muse_rec.training.checkpoint_choice import DELETED_RETRIES, deleted_too_often, deleted_while_read
from muse_rec.training.checkpoint_position import CheckpointError, read_position
from muse_rec.training.run_record import check_model_settings, check_run_compat, scored_checkpoint

# The program takes any candidate count from MIN_CANDIDATES (traced size-obliviously, see `export_program`).
DEFAULT_MAX_CANDIDATES = 4096
# Candidates of the traced example; fewer where the program takes fewer (any B in range works after tracing).
EXAMPLE_CANDIDATES = 8
INPUT_NAMES = ("seq_items", "seq_cats", "seq_length", "user_fields", "cand_items", "cand_cats", "cand_attrs",
               "seq_scl")


def resolve_checkpoint(spec: Spec, checkpoint: Optional[str]) -> Path:
    """The checkpoint directory to read: ``checkpoint`` or the run's newest (as `evaluate` chooses it)."""
    ck = scored_checkpoint(Path(spec.run_dir), checkpoint)
    if ck is None or not (ck / "position.json").exists():
        raise no_named_checkpoint(checkpoint) if checkpoint else no_checkpoint(Path(spec.run_dir) / "checkpoints")
    return ck


def check_data_fingerprint(source: Path, recorded: Optional[str], data: PreparedData, allow: bool) -> None:
    """``source`` (checkpoint or export) was made from ``data`` (same fingerprint), unless ``allow``."""
    if recorded and not data.made_from(recorded) and not allow:
        raise ExportError(f"{source}: made from other prepared data (fingerprint {recorded}) than {data.path} "
                          f"(fingerprint {data.fingerprint}); use the same data or pass --allow-data-mismatch")


def load_trained_model(spec: Spec, data: PreparedData, checkpoint: Optional[str] = None,
                       seq_len: Optional[int] = None, allow_data_mismatch: bool = False,
                       expect_sha256: Optional[str] = None, int8_scl: bool = False) -> Tuple[LifelongCTRModel, Path]:
    """A trained `LifelongCTRModel` on CPU, unsharded, eval mode, SCL table loaded.

    Args:
        spec: the spec the checkpoint was trained with.
        data: its prepared data (vocabulary sizes and the SCL table).
        checkpoint: checkpoint directory; None = the run's latest.
        seq_len: L of the built model (parameters do not depend on it; only ``top_k`` and
            ``recent`` are capped at it); None = the spec's.
        allow_data_mismatch: accept a checkpoint trained on other prepared data.
        expect_sha256: the checkpoint's pinned digest (its manifest is checked in any case).
        int8_scl: hold the SCL table as its int8 values (`exact_float_lookups_`: lookups of the same dtype and
            values, 144 B per row instead of the fp16 table's 256, which is never allocated); for a model that
            is scored or quantized, not exported as float (`--float` writes the fp16 table into the program).
    """
    cpu = torch.device("cpu")
    train_model = build_train_model(spec.model, data.vocab_sizes, spec.data.seq_len if seq_len is None else seq_len,
                                    device=cpu, scl_device=torch.device("meta") if int8_scl else None)
    # A run still training deletes its older checkpoints: the one chosen may go while it is read, as
    # for an evaluation (`checkpoint_choice`); the failure then named a missing shard "does not fit this
    # model", or a missing manifest "not written by muse_rec".
    for _ in range(DELETED_RETRIES):
        ck = resolve_checkpoint(spec, checkpoint)
        # Other vocabularies first: --allow-data-mismatch, which the fingerprint's refusal offers, cannot load them.
        check_run_compat(ck.parent.parent / "run.json", data, scoring=True)
        check_data_fingerprint(ck, read_position(ck).data_fingerprint, data, allow_data_mismatch)
        check_model_settings(ck, spec)  # loading checks shapes only: another method's weights may fit them
        try:
            load_checkpoint(ck, train_model, None, skip=is_frozen_key, expect_sha256=expect_sha256)
            break
        except CheckpointError:  # names the directory and the integrity failure or the mismatched keys
            if ck.exists():
                raise
            deleted_while_read(ck, checkpoint)
        except Exception as e:  # DCP raises assorted types for a mismatched checkpoint
            raise ExportError(f"{ck}: cannot load into the model of this spec ({type(e).__name__}: {e}); "
                              "is it the spec and prepared data the run was trained with?") from e
    else:
        raise deleted_too_often(spec)
    model = train_model.model
    if int8_scl and model.sparse_arch.scl is not None:
        exact_float_lookups_(model.sparse_arch.scl, data.scl(), cpu)
    else:
        model.sparse_arch.load_scl_(data.scl())
    return model.eval(), ck


def _example_shapes(seq_len: int, candidates: int, with_scl: bool) -> Tuple[Tuple[Tuple[int, ...], torch.dtype], ...]:
    """``(shape, dtype)`` of each of the program's inputs: what `example_inputs` allocates."""
    ids = (((1, seq_len), torch.int64), ((1, seq_len), torch.int64), ((1,), torch.int64),
           ((1, len(USER_FEATURES)), torch.int64), ((candidates,), torch.int64), ((candidates,), torch.int64),
           ((candidates, len(ITEM_FEATURES)), torch.int64))
    return ids + ((((1, seq_len, SCL_DIM), torch.int8),) if with_scl else ())


def example_inputs(seq_len: int, candidates: int = 8, with_scl: bool = False) -> Tuple[torch.Tensor, ...]:
    """Inputs of the right shapes and dtypes for tracing (row 0 = padding/unknown everywhere).

    ``with_scl`` appends ``seq_scl [1, L, 128]`` int8 (programs of models that read SCL vectors).
    """
    return tuple(torch.zeros(shape, dtype=dtype) for shape, dtype in _example_shapes(seq_len, candidates, with_scl))


def example_input_bytes(seq_len: int, candidates: int = 8, with_scl: bool = False) -> int:
    """Bytes `example_inputs` allocates (Python integers: no overflow, nothing allocated)."""
    return sum(math.prod(shape) * dtype.itemsize for shape, dtype in _example_shapes(seq_len, candidates, with_scl))


def check_history_fits(seq_len: int, with_scl: bool, key: str = "--seq-len",
                       advice: str = "export a shorter history") -> None:
    """Refuse (`ExportError` naming ``key``, ending with ``advice``) a history length whose inputs alone
    exceed the memory this process can still take: checking and tracing the program, and the Ranker's
    context of each user (`rank`), allocate one user's whole history of L positions (ids, and SCL rows
    for a model that reads them) at least once, and more than that was never refused: 2**31 was
    OOM-killed after minutes, with no message. A lower bound (the forward's activations come on top), so
    a length that fits is never refused."""
    need = example_input_bytes(seq_len, EXAMPLE_CANDIDATES, with_scl)
    available = available_memory_bytes()
    if need > available:
        raise ExportError(f"{key} {seq_len}: one history of that length needs at least {need:,} bytes "
                          f"({format_gib(need)}: the program's [1, L] inputs{' with their SCL rows' if with_scl else ''}), "
                          f"more than the {available:,} bytes ({format_gib(available)}) of memory available; "
                          f"{advice}")


def takes_scl(model: InferenceModel) -> bool:
    """Whether the program of ``model`` takes the history's SCL vectors as its ``seq_scl`` input."""
    return bool(model.model.uses_scl)


_FAKES_REGISTERED = False


def _register_fake_classes() -> None:
    """Fake versions of fbgemm's script objects (needed to trace and load TBEs); once per process."""
    global _FAKES_REGISTERED
    if not _FAKES_REGISTERED:
        from torchrec.pt2.utils import register_fake_classes

        register_fake_classes()
        _FAKES_REGISTERED = True


def export_program(model: torch.nn.Module, seq_len: int,
                   max_candidates: int = DEFAULT_MAX_CANDIDATES) -> torch.export.ExportedProgram:
    """`torch.export` (non-strict) of an `InferenceModel` (float or quantized), B dynamic. Turns off
    ``requires_grad`` on the model's parameters for good: a ranking program is not trained."""
    _register_fake_classes()
    check_max_candidates(max_candidates)
    # A Dim needs min < max: a program for exactly one candidate has a static candidate size.
    B = {0: torch.export.Dim("candidates", min=MIN_CANDIDATES, max=max_candidates)} if max_candidates > 1 else None
    dynamic = {"seq_items": None, "seq_cats": None, "seq_length": None, "user_fields": None,
               "cand_items": B, "cand_cats": B, "cand_attrs": B}
    if takes_scl(model):
        dynamic["seq_scl"] = None
    # The example must lie in the range it is traced for (8 candidates under --max-candidates 2 was a
    # ConstraintViolationError traceback).
    example = example_inputs(seq_len, candidates=min(EXAMPLE_CANDIDATES, max_candidates), with_scl=takes_scl(model))
    # A ranking program never trains: saved without requires_grad, its scores are plain tensors
    # (with it, every call built an autograd graph and `.numpy()` of the scores failed).
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        # One eager call first: TorchRec's quantized collections cache their feature order on
        # the first forward, with a `torch.tensor(data=...)` call that export cannot trace.
        model(*example)
        # Size-oblivious tracing: without it a dynamic size is assumed >= 2 while tracing, and the
        # sizes TorchRec's lookups derive from B (unbacked: sums of KJT lengths) inherit that bound
        # as a runtime assertion, so the program would refuse one candidate.
        # Each quantized table traced once, from its TBE (not also from TorchRec's state_dict views).
        with torch.fx.experimental._config.patch(backed_size_oblivious=True), without_table_views(model):
            return torch.export.export(model, example, dynamic_shapes=dynamic, strict=False)


def export_model(spec: Spec, out_dir: str, checkpoint: Optional[str] = None, seq_len: Optional[int] = None,
                 scl_dtype: str = "int8", row_alignment: int = DEFAULT_ROW_ALIGNMENT,
                 max_candidates: int = DEFAULT_MAX_CANDIDATES, quantize: bool = True,
                 allow_data_mismatch: bool = False, expect_sha256: Optional[str] = None,
                 say: Callable[[str], None] = lambda line: None) -> Dict[str, object]:
    """Load, quantize, export and save; returns the manifest (also written to ``out_dir``).

    Args:
        seq_len: the program's fixed history length L (histories are cut to the newest L and
            left-padded); None = the spec's ``data.seq_len``.
        quantize: False exports the float model (for comparison; tables stay fp32/fp16).
        say: told the phase that starts, as each starts (the CLI's `PhaseHeartbeat`: at the full vocabulary
            loading, quantizing and writing take minutes, which a log showed as silence).
    """
    L = spec.data.seq_len if seq_len is None else seq_len
    if L < 1:
        raise ValueError(f"seq_len must be >= 1, got {L}")
    # A new, empty or earlier export's directory only: the integrity manifest covers every file
    # in it, so other files would become part of the artifact.
    out_dir = check_output_path(out_dir, "--out", replaces=EXPORT_FILES)
    data = PreparedData(spec.data.prepared)
    start = time.perf_counter()
    which = checkpoint or "the run's latest checkpoint"
    say(f"loading {which} and the SCL table of {data.path} ({data.vocab_sizes.get('item', 0):,} item rows)")
    # Quantized: the int8 check's float scores read the SCL values from an int8 table (the fp16 one, 256 B per item
    # row, was held only for them: the peak of export, ~62 GB at the 243M rows of Taobao-MM).
    model, ck = load_trained_model(spec, data, checkpoint, seq_len=L, allow_data_mismatch=allow_data_mismatch,
                                   expect_sha256=expect_sha256, int8_scl=quantize)
    try:
        serving = InferenceModel(model)
    except NotImplementedError as e:
        raise ExportError(str(e)) from None
    # Before anything of length L is allocated (the int8 check's requests, the trace's example).
    check_history_fits(L, takes_scl(serving), "--seq-len" if seq_len is not None else "data.seq_len")
    report = int8_check = None
    if quantize:
        # The same requests before and after quantizing (in place): how far int8 moves the scores.
        requests = check_requests(data, spec.data.eval_split)

        def scores() -> np.ndarray:
            try:
                return score_requests(serving, data, requests, L)
            except RuntimeError as e:  # the Ranker refuses non-finite scores: weights that are not numbers
                raise ExportError(f"{ck}: the model cannot score the {spec.data.eval_split} split's first users "
                                  f"({' '.join(str(e).split())[:300]}); export another checkpoint") from None

        say(f"int8 check: scoring {len(requests.users):,} {spec.data.eval_split} users' requests with the float model")
        float_scores = scores()
        say(f"quantizing the tables ({scl_dtype} SCL)")
        report = quantize_for_serving(serving, data.scl(), scl_dtype, row_alignment).to_dict()
        say("int8 check: scoring the same requests with the quantized model")
        int8_check = deviation_report(requests, float_scores, scores())
        if int8_check["max_abs_dp"] > int8_check["warn_above"]:
            gsu = model.gsu
            warnings.warn(warning_text(int8_check, spec.model.method, gsu is not None and gsu.reads_id_tokens))
    # A GSU that scores the whole history as fp32 [B, L] takes the float Ranker's bound per pass as the program's
    # largest B (the Ranker splits requests by it): unbounded, TWIN's program scored 1,000 candidates at L = 100K
    # at 2.4 GB maximum RSS.
    max_candidates = serving.candidates_per_pass(max_candidates, L)
    say(f"tracing the program (torch.export; L = {L:,}, up to {max_candidates:,} candidates)")
    program = export_program(serving, L, max_candidates)
    manifest: Dict[str, object] = {
        "format": MANIFEST_FORMAT,
        "program": PROGRAM_FILE,
        "inputs": {
            "seq_items": {"shape": [1, L], "dtype": "int64", "doc": "behaviour item rows, right-aligned, 0 = padding"},
            "seq_cats": {"shape": [1, L], "dtype": "int64", "doc": "behaviour category rows"},
            "seq_length": {"shape": [1], "dtype": "int64", "doc": "real behaviours (<= L)"},
            "user_fields": {"shape": [1, len(USER_FEATURES)], "dtype": "int64", "doc": f"rows of {USER_FEATURES}"},
            "cand_items": {"shape": ["B"], "dtype": "int64", "doc": "candidate item rows"},
            "cand_cats": {"shape": ["B"], "dtype": "int64", "doc": "candidate category rows"},
            "cand_attrs": {"shape": ["B", len(ITEM_FEATURES)], "dtype": "int64", "doc": f"rows of {ITEM_FEATURES}"},
            **({"seq_scl": {"shape": [1, L, SCL_DIM], "dtype": "int8",
                            "doc": "the history's SCL vectors (prepared int8 rows), zeros at padding"}}
               if takes_scl(serving) else {}),
        },
        "output": {"shape": ["B"], "dtype": "float32", "doc": "click probabilities"},
        "seq_len": L,
        "min_candidates": MIN_CANDIDATES,
        "max_candidates": max_candidates,
        "quantized": quantize,
        "tables": report,
        "int8_check": int8_check,
        "spec_name": spec.name,
        "method": spec.model.method,
        "checkpoint": str(ck),
        "prepared": spec.data.prepared,
        "vocab_sizes": dict(data.vocab_sizes),
        "data_fingerprint": data.fingerprint,
        "versions": {"torch": torch.__version__, "torchrec": getattr(torchrec, "__version__", "unknown")},
    }
    out = Path(out_dir)
    # Locked only around the writes: a failed load or trace leaves no directory behind, and two
    # exports into one directory cannot mix one's program with the other's manifest.
    with DirLock.acquire(out, holder="another export", hint="wait for it to end or choose another --out"):
        check_output_path(out_dir, "--out", replaces=EXPORT_FILES)  # again: it may have changed while we traced
        say(f"writing {out}")
        digest = _write_staged(out, program, manifest, start)
    # The artifact's identity (not stored in manifest.json, which it covers): pin it when serving.
    return {**manifest, "sha256": digest}


def _write_staged(out: Path, program: torch.export.ExportedProgram, manifest: Dict[str, object], start: float) -> str:
    """Write the export into ``out/.staging`` (hashed there: the same relative names), then move
    its three files over an earlier export's. A failure while writing or hashing, e.g. a full
    disk, leaves the earlier export whole; only a kill between the three renames can mix them,
    which its integrity manifest then refuses. Returns the digest."""
    stage = out / STAGING_DIR
    shutil.rmtree(stage, ignore_errors=True)  # an interrupted export's
    for name in OLD_LEFTOVERS:  # or they would be files the new integrity manifest does not list
        (out / name).unlink(missing_ok=True)
    stage.mkdir()
    try:
        # Through a guarded file: on a full disk torch.export.save aborts the process (exit 134).
        # `save_program`: torch's own save held two copies of each table while writing it (the peak).
        write_binary(stage / PROGRAM_FILE, lambda f: save_program(program, f))
        manifest["export_seconds"] = round(time.perf_counter() - start, 2)
        (stage / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        digest = write_manifest(stage)
        for name in (PROGRAM_FILE, MANIFEST_FILE, INTEGRITY_MANIFEST):  # the program first: `load_program`'s advice
            os.replace(stage / name, out / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return digest


def read_manifest(exported_dir: str) -> Dict[str, object]:
    """The manifest of an exported directory, validated enough to use it."""
    path = Path(exported_dir) / MANIFEST_FILE
    if not path.exists():
        raise ExportError(f"{exported_dir}: no {MANIFEST_FILE} - not a directory written by `muse-rec export`")
    manifest = read_json_object(path, ExportError, advice="; re-export")
    for key in ("format", "program", "inputs", "seq_len", "min_candidates", "max_candidates", "vocab_sizes"):
        if key not in manifest:
            raise ExportError(f"{path}: missing key {key!r}")
    if manifest["format"] != MANIFEST_FORMAT:
        raise ExportError(f"{path}: format {manifest['format']!r}, this version reads {MANIFEST_FORMAT!r}; re-export")
    for key in ("seq_len", "min_candidates", "max_candidates"):
        if not isinstance(manifest[key], int) or isinstance(manifest[key], bool) or manifest[key] < 1:
            raise ExportError(f"{path}: {key}: expected a positive integer, got {manifest[key]!r}")
    # 'method' (optional: older exports lack it) is compared with the spec's and named in that refusal: a number
    # there (an edited manifest, re-sealed) was worded "holds a 5 model".
    if manifest.get("method") is not None and not isinstance(manifest["method"], str):
        raise ExportError(f"{path}: method: expected a method name, got {manifest['method']!r}")
    # 'inputs' decides which tensors a request is built with (a string there was a TypeError traceback).
    if not isinstance(manifest["program"], str) or not all(isinstance(manifest[k], dict) for k in ("vocab_sizes", "inputs")):
        raise ExportError(f"{path}: 'program' must be a file name and 'vocab_sizes' and 'inputs' objects")
    # Only the directory's own files are covered by its SHA256SUMS.json: a program named by a
    # path ("../x.pt2", "/tmp/x.pt2") would be unpickled unverified.
    if Path(manifest["program"]).name != manifest["program"] or manifest["program"] in ("", ".", ".."):
        raise ExportError(f"{path}: program: expected a file name inside {exported_dir}, got {manifest['program']!r}")
    if not (Path(exported_dir) / manifest["program"]).exists():
        raise ExportError(f"{exported_dir}: the program file {manifest['program']!r} is missing")
    return manifest


def load_program(exported_dir: str, expect_sha256: Optional[str] = None) -> torch.nn.Module:
    """The exported program as a callable module (torch + torchrec + fbgemm; see the module docstring).

    The directory is checked against its SHA-256 manifest (and ``expect_sha256``) first:
    `torch.export.load` unpickles parts of the file, so nothing unverified reaches it.
    """
    return load_export(exported_dir, expect_sha256)[0]


def load_export(exported_dir: str, expect_sha256: Optional[str] = None) -> Tuple[torch.nn.Module, Dict[str, object]]:
    """`load_program`'s module and the manifest.json (`read_manifest`) it was loaded by, read once: a
    caller that read the file again could get another manifest than its program's (replaced between)."""
    root = Path(exported_dir)
    if root.is_dir() and not (root / PROGRAM_FILE).exists() and not (root / MANIFEST_FILE).exists() \
            and not (root / STAGING_DIR).exists():
        # Said before the integrity check, whose "not written by muse_rec" misleads for a run directory.
        held = output_of_another_command(root)
        raise ExportError(f"{exported_dir}: not an export (no {PROGRAM_FILE}, no {MANIFEST_FILE})"
                          + (f"; it holds {held}" if held else "") + "; pass the --out of `muse-rec export`")
    try:
        verify(exported_dir, expect_sha256)  # IntegrityError names the file
    except IntegrityError as e:
        stage = Path(exported_dir) / STAGING_DIR
        if stage.exists():  # an export running now, or one killed (`_write_staged`)
            # `_write_staged` moves the program in first: while the stage still holds it, nothing of
            # the earlier export was replaced; once it is gone, the earlier export is partly replaced.
            earlier = ("or delete it to serve the earlier export" if (stage / PROGRAM_FILE).exists() else
                       "the earlier export's files are already partly replaced, so export again")
            raise IntegrityError(f"{e}; {stage} holds an export being written or stopped while writing: wait for "
                                 f"it, {earlier}") from None
        raise
    manifest = read_manifest(exported_dir)
    _register_fake_classes()
    program = Path(exported_dir) / str(manifest["program"])
    # torch.export logs a damaged archive's traceback as a warning before its legacy fallback
    # fails too; the one-line ExportError below says the same to the user.
    export_log = logging.getLogger("torch.export")
    was_disabled, export_log.disabled = export_log.disabled, True
    try:
        # Opened here, not named: torch's archive reader takes a name as UTF-8 and fell back to reading it as a
        # file object for one that is not (a directory name of other bytes), "'str' object has no attribute 'tell'".
        with open(program, "rb") as f:
            return torch.export.load(f).module(), manifest
    except Exception as e:  # zipfile / torch raise assorted types for a damaged archive
        raise ExportError(f"{program}: cannot load the exported program ({type(e).__name__}: "
                          f"{' '.join(str(e).split())[:300]}); re-export") from None
    finally:
        export_log.disabled = was_disabled

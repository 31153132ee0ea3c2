"""The exported, quantized program: reloads without muse_rec and matches the trained model."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from muse_rec.serving.export import MANIFEST_FILE, PROGRAM_FILE, ExportError, read_manifest
from muse_rec.serving.inference import InferenceModel
from tests.in_process import cli_in_process
from tests.serving.conftest import SEQ_LEN, SPEC, _cli
from tests.serving.helpers import training_predictions
from tests.serving.int8_bound import ROUNDING, SAFETY, first_order_bound, quantized_twins

# Runs in a fresh interpreter: -I (isolated: no PYTHONPATH, no cwd on sys.path), from a cwd
# outside the repo. Only torch, torchrec and fbgemm are imported.
_FRESH = r"""
import sys, torch, torchrec, fbgemm_gpu
from torchrec.pt2.utils import register_fake_classes
register_fake_classes()
program = torch.export.load(sys.argv[1]).module()
groups = torch.load(sys.argv[2])
with torch.no_grad():
    out = [program(*args) for args in groups]
torch.save(out, sys.argv[3])
print("MUSE_REC_IMPORTED" if any(m == "muse_rec" or m.startswith("muse_rec.") for m in sys.modules) else "CLEAN")
"""


def test_manifest_and_table_bytes(trained_run):
    m = read_manifest(str(trained_run.exported))
    assert m["seq_len"] == SEQ_LEN and m["quantized"] is True
    bpr = m["tables"]["bytes_per_row"]
    # int8 SCL: 128 values + fp16 scale/bias, padded to 16 B = 144 B/row (training: fp16, 256 B/row).
    assert bpr["scl"] == 144
    assert bpr["item"] == 32  # 16 int8 values + 4 B scale/bias, padded to 16 (fp32 in training: 64)
    assert m["tables"]["scl_dtype"] == "int8"


def test_a_whole_history_gsus_program_takes_the_rankers_candidates_per_pass(trained_run, tmp_path):
    """TWIN scores every history position of every candidate as fp32 ``[B, L]`` matrices: its program takes at
    most ``FULL_SCORES_PER_PASS // L`` candidates a call, the float Ranker's passes (unbounded, 1,000 candidates
    at L = 100K held 2.4 GB), and the Ranker splits a request into calls of that many. MUSE's streams the
    history in chunks: its program keeps ``--max-candidates``."""
    from muse_rec.serving.export import DEFAULT_MAX_CANDIDATES
    from muse_rec.serving.inference import FULL_SCORES_PER_PASS

    twin, L = SPEC.parent / "twin.yaml", 2 * FULL_SCORES_PER_PASS // DEFAULT_MAX_CANDIDATES
    sets = [a for o in (f"data.prepared={trained_run.prepared}", f"output_dir={tmp_path}/runs/{{name}}",
                        f"data.seq_len={SEQ_LEN}") for a in ("--set", o)]
    _cli("train", "--spec", str(twin), *sets, "--set", "train.batch_size=128", "--set", "train.max_steps=2",
         "--set", "train.eval_at_end=false", "--device", "cpu")
    _cli("export", "--spec", str(twin), *sets, "--seq-len", str(L), "--out", str(tmp_path / "exported"))
    assert read_manifest(str(tmp_path / "exported"))["max_candidates"] == FULL_SCORES_PER_PASS // L
    assert read_manifest(str(trained_run.exported))["max_candidates"] == DEFAULT_MAX_CANDIDATES


def test_exported_program_in_fresh_process_matches_trained_model(trained_run, trained_model, tmp_path):
    """The exported int8 program, run without muse_rec, is within the derived per-sample bound
    (tests/serving/int8_bound.py) of the trained float model's training forward."""
    model, data = trained_model
    ref = training_predictions(model, data, "test", SEQ_LEN, max_batches=1)
    scl = torch.from_numpy(np.asarray(data.scl()))

    def with_scl(args):  # the program's last input: the history's int8 SCL rows, zeros at padding
        mask = InferenceModel.seq_mask(args[0], args[2])
        return (*args, scl[args[0]] * mask.unsqueeze(2).to(torch.int8))

    torch.save([with_scl(args) for _, args in ref.groups], tmp_path / "inputs.pt")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run(
        [sys.executable, "-I", "-c", _FRESH, str(trained_run.exported / PROGRAM_FILE),
         str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "CLEAN", "loading the program imported muse_rec"
    outs = torch.load(tmp_path / "out.pt")
    probs = np.full(ref.probs.shape, np.nan, np.float32)
    for (rows, _), o in zip(ref.groups, outs):
        assert o.shape == (len(rows),)
        probs[rows] = o.numpy()
    assert not np.isnan(probs).any()
    # The bound: B_i from the trained tables' measured int8 errors; probabilities move at most 1/4
    # of the logit (sigmoid is 1/4-Lipschitz). MUSE's decisions read no ID table, so it covers all.
    float_model, _, _, deltas = quantized_twins(model, data.scl())
    bound = np.full(ref.probs.shape, np.nan)
    for rows, args in ref.groups:
        bound[rows] = 0.25 * (SAFETY * first_order_bound(float_model, args, deltas).numpy() + ROUNDING)
    dp = np.abs(probs.astype(np.float64) - ref.probs)
    print(f"exported int8 vs trained float: max |dp| = {dp.max():.2e}, worst |dp| / bound = {(dp / bound).max():.3f}")
    assert (dp <= bound).all(), f"{int((dp > bound).sum())} samples beyond the derived bound"
    assert dp.max() > 0.0  # quantization really happened (not the float model in disguise)


def test_int8_scl_table_is_lossless(trained_run, trained_model):
    """The quantized SCL lookups return the prepared int8 vectors exactly."""
    from muse_rec.serving.inference import InferenceModel
    from muse_rec.serving.export import load_trained_model
    from muse_rec.serving.quantize import quantize_for_serving

    _, data = trained_model
    model, _ = load_trained_model(trained_run.spec(), data)
    inf = InferenceModel(model)
    quantize_for_serving(inf, data.scl(), "int8")
    n = data.scl().shape[0]
    items = torch.arange(n)
    target, seq = inf.model.sparse_arch.scl_vectors(items, items[None, :7], torch.ones(1, 7, dtype=torch.bool))
    expect = torch.from_numpy(np.asarray(data.scl())).float()
    assert torch.equal(target.float(), expect)
    assert torch.equal(seq[0].float(), expect[:7])


def _resident_bytes(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` (peak since the last reset) of this process, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise KeyError(field)


def test_quantizing_holds_a_chunk_of_the_scl_table_at_most():
    """`quantize_for_serving` holds at most one chunk of SCL rows beyond its start (and the ID tables' quantized
    rows, once the fp16 SCL table is freed), whatever the SCL table's size. Before, TorchRec quantized the float SCL
    table (FBGEMM's fused rows, then a copy into the TBE) and `write_exact_int8_` overwrote it through int16
    temporaries: ~850 B per row at once (+199 MiB at 234,640 rows; +229 MiB here)."""
    from muse_rec.models.ctr_model import build_train_model
    from muse_rec.models.frozen_scl import SCL_TABLE
    from muse_rec.models.sparse_arch import REQUIRED_TABLES
    from muse_rec.serving.quantize import quantize_for_serving
    from muse_rec.spec import load_spec

    clear_refs = Path("/proc/self/clear_refs")
    if not clear_refs.exists():
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak resident size")
    spec = load_spec(SPEC)
    rows, small = 1 << 19, 64  # an SCL table large against the bound's terms below
    chunk_rows = rows // 4  # several chunks, each large enough that a temporary 4 B per value would show
    sizes = {t: small for t in REQUIRED_TABLES} | {"item": rows}
    model = InferenceModel(build_train_model(spec.model, sizes, SEQ_LEN, device=torch.device("cpu")).model.eval())
    scl_array = np.zeros((rows, model.model.sparse_arch.scl.dim), np.int8)
    id_tables = {c.name: c for coll in model.model.sparse_arch.collections()[:-1]
                 for c in (coll.embedding_bag_configs() if hasattr(coll, "embedding_bag_configs")
                           else coll.embedding_configs())}
    fp16_row = model.model.sparse_arch.scl.bytes_per_row
    clear_refs.write_text("5")  # VmHWM := VmRSS
    start = _resident_bytes("VmRSS")
    report = quantize_for_serving(model, scl_array, "int8", chunk_rows=chunk_rows)
    grown = _resident_bytes("VmHWM") - start
    # The route: the fp16 SCL table is freed, then the int8 one allocated and filled from one copied chunk of
    # rows at a time; then TorchRec quantizes each ID table: FBGEMM's fused rows (dim int8 + fp16 scale and bias)
    # and the TBE's rows are allocated while its float table is held. So the peak is the start, or the start less
    # what the SCL table saved plus the larger of the chunk and the ID tables' new rows.
    scale_bias = 4
    saved = rows * (fp16_row - report.bytes_per_row[SCL_TABLE])
    id_rows = sum(report.rows[t] * (c.embedding_dim + scale_bias + report.bytes_per_row[t]) for t, c in id_tables.items())
    chunk = chunk_rows * scl_array.shape[1]
    # Resident pages also hold what is not a tensor (Python objects, the allocator's own pages; < 1 MiB measured).
    margin = 16 << 20
    bound = max(0, max(chunk, id_rows) - saved) + margin
    print(f"quantize_for_serving: peak +{grown / 2**20:.1f} MiB over the start, bound {bound / 2**20:.1f} MiB, "
          f"{rows:,} SCL rows")
    assert grown <= bound, f"peak +{grown:,} B > {bound:,} B: the SCL table's size shows in the peak"


@pytest.mark.parametrize("scl_dtype", ["int8", "fp16"])
@pytest.mark.parametrize("values, chunk_rows, refusal", [
    (np.float32, 1, "exact storage needs int8 values, got float32"),
    (np.int8, 0, "chunk_rows must be >= 1, got 0"),
])
def test_a_refused_scl_write_leaves_the_model_as_it_was(values, chunk_rows: int, refusal: str, scl_dtype: str):
    """`quantize_for_serving` took the float SCL collection off the model before `write_exact_int8_` refused the
    values (or range() the chunk of 0 rows): the caught refusal left a model with no SCL table (AttributeError
    scoring it). Now refused before the model is touched: it scores as before, bit for bit."""
    from muse_rec.data.batch import ITEM_FEATURES, USER_FEATURES
    from muse_rec.models.ctr_model import build_train_model
    from muse_rec.models.sparse_arch import REQUIRED_TABLES
    from muse_rec.serving.quantize import quantize_for_serving
    from muse_rec.spec import load_spec

    rows, candidates = 64, 5
    model = InferenceModel(build_train_model(load_spec(SPEC).model, {t: rows for t in REQUIRED_TABLES}, SEQ_LEN,
                                             device=torch.device("cpu")).model.eval())
    g = torch.Generator().manual_seed(0)
    ids = lambda *shape: torch.randint(1, rows, shape, generator=g)  # noqa: E731
    args = (ids(1, SEQ_LEN), ids(1, SEQ_LEN), torch.tensor([SEQ_LEN // 2]), ids(1, len(USER_FEATURES)),
            ids(candidates), ids(candidates), ids(candidates, len(ITEM_FEATURES)))
    with torch.no_grad():
        before = model(*args)
    scl = np.zeros((rows, model.model.sparse_arch.scl.dim), values)
    with pytest.raises(ValueError) as refused:
        quantize_for_serving(model, scl, scl_dtype, chunk_rows=chunk_rows)
    assert str(refused.value) == refusal
    with torch.no_grad():
        assert torch.equal(model(*args), before)


@pytest.mark.parametrize("scl_dtype", ["int8", "fp16"])
def test_writing_the_scl_table_copies_no_rows(tmp_path, scl_dtype):
    """The quantized SCL table is written from the prepared (memory-mapped, read-only) rows in place: no copy of a
    chunk, and no warning. Before, each chunk was copied into a tensor first: 128 B per row of a 1M-row chunk
    (128 MiB) beside the new table at quantizing's peak (2 MiB here)."""
    import copy
    import warnings

    from torch.profiler import ProfilerActivity, profile

    from muse_rec.models.frozen_scl import SCL_TABLE
    from muse_rec.serving.quantize import (FloatCollectionSettings, exact_scl_collection, write_exact_fp16_,
                                           write_exact_int8_)
    from tests.conftest import memory_mapped_scl

    scl, table, mapped = memory_mapped_scl(tmp_path)
    rows = table.shape[0]
    settings = FloatCollectionSettings(copy.deepcopy(scl.collection.embedding_configs()),
                                       scl.collection.need_indices(), scl.collection.device)
    collection = exact_scl_collection(settings, np.zeros_like(table), scl_dtype)
    write = write_exact_int8_ if scl_dtype == "int8" else write_exact_fp16_
    chunk_bytes = rows * scl.dim  # one chunk's int8 rows; a write's own tensors (scale and bias) are a few bytes
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof, warnings.catch_warnings():
        warnings.simplefilter("error")
        write(collection, SCL_TABLE, mapped, chunk_rows=rows)
    allocated = sum(max(0, e.self_cpu_memory_usage) for e in prof.events())
    assert allocated < chunk_bytes, f"the write allocated {allocated:,} B: a copy of the {chunk_bytes:,} B chunk"
    (tbe,) = collection._emb_modules
    stored = tbe.split_embedding_weights()[0][0]  # uint8 rows: v + 128 (int8), or v's fp16 bytes
    values = stored.to(torch.int16) - 128 if scl_dtype == "int8" else stored.view(torch.float16)
    assert torch.equal(values.float(), torch.from_numpy(table).float())  # every value, exact


class _OneTable(torch.nn.Module):
    """A program whose only large tensor is one table, as the SCL TBE's storage is in a ranker."""

    def __init__(self, rows: int, width: int) -> None:
        super().__init__()
        self.register_buffer("table", torch.arange(rows * width, dtype=torch.int64).to(torch.uint8).view(rows, width))

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.table[rows].float().sum(-1)


def test_writing_the_program_holds_no_copy_of_its_tables(tmp_path):
    """The export's write (`_write_staged`) adds no copy of the program's tables to the resident memory, and
    writes the bytes `torch.export.save` writes. Before, torch's save copied each storage into a Python bytes
    object and the zip writer copied that again: two copies of the largest table at once, the peak of
    `muse-rec export` (+289 B per item row, 144 B the SCL table's; +128 MiB here)."""
    from muse_rec.data.files import write_binary
    from muse_rec.serving.export import _write_staged

    clear_refs = Path("/proc/self/clear_refs")
    if not clear_refs.exists():
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak resident size")
    rows, width = 1 << 20, 64  # 64 MiB: large against the margin below
    program = torch.export.export(_OneTable(rows, width), (torch.zeros(4, dtype=torch.int64),))
    out = tmp_path / "export"
    out.mkdir()
    clear_refs.write_text("5")  # VmHWM := VmRSS
    start = _resident_bytes("VmRSS")
    _write_staged(out, program, {}, 0.0)
    grown = _resident_bytes("VmHWM") - start
    # The table is written from its own memory; what else is allocated (the graph's serialized form, Python
    # objects, the zip writer's buffers) is small and does not grow with the table (5 MiB measured).
    margin = 16 << 20
    table = rows * width
    print(f"_write_staged: peak +{grown / 2**20:.1f} MiB over the start, a table of {table / 2**20:.0f} MiB")
    assert grown <= margin, f"peak +{grown:,} B > {margin:,} B: a copy of the {table:,} B table was held"
    plain = tmp_path / "plain"
    plain.mkdir()
    write_binary(plain / PROGRAM_FILE, lambda f: torch.export.save(program, f))  # as the export wrote it before
    assert (out / PROGRAM_FILE).read_bytes() == (plain / PROGRAM_FILE).read_bytes()


@pytest.mark.parametrize("scl_dtype", ["int8", "fp16"])
def test_the_scl_collection_is_the_one_torchrec_s_quantization_gave(trained_run, trained_model, scl_dtype):
    """The SCL collection built directly (no float copy) is TorchRec's quantized collection (followed by
    `write_exact_int8_` for int8: the routes before): the same type, settings and bytes, padding included."""
    from muse_rec.models.frozen_scl import SCL_TABLE, FrozenEmbeddingCollection
    from muse_rec.serving.export import load_trained_model
    from muse_rec.serving.quantize import quantize_for_serving, write_exact_int8_
    from torchrec.inference.modules import DEFAULT_QUANT_MAPPING, quantize_inference_model
    from torchrec.quant.embedding_modules import MODULE_ATTR_ROW_ALIGNMENT_INT
    from torchrec.quant.embedding_modules import EmbeddingCollection as QuantEmbeddingCollection

    _, data = trained_model
    row_alignment = 4  # not TorchRec's default: the setting must reach the table
    ours = InferenceModel(load_trained_model(trained_run.spec(), data)[0])
    quantize_for_serving(ours, data.scl(), scl_dtype, row_alignment)
    theirs = InferenceModel(load_trained_model(trained_run.spec(), data)[0]).eval()
    for coll in theirs.model.sparse_arch.collections():
        setattr(coll, MODULE_ATTR_ROW_ALIGNMENT_INT, row_alignment)
    mapping = {**DEFAULT_QUANT_MAPPING, torch.typename(FrozenEmbeddingCollection): QuantEmbeddingCollection}
    quantize_inference_model(theirs, quantization_mapping=mapping,
                             per_table_weight_dtype={SCL_TABLE: torch.float16} if scl_dtype == "fp16" else None)
    if scl_dtype == "int8":
        write_exact_int8_(theirs.model.sparse_arch.scl.collection, SCL_TABLE, data.scl())
    a, b = ours.model.sparse_arch.scl.collection, theirs.model.sparse_arch.scl.collection
    assert type(a) is type(b)
    settings = ("_need_indices", "_output_dtype", "_device", "row_alignment", "register_tbes",
                "_feature_names", "_feature_splits", "_embedding_names_by_batched_tables")
    assert {k: getattr(a, k) for k in settings} == {k: getattr(b, k) for k in settings}
    assert [vars(c) for c in a.embedding_configs()] == [vars(c) for c in b.embedding_configs()]
    (tbe_a,), (tbe_b,) = a._emb_modules, b._emb_modules
    assert tbe_a.embedding_specs == tbe_b.embedding_specs
    for name, value in vars(b).items():  # the collection's flags (TorchRec's MODULE_ATTR_* settings)
        # Not nn.Module's `training`: TorchRec's swap left the new module in training mode under an eval model
        # (no effect on a quantized lookup); the collection built before the swap is in eval mode with the model.
        if isinstance(value, bool) and name != "training":
            assert getattr(a, name) == value, name
    state_a, state_b = a.state_dict(keep_vars=True), b.state_dict(keep_vars=True)
    assert state_a.keys() == state_b.keys()
    for key in state_b:
        assert torch.equal(state_a[key], state_b[key]), key
    assert torch.equal(tbe_a.weights_host, tbe_b.weights_host)  # every stored byte, row padding included


def test_the_fp16_scl_table_is_written_without_the_float_table(monkeypatch):
    """`--scl-dtype fp16`: the float SCL table is gone before its fp16 twin is allocated, and nothing keeps it
    after. Before, TorchRec built the fp16 table from the float one (held while the new one was allocated and
    copied into) and its new collection kept the old rows (`_table_name_to_quantized_weights`): +256 B per
    item row from quantizing to the end of `muse-rec export`, its peak (802 B/row against 525 for int8)."""
    import weakref

    from torchrec.quant.embedding_modules import EmbeddingCollection as QuantEmbeddingCollection

    from muse_rec.models.ctr_model import build_train_model
    from muse_rec.models.frozen_scl import SCL_TABLE
    from muse_rec.models.sparse_arch import REQUIRED_TABLES
    from muse_rec.serving.quantize import quantize_for_serving
    from muse_rec.spec import load_spec

    rows = 64
    sizes = {t: rows for t in REQUIRED_TABLES}
    model = InferenceModel(build_train_model(load_spec(SPEC).model, sizes, SEQ_LEN,
                                             device=torch.device("cpu")).model.eval())
    scl = model.model.sparse_arch.scl
    float_table = weakref.ref(scl.collection.embeddings[SCL_TABLE].weight)
    float_alive_at_build = []
    build = QuantEmbeddingCollection.__init__

    def recording_build(self, tables, *args, **kwargs):
        if any(t.name == SCL_TABLE for t in tables):
            float_alive_at_build.append(float_table() is not None)
        build(self, tables, *args, **kwargs)

    rng = np.random.default_rng(0)
    scl_array = rng.integers(-127, 128, size=(rows, scl.dim), dtype=np.int8)
    scl_array[0] = 0
    monkeypatch.setattr(QuantEmbeddingCollection, "__init__", recording_build)
    quantize_for_serving(model, scl_array, "fp16")
    assert float_alive_at_build == [False], "the float SCL table was held while its fp16 twin was allocated"
    assert float_table() is None, "the float SCL table is still held after quantizing"
    (tbe,) = scl.collection._emb_modules
    assert torch.equal(tbe.split_embedding_weights()[0][0].view(torch.float16).float(),
                       torch.from_numpy(scl_array).float())  # every int8 value, exact in fp16


def _tensors_in(value: object) -> list:
    """The tensors in ``value`` and the dicts, lists and tuples it holds (not inside modules)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors_in(v)]
    return []


def test_quantized_collections_hold_their_rows_only_in_their_tbes():
    """After quantizing, no collection holds a table's rows outside its TBEs. Before, TorchRec's quantized
    collections kept the fused rows FBGEMM quantized them from (``_table_name_to_quantized_weights``): the ID
    tables' rows twice until `muse-rec export` ended (the item table's +20 B per row)."""
    from muse_rec.models.ctr_model import build_train_model
    from muse_rec.models.sparse_arch import REQUIRED_TABLES
    from muse_rec.serving.quantize import quantize_for_serving
    from muse_rec.spec import load_spec

    rows = 4096  # a copy of a table's rows has at least `rows` elements; TorchRec's other tensors here have few
    model = InferenceModel(build_train_model(load_spec(SPEC).model, {t: rows for t in REQUIRED_TABLES}, SEQ_LEN,
                                             device=torch.device("cpu")).model.eval())
    quantize_for_serving(model, np.zeros((rows, model.model.sparse_arch.scl.dim), np.int8), "int8")
    for collection in model.model.sparse_arch.collections():
        tables = {tbe.weights_host.untyped_storage().data_ptr() for tbe in collection._emb_modules}
        own = {k: v for k, v in vars(collection).items() if k != "_modules"}  # the TBEs' tensors are their own
        outside = [t for t in _tensors_in(own) if t.numel() >= rows and t.untyped_storage().data_ptr() not in tables]
        assert not outside, f"{type(collection).__name__} holds {[tuple(t.shape) for t in outside]} beside its TBEs"


def test_exported_accepts_candidate_counts_in_range(trained_run):
    from muse_rec.serving.export import example_inputs, load_program

    program = load_program(str(trained_run.exported))
    assert "seq_scl" in read_manifest(str(trained_run.exported))["inputs"]
    with torch.no_grad():
        for b in (1, 2, 3, 1000):
            assert program(*example_inputs(SEQ_LEN, b, with_scl=True)).shape == (b,)


def test_read_manifest_errors(tmp_path, trained_run):
    with pytest.raises(ExportError, match="no manifest.json"):
        read_manifest(str(tmp_path))
    good = {"format": "muse_rec.ranker/1", "program": "x.pt2", "inputs": {}, "seq_len": 1, "min_candidates": 1,
            "max_candidates": 4, "vocab_sizes": {}}
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(good))
    with pytest.raises(ExportError, match="program file 'x.pt2' is missing"):
        read_manifest(str(tmp_path))
    # Sealed by a rewritten SHA256SUMS.json, so only these checks stand between the file and the ranker:
    # 'inputs' not an object was a TypeError traceback (exit 1), another format was read as this one.
    (tmp_path / "x.pt2").write_bytes(b"")
    for edit, needle in (({"inputs": 5}, "'inputs' objects"), ({"format": "x"}, "format 'x', this version reads"),
                         ({"inputs": None} | {"format": None}, "format None")):
        (tmp_path / MANIFEST_FILE).write_text(json.dumps({**good, **edit}))
        with pytest.raises(ExportError, match=needle):
            read_manifest(str(tmp_path))


def test_export_cli_without_checkpoint_or_data_fails_clearly_before_torchrec(trained_run, tmp_path):
    """No checkpoint in the run, a --checkpoint that is none, or no prepared data: one line, exit 2, and
    before TorchRec and FBGEMM are imported (~4 s of a refusal that took ~7 s)."""
    from tests.conftest import REPO, subprocess_env
    from tests.serving.conftest import SPEC

    probe = ("import sys; from muse_rec.cli import main; code = main(sys.argv[1:]); "
             "print('stack imported:', 'torchrec' in sys.modules, 'fbgemm_gpu' in sys.modules); sys.exit(code)")
    base = ["export", "--spec", str(SPEC), *trained_run.cli_sets(), "--out", str(tmp_path / "x")]
    cases = [(["--set", f"output_dir={tmp_path}/none"], f"no complete checkpoint at {tmp_path}/none/checkpoints"),
             (["--checkpoint", str(tmp_path)], f"no complete checkpoint at {tmp_path} (train first"),
             (["--set", f"data.prepared={tmp_path}/nodata"], f"{tmp_path}/nodata: no meta.json")]
    for extra, message in cases:
        proc = subprocess.run([sys.executable, "-c", probe, *base, *extra], cwd=REPO, env=subprocess_env(),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert "stack imported: False False" in proc.stdout, (extra, proc.stdout)
    assert not (tmp_path / "x").exists()


def test_another_method_trains_exports_and_ranks_from_the_cli(trained_run, tmp_path):
    """TWIN (ID-attention GSU, no SCL input): `muse-rec train` -> `export` -> `rank --exported`."""
    from tests.conftest import REPO, subprocess_env

    spec = str(REPO / "specs" / "demo" / "twin.yaml")
    sets = trained_run.cli_sets() + ["--set", f"output_dir={tmp_path}/runs/{{name}}"]

    def cli(*args):
        proc = subprocess.run([sys.executable, "-m", "muse_rec.cli", *args], cwd=REPO, env=subprocess_env(),
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        if args[0] in ("export", "rank"):
            # Nothing but the JSON on stdout: before, DCP's single-process note, torch.fx's tracing
            # notice, the archive writer's storage-group note and ~20 "Symbol uNN did not appear"
            # lines per program load reached stderr (library noise the user can do nothing about).
            # Only the export's own int8 check may speak: TWIN retrieves by ID scores, and int8
            # rows move its probabilities by ~0.02 already after 2 steps. `rank` ends with its timing line.
            lines = proc.stderr.splitlines()
            if args[0] == "rank":
                assert len(lines) == 1 and lines[0].startswith("muse-rec rank: 1 request, 1 candidate scored in "), \
                    proc.stderr[-3000:]
            else:
                assert lines == [] or (len(lines) == 1
                                       and lines[0].startswith("muse-rec export: warning: int8 tables move TWIN's")
                                       and "--float" in lines[0]), proc.stderr[-3000:]
        return proc.stdout

    cli("train", "--spec", spec, *sets, "--set", "train.batch_size=128", "--set", "train.max_steps=2",
        "--set", "train.eval_at_end=false", "--device", "cpu")
    cli("export", "--spec", spec, *sets, "--out", str(tmp_path / "exported"))
    manifest = read_manifest(str(tmp_path / "exported"))
    assert manifest["method"] == "TWIN" and "seq_scl" not in manifest["inputs"] and manifest["min_candidates"] == 1
    req = tmp_path / "req.json"
    req.write_text(json.dumps({"user": 1, "candidates": [5]}))
    out = json.loads(cli("rank", "--spec", spec, *sets, "--request", str(req), "--exported",
                         str(tmp_path / "exported")).strip().splitlines()[-1])
    assert len(out["scores"]) == 1 and 0.0 < out["scores"][0] < 1.0
    eager = json.loads(cli("rank", "--spec", spec, *sets, "--request", str(req)).strip().splitlines()[-1])
    assert len(eager["scores"]) == 1 and 0.0 < eager["scores"][0] < 1.0


def test_the_manifest_says_how_far_int8_moves_the_scores(trained_run):
    """`export` scores the eval split's first users with the float and then the int8 model; its
    manifest's ``int8_check`` is what the checkpoint's float Ranker and the exported program give on
    the same requests (the program equals the eager int8 model within 2.5e-6 in probability,
    docs/serving.md: 1e-5 is the tolerance)."""
    from muse_rec.data.prepared import PreparedData
    from muse_rec.serving.int8_check import INT8_WARN_DP, check_requests
    from muse_rec.serving.ranker import Ranker

    check = read_manifest(str(trained_run.exported))["int8_check"]
    requests = check_requests(PreparedData(str(trained_run.prepared)), "test")
    assert check["users"] == len(requests.users) and check["samples"] == requests.samples > 100
    spec = trained_run.spec()
    with Ranker.from_checkpoint(spec) as float_ranker, Ranker.from_exported(spec, str(trained_run.exported)) as program:
        dp = np.concatenate([np.abs(program.score(u, c).astype(np.float64) - float_ranker.score(u, c))
                             for u, c in zip(requests.users, requests.candidates)])
    assert check["max_abs_dp"] == pytest.approx(dp.max(), abs=1e-5) and check["max_abs_dp"] > 0
    assert check["p99_abs_dp"] <= check["max_abs_dp"] and check["warn_above"] == INT8_WARN_DP


def test_a_large_int8_deviation_is_a_warning_that_names_float(trained_run, tmp_path, monkeypatch):
    from muse_rec.serving import int8_check
    from muse_rec.serving.export import export_model
    from muse_rec.serving.int8_check import CheckRequests, deviation_report, warning_text

    requests = CheckRequests("test", [1, 2], [np.array([5, 6]), np.array([7])])
    report = deviation_report(requests, np.array([0.1, 0.2, 0.3]), np.array([0.1, 0.25, 0.3]))
    assert report["max_abs_dp"] == pytest.approx(0.05) and (report["samples"], report["samples_above_warn"]) == (3, 1)
    text = warning_text(report, "TWIN", retrieves_by_id=True)
    assert "up to 0.0500" in text and "1 of 3 samples of 2 test users" in text and "ID-embedding" in text
    assert "--float" in text and "ID-embedding" not in warning_text(report, "DIN", retrieves_by_id=False)

    monkeypatch.setattr(int8_check, "INT8_WARN_DP", 0.0)  # any deviation: the export must say so
    with pytest.warns(UserWarning, match=r"int8 tables move MUSE's click probabilities by up to .* --float"):
        manifest = export_model(trained_run.spec(), str(tmp_path / "exported"))
    assert manifest["int8_check"]["samples_above_warn"] > 0


def test_the_program_returns_plain_scores_without_autograd(trained_run):
    """Loaded as docs/serving.md shows, the program's scores are plain tensors: before, its weights kept
    requires_grad, every call built an autograd graph and `scores.numpy()` raised."""
    from muse_rec.serving.export import example_inputs, load_program

    manifest = read_manifest(str(trained_run.exported))
    program = load_program(str(trained_run.exported))
    assert not any(p.requires_grad for p in program.parameters())
    scores = program(*example_inputs(manifest["seq_len"], with_scl="seq_scl" in manifest["inputs"]))
    assert not scores.requires_grad and scores.numpy().shape == (scores.shape[0],)


def test_the_program_stores_each_quantized_table_once(trained_run):
    """Every uint8 byte the program stores, beside the TBEs' one type code per feature (`weights_tys`),
    is a table row, stored once: the manifest's rows x bytes per row, each table padded to FBGEMM's
    cache line as its TBE lays them out. Before, TorchRec's state_dict views of the tables
    (`embeddings.<t>.weight`) were saved beside the TBEs' storage, so the file and the loaded program
    held every table twice (2x the bytes per row the manifest and docs/serving.md state)."""
    from fbgemm_gpu.split_table_batched_embeddings_ops_inference import align_to_cacheline

    from muse_rec.serving.export import _register_fake_classes

    _register_fake_classes()
    program = torch.export.load(str(trained_run.exported / PROGRAM_FILE))
    stored = {**program.state_dict, **program.constants}
    row_bytes = sum(t.numel() for name, t in stored.items()
                    if isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and not name.endswith(".weights_tys"))
    tables = read_manifest(str(trained_run.exported))["tables"]
    assert row_bytes == sum(align_to_cacheline(tables["rows"][t] * tables["bytes_per_row"][t]) for t in tables["rows"])


@pytest.mark.parametrize("max_candidates", [1, 3])
def test_a_program_for_fewer_candidates_than_the_traced_example_exports_and_scores_alike(trained_run, tmp_path,
                                                                                      max_candidates):
    # The program was traced with an example of 8 candidates whatever --max-candidates said: 2-7 ended in a
    # ConstraintViolationError traceback (exit 1), 1 in "Cannot create Dim with inconsistent min=1, max=1".
    from muse_rec.data.prepared import PreparedData
    from muse_rec.serving.export import load_program

    out = tmp_path / "x"
    proc = cli_in_process("export", "--spec", str(SPEC), *trained_run.cli_sets(), "--out", str(out),
                          "--max-candidates", str(max_candidates))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert read_manifest(str(out))["max_candidates"] == max_candidates
    small, default = load_program(str(out)), load_program(str(trained_run.exported))
    sizes = PreparedData(str(trained_run.prepared)).vocab_sizes
    gen = torch.Generator().manual_seed(0)
    rows = lambda table, *shape: torch.randint(1, sizes[table], shape, generator=gen)  # noqa: E731
    history = (rows("item", 1, SEQ_LEN), rows("category", 1, SEQ_LEN), torch.tensor([SEQ_LEN]),
               torch.stack([rows(t, 1) for t in ("user_id", "user_f1", "user_f2", "user_f3", "user_f4", "user_f5")], 1))
    scl = torch.from_numpy(np.asarray(PreparedData(str(trained_run.prepared)).scl()))[history[0]]
    with torch.no_grad():
        for b in range(1, max_candidates + 1):
            cands = (rows("item", b), rows("category", b),
                     torch.stack([rows(t, b) for t in ("item_f213", "item_f214")], 1))
            got, want = small(*history, *cands, scl), default(*history, *cands, scl)
            # The same int8 tables and ops: only the traced shapes differ.
            assert got.shape == (b,) and torch.equal(got, want), (b, got, want)
        with pytest.raises(Exception):
            small(*history, *(t.repeat(max_candidates + 1, *[1] * (t.dim() - 1))[:max_candidates + 1] for t in cands), scl)


def test_max_candidates_out_of_range_is_one_line_before_anything_loads(trained_run, tmp_path):
    # Past int64 the flag is argparse's usage error, as every integer flag; inside it, the range check's.
    for bad, line in [(b, f"--max-candidates {b}: must be in [1, 2,147,483,647]") for b in ("0", str(2**31), str(2**63 - 1))] \
            + [("99999999999999999999", "argument --max-candidates: 99999999999999999999: outside the 64-bit integers")]:
        proc = cli_in_process("export", "--spec", str(SPEC), *trained_run.cli_sets(), "--out", str(tmp_path / "x"),
                              "--max-candidates", bad)
        assert proc.returncode == 2 and proc.stderr.strip().startswith(f"muse-rec export: {line}"), proc.stderr[-1000:]
        assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()


def test_export_prints_the_int8_checks_figures_beside_the_manifest(trained_run, tmp_path):
    """The int8 check measures only the eval split's first users; below the warning's threshold its figures
    were in manifest.json alone, so a user of a model that retrieves by ID embeddings (whose other users can
    move more: docs/serving.md) never saw them. The command's JSON line carries them, as the manifest has them."""
    out = tmp_path / "x"
    proc = cli_in_process("export", "--spec", str(SPEC), *trained_run.cli_sets(), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = json.loads(proc.stdout.strip().splitlines()[-1])["int8_check"]
    check = read_manifest(str(out))["int8_check"]
    assert printed == {k: check[k] for k in ("max_abs_dp", "p99_abs_dp", "samples", "users", "split")}
    assert printed["users"] > 0 and printed["samples"] >= printed["users"]



def test_export_names_each_phase_as_it_starts(trained_run, tmp_path):
    """Export said nothing until its JSON line (21 s at 1.2M item rows, minutes at the full vocabulary): it tells
    `say` each phase as it starts, which the CLI's heartbeat repeats every 30 s (tests/foundation/test_phase_heartbeat.py)."""
    from muse_rec.serving.export import export_model

    phases = []
    export_model(trained_run.spec(), str(tmp_path / "x"), say=phases.append)
    starts = ["loading", "int8 check: scoring", "quantizing", "int8 check: scoring the same", "tracing", "writing"]
    assert len(phases) == len(starts) and all(p.startswith(s) for p, s in zip(phases, starts)), phases

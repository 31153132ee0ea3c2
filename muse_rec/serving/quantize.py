"""Quantize a serving model's tables with TorchRec's int8 inference tables (FBGEMM IntNBit TBE).

* ID tables (the pooled EBC and the item/category EC): TorchRec's row-wise int8
  (``quantize_inference_model``): per row ``dim`` uint8 values + an fp16 scale and bias,
  the row padded to ``row_alignment`` bytes. Lossy: ~1/255 of each row's value range.
* The frozen SCL table: the prepared SCL vectors are already int8 (``trunc(127 * v)``), so the
  table is stored int8 **losslessly**: each row holds ``v + 128`` as uint8 with scale 1.0 and
  bias -128.0 (both exact in fp16), so the lookup returns ``v`` exactly. That is 128 + 4 bytes
  per row (+ alignment padding) instead of 256 (fp16 in training), with cosines identical to
  the training model's. ``scl_dtype="fp16"`` stores the same values as fp16 (256 bytes per row,
  exact). Either collection is built directly from the prepared array (`exact_scl_collection`), after
  the float table is freed, not by TorchRec from the float table: its int8 quantization would be
  overwritten anyway and held ~260 B per row at once beside the fp16 table, and its fp16 route
  copied the fp16 table into the new table while holding it, and kept it after (+256 B per row).

The frozen table is a `FrozenEmbeddingCollection` (an EC subclass); TorchRec's default mapping
matches exact type names, so it is added to the mapping here.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Literal, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torchrec import DataType, EmbeddingConfig
from torchrec.inference.modules import DEFAULT_QUANT_MAPPING, DEFAULT_QUANTIZATION_DTYPE, quantize_inference_model
from torchrec.modules.embedding_configs import dtype_to_data_type
from torchrec.quant.embedding_modules import MODULE_ATTR_ROW_ALIGNMENT_INT
from torchrec.quant.embedding_modules import EmbeddingBagCollection as QuantEmbeddingBagCollection
from torchrec.quant.embedding_modules import EmbeddingCollection as QuantEmbeddingCollection

from muse_rec.models.frozen_scl import SCL_TABLE, FrozenEmbeddingCollection, FrozenSCL, read_only_view
from muse_rec.serving.export_layout import check_row_alignment
from muse_rec.serving.inference import InferenceModel

# TorchRec's default row alignment of inference tables (bytes): what its CUDA kernels expect.
DEFAULT_ROW_ALIGNMENT = 16
# int8 rows store v + offset as uint8 and dequantize as scale * u + bias (FBGEMM's int8 rows).
_INT8_OFFSET = 128
SCL_DTYPES = ("int8", "fp16")
# The storage each `scl_dtype` gives the SCL table (`exact_scl_collection`): int8 is TorchRec's quantization dtype.
_SCL_DATA_TYPES = {"int8": dtype_to_data_type(DEFAULT_QUANTIZATION_DTYPE), "fp16": DataType.FP16}
# The attribute where TorchRec's quantized collections keep the rows they were built from (`_drop_source_rows`).
_SOURCE_ROWS = "_table_name_to_quantized_weights"
# SCL rows written per step into the quantized table (read in place from the array: no temporary copy).
DEFAULT_CHUNK_ROWS = 1 << 20


@dataclass
class QuantizationReport:
    """What the quantized tables hold.

    Attributes:
        bytes_per_row: per table, stored bytes of one row (values + scale/bias + padding).
        rows: per table, number of rows.
        scl_dtype: "int8" (lossless, see module docstring) or "fp16".
    """

    bytes_per_row: Dict[str, int] = field(default_factory=dict)
    rows: Dict[str, int] = field(default_factory=dict)
    scl_dtype: str = "int8"

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes_per_row[t] * self.rows[t] for t in self.rows)

    def to_dict(self) -> Dict[str, object]:
        return {"bytes_per_row": dict(self.bytes_per_row), "rows": dict(self.rows),
                "scl_dtype": self.scl_dtype, "total_bytes": self.total_bytes}


def quantize_for_serving(
    model: InferenceModel,
    scl_array: np.ndarray,
    scl_dtype: Literal["int8", "fp16"] = "int8",
    row_alignment: int = DEFAULT_ROW_ALIGNMENT,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> QuantizationReport:
    """Swap every embedding collection of ``model`` for its TorchRec quantized twin, in place.

    Args:
        model: the serving model (its trained model is modified in place too: they share modules).
        scl_array: the prepared int8 SCL table ``[n_items, 128]`` (`PreparedData.scl()`); written
            losslessly into the quantized SCL table.
        scl_dtype: storage of the frozen SCL table, "int8" (lossless) or "fp16".
        row_alignment: bytes each stored row is padded to, a power of two (16 = TorchRec's default;
            4 packs int8 rows tighter on CPU; `check_row_alignment` says why).
        chunk_rows: SCL rows written per step (`write_exact_int8_`, `write_exact_fp16_`).

    Returns:
        A `QuantizationReport` (bytes per row of every table).
    """
    if scl_dtype not in SCL_DTYPES:
        raise ValueError(f"scl_dtype must be one of {SCL_DTYPES}, got {scl_dtype!r}")
    check_row_alignment(row_alignment, "row_alignment")
    arch = model.model.sparse_arch
    scl = arch.scl  # None for a model that reads no SCL vectors
    if scl is not None:  # refused before the model is touched: it stays as it was
        check_exact_values(SCL_TABLE, (scl.num_rows, scl.dim), scl_array, chunk_rows)
    _set_row_alignment(arch.collections(), row_alignment)
    model.eval()
    if scl is not None:
        # Not through TorchRec: for int8 it would quantize the float table (FBGEMM's fused rows, then a copy into
        # the TBE: ~260 B per row held at once beside the fp16 table) only for every value to be overwritten; for
        # fp16 it copied the fp16 table into the new TBE while holding it, and the new collection kept the old rows
        # (its `_table_name_to_quantized_weights`): +256 B per row from then on. Done before
        # `quantize_inference_model`, which then leaves the already quantized collection alone.
        scl.collection = exact_scl_collection(_take_collection(scl), scl_array, scl_dtype, row_alignment, chunk_rows)
    mapping = dict(DEFAULT_QUANT_MAPPING)
    mapping[torch.typename(FrozenEmbeddingCollection)] = QuantEmbeddingCollection
    quantize_inference_model(model, quantization_mapping=mapping)
    _drop_source_rows(arch.collections())
    return _report(model, scl_dtype)


def _drop_source_rows(collections: Tuple[nn.Module, ...]) -> None:
    """Let go of the rows TorchRec's quantized collections keep after copying them into their TBEs.

    `QuantEmbeddingBagCollection.from_float` / `QuantEmbeddingCollection.from_float` quantize each table
    (FBGEMM's fused rows: ``dim`` int8 values + fp16 scale and bias) and the new collection keeps that dict
    (``_table_name_to_quantized_weights``) after the rows are copied into its TBE: the ID tables' rows twice
    for the rest of the export (the item table's +20 B per row). Nothing reads it after construction (TorchRec's
    managed-collision collections read it in their own `from_float`, which serving does not use).
    """
    for collection in collections:
        if getattr(collection, _SOURCE_ROWS, None) is not None:
            setattr(collection, _SOURCE_ROWS, None)


def _set_row_alignment(collections: Tuple[nn.Module, ...], row_alignment: int) -> None:
    """The row alignment TorchRec's quantization reads from each float collection. A function of its own:
    a loop variable in `quantize_for_serving` would keep the float SCL collection alive."""
    for collection in collections:
        setattr(collection, MODULE_ATTR_ROW_ALIGNMENT_INT, row_alignment)


def _take_collection(scl: FrozenSCL, device: Optional[torch.device] = None) -> FloatCollectionSettings:
    """What the int8 twin of ``scl``'s float collection needs (on ``device``; None = the collection's), with the
    collection itself taken off ``scl`` (and so freed: its table is not held while the int8 table is allocated)."""
    collection = scl.collection
    settings = FloatCollectionSettings(copy.deepcopy(collection.embedding_configs()), collection.need_indices(),
                                        collection.device if device is None else device)
    del scl.collection
    return settings


@dataclass(frozen=True)
class FloatCollectionSettings:
    """A float `EmbeddingCollection`'s tables and settings, without its weights."""

    configs: List[EmbeddingConfig]
    need_indices: bool
    device: torch.device


def exact_scl_collection(settings: FloatCollectionSettings, array: np.ndarray, scl_dtype: str = "int8",
                         row_alignment: int = DEFAULT_ROW_ALIGNMENT,
                         chunk_rows: int = DEFAULT_CHUNK_ROWS) -> QuantEmbeddingCollection:
    """The quantized twin of a float collection of one table, holding the int8 values ``array [rows, dim]``
    exactly, stored as ``scl_dtype`` ("int8": `write_exact_int8_`, "fp16": `write_exact_fp16_`): what
    `quantize_inference_model` followed by that write gives, without a float copy of the table. TorchRec's
    constructor allocates the TBE's zeroed storage (``rows x row bytes``, as from TorchRec's route); it is then
    filled a chunk of rows at a time.
    """
    configs = copy.deepcopy(settings.configs)
    if len(configs) != 1:
        raise ValueError(f"expected a collection of one table, got {[c.name for c in configs]}")
    (config,) = configs
    config.data_type = _SCL_DATA_TYPES[scl_dtype]  # as `_update_embedding_configs` sets it
    # The settings `quantize_inference_model` gives each collection it swaps: TBEs registered as submodules,
    # the feature order cached on the first call, float lookups.
    collection = QuantEmbeddingCollection(configs, device=settings.device, need_indices=settings.need_indices,
                                          output_dtype=torch.float, register_tbes=True, row_alignment=row_alignment,
                                          cache_features_order=True)
    write = write_exact_int8_ if scl_dtype == "int8" else write_exact_fp16_
    write(collection, config.name, array, chunk_rows)
    return collection


def exact_float_lookups_(scl: FrozenSCL, array: np.ndarray, device: torch.device,
                         chunk_rows: int = DEFAULT_CHUNK_ROWS) -> None:
    """Give ``scl`` an int8 table on ``device`` holding the int8 values ``array [rows, dim]`` exactly: its lookups
    return the tensors of its float table loaded with ``array`` (`FrozenSCL.load_`): fp32 (TorchRec's float
    collection returns every lookup as fp32, whatever its storage), the same values (every int8 value is exact
    in fp16 and fp32). 128 + 4 B per row (+ padding to `DEFAULT_ROW_ALIGNMENT`) instead of fp16's 256. For a
    model that is scored, never trained (TorchRec's inference table); build ``scl`` on ``meta``, so that no float
    table is ever allocated.
    """
    check_exact_values(SCL_TABLE, (scl.num_rows, scl.dim), array, chunk_rows)
    scl.collection = exact_scl_collection(_take_collection(scl, device), array, "int8", DEFAULT_ROW_ALIGNMENT,
                                          chunk_rows)


def check_exact_values(table: str, shape: Tuple[int, int], array: np.ndarray, chunk_rows: int) -> None:
    """ValueError unless `write_exact_int8_` / `write_exact_fp16_` store ``array`` in table ``table`` of ``shape``
    ``[rows, dim]`` ``chunk_rows`` rows at a time: int8 values of that shape, a chunk of at least one row."""
    if array.dtype != np.int8:
        raise ValueError(f"exact storage needs int8 values, got {array.dtype}")
    if tuple(array.shape) != tuple(shape):
        raise ValueError(f"table {table!r} is {tuple(shape)}, values are {tuple(array.shape)}")
    if chunk_rows < 1:  # 0 was range()'s error; a negative count wrote no row, silently
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")


def _table_rows(collection: nn.Module, table: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(values, scale_bias)`` of ``table`` in a quantized collection of one TBE, as uint8 views of its storage
    (``values [rows, stored bytes of dim values]``; ``scale_bias`` empty for fp16)."""
    if not isinstance(collection, QuantEmbeddingCollection):
        raise TypeError(f"expected a quantized EmbeddingCollection, got {type(collection).__name__}")
    names = [c.name for c in collection.embedding_configs()]
    if table not in names:
        raise KeyError(f"no table {table!r} in the collection (tables: {names})")
    (tbe,) = collection._emb_modules  # one TBE: the collection holds one table
    weights, scale_bias = tbe.split_embedding_weights(split_scale_shifts=True)[names.index(table)]
    return weights, scale_bias


def _chunks(array: np.ndarray, chunk_rows: int) -> Iterator[Tuple[int, torch.Tensor]]:
    """``(first row, rows)`` of ``array`` ``chunk_rows`` at a time, each a read-only tensor over the array's own
    memory (`read_only_view`): a write holds no copy of the rows (a copied chunk was 128 MiB at 1M rows, beside
    the new table at quantizing's peak)."""
    for start in range(0, array.shape[0], chunk_rows):
        yield start, read_only_view(array[start:start + chunk_rows])


@torch.no_grad()
def write_exact_int8_(collection: nn.Module, table: str, array: np.ndarray,
                      chunk_rows: int = DEFAULT_CHUNK_ROWS) -> None:
    """Store int8 values ``array [rows, dim]`` exactly in an int8 table of a quantized collection.

    Each row gets ``u = v + 128`` (uint8), scale 1.0 and bias -128.0, so ``scale * u + bias == v``.
    Rows are copied ``chunk_rows`` at a time (`_chunks`).
    """
    weights, scale_bias = _table_rows(collection, table)
    check_exact_values(table, tuple(weights.shape), array, chunk_rows)
    one_and_offset = torch.tensor([1.0, -float(_INT8_OFFSET)], dtype=torch.float16).view(torch.uint8)
    scale_bias.copy_(one_and_offset.expand_as(scale_bias))
    for start, src in _chunks(array, chunk_rows):
        rows = weights[start:start + src.shape[0]]
        # In place, no wider temporary (an int16 sum was 4 B per value): v's bytes as uint8 are v mod 256,
        # and uint8 addition wraps, so adding the offset gives v + 128 for every int8 v.
        rows.copy_(src.view(torch.uint8))
        rows.add_(_INT8_OFFSET)


@torch.no_grad()
def write_exact_fp16_(collection: nn.Module, table: str, array: np.ndarray,
                      chunk_rows: int = DEFAULT_CHUNK_ROWS) -> None:
    """Store int8 values ``array [rows, dim]`` in an fp16 table of a quantized collection (every int8 value
    is exact in fp16: the bytes TorchRec's fp16 route wrote from the loaded fp16 table). Rows are copied
    ``chunk_rows`` at a time (`_chunks`); the conversion is done by ``copy_`` in place, no fp16 temporary."""
    weights, _ = _table_rows(collection, table)
    values = weights.view(torch.float16)  # [rows, dim]: the row's bytes, padding excluded
    check_exact_values(table, tuple(values.shape), array, chunk_rows)
    for start, src in _chunks(array, chunk_rows):
        values[start:start + src.shape[0]].copy_(src)


@torch.no_grad()
def dequantized_tables(model: InferenceModel) -> Dict[str, torch.Tensor]:
    """Every quantized table's values as its lookups return them: ``{table: [rows, dim] fp32}``.

    int8 rows hold ``u`` (uint8) and an fp16 scale and bias; the value is ``scale * u + bias``
    (the product of an fp16 and a uint8 is exact in fp32, so this is bit-for-bit the lookup).
    fp16 / fp32 tables are returned as stored. Used to measure the quantization error per row.
    """
    arch = model.model.sparse_arch
    out: Dict[str, torch.Tensor] = {}
    for collection in arch.collections():
        for tbe in collection._emb_modules:
            names = [spec[0] for spec in tbe.embedding_specs]
            for name, (w, scale_bias) in zip(names, tbe.split_embedding_weights(split_scale_shifts=True)):
                if scale_bias is None or scale_bias.numel() == 0:  # fp16 storage (scl_dtype="fp16")
                    out[name] = (w.view(torch.float16) if w.dtype == torch.uint8 else w).float()
                    continue
                sb = scale_bias.contiguous().view(torch.float16).float()  # [rows, 2]: scale, bias
                out[name] = w.float() * sb[:, :1] + sb[:, 1:]
    return out


@contextmanager
def without_table_views(model: nn.Module) -> Iterator[None]:
    """Inside the block, ``model``'s quantized collections hold each table's rows once: in their TBE.

    TorchRec's quantized collections register every table a second time, as the buffers
    ``embedding_bags.<t>.weight`` / ``embeddings.<t>.weight`` (views into the TBE's storage, there for
    their state_dict); their forward reads only the TBE. `torch.export` lifts those views as buffers and
    the TBE's storage as a constant, and saves and reloads each separately: the program held every table
    twice on disk and in memory. The views are taken off for the block and put back after it.
    """
    taken: List[Tuple[nn.Module, Dict[str, torch.Tensor]]] = []
    try:
        for collection in model.modules():
            if isinstance(collection, QuantEmbeddingBagCollection):
                holder = collection.embedding_bags
            elif isinstance(collection, QuantEmbeddingCollection):
                holder = collection.embeddings
            else:
                continue
            for table in holder.values():
                taken.append((table, dict(table._buffers)))
                table._buffers.clear()
        yield
    finally:
        for table, buffers in taken:
            table._buffers.update(buffers)


def _report(model: InferenceModel, scl_dtype: str) -> QuantizationReport:
    rep = QuantizationReport(scl_dtype=scl_dtype)
    arch = model.model.sparse_arch
    for collection in arch.collections():
        if not isinstance(collection, (QuantEmbeddingBagCollection, QuantEmbeddingCollection)):
            raise RuntimeError(f"{type(collection).__name__} was not quantized")
        holder = collection.embedding_bags if isinstance(collection, QuantEmbeddingBagCollection) else collection.embeddings
        for name, module in holder.items():
            rows, width = module.weight.shape
            rep.rows[name] = int(rows)
            rep.bytes_per_row[name] = int(width) * module.weight.element_size()
    return rep

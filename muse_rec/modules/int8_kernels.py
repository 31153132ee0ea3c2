"""Exact int8 re-scoring of the serving GSU's shortlist through the native kernels (CPU only).

``int8_gathered_dots`` scores each query against its shortlisted keys without a gathered copy;
``int8_unit_rows_bf16`` turns shortlisted int8 keys into bf16 unit vectors and their norms in one pass.
"""
from __future__ import annotations

from typing import Tuple

import torch

from muse_rec.modules.native_kernels import native_library


def int8_gathered_dots(query: torch.Tensor, keys: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``out[b, j] = query[b] . keys[idx[b, j]]`` exactly, ``[B, D]`` int8 x ``[L, D]`` int8 at
    ``[B, J]`` positions -> ``[B, J]`` fp32 (0 where ``idx < 0``); native kernel, CPU only."""
    lib = native_library()
    if lib is None:
        raise RuntimeError("the native kernels are not available (see the log)")
    if query.dtype != torch.int8 or keys.dtype != torch.int8 or query.shape[1] != keys.shape[1]:
        raise ValueError(f"int8 [B, D] and [L, D] expected, got {query.dtype} {tuple(query.shape)}, "
                         f"{keys.dtype} {tuple(keys.shape)}")
    if query.shape[1] > 1040:
        raise ValueError(f"D = {query.shape[1]} > 1040: int8 dot products may exceed fp32's exact range")
    q, k, i = query.contiguous(), keys.contiguous(), idx.to(torch.int64).contiguous()
    out = torch.empty(i.shape, dtype=torch.float32)
    lib.int8_gathered_dots(q.data_ptr(), i.shape[0], k.data_ptr(), i.data_ptr(), i.shape[1], q.shape[1], out.data_ptr())
    return out


def int8_unit_rows_bf16(keys: torch.Tensor, pos: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rows ``pos [n]`` of int8 ``keys [L, D]`` (non-zero) -> their unit vectors ``[n, D]``
    bf16 (round to nearest even) and exact norms ``[n]`` fp32; native kernel, CPU only."""
    lib = native_library()
    if lib is None:
        raise RuntimeError("the native kernels are not available (see the log)")
    if keys.dtype != torch.int8 or keys.dim() != 2:
        raise ValueError(f"int8 keys [L, D] expected, got {keys.dtype} {tuple(keys.shape)}")
    k, p = keys.contiguous(), pos.to(torch.int64).contiguous()
    out = torch.empty(p.shape[0], k.shape[1], dtype=torch.bfloat16)
    norms = torch.empty(p.shape[0], dtype=torch.float32)
    lib.int8_unit_rows_bf16(k.data_ptr(), p.data_ptr(), p.shape[0], k.shape[1], out.data_ptr(), norms.data_ptr())
    return out, norms

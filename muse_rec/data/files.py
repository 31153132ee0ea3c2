"""Crash-safe file writing for prepared data: streamed `.npy` arrays and JSON, published atomically.

Everything is written under a temporary name and moved into place with `os.replace` once
complete, so a killed run never leaves a half-written file under a name a loader would open.
`NpyStreamWriter` appends rows of unknown total count and fixes the `.npy` header at the end:
1-D and 2-D headers of the NPY 1.0 format fit a fixed 128-byte block whatever the row count,
so the data never has to be copied.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Any, Tuple

import numpy as np

NPY_HEADER_BYTES = 128  # fixed header block: magic(6) + version(2) + len(2) + dict, multiple of 64
_MAGIC = b"\x93NUMPY\x01\x00"


def tmp_name(path: str) -> str:
    return f"{path}.tmp.{os.getpid()}"


def _npy_header(dtype: np.dtype, shape: Tuple[int, ...]) -> bytes:
    d = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
    text = repr(d)
    body_len = NPY_HEADER_BYTES - len(_MAGIC) - 2
    if len(text) + 1 > body_len:
        raise ValueError(f"npy header for shape {shape} does not fit {NPY_HEADER_BYTES} bytes")
    text = text + " " * (body_len - len(text) - 1) + "\n"
    return _MAGIC + struct.pack("<H", body_len) + text.encode("latin1")


class _PublishOnExit:
    """Context manager: `close()` (publish) on success, `abort()` (discard) on an exception."""

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class NpyStreamWriter(_PublishOnExit):
    """Append rows to a `.npy` file whose length is known only at the end.

    Args:
        path: final file name; data goes to a temporary name until `close()`.
        dtype: element dtype.
        row_shape: shape of one row (``()`` for a 1-D array, ``(128,)`` for ``[N, 128]``).
    """

    def __init__(self, path: str, dtype: np.dtype, row_shape: Tuple[int, ...] = ()) -> None:
        if len(row_shape) > 1:
            raise ValueError("NpyStreamWriter supports 1-D and 2-D arrays")
        self.path = path
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(row_shape)
        self.rows = 0
        self._tmp = tmp_name(path)
        self._f = open(self._tmp, "wb")
        self._f.write(b"\0" * NPY_HEADER_BYTES)

    def append(self, rows: np.ndarray) -> None:
        arr = np.ascontiguousarray(rows, dtype=self.dtype)
        if arr.shape[1:] != self.row_shape:
            raise ValueError(f"{self.path}: rows of shape {arr.shape[1:]}, expected {self.row_shape}")
        self._f.write(arr.tobytes())
        self.rows += int(arr.shape[0])

    def close(self) -> None:
        """Write the header and publish the file under its final name."""
        self._f.seek(0)
        self._f.write(_npy_header(self.dtype, (self.rows,) + self.row_shape))
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self._f.close()
        if os.path.exists(self._tmp):
            os.remove(self._tmp)



class NpyMemmapWriter(_PublishOnExit):
    """A zero-filled `.npy` of known shape, filled in place (random access), published on `close()`.

    The file is created sparse, so rows never written (e.g. items without an SCL vector) cost no
    disk blocks on file systems that support holes.
    """

    def __init__(self, path: str, dtype: np.dtype, shape: Tuple[int, ...]) -> None:
        self.path = path
        self._tmp = tmp_name(path)
        self.array = np.lib.format.open_memmap(self._tmp, mode="w+", dtype=dtype, shape=shape)

    def close(self) -> None:
        self.array.flush()
        del self.array
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        del self.array
        if os.path.exists(self._tmp):
            os.remove(self._tmp)



def save_npy(path: str, arr: np.ndarray) -> None:
    """`np.save` under a temporary name, then publish."""
    tmp = tmp_name(path)
    with open(tmp, "wb") as f:
        np.save(f, arr)
    os.replace(tmp, path)


def write_json(path: str, obj: Any) -> None:
    tmp = tmp_name(path)
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def read_npy_shape(path: str) -> Tuple[Tuple[int, ...], np.dtype]:
    """Shape and dtype from a `.npy` header without mapping the data."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    return tuple(shape), dtype


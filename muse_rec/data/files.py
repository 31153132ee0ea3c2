"""Crash-safe file writing: text and JSON files (prepared data's, a run's record, a command's
output) and streamed `.npy` arrays, published atomically.

Everything is written under a temporary name (`tmp_name`) and moved into place with `os.replace`
once complete, so a killed run never leaves a half-written file under a name a loader would open,
and a failed write (a full disk) leaves an earlier file as it was.
`NpyStreamWriter` appends rows of unknown total count and fixes the `.npy` header at the end:
1-D and 2-D headers of the NPY 1.0 format fit a fixed 128-byte block whatever the row count,
so the data never has to be copied.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import struct
from typing import IO, TYPE_CHECKING, Any, Callable, List, Mapping, Optional, Tuple

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

NPY_HEADER_BYTES = 128  # fixed header block: magic(6) + version(2) + len(2) + dict, multiple of 64
_MAGIC = b"\x93NUMPY\x01\x00"


def tmp_name(path: str) -> str:
    return f"{path}.tmp.{os.getpid()}"


def tmp_of(name: str) -> str:
    """The name a `tmp_name` file stands for (``meta.json.tmp.1011`` -> ``meta.json``), else ""."""
    base, sep, pid = name.rpartition(".tmp.")
    return base if sep and pid.isdigit() else ""


def remove_killed_tmps(directory: str | os.PathLike, name: str) -> None:
    """Remove the `tmp_name` files of ``directory/name`` that writers killed mid-write left behind.

    Only for a writer holding the directory's lock (`muse_rec.dirlock`): every writer of ``name``
    holds it, so none of these files can belong to a live one. OSError if one cannot be removed."""
    for entry in os.listdir(directory):
        if tmp_of(entry) == name:
            os.remove(os.path.join(directory, entry))


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
        try:
            self._f.write(arr.tobytes())
        except OSError as e:  # e.g. ENOSPC: name the file (a bare write error names none)
            raise OSError(e.errno, e.strerror, self._tmp) from e
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



class PartitionedScatterWriter(_PublishOnExit):
    """A `.npy` of known shape filled at random rows, in memory bounded by `partition_bytes`.

    Why not a memory map: scattering rows in vocabulary order into a map of the whole array makes
    every touched page resident (the SCL table of 243M items is 31 GB), and flushing it back
    rewrites whole pages for 128-byte rows. Instead `put` appends ``(row, value)`` pairs to spill
    files, one per range of ``partition_rows`` output rows; `close` then fills one partition at a
    time in memory (zeros where nothing was put) and streams it to the output in order. Later puts
    of a row win (mode ``"assign"``) or add up (mode ``"add"``).

    Args:
        path: final `.npy` path (published by `close`).
        dtype, shape: of the output array; rows are ``shape[0]``.
        spill_dir: scratch directory (created; removed by `close`).
        partition_bytes: output bytes per partition (the peak memory of `close` is ~2-3x this).
        buffer_bytes: pairs buffered in memory before they are appended to the spill files.
        present_path: optionally also publish a bool `.npy` [rows] marking rows whose final value
            (after every put) is not all zeros: an all-zero SCL row is no vector, and a later
            all-zero put of a row must clear the presence an earlier put gave it.
        mode: ``"assign"`` or ``"add"``.
    """

    def __init__(self, path: str, dtype: np.dtype, shape: Tuple[int, ...], spill_dir: str,
                 partition_bytes: int = 128 << 20, buffer_bytes: int = 64 << 20,
                 present_path: str = "", mode: str = "assign") -> None:
        if mode not in ("assign", "add"):
            raise ValueError(f"mode {mode!r}: expected 'assign' or 'add'")
        self.path, self.dtype, self.shape = path, np.dtype(dtype), tuple(shape)
        self.row_shape = self.shape[1:]
        self.row_bytes = self.dtype.itemsize * int(np.prod(self.row_shape, dtype=np.int64))
        self.partition_rows = max(1, partition_bytes // max(1, self.row_bytes))
        self.partitions = max(1, -(-self.shape[0] // self.partition_rows))
        self.spill_dir, self.present_path, self.mode = spill_dir, present_path, mode
        self.buffer_bytes = buffer_bytes
        if os.path.exists(spill_dir):
            # Leftovers of a killed run (SIGKILL, OOM: no `abort`): appended to, their pairs would be
            # put again (mode "add" doubled popularity; "assign" counted every row as repeated).
            shutil.rmtree(spill_dir)
        os.makedirs(spill_dir)
        self._pending: dict = {}
        self._pending_bytes = 0
        self.repeated_rows = 0  # puts of a row that already had one (set by `close`)

    def _spill(self, p: int, kind: str) -> str:
        return os.path.join(self.spill_dir, f"{p}.{kind}")

    def put(self, rows: np.ndarray, values: np.ndarray) -> None:
        """rows [n] int in [0, shape[0]); values [n, *row_shape]."""
        rows = np.asarray(rows, dtype=np.int64)
        values = np.ascontiguousarray(values, dtype=self.dtype).reshape((rows.shape[0],) + self.row_shape)
        part = rows // self.partition_rows
        order = np.argsort(part, kind="stable")  # stable: a later put of a row stays later
        part, rows, values = part[order], rows[order], values[order]
        cuts = np.flatnonzero(np.diff(part)) + 1
        for idx in np.split(np.arange(rows.shape[0]), cuts):
            if idx.size:
                self._pending.setdefault(int(part[idx[0]]), []).append((rows[idx], values[idx]))
        self._pending_bytes += rows.nbytes + values.nbytes
        if self._pending_bytes >= self.buffer_bytes:
            self._flush()

    def _flush(self) -> None:
        for p, pairs in self._pending.items():
            try:
                with open(self._spill(p, "rows"), "ab") as fr, open(self._spill(p, "vals"), "ab") as fv:
                    for r, v in pairs:
                        fr.write(r.tobytes())
                        fv.write(v.tobytes())
            except OSError as e:
                raise OSError(e.errno, e.strerror, e.filename or self._spill(p, "vals")) from e
        self._pending, self._pending_bytes = {}, 0

    def close(self) -> None:
        """Fill each partition from its spill files and stream it to `path` (and `present_path`)."""
        self._flush()
        present = NpyStreamWriter(self.present_path, np.bool_) if self.present_path else None
        with NpyStreamWriter(self.path, self.dtype, self.row_shape) as out:
            for p in range(self.partitions):
                lo = p * self.partition_rows
                hi = min(self.shape[0], lo + self.partition_rows)
                block = np.zeros((hi - lo,) + self.row_shape, self.dtype)
                touched = np.zeros(hi - lo, np.bool_)
                if os.path.exists(self._spill(p, "rows")):
                    rows = np.fromfile(self._spill(p, "rows"), np.int64) - lo
                    vals = np.fromfile(self._spill(p, "vals"), self.dtype).reshape((rows.shape[0],) + self.row_shape)
                    touched[rows] = True
                    repeated = int(rows.shape[0]) - int(np.count_nonzero(touched))
                    self.repeated_rows += repeated
                    if self.mode == "add":
                        np.add.at(block, rows, vals)
                    else:
                        if repeated:  # NumPy leaves the winner of a repeated index unspecified: keep the last put
                            _, last = np.unique(rows[::-1], return_index=True)
                            keep = rows.shape[0] - 1 - last
                            rows, vals = rows[keep], vals[keep]
                        block[rows] = vals
                    del rows, vals
                out.append(block)
                if present is not None:  # rows never put are zeros, so `touched` is implied
                    present.append(block.reshape(block.shape[0], -1).any(axis=1))
        if present is not None:
            present.close()
        shutil.rmtree(self.spill_dir, ignore_errors=True)

    def abort(self) -> None:
        shutil.rmtree(self.spill_dir, ignore_errors=True)


def save_npy(path: str, arr: np.ndarray) -> None:
    """`np.save` under a temporary name, then publish."""
    tmp = tmp_name(path)
    with open(tmp, "wb") as f:
        np.save(f, arr)
    os.replace(tmp, path)


class OutputWriteError(OSError):
    """The OS refused to write an output (a full disk, a file-size limit); names the file."""

    @classmethod
    def naming(cls, e: OSError, path: str | os.PathLike) -> "OutputWriteError":
        """``e`` (whose text often names no file: pyarrow's "Error writing bytes to file") with ``path``."""
        if e.errno is None:
            out = cls(f"{e}: {str(path)!r}")
            out.filename = str(path)
            return out
        return cls(e.errno, e.strerror or str(e), str(path))


class _FirstRefusedWrite(io.RawIOBase):
    """A binary file for torch's zip writer (`torch.save`, `torch.export.save`) that keeps the first
    write the OS refused and drops every write after it. torch reports a refused write only as
    "unexpected pos", and writes again from its writer's destructor, where a second failure aborts
    the whole process (std::terminate, exit 134) instead of raising."""

    def __init__(self, f: IO[bytes]) -> None:
        super().__init__()
        self._f = f
        self.error: Optional[OSError] = None

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:  # torch.export.save warns about a file-like that is not
        return self._f.seekable()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def write(self, data: Any) -> int:
        if self.error is None:
            try:
                self._f.write(data)
            except OSError as e:
                self.error = e
        return memoryview(data).nbytes  # "written": torch must not write again to report it

    def flush(self) -> None:
        if self.error is None:
            try:
                self._f.flush()
            except OSError as e:
                self.error = e


def write_binary(path: str | os.PathLike, write: Callable[[Any], None]) -> None:
    """Call ``write`` with a file open on ``path`` (e.g. ``lambda f: torch.save(obj, f)``):
    `OutputWriteError` naming ``path`` where the OS refused a write (a full disk, a file-size
    limit), not torch's "unexpected pos" or its abort. A refused file is left for the caller."""
    try:
        with open(path, "wb") as f:
            guarded = _FirstRefusedWrite(f)
            write(guarded)
            guarded.flush()
    except OSError as e:  # open, or the close's last flush
        raise OutputWriteError.naming(e, path) from None
    if guarded.error is not None:
        raise OutputWriteError.naming(guarded.error, path) from None


def replace_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all: into a temporary file beside it, then moved
    over it in one rename (over a symbolic link's target, as writing through the link would). A
    write that fails (a full disk) leaves an earlier file as it was, and no half-written file under
    the name a reader opens: `OutputWriteError` naming the file, for the caller to report."""
    replace_texts({path: text})


def replace_texts(texts: Mapping[str | os.PathLike, str]) -> None:
    """`replace_text` for files that belong together (a report's .md and .json): every one is
    written to its temporary file before the first rename, so a failed write (a full disk)
    replaces none of them; the renames that follow do not allocate and do not fail that way."""
    staged: List[Tuple[str, str, str]] = []  # (as given, its target, its temporary file)
    try:
        for path, text in texts.items():
            real = os.path.realpath(path)
            staged.append((str(path), real, tmp_name(real)))
            try:
                with open(staged[-1][2], "w", encoding="utf-8") as f:
                    f.write(text)
            except OSError as e:  # a failed write names no file: say which
                raise OutputWriteError.naming(e, path) from None
        for path, real, tmp in staged:
            try:
                os.replace(tmp, real)
            except OSError as e:
                raise OutputWriteError.naming(e, path) from None
    finally:
        for _, _, tmp in staged:
            _remove_quietly(tmp)


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def write_json(path: str, obj: Any) -> None:
    """``obj`` as indented JSON with sorted keys, whole or not at all (`replace_text`)."""
    replace_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def local_parquet_file(path: str | os.PathLike, mode: str = "rb") -> "pa.NativeFile":
    """``path`` opened as pyarrow's native file, for `pyarrow.parquet` to read or write (``mode`` "rb"
    or "wb"). Given a path as text, pyarrow encodes it as UTF-8 and fails on a name that is not
    (``synth`` and ``evaluate`` into ``/data/caf\xe9`` were UnicodeEncodeError tracebacks); its bytes
    as the OS holds them (`os.fsencode`) open any local name, with no Python-level I/O in between."""
    import pyarrow as pa  # here: most users of this module write no Parquet

    return pa.OSFile(os.fsencode(path), mode)

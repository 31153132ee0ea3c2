"""Streaming reader for the raw Taobao-MM tables on any iopath path.

Files are opened through iopath's global `g_pathmgr` (local paths and ``file://`` work out of
the box; register other handlers on `g_pathmgr`). A table is decoded one Parquet row group at a
time, in record batches of a bounded number of rows, so memory never depends on the table size.
The schema is checked from the footer when a table is opened; value rules on every batch.
"""
from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from iopath.common.file_io import NativePathHandler, g_pathmgr

from muse_rec.data.schema import (TABLES, RawDataError, TableSpec, cast_batch, check_batch, check_schema,
                                   raw_error, rows_phrase)
from muse_rec.json_files import refuse_special_file
from muse_rec.output_paths import FILE_URI_PREFIX, strip_file_uri
from muse_rec.wording import one_line

DEFAULT_BATCH_ROWS = 65_536
FLOAT64_EXACT_BITS = 53  # float64 holds every integer up to 2^53 exactly, not every int64 id
# Bytes of a column chunk read ahead at a time. Without a buffer size (and with pre-buffering),
# pyarrow reads whole column chunks of a row group into memory, so memory grew with the
# writer's row-group size (a 1M-row row group of 1000-long histories is GBs); with it, memory is
# bounded by the batch of rows decoded (measured: tests/data/test_reader_memory.py).
READ_BUFFER_BYTES = 1 << 20


class FileURIHandler(NativePathHandler):
    """``file:///abs/path`` URIs as local paths (iopath ships no handler for the ``file://`` scheme).
    The outputs' rule too (`strip_file_uri`): a URI names one directory to writers and readers."""

    def _get_supported_prefixes(self) -> List[str]:
        return [FILE_URI_PREFIX]

    def _get_path_with_cwd(self, path: str) -> str:
        return super()._get_path_with_cwd(strip_file_uri(path))

    def _get_local_path(self, path: str, force: bool = False, **kwargs: object) -> str:
        return super()._get_local_path(strip_file_uri(path), force=force, **kwargs)


if FILE_URI_PREFIX not in g_pathmgr._path_handlers:  # idempotent across re-imports
    g_pathmgr.register_handler(FileURIHandler())


def join_path(root: str, name: str) -> str:
    """Join for iopath URIs and local paths alike (os.path.join would mangle nothing, but be explicit)."""
    return root.rstrip("/") + "/" + name


PARQUET_SUFFIX = ".parquet"
_HIDDEN = (".", "_")  # name prefixes of hidden entries and writers' side files (_SUCCESS, _metadata, .crc)
# Logs of table formats whose directory keeps the Parquet files of earlier versions beside the live ones
# (Delta Lake after an overwrite or delete, Hudi's older file slices): only the log says which are live.
_TABLE_FORMAT_LOGS = {"_delta_log": "Delta Lake", ".hoodie": "Hudi"}


_PARQUET_MAGIC = b"PAR1"  # the first (and last) 4 bytes of every Parquet file


def _is_part_name(name: str) -> bool:
    """A data file of a table's directory by its name: ``*.parquet``, not hidden and not a writer's
    ``_SUCCESS``, ``_metadata`` or ``.crc`` side file (`table_parts` also reads files that begin as
    Parquet, whatever their name)."""
    return name.endswith(PARQUET_SUFFIX) and not name.startswith(_HIDDEN)


def _leading_bytes(path: str) -> bytes:
    """The first 4 bytes of a file without the ``.parquet`` suffix: Parquet's magic makes it a part
    (Hive names its parts ``000000_0``, other writers ``part-00001-c000``: skipping them would leave
    their rows out silently), none at all is an empty file (Hive's empty bucket). One read through
    iopath, local or remote; only files without the suffix are probed."""
    _refuse_special(path)
    try:
        with g_pathmgr.open(path, "rb") as fh:
            return fh.read(len(_PARQUET_MAGIC))
    except Exception as e:  # iopath handlers raise their own types, not only OSError
        raise raw_error(path, f"cannot read it to tell whether it is a Parquet part "
                        f"({type(e).__name__}: {one_line(e)[:200]})") from None


def _refuse_special(path: str) -> None:
    """RawDataError naming ``path`` where it is a local FIFO, device or socket (`refuse_special_file`):
    opening a FIFO to read it blocked `prepare` forever. A remote path is left to its handler."""
    refuse_special_file(strip_file_uri(path), RawDataError, "; the raw tables must be regular Parquet files")


def _name_order(name: str) -> List[object]:
    """Natural order: ``part-9`` before ``part-10`` where a writer did not zero-pad.

    The split alternates text and digit runs, so the runs are the odd pieces; ``str.isdigit`` also
    holds for text ``int`` refuses (``²``: a file ``part-1²`` was a ValueError traceback)."""
    return [int(t) if i % 2 else t for i, t in enumerate(re.split(r"(\d+)", name))]


def _listdir(path: str) -> List[str]:
    return sorted((n.rstrip("/").rsplit("/", 1)[-1] for n in g_pathmgr.ls(path)), key=_name_order)


def _stem(spec: TableSpec) -> str:
    return spec.file[: -len(PARQUET_SUFFIX)]


def _shards_beside(root: str, stem: str) -> List[str]:
    """The files ``<stem>-*.parquet`` directly in the directory `root`, in read order."""
    if not g_pathmgr.isdir(root):
        return []
    names = [n for n in _listdir(root) if n.startswith(stem + "-") and _is_part_name(n)]
    return [p for p in (join_path(root, n) for n in names) if not g_pathmgr.isdir(p)]


def locate_table(root: str, spec: TableSpec) -> Tuple[List[str], List[str]]:
    """`table_locations`, and the ``<stem>-*.parquet`` files it found (listed once: on a remote
    store every listing and stat is a request)."""
    stem = _stem(spec)
    found = [d for d in (join_path(root, spec.file), join_path(root, stem))
             if g_pathmgr.exists(d) and (g_pathmgr.isdir(d) or d.endswith(PARQUET_SUFFIX))]
    shards = _shards_beside(root, stem)
    if shards:
        found.append(join_path(root, stem + "-*.parquet"))
    return found, shards


def _inside(path: str, root: str) -> str:
    """``path`` relative to the release directory ``root`` (both as given: local paths or URIs)."""
    return posixpath.relpath(path.rstrip("/"), root.rstrip("/")) + ("/" if path.endswith("/") else "")


def table_locations(root: str, spec: TableSpec) -> List[str]:
    """Every place table `spec` is under the directory `root`, unchecked: its file
    `<stem>.parquet`, a directory `<stem>.parquet/` or `<stem>/`, and ``<stem>-*.parquet`` (one
    entry for all such files)."""
    return locate_table(root, spec)[0]


def table_parts(root: str, spec: TableSpec) -> Tuple[str, List[str], List[str]]:
    """Where table `spec` is under the release directory `root`, its Parquet files in read order, and
    the names of the files of its directory that were skipped as not Parquet.

    A table is the one file `<stem>.parquet` (as in the release), or, written by Spark, Hive or a
    split download, several parts: the files of a directory `<stem>.parquet/` or `<stem>/` (those
    named ``*.parquet`` and those that begin as Parquet files do, whatever their name: Hive's
    ``000000_0``; hidden and ``_`` files are writers' side files), or files `<stem>-*.parquet` beside
    the other tables. Parts are read in name order, numbers by value (``part-9`` before ``part-10``).
    More than one of these layouts for a table is ambiguous and refused, as is a table's directory
    holding a sub-directory (its rows would otherwise be left out silently).
    """
    stem = _stem(spec)
    found, shards = locate_table(root, spec)
    if not found:
        raise raw_error(join_path(root, spec.file), f"file not found (table {spec.name}; also looked for a "
                        f"directory {stem}/ or {stem}.parquet/ of Parquet parts and {stem}-*.parquet files)")
    if len(found) > 1:
        raise raw_error(root, f"table {spec.name} is there more than once: "
                        + " and ".join(w + ("/" if g_pathmgr.isdir(w) else "") for w in found) + "; keep one")
    where = found[0]
    if where.endswith("-*.parquet"):
        return where, shards, []
    if not g_pathmgr.isdir(where):
        return where, [where], []
    listed = _listdir(where)
    logs = [n for n in listed if n in _TABLE_FORMAT_LOGS]
    if logs:  # reading every part would read removed rows too, silently (a Delta overwrite: both versions)
        raise raw_error(join_path(where, logs[0]), f"table {spec.name} is a {_TABLE_FORMAT_LOGS[logs[0]]} table: its "
                        "directory may hold the Parquet files of removed versions, and only this log says which "
                        "are live; export the table as plain Parquet (its current version)")
    names = [n for n in listed if not n.startswith(_HIDDEN)]
    subdirs = [n for n in names if g_pathmgr.isdir(join_path(where, n))]
    if subdirs:
        raise raw_error(where, f"holds the sub-directory '{subdirs[0]}'; the directory of table {spec.name} "
                        "must hold its Parquet parts directly")
    head = {n: _leading_bytes(join_path(where, n)) for n in names if not _is_part_name(n)}
    parts = [join_path(where, n) for n in names if head.get(n, _PARQUET_MAGIC) == _PARQUET_MAGIC]
    skipped = [n for n, b in head.items() if b not in (_PARQUET_MAGIC, b"")]  # b"": empty, skipped quietly
    if not parts:
        raise raw_error(where, f"directory of table {spec.name} holds no Parquet part file")
    return where + "/", parts, skipped


class ParquetPart:
    """One Parquet file of a raw table: footer read and schema checked when made.

    No file stays open between reads: a table may have hundreds of parts (Spark writes 200 by
    default), six tables more than a process's usual limit of 1,024 open files.

    Args:
        path: iopath path or URI of the file.
        spec: the table's `TableSpec`.
    """

    def __init__(self, path: str, spec: TableSpec) -> None:
        self.path = path
        self.spec = spec
        if not g_pathmgr.exists(path):
            raise raw_error(path, f"file not found (table {spec.name})")
        if g_pathmgr.isdir(path):
            raise raw_error(path, f"is a directory, expected a Parquet file of table {spec.name}")
        _refuse_special(path)
        with g_pathmgr.open(path, "rb") as fh:
            try:
                pf = pq.ParquetFile(fh, buffer_size=READ_BUFFER_BYTES, pre_buffer=False)
                self._meta, self._schema = pf.metadata, pf.schema_arrow
            except (pa.ArrowException, OSError) as e:
                raise raw_error(path, f"not a readable Parquet file (truncated or corrupt?): {one_line(e)}") from e
        self._refuse_null_ids_stored_as_floats()
        self._casts = check_schema(spec, self._schema, path)  # columns stored in another integer type

    def _refuse_null_ids_stored_as_floats(self) -> None:
        """A `RawDataError` naming the first null row of a column of ids stored as floats, where it has one:
        pandas writes an integer column holding a null (NaN) as float64, so the null, not the type, is
        what the user must fix. Reads only such columns (refused by `check_schema` anyway), in batches."""
        names = self._schema.names
        floats = [n for n in self.spec.columns
                  if names.count(n) == 1 and pa.types.is_floating(self._schema.field(n).type)]
        if not floats:
            return
        with g_pathmgr.open(self.path, "rb") as fh:
            pf = pq.ParquetFile(fh, metadata=self._meta, buffer_size=READ_BUFFER_BYTES, pre_buffer=False)
            for name in floats:
                first_row = 0  # the file's row number of the batch's first row
                for rg in range(self._meta.num_row_groups):
                    try:
                        for batch in pf.iter_batches(batch_size=DEFAULT_BATCH_ROWS, row_groups=[rg], columns=[name]):
                            col = batch.column(0)
                            nulls = np.flatnonzero(pc.is_null(col, nan_is_null=True).to_numpy(zero_copy_only=False))
                            if nulls.size:
                                count, row = rows_phrase(nulls, first_row, batch.num_rows)
                                raise raw_error(self.path, f"type {col.type} (pandas writes an integer column holding "
                                                f"a null as floats, which round ids above 2^{FLOAT64_EXACT_BITS}): "
                                                f"{count} are null (first: row {row})", rg, name)
                            first_row += batch.num_rows
                    except (pa.ArrowException, OSError):  # damage: left to the type error here, and to the decode
                        return

    @property
    def num_rows(self) -> int:
        return int(self._meta.num_rows)

    @property
    def schema(self) -> pa.Schema:
        """The file's Arrow schema (from its footer)."""
        return self._schema

    def fingerprint(self, root: str, legacy: bool = False) -> Dict[str, object]:
        """Cheap identity of the file's content: its path inside the release directory ``root`` (not
        how ``root`` is spelled), its size and mtime where the file is local (a rewritten file is
        another input, even where its footer is unchanged), and a hash of its footer (schema,
        row-group sizes, column-chunk offsets and statistics); no data read.

        ``legacy``: with the path as given instead, as prepared directories of earlier versions
        recorded it (`muse_rec.data.prepare` accepts both).
        """
        meta = self._meta
        chunks = []
        for i in range(meta.num_row_groups):
            rg = meta.row_group(i)
            for c in range(rg.num_columns):
                col = rg.column(c)
                stats = col.statistics.to_dict() if col.statistics is not None else None
                chunks.append([rg.num_rows, col.data_page_offset, col.total_compressed_size, str(stats)])
        digest = hashlib.sha256(json.dumps([str(self._schema), chunks, meta.created_by]).encode())
        path = self.path if legacy else _inside(self.path, root)
        out: Dict[str, object] = {"path": path, "rows": self.num_rows, "footer_sha256": digest.hexdigest()[:16]}
        local = strip_file_uri(self.path)
        if "://" not in local and os.path.exists(local):
            st = os.stat(local)
            out.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
        return out

    def iter_batches(self, sub: TableSpec, batch_rows: int) -> Iterator[pa.RecordBatch]:
        """Record batches of `sub`'s columns, row group by row group, each checked against `sub`;
        the file is open only while they are read."""
        cols = list(sub.columns)
        try:
            fh = g_pathmgr.open(self.path, "rb")
        except OSError as e:
            raise raw_error(self.path, f"cannot open: {e.strerror or e}") from e
        with fh:
            # Page checksums, where the writer stored them (parquet-mr, Spark), are verified: a page
            # whose bytes changed on disk then fails to decode instead of yielding other values.
            pf = pq.ParquetFile(fh, metadata=self._meta, buffer_size=READ_BUFFER_BYTES, pre_buffer=False,
                                page_checksum_verification=True)
            first_row = 0  # the file's row number of the next batch's first row
            for rg in range(self._meta.num_row_groups):
                try:
                    for batch in pf.iter_batches(batch_size=batch_rows, row_groups=[rg], columns=cols):
                        batch = cast_batch(batch, self._casts, self.path, rg, first_row)
                        check_batch(sub, batch, self.path, rg, first_row)
                        first_row += batch.num_rows
                        yield batch
                except (RawDataError, MemoryError):  # pyarrow's ArrowMemoryError is a MemoryError: not damage
                    raise
                except (pa.ArrowException, OSError) as e:
                    raise raw_error(self.path, f"cannot decode (truncated or corrupt?): {one_line(e)}",
                                    row_group=rg) from e


class RawTable:
    """One raw table, held in one Parquet file or several parts; every part's footer read and
    schema-checked up front.

    Args:
        paths: iopath path(s) or URI(s) of the table's Parquet file or parts, in read order
            (`table_parts` finds them in a release directory).
        spec: the table's `TableSpec`.
        where: what messages call the table (default: its file, or its parts' directory).
    """

    def __init__(self, paths: Union[str, Sequence[str]], spec: TableSpec, where: Optional[str] = None) -> None:
        self.paths = [paths] if isinstance(paths, str) else list(paths)
        self.path = where or (self.paths[0] if len(self.paths) == 1 else os.path.dirname(self.paths[0]) + "/")
        self.spec = spec
        self.parts = [ParquetPart(p, spec) for p in self.paths]
        if self.num_rows == 0:
            where = self.path if len(self.parts) == 1 else f"{self.path} ({len(self.parts)} parts)"
            raise raw_error(where, f"empty table (0 rows); table {spec.name} must have rows")

    @property
    def num_rows(self) -> int:
        return sum(p.num_rows for p in self.parts)

    def fingerprint(self, root: str, legacy: bool = False) -> Dict[str, object]:
        """A part's fingerprint (`ParquetPart.fingerprint`), or for several parts all of theirs."""
        if len(self.parts) == 1:
            return self.parts[0].fingerprint(root, legacy)
        return {"path": self.path if legacy else _inside(self.path, root), "rows": self.num_rows,
                "parts": [p.fingerprint(root, legacy) for p in self.parts]}

    def iter_batches(
        self, columns: Optional[Sequence[str]] = None, batch_rows: int = DEFAULT_BATCH_ROWS
    ) -> Iterator[pa.RecordBatch]:
        """Yield record batches of at most `batch_rows` rows, part by part and row group by row
        group, in file order.

        Only `columns` (default: the spec's columns) are decoded; every batch is checked against
        the spec's value rules for those columns (an error names the part file and row group).
        """
        cols: List[str] = list(columns) if columns is not None else list(self.spec.columns)
        unknown = [c for c in cols if c not in self.spec.columns]
        if unknown:
            raise KeyError(f"{self.path}: columns {unknown} are not part of table {self.spec.name}")
        sub = TableSpec(
            self.spec.name,
            self.spec.file,
            {c: self.spec.columns[c] for c in cols},
            {c: n for c, n in self.spec.fixed_list_len.items() if c in cols},
            tuple(g for g in self.spec.equal_len_lists if all(c in cols for c in g)),
            tuple(c for c in self.spec.one_hot if c in cols),
            tuple(c for c in self.spec.null_is_empty if c in cols),
        )
        for part in self.parts:
            yield from part.iter_batches(sub, batch_rows)

    def close(self) -> None:
        """Nothing to release (parts are open only while read); kept for `with` blocks."""

    def __enter__(self) -> "RawTable":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RawRelease:
    """The six tables of a raw release directory (any iopath path); all footers checked up front.

    Args:
        root: directory holding the six tables named as in `muse_rec.data.schema.TABLES`, each one
            Parquet file or several parts (`table_parts`).
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self.tables: Dict[str, RawTable] = {}
        if not g_pathmgr.exists(root):
            raise raw_error(root, "no such directory (the raw release: a directory holding the six tables)")
        if not g_pathmgr.isdir(root):
            raise raw_error(root, "is not a directory (the raw release: a directory holding the six tables)")
        self.skipped: Dict[str, List[str]] = {}  # table -> files of its directory that are not Parquet
        for name, spec in TABLES.items():
            where, parts, skipped = table_parts(root, spec)
            self.tables[name] = RawTable(parts, spec, where)
            if skipped:
                self.skipped[name] = skipped

    def __getitem__(self, name: str) -> RawTable:
        return self.tables[name]

    def fingerprint(self, legacy: bool = False) -> Dict[str, object]:
        """Every table's `RawTable.fingerprint`: the release's content, wherever it lies."""
        return {name: t.fingerprint(self.root, legacy) for name, t in self.tables.items()}

    def close(self) -> None:
        for t in self.tables.values():
            t.close()

    def __enter__(self) -> "RawRelease":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

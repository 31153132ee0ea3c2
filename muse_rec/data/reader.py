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
from typing import Dict, Iterator, List, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
from iopath.common.file_io import NativePathHandler, g_pathmgr

from muse_rec.data.schema import TABLES, RawDataError, TableSpec, check_batch, check_schema, raw_error

DEFAULT_BATCH_ROWS = 65_536
# Bytes of a column chunk read ahead at a time. Without a buffer size (and with pre-buffering),
# pyarrow reads whole column chunks of a row group into memory, so memory grew with the
# writer's row-group size (a 1M-row row group of 1000-long histories is GBs); with it, memory is
# bounded by the batch of rows decoded (measured: tests/data/test_reader_memory.py).
READ_BUFFER_BYTES = 1 << 20
FILE_URI_PREFIX = "file://"


class FileURIHandler(NativePathHandler):
    """``file:///abs/path`` URIs as local paths (iopath ships no handler for the ``file://`` scheme)."""

    def _get_supported_prefixes(self) -> List[str]:
        return [FILE_URI_PREFIX]

    @staticmethod
    def _strip(path: str) -> str:
        return path[len(FILE_URI_PREFIX):] if path.startswith(FILE_URI_PREFIX) else path

    def _get_path_with_cwd(self, path: str) -> str:
        return super()._get_path_with_cwd(self._strip(path))

    def _get_local_path(self, path: str, force: bool = False, **kwargs: object) -> str:
        return super()._get_local_path(self._strip(path), force=force, **kwargs)


if FILE_URI_PREFIX not in g_pathmgr._path_handlers:  # idempotent across re-imports
    g_pathmgr.register_handler(FileURIHandler())


def join_path(root: str, name: str) -> str:
    """Join for iopath URIs and local paths alike (os.path.join would mangle nothing, but be explicit)."""
    return root.rstrip("/") + "/" + name


class RawTable:
    """One raw table, opened and schema-checked.

    Args:
        path: iopath path or URI of the Parquet file.
        spec: the table's `TableSpec`.
    """

    def __init__(self, path: str, spec: TableSpec) -> None:
        self.path = path
        self.spec = spec
        if not g_pathmgr.exists(path):
            raise raw_error(path, f"file not found (table {spec.name})")
        if g_pathmgr.isdir(path):
            raise raw_error(path, f"is a directory, expected the Parquet file of table {spec.name}")
        self._fh = g_pathmgr.open(path, "rb")
        try:
            self._pf = pq.ParquetFile(self._fh, buffer_size=READ_BUFFER_BYTES, pre_buffer=False)
        except (pa.ArrowException, OSError) as e:
            self._fh.close()
            raise raw_error(path, f"not a readable Parquet file (truncated or corrupt?): {e}") from e
        check_schema(spec, self._pf.schema_arrow, path)
        meta = self._pf.metadata
        if meta.num_rows == 0:
            raise raw_error(path, f"empty table (0 rows); table {spec.name} must have rows")

    @property
    def num_rows(self) -> int:
        return int(self._pf.metadata.num_rows)

    @property
    def num_row_groups(self) -> int:
        return int(self._pf.metadata.num_row_groups)

    def fingerprint(self) -> Dict[str, object]:
        """Cheap identity of the file's content: size and mtime where the file is local, plus a hash
        of the footer (schema, row-group sizes, column-chunk offsets and statistics); no data read."""
        meta = self._pf.metadata
        chunks = []
        for i in range(meta.num_row_groups):
            rg = meta.row_group(i)
            for c in range(rg.num_columns):
                col = rg.column(c)
                stats = col.statistics.to_dict() if col.statistics is not None else None
                chunks.append([rg.num_rows, col.data_page_offset, col.total_compressed_size, str(stats)])
        digest = hashlib.sha256(json.dumps([str(self._pf.schema_arrow), chunks, meta.created_by]).encode())
        out: Dict[str, object] = {"path": self.path, "rows": self.num_rows, "footer_sha256": digest.hexdigest()[:16]}
        local = self.path[len(FILE_URI_PREFIX):] if self.path.startswith(FILE_URI_PREFIX) else self.path
        if "://" not in local and os.path.exists(local):
            st = os.stat(local)
            out.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
        return out

    def iter_batches(
        self, columns: Optional[Sequence[str]] = None, batch_rows: int = DEFAULT_BATCH_ROWS
    ) -> Iterator[pa.RecordBatch]:
        """Yield record batches of at most `batch_rows` rows, row group by row group, in file order.

        Only `columns` (default: the spec's columns) are decoded; every batch is checked against
        the spec's value rules for those columns.
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
        )
        for rg in range(self.num_row_groups):
            try:
                it = self._pf.iter_batches(batch_size=batch_rows, row_groups=[rg], columns=cols)
                for batch in it:
                    check_batch(sub, batch, self.path, rg)
                    yield batch
            except RawDataError:
                raise
            except (pa.ArrowException, OSError) as e:
                raise raw_error(self.path, f"cannot decode (truncated or corrupt?): {e}", row_group=rg) from e

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "RawTable":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RawRelease:
    """The six tables of a raw release directory (any iopath path); all opened and checked up front.

    Args:
        root: directory holding the six Parquet files named as in `muse_rec.data.schema.TABLES`.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self.tables: Dict[str, RawTable] = {}
        try:
            for name, spec in TABLES.items():
                self.tables[name] = RawTable(join_path(root, spec.file), spec)
        except Exception:
            self.close()
            raise

    def __getitem__(self, name: str) -> RawTable:
        return self.tables[name]

    def fingerprint(self) -> Dict[str, object]:
        return {name: t.fingerprint() for name, t in self.tables.items()}

    def close(self) -> None:
        for t in self.tables.values():
            t.close()

    def __enter__(self) -> "RawRelease":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""`save_program`: `torch.export.save` without copying the program's tensors on the way to the file.

`torch.export.save` (torch 2.13, ``torch.export.pt2_archive._package``) writes each tensor storage of the
program as one archive record: ``_get_raw_tensor_bytes`` copies the storage into a Python ``bytes`` object,
and ``PT2ArchiveWriter.write_bytes`` hands it to the zip writer's ``bytes`` overload, which copies it again
into a C++ string. The largest storage (the int8 SCL table's TBE, 144 B per item row) was so held three
times at once: that was the peak of `muse-rec export` (+289 B per item row over the quantized model).

Inside `save_program` a storage goes to the zip writer's storage overload instead (the one `torch.save`
uses), which writes from the tensor's own memory: the same bytes land in the same record, so the archive is
byte-identical, with no copy held. Where torch's writer is not laid out as expected, the plain
`torch.export.save` runs (the same file, only the copies held).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import IO, Any, Iterator, Union

import torch

try:
    from torch.export.pt2_archive import _package
except ImportError:  # another torch layout: saved the plain way
    _package = None  # type: ignore[assignment]


class _StorageRecord(bytes):
    """An empty ``bytes`` (what torch's writer checks for) that stands for a CPU tensor storage's bytes."""

    storage: torch.UntypedStorage

    @classmethod
    def of(cls, storage: torch.UntypedStorage) -> "_StorageRecord":
        record = cls()
        record.storage = storage
        return record


def _patchable() -> bool:
    """Whether torch's archive writer has the two functions `_records_from_storages` replaces."""
    return (_package is not None and callable(getattr(_package, "_get_raw_tensor_bytes", None))
            and callable(getattr(getattr(_package, "PT2ArchiveWriter", None), "write_bytes", None)))


@contextmanager
def _records_from_storages() -> Iterator[None]:
    """Inside the block, torch's archive writer writes a CPU tensor's storage from its own memory."""
    raw_bytes = _package._get_raw_tensor_bytes
    write_bytes = _package.PT2ArchiveWriter.write_bytes

    def storage_record(value: torch.Tensor) -> bytes:
        # Fake, empty and non-CPU tensors as torch writes them (no bytes, or a copy to the CPU first).
        if value.device.type != "cpu" or type(value.data) is not torch.Tensor or not value.data_ptr():
            return raw_bytes(value)
        return _StorageRecord.of(value.untyped_storage())

    def write(self: Any, name: str, data: bytes) -> None:
        if isinstance(data, _StorageRecord):
            # The storage overload of `write_record`: the bytes `raw_bytes` would have copied, read in place.
            self.archive_file.write_record(name, data.storage, data.storage.nbytes())
        else:
            write_bytes(self, name, data)

    _package._get_raw_tensor_bytes = storage_record
    _package.PT2ArchiveWriter.write_bytes = write
    try:
        yield
    finally:
        _package._get_raw_tensor_bytes = raw_bytes
        _package.PT2ArchiveWriter.write_bytes = write_bytes


def save_program(program: torch.export.ExportedProgram, f: Union[str, IO[bytes]]) -> None:
    """`torch.export.save` of ``program`` to ``f``, the same bytes, without a copy of any tensor held."""
    if not _patchable():
        torch.export.save(program, f)
        return
    with _records_from_storages():
        torch.export.save(program, f)

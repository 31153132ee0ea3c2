"""A package's public names, imported on first use (PEP 562 module ``__getattr__``).

Why: `muse_rec.serving` and `muse_rec.metrics` each hold NumPy-only modules (requests, report
tables, metric kernels) next to torch-heavy ones; importing the package must not import torch,
so that a command refuses a bad input before paying seconds for torch's and TorchRec's imports.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping


def lazy_getattr(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """The ``__getattr__`` of ``package``: ``exports`` maps each public name to its module."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__

"""Reading the small JSON files that runs, checkpoints and exports carry (run.json, position.json,
manifest.json, metrics.json, reproduce.json).

Such a file can come from elsewhere (a copied run directory, a downloaded export), so each read
either returns a JSON object or raises the caller's error type with one line naming the file;
what the object must hold is checked by the caller.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Type

# The integers NumPy, torch and PyArrow hold as a C int64. JSON and the command line bound none: a
# larger integer (a request id, a position.json step, a flag) was an OverflowError deep in a command.
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


def read_json_object(path: str | os.PathLike, error: Type[Exception] = ValueError, advice: str = "") -> Dict[str, Any]:
    """The JSON object in ``path``; ``error("<path>: ...<advice>")`` when the file cannot be read,
    is not UTF-8 JSON, or holds another JSON value. ``advice``: what to do, e.g. "; re-export"."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise error(f"{p}: cannot read ({e.strerror or e}){advice}") from None
    except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
        raise error(f"{p}: not valid JSON ({' '.join(str(e).split())}){advice}") from None
    if not isinstance(doc, dict):
        raise error(f"{p}: expected a JSON object, got {type(doc).__name__}{advice}")
    return doc

"""Presenting metrics: a comparison table (Markdown or plain text) and an atomic JSON file."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from muse_rec.data.files import replace_text
from muse_rec.json_files import read_json_object

MISSING = "-"  # shown for absent, None and NaN cells


def _format_cell(value: Any, float_digits: int) -> str:
    if value is None:
        return MISSING
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return MISSING
        return f"{v:.{float_digits}f}"
    return str(value)


def metrics_table(
    rows: List[Mapping[str, Any]],
    columns: Optional[Sequence[str]] = None,
    float_digits: int = 4,
    style: str = "markdown",
    formats: Optional[Mapping[str, str]] = None,
) -> str:
    """Format rows of metrics as a table, one row per run (e.g. method, gauc, auc, logloss,
    samples/s, wall time).

    Args:
        rows: one mapping per row; a missing key, None or NaN shows as ``-``.
        columns: column keys in order; default every key in first-seen order.
        float_digits: decimals for floats without an entry in ``formats``.
        style: ``"markdown"`` (GitHub pipe table, numbers right-aligned) or ``"plain"``
            (space-aligned text for logs).
        formats: per-column ``format()`` spec, e.g. ``{"samples_per_s": ",.0f"}``.

    Returns:
        The table as one string, without a trailing newline.
    """
    if style not in ("markdown", "plain"):
        raise ValueError(f"style must be 'markdown' or 'plain', got {style!r}")
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    formats = dict(formats or {})
    unknown = [c for c in formats if c not in columns]
    if unknown:
        raise ValueError(f"formats name columns {unknown} that are not in the table's columns {list(columns)}")

    def cell(row: Mapping[str, Any], col: str) -> str:
        v = row.get(col)
        if col in formats and v is not None and not (isinstance(v, float) and math.isnan(v)):
            return format(v, formats[col])
        return _format_cell(v, float_digits)

    body = [[cell(r, c) for c in columns] for r in rows]
    numeric = [
        all(isinstance(r.get(c), (int, float, np.number)) or r.get(c) is None for r in rows) for c in columns
    ]
    widths = [max([len(c)] + [len(line[i]) for line in body]) for i, c in enumerate(columns)]

    def line(cells: Sequence[str]) -> List[str]:
        return [s.rjust(w) if num else s.ljust(w) for s, w, num in zip(cells, widths, numeric)]

    if style == "plain":
        sep = ["-" * w for w in widths]
        return "\n".join("  ".join(line(x)).rstrip() for x in [list(columns), sep] + body)
    rule = [("-" * (w - 1) + ":") if num else "-" * w for w, num in zip(widths, numeric)]
    rows_md = [list(columns), rule] + body
    return "\n".join(
        "| " + " | ".join(line(x) if i != 1 else x) + " |" for i, x in enumerate(rows_md)
    )


def to_jsonable(obj: Any) -> Any:
    """``obj`` with NumPy / torch scalars and arrays made plain and NaN/inf turned into None
    (strict JSON has no NaN)."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [to_jsonable(v) for v in obj.tolist()]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()  # numpy / torch scalar
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


# The metrics a run's metrics.json holds as numbers (or null), besides its ``method`` name.
METRICS = ("gauc", "auc", "logloss", "train_samples_per_s", "wall_seconds")


def _number_or_none(v: object) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))


# Where each metric a metrics.json holds lies: (G)AUC is a probability; logloss, speed and time are not
# negative. A file from elsewhere with a GAUC of 1e30 or an AUC of -3 was tabulated as a result.
_METRIC_RANGES = {"gauc": (0.0, 1.0), "auc": (0.0, 1.0)}
_NOT_NEGATIVE = (0.0, math.inf)


def _check_metric(where: str, key: str, v: object) -> None:
    """ValueError naming ``where`` and ``key`` (dotted; its last part is the metric) unless ``v`` is null or a
    finite number in the metric's range."""
    if not _number_or_none(v):
        raise ValueError(f"{where}: {key}: expected a finite number or null, got {v!r}")
    low, high = _METRIC_RANGES.get(key.rsplit(".", 1)[-1], _NOT_NEGATIVE)
    if v is not None and not low <= v <= high:  # type: ignore[operator]
        raise ValueError(f"{where}: {key}: expected a value in [{low:g}, {high:g}] or null, got {v!r}")


def check_floors(floors: object, where: str) -> Dict:
    """``floors`` ({name: {gauc, auc, logloss, ...}}) of a metrics.json or `muse-rec baselines` file,
    returned once checked; ValueError naming ``where`` and the key otherwise."""
    if not isinstance(floors, dict) or not all(isinstance(v, dict) and "gauc" in v for v in floors.values()):
        raise ValueError(f"{where}: floors: expected {{name: {{gauc, auc, logloss, ...}}}}")
    for name, v in floors.items():
        for k in ("gauc", "auc", "logloss"):
            _check_metric(where, f"floors.{name}.{k}", v.get(k))
    return floors


# A metrics.json's per-group tables (`muse-rec reproduce`'s Fig. 6 reads them) and the counts a group holds.
GROUP_TABLES = ("by_seq_length", "by_popularity")
_GROUP_COUNTS = ("samples", "gauc_samples")


def check_group_tables(doc: Dict[str, Any], where: str) -> None:
    """ValueError naming ``where`` and the key (e.g. ``by_popularity[0].gauc``) unless each group table ``doc``
    holds is a list of objects with a string ``group``, a finite ``lo`` >= 0, counts that are integers >= 0 and
    (G)AUCs in [0, 1] or null. A run directory can come from elsewhere: a table that was a string or a group
    without its label was a TypeError / KeyError traceback of the report, and a group GAUC of 9 was plotted."""
    for table in GROUP_TABLES:
        rows = doc.get(table, [])
        if not isinstance(rows, list):
            raise ValueError(f"{where}: {table}: expected a list of groups, got {rows!r:.80}")
        labels: set = set()
        for i, g in enumerate(rows):
            key = f"{table}[{i}]"
            if not isinstance(g, dict):
                raise ValueError(f"{where}: {key}: expected a group (an object), got {g!r:.80}")
            if not isinstance(g.get("group"), str):
                raise ValueError(f"{where}: {key}.group: expected the group's label, got {g.get('group')!r:.80}")
            if g["group"] in labels:  # else the report blamed the other run of the pair it compares
                raise ValueError(f"{where}: {key}.group: {g['group']!r} is an earlier group's label too")
            labels.add(g["group"])
            lo = g.get("lo", 0)
            if not _number_or_none(lo) or lo is None or lo < 0:
                raise ValueError(f"{where}: {key}.lo: expected a finite number >= 0, got {lo!r:.80}")
            for k in _GROUP_COUNTS:
                v = g.get(k, 0)
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    raise ValueError(f"{where}: {key}.{k}: expected an integer >= 0, got {v!r:.80}")
            for k in ("gauc", "auc"):
                v = g.get(k)
                if not (isinstance(v, float) and math.isnan(v)):  # an empty group's, as metrics.json once wrote it
                    _check_metric(where, f"{key}.{k}", v)


def read_run_metrics(path: str | os.PathLike) -> Dict[str, Any]:
    """A run's metrics.json, checked: a JSON object with a ``method`` name, finite (or null)
    metrics and well-formed floors. A run directory can come from elsewhere, so a malformed file
    is a ValueError naming the file and the key, not a KeyError deep in a report."""
    f = Path(path)
    doc = read_json_object(f)
    if not isinstance(doc.get("method"), str) or not doc["method"]:
        raise ValueError(f"{f}: method: expected the method's name, got {doc.get('method')!r}")
    for k in METRICS:
        _check_metric(str(f), k, doc.get(k))
    if doc.get("floors") is not None:
        check_floors(doc["floors"], str(f))
    errors = doc.get("floor_gap_se")
    if errors is not None:  # `floors.check_run_against_floors`: floor name -> a standard error (>= 0)
        if not isinstance(errors, dict):
            raise ValueError(f"{f}: floor_gap_se: expected {{floor name: standard error}}, got {errors!r:.80}")
        for name, v in errors.items():
            _check_metric(str(f), f"floor_gap_se.{name}", v)
    return doc


def metrics_json_text(metrics: Dict[str, Any]) -> str:
    """``metrics`` as indented strict JSON text (NaN and inf become ``null``), newline-terminated."""
    return json.dumps(to_jsonable(metrics), indent=2, sort_keys=False, allow_nan=False) + "\n"


def save_metrics_json(path: str | os.PathLike, metrics: Dict[str, Any]) -> Path:
    """Write ``metrics`` as `metrics_json_text`, whole or not at all (`replace_text`: through a
    symbolic link, `OutputWriteError` naming the file); returns the path. Parent directories are
    created."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    replace_text(p, metrics_json_text(metrics))
    return p

"""A merged spec mapping typed into the dataclasses of `muse_rec.spec.schema`, key by key.

Every key is checked against its dataclass field: an unknown key, a missing required one or a value of
the wrong type raises `SpecError` naming the source (a file or ``<spec>``) and the dotted key.
"""
from __future__ import annotations

import dataclasses
import math
import re
import reprlib
import typing
from typing import Any, Dict, List, Literal, Tuple, Union

from muse_rec.spec.schema import SpecError
from muse_rec.spec.yaml_text import OTHER_BASE

# A number written as text (YAML 1.1 reads `2e-3` as a string): ASCII decimal digits only. Python's
# float() also takes '1_0' (10.0), ' 2e-3 ', 'infinity' and other scripts' digits ('\u0661\u0660'),
# which a spec should not silently read as a number.
DECIMAL_TEXT = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
NON_FINITE_TEXT = ("inf", "infinity", "nan")

# How an error quotes a bad value: enough to recognise it, bounded whatever the file holds (a 200,000-item
# list was a 1.4 MB error "line"; YAML aliases nesting lists ten-fold per level, the "billion laughs",
# ran out of memory spelling the value out).
_SHOWN = reprlib.Repr()
_SHOWN.maxlevel = 2
_SHOWN.maxstring = _SHOWN.maxother = 120


def shown(value: Any) -> str:
    """``repr(value)``, cut to a line's length (`_SHOWN`'s limits)."""
    return _SHOWN.repr(value)


def deep_merge(base: Dict[str, Any], child: Dict[str, Any]) -> Dict[str, Any]:
    """``child`` over ``base``, mappings merged key by key (the child's value wins), as ``extends:`` merges."""
    out = dict(base)
    for k, v in child.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build_dataclass(cls: type, raw: Any, source: str, prefix: str) -> Any:
    """Dataclass ``cls`` from mapping ``raw``, each value coerced to its field's type; ``prefix`` is the
    dotted key of ``raw`` (``"model."``, ``""`` at the top level), for the errors."""
    where = prefix.rstrip(".") or "<top level>"
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: {where}: expected a mapping, got {shown(raw)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    # By their text: YAML keys need not be strings (`1:`, `~:`, `yes:` -> True), and sorting a mix of
    # types raised a bare TypeError (a traceback in every command reading the spec).
    unknown = sorted(set(raw) - names, key=str)
    if unknown:
        raise SpecError(f"{source}: {prefix}{unknown[0]}: unknown key (known under {where}: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in raw:
            value = raw[f.name]
            # A partial mapping for a nested section keeps the defaults of the keys it omits.
            if isinstance(value, dict) and f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                default = f.default_factory()  # type: ignore[misc]
                if dataclasses.is_dataclass(default):
                    value = deep_merge(dataclasses.asdict(default), value)
            kwargs[f.name] = _coerce(hints[f.name], value, source, prefix + f.name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            raise SpecError(f"{source}: {prefix}{f.name}: required key is missing")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, source: str, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    bad = lambda what: SpecError(f"{source}: {key}: expected {what}, got {shown(value)}")  # noqa: E731
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, source, key + ".")
    if origin is Union:  # Optional[X]
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, source, key)
    if origin is Literal:
        if value not in args:
            raise SpecError(f"{source}: {key}: must be one of {', '.join(map(repr, args))}, got {shown(value)}")
        return value
    if origin in (list, List):
        if not isinstance(value, list):
            raise bad("a list")
        return [_coerce(args[0], v, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (tuple, Tuple):
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise bad(f"a list of {len(args)}")
        return tuple(_coerce(a, v, source, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise bad("a mapping")
        return {str(k): _coerce(args[1], v, source, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            padded = isinstance(value, str) and OTHER_BASE.fullmatch(value)  # kept as text by `parse_yaml`
            raise bad("an integer" + (" in decimal digits, without a leading 0 or ':' (YAML 1.1 reads those as "
                                      "octal or base 60)" if padded else ""))
        return value
    if tp is float:
        # YAML reads 2e-3 as a string (it wants 2.0e-3); accept both spellings.
        if isinstance(value, str):
            if not DECIMAL_TEXT.fullmatch(value):  # 'inf' / 'nan' are numbers, just not finite ones
                raise bad("a finite number" if value.lstrip("+-").lower() in NON_FINITE_TEXT else "a number")
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        try:
            number = float(value)
        except OverflowError:
            raise bad("a finite number") from None
        if not math.isfinite(number):  # YAML's .inf / .nan, or 'inf' / 'nan' strings
            raise bad("a finite number")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    raise SpecError(f"{source}: {key}: unsupported type {tp}")  # a schema bug, not a user error

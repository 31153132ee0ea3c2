"""YAML text as every YAML file of the project is read: a spec, a run's spec.yaml, a launch profile.

PyYAML's safe loader, with a key given twice in one mapping refused instead of silently its last value,
and every parse failure (invalid YAML, nesting past the recursive parser, an unconvertible scalar)
turned into `YAMLTextError` with a one-line reason.
"""
from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Dict

import yaml

# What a spec nested past PyYAML's (recursive) parser is told; no spec key nests more than 4 deep.
TOO_DEEP = "nested too deeply to parse"


class UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: its keys may be overridden here
                continue
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if not isinstance(key, Hashable):  # `? [a, b]`: SafeLoader's own check below refuses it in
                break  # one line ("found unhashable key"); `key in seen` raised a bare TypeError
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (a second value would silently win)", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class YAMLTextError(ValueError):
    """Text that is not a YAML document this project reads; its message is the one-line reason."""


def parse_yaml(text: str) -> Any:
    """``text`` as YAML, every YAML file of the project read alike (specs, a run's spec.yaml, launch
    profiles): a key given twice in a mapping is refused (`UniqueKeyLoader`), not silently its last value.
    `YAMLTextError` with a one-line reason for invalid YAML, for nesting past PyYAML's recursive parser
    (thousands of ``[[[...]]]`` were a RecursionError traceback) and for a scalar its constructors cannot
    convert (an integer past Python's 4,300-digit bound, a date 2026-13-01: a bare ValueError)."""
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)
    except RecursionError:
        raise YAMLTextError(TOO_DEEP) from None
    except (yaml.YAMLError, ValueError) as e:
        raise YAMLTextError(" ".join(str(e).split())) from None

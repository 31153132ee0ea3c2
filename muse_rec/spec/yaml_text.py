"""YAML text as every YAML file of the project is read: a spec, a run's spec.yaml, a launch profile.

PyYAML's safe loader, with a key given twice in one mapping refused instead of silently its last value,
and every parse failure (invalid YAML, nesting past the recursive parser, an unconvertible scalar)
turned into `YAMLTextError` with a one-line reason.
"""
from __future__ import annotations

import re
from collections.abc import Hashable
from typing import Any, Dict

import yaml

# What a spec nested past PyYAML's (recursive) parser is told; no spec key nests more than 4 deep.
TOO_DEEP = "nested too deeply to parse"


# Numbers YAML 1.1 (PyYAML) reads in another base than the decimal they look like: a zero-padded integer is
# octal and one with colons base 60. `seed: 010` trained seed 8, `batch_size: 1:30` batch 90, and a launch
# profile's unquoted Slurm `time: 24:00:00` became 86400. Such a scalar is kept as its text (as YAML 1.2 does
# not read it either): a key that takes an integer refuses it naming the key, one that takes a string gets it
# as written.
OTHER_BASE = re.compile(r"[-+]?(?:0[0-7_]+|[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?)")


class UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key given twice in one mapping (PyYAML keeps the last) and keeps an
    octal or base-60 number as its text (`OTHER_BASE`)."""

    def construct_number(self, node: yaml.ScalarNode) -> Any:
        """An int or float scalar's value; its text where `OTHER_BASE` matches it."""
        if OTHER_BASE.fullmatch(node.value):
            return self.construct_scalar(node)  # type: ignore[no-untyped-call]
        if node.tag == "tag:yaml.org,2002:int":
            return self.construct_yaml_int(node)  # type: ignore[no-untyped-call]
        return self.construct_yaml_float(node)  # type: ignore[no-untyped-call]

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


UniqueKeyLoader.add_constructor("tag:yaml.org,2002:int", UniqueKeyLoader.construct_number)
UniqueKeyLoader.add_constructor("tag:yaml.org,2002:float", UniqueKeyLoader.construct_number)


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

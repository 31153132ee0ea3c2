"""Reading a spec file: ``extends:`` chains and ``--set`` overrides, then typed and checked.

Every key is checked against the dataclasses of `muse_rec.spec.schema` (`muse_rec.spec.coerce`), then
its value (`muse_rec.spec.value_checks`); an error names the file (or the override) and the dotted key.
YAML text is parsed by `muse_rec.spec.yaml_text`.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from muse_rec.json_files import is_symlink_loop, refuse_special_file
from muse_rec.spec.coerce import build_dataclass, deep_merge, shown
from muse_rec.spec.schema import Spec, SpecError
from muse_rec.spec.value_checks import check_values
from muse_rec.spec.yaml_text import YAMLTextError, parse_yaml


def load_spec(path: Union[str, os.PathLike], overrides: Sequence[str] = ()) -> Spec:
    """Read a spec file (following ``extends:``), apply ``key.path=value`` overrides, validate.

    An invalid value set by an override is reported as ``--set key=value: key: ...`` (the
    override is what to fix), one set by a file that the spec extends as ``<that file> (extended by
    <spec file>): key: ...``, anything else as ``<spec file>: key: ...``.
    """
    files: List[Tuple[Path, Dict[str, Any]]] = []
    raw = _read_with_extends(Path(path), seen=(), files=files)
    before_overrides = copy.deepcopy(raw)
    for ov in overrides:
        _apply_override(raw, ov, str(path))
    try:
        return from_dict(raw, source=str(path))
    except SpecError as e:
        prefix, msg = f"{path}: ", str(e)
        if msg.startswith(prefix):
            rest = msg[len(prefix):]
            key = rest.split(": ", 1)[0]
            ov = _override_of(key, overrides)
            if ov is None:  # a check across keys: a file's value refused because of an override's
                ov = _override_that_broke(key, before_overrides, overrides, str(path))
            if ov is not None:
                raise SpecError(f"--set {ov}: {rest}") from None
            # A parent's key was reported against the file given, where the user found no such line.
            origin = next((f for f, doc in reversed(files) if _file_sets(doc, key)), None)
            if origin is not None and origin != Path(path):
                raise SpecError(f"{origin} (extended by {path}): {rest}") from None
        raise


def _file_sets(doc: Dict[str, Any], key: str) -> bool:
    """Whether a file's own keys (``doc``) set ``key`` of an error (``a.b[0]``): the key, a mapping
    holding it or a value above it. A walk down the key's path: aliases may nest a file's values
    without bound (or in a cycle), so its tree is never walked whole."""
    node: Any = doc
    for part in key.split("[", 1)[0].split("."):
        if not isinstance(node, dict):
            return True  # a value above the key, where the merged spec has a mapping no more
        if part not in node:
            return False
        node = node[part]
    return True


def _override_that_broke(key: str, before: Dict[str, Any], overrides: Sequence[str], source: str) -> Optional[str]:
    """The last override without which ``key`` is no longer refused, where the spec files alone pass
    (``--set data.seq_len=10`` against the files' ``model.gsu.top_k: 50``); None otherwise. ``before`` is
    the merged files' spec before any override."""
    def refused(kept: Sequence[str]) -> bool:
        raw = copy.deepcopy(before)
        try:
            for ov in kept:
                _apply_override(raw, ov, source)
            from_dict(raw, source=source)
        except SpecError as e:
            return str(e).startswith(f"{source}: {key}: ")
        return False

    if refused(()):
        return None  # the files' own values conflict: the file names it
    for i in reversed(range(len(overrides))):
        if not refused([*overrides[:i], *overrides[i + 1:]]):
            return overrides[i]
    return None


def _override_of(key: str, overrides: Sequence[str]) -> Optional[str]:
    """The last override that set ``key`` (or a mapping above it, or a key below it), if any."""
    key = key.split("[", 1)[0]
    for ov in reversed(list(overrides)):
        k = ov.split("=", 1)[0].strip()
        if k == key or key.startswith(k + ".") or k.startswith(key + "."):
            return ov
    return None


def from_dict(raw: Dict[str, Any], source: str = "<spec>") -> Spec:
    """``raw`` (a spec's merged mapping) as a `Spec`, typed and checked; errors name ``source``."""
    spec = build_dataclass(Spec, raw, source, prefix="")
    check_values(spec, source)
    return spec


def _read_with_extends(path: Path, seen: Tuple[Path, ...], files: List[Tuple[Path, Dict[str, Any]]],
                       referenced_by: Optional[Path] = None) -> Dict[str, Any]:
    """``path`` merged over its ``extends:`` chain; ``files`` gets ``(file, its own keys)`` of each file
    in the order they are merged (the last one that sets a key is the one whose value wins)."""
    # A parent that cannot be read is named as its child's `extends:` names it: that is the line to fix.
    where = str(path) if referenced_by is None else f"{referenced_by}: extends: {path}"
    try:
        found = path.exists()
    except OSError as e:  # a name longer than the filesystem takes (ENAMETOOLONG) was a traceback
        raise SpecError(f"{where}: cannot read ({e})") from None
    if not found:  # a link loop is no file either, but a missing one sends the user looking for a name
        raise SpecError(f"{where}: " + ("a symbolic link loop (following it never reaches a file); name a spec file"
                                        if is_symlink_loop(path) else "spec file not found"))
    # The command line's --spec is asked already; a parent it extends is not.
    refuse_special_file(path, SpecError, "; name a spec file", label=where)
    if path.resolve() in seen:
        raise SpecError(f"{path}: 'extends' cycle: " + " -> ".join(str(p) for p in seen + (path,)))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"{where}: cannot read ({e})") from None
    try:
        doc = parse_yaml(text)
    except YAMLTextError as e:
        raise SpecError(f"{path}: not valid YAML: {e}") from None
    if doc is None or doc == {}:  # an empty or comment-only file: truncated, or the wrong file
        raise SpecError(f"{path}: empty spec (no keys); a spec extends another or sets its keys "
                        "(e.g. extends: ../base.yaml and data.prepared)")
    if not isinstance(doc, dict):
        raise SpecError(f"{path}: top level must be a mapping, got {type(doc).__name__}")
    parents = doc.pop("extends", None)
    # One parent or a list (e.g. a method spec + a data/scale profile), merged in order.
    parents = [] if parents is None else [parents] if isinstance(parents, str) else parents
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise SpecError(f"{path}: extends: expected a path or a list of paths, got {shown(parents)}")
    if not all(p.strip() for p in parents):  # '' named the spec's own directory: "cannot read (Is a directory)"
        raise SpecError(f"{path}: extends: an empty path; name the spec file this one extends")
    merged: Dict[str, Any] = {}
    for parent in parents:
        merged = deep_merge(merged, _read_with_extends(path.parent / parent, seen + (path.resolve(),), files, path))
    files.append((path, doc))
    return deep_merge(merged, doc)


def _apply_override(raw: Dict[str, Any], override: str, source: str) -> None:
    """``key.path=value`` set in ``raw`` (the merged spec file); a mapping value is merged into the
    mapping there key by key, as a file that extends the spec would merge it."""
    if "=" not in override:
        raise SpecError(f"override {override!r}: expected key.path=value")
    key, value = override.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise SpecError(f"override {override!r}: expected key.path=value, with a name between every two dots")
    node = raw
    for i, p in enumerate(parts[:-1]):
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise SpecError(f"override {override!r}: {'.'.join(parts[:i + 1])} is not a mapping in {source} "
                            f"(it holds {shown(node)})")
    try:  # read as a spec file's text is: `--set 'train={seed: 1, seed: 2}'` silently took seed 2
        parsed = parse_yaml(value)
    except YAMLTextError as e:
        raise SpecError(f"override {override!r}: value is not valid YAML ({e})") from None
    old = node.get(parts[-1])
    node[parts[-1]] = deep_merge(old, parsed) if isinstance(parsed, dict) and isinstance(old, dict) else parsed

"""Launch profiles (torchx.yaml) and the TorchX AppDef that runs a spec on them.

`components/train.py` is the TorchX component users call; it delegates here so that the
`muse-rec launch` command and tests build exactly the same AppDef.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import yaml

DEFAULT_PROFILES = Path(__file__).resolve().parents[1] / "torchx.yaml"


class ProfileError(ValueError):
    """torchx.yaml is malformed or names no such profile; the message names file and key."""


@dataclass
class LaunchProfile:
    name: str
    scheduler: str
    nodes: int
    procs_per_node: int
    cpu: int
    gpu: int
    memMB: int
    spec: str
    env: Dict[str, str] = field(default_factory=dict)
    rdzv_port: int = 29500
    image: str = "ghcr.io/pytorch/torchx:0.7.0"
    description: str = ""

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node

    @property
    def j(self) -> str:
        """torchx's ``-j`` string: nodes x processes per node."""
        return f"{self.nodes}x{self.procs_per_node}"


_INT_KEYS = ("nodes", "procs_per_node", "cpu", "gpu", "memMB", "rdzv_port")
_STR_KEYS = ("scheduler", "spec", "image", "description")


def load_profiles(path: Optional[str] = None) -> Dict[str, LaunchProfile]:
    """Parse every profile of torchx.yaml; errors name the file and ``profiles.NAME.key``."""
    p = Path(path) if path else DEFAULT_PROFILES
    if not p.exists():
        raise ProfileError(f"{p}: launch profiles file not found")
    try:
        doc = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ProfileError(f"{p}: not valid YAML: {e}") from None
    profiles = doc.get("profiles") if isinstance(doc, dict) else None
    if not isinstance(profiles, dict) or not profiles:
        raise ProfileError(f"{p}: profiles: expected a mapping of profile name -> settings")
    out = {}
    for name, d in profiles.items():
        key = f"profiles.{name}"
        if not isinstance(d, dict):
            raise ProfileError(f"{p}: {key}: expected a mapping")
        known = set(_INT_KEYS) | set(_STR_KEYS) | {"env"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ProfileError(f"{p}: {key}.{unknown[0]}: unknown key (known: {', '.join(sorted(known))})")
        for k in ("scheduler", "nodes", "procs_per_node", "spec"):
            if k not in d:
                raise ProfileError(f"{p}: {key}.{k}: required key is missing")
        for k in _INT_KEYS:
            if k in d and (not isinstance(d[k], int) or isinstance(d[k], bool) or d[k] < 0):
                raise ProfileError(f"{p}: {key}.{k}: expected a non-negative integer, got {d[k]!r}")
        for k in _STR_KEYS:
            if k in d and not isinstance(d[k], str):
                raise ProfileError(f"{p}: {key}.{k}: expected a string, got {d[k]!r}")
        if d["nodes"] < 1 or d["procs_per_node"] < 1:
            raise ProfileError(f"{p}: {key}: nodes and procs_per_node must be >= 1")
        env = d.get("env") or {}
        if not isinstance(env, dict):
            raise ProfileError(f"{p}: {key}.env: expected a mapping")
        out[name] = LaunchProfile(
            name=name,
            scheduler=d["scheduler"],
            nodes=d["nodes"],
            procs_per_node=d["procs_per_node"],
            cpu=d.get("cpu", 2),
            gpu=d.get("gpu", 0),
            memMB=d.get("memMB", 8000),
            spec=d["spec"],
            env={str(k): str(v) for k, v in env.items()},
            rdzv_port=d.get("rdzv_port", 29500),
            image=d.get("image", "ghcr.io/pytorch/torchx:0.7.0"),
            description=d.get("description", ""),
        )
    return out


def get_profile(name: str, path: Optional[str] = None) -> LaunchProfile:
    profiles = load_profiles(path)
    if name not in profiles:
        raise ProfileError(f"{path or DEFAULT_PROFILES}: no profile {name!r} (have: {', '.join(profiles)})")
    return profiles[name]


def split_overrides(text: str) -> List[str]:
    """``"a=1,b=[2,3]"`` -> ``["a=1", "b=[2,3]"]``: commas inside brackets belong to the value."""
    out, depth, cur = [], 0, []
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return [o.strip() for o in out if o.strip()]


def train_args(spec: str, overrides: List[str], resume: bool, command: str = "train") -> List[str]:
    """Arguments of `python -m muse_rec.cli` on every rank."""
    args = [command, "--spec", spec]
    for ov in overrides:
        args += ["--set", ov]
    if resume:
        args.append("--resume")
    return args

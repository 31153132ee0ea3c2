"""Launch profiles: torchx.yaml's named settings of WHERE a job runs, read and checked key by key.

A profile names a TorchX scheduler and its options, nodes x processes, resources, image, restarts and
mounts; `muse_rec.launch` turns one into the AppDef that runs a spec. Every error names the file and
``profiles.NAME.key``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from muse_rec.distributed import MAX_PLAN_RANKS
from muse_rec.spec.yaml_text import YAMLTextError, parse_yaml

DEFAULT_PROFILES = Path(__file__).resolve().parents[1] / "torchx.yaml"
DEFAULT_IMAGE = "ghcr.io/pytorch/torchx:0.7.0"
# The scheduler whose ranks run here, in this directory and this Python environment.
LOCAL_SCHEDULER = "local_cwd"


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
    image: str = DEFAULT_IMAGE
    description: str = ""
    # Options of the profile's TorchX scheduler (slurm: partition, time, ...; kubernetes:
    # queue, namespace, ...), checked against the scheduler's own runopts at launch.
    scheduler_args: Dict[str, str] = field(default_factory=dict)
    # torchrun restarts the whole worker group up to this many times after a rank fails; the
    # restarted ranks resume from the run's latest checkpoint (trainer: auto-resume).
    max_restarts: int = 0
    # The scheduler's own retries of a failed node (Slurm requeue, Volcano maxRetry).
    max_retries: int = 0
    # Container mounts of every node, TorchX's syntax (type=volume,src=CLAIM,dst=PATH[,readonly]): on
    # Kubernetes the volume that output_dir and data.prepared must be on for every pod to see them.
    mounts: List[str] = field(default_factory=list)

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node

    @property
    def j(self) -> str:
        """torchx's ``-j`` string: nodes x processes per node."""
        return f"{self.nodes}x{self.procs_per_node}"


MAX_PORT = 65535
_INT_KEYS = ("nodes", "procs_per_node", "cpu", "gpu", "memMB", "rdzv_port", "max_restarts", "max_retries")
_STR_KEYS = ("scheduler", "spec", "image", "description")


def load_profiles(path: Optional[str] = None) -> Dict[str, LaunchProfile]:
    """Parse every profile of torchx.yaml; errors name the file and ``profiles.NAME.key``."""
    p = Path(path) if path else DEFAULT_PROFILES
    if not p.exists():
        raise ProfileError(f"{p}: launch profiles file not found")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:  # a directory (IsADirectoryError: a traceback), unreadable, not text
        raise ProfileError(f"{p}: cannot read the launch profiles file ({e})") from None
    try:
        # As a spec is read: a key given twice (two `nodes:`, two profiles of one name) was silently the last.
        doc = parse_yaml(text) or {}
    except YAMLTextError as e:
        raise ProfileError(f"{p}: not valid YAML: {e}") from None
    profiles = doc.get("profiles") if isinstance(doc, dict) else None
    if not isinstance(profiles, dict) or not profiles:
        raise ProfileError(f"{p}: profiles: expected a mapping of profile name -> settings")
    out = {}
    for name, d in profiles.items():
        key = f"profiles.{name}"
        if not isinstance(d, dict):
            raise ProfileError(f"{p}: {key}: expected a mapping")
        known = set(_INT_KEYS) | set(_STR_KEYS) | {"env", "scheduler_args", "mounts"}
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
        # Every rank plans the sharding for the whole world at its start, as `plan` does: past plan's
        # bound that takes many minutes and GBs per rank (10^20 processes hung torchrun, silently).
        if d["nodes"] * d["procs_per_node"] > MAX_PLAN_RANKS:
            raise ProfileError(f"{p}: {key}: nodes x procs_per_node = {d['nodes'] * d['procs_per_node']:,} ranks, "
                               f"more than the {MAX_PLAN_RANKS:,} a sharding plan is made for (see `muse-rec plan`)")
        if "rdzv_port" in d and not 1 <= d["rdzv_port"] <= MAX_PORT:
            raise ProfileError(f"{p}: {key}.rdzv_port: must be a TCP port in [1, {MAX_PORT}], got {d['rdzv_port']}")
        env, sched_args = d.get("env") or {}, d.get("scheduler_args") or {}
        for field_name, mapping, expected in (("env", env, "a mapping"),
                                              ("scheduler_args", sched_args, "a mapping of option -> value")):
            if not isinstance(mapping, dict):
                raise ProfileError(f"{p}: {key}.{field_name}: expected {expected}")
            for k, v in mapping.items():
                if not isinstance(v, (str, int, float, bool)):
                    raise ProfileError(f"{p}: {key}.{field_name}.{k}: expected a scalar, got {v!r}")
                # What the OS refuses in an environment: starting the ranks was a ValueError traceback.
                if field_name == "env" and (not str(k) or "=" in str(k) or "\0" in str(k) or "\0" in str(v)):
                    raise ProfileError(f"{p}: {key}.env.{k!r}: not an environment variable: a name must be non-empty "
                                       "without '=', and neither name nor value may hold a NUL character")
        mounts = _mounts(d.get("mounts") or [], f"{p}: {key}.mounts")
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
            image=d.get("image", DEFAULT_IMAGE),
            description=d.get("description", ""),
            scheduler_args={str(k): str(v) for k, v in sched_args.items()},
            max_restarts=d.get("max_restarts", 0),
            max_retries=d.get("max_retries", 0),
            mounts=mounts,
        )
    return out


MOUNT_SYNTAX = "type=volume,src=CLAIM,dst=PATH[,readonly] or type=bind,src=HOST_PATH,dst=PATH[,readonly]"


def _mounts(value: object, where: str) -> List[str]:
    """A profile's ``mounts``: a list of TorchX mount strings, each checked by TorchX's own parser."""
    from torchx.specs import parse_mounts

    if not isinstance(value, list):
        raise ProfileError(f"{where}: expected a list of mounts ({MOUNT_SYNTAX}), got {value!r}")
    for i, mount in enumerate(value):
        if not isinstance(mount, str) or not mount.startswith("type="):
            raise ProfileError(f"{where}[{i}]: expected a mount {MOUNT_SYNTAX}, got {mount!r}")
        try:
            parse_mounts(mount.split(","))
        except KeyError as e:  # a missing src/dst, or an option TorchX does not know
            raise ProfileError(f"{where}[{i}]: {mount!r}: missing or unknown option {e} ({MOUNT_SYNTAX})") from None
        except ValueError as e:  # an unknown type, a bad device permission
            raise ProfileError(f"{where}[{i}]: {mount!r}: {e} ({MOUNT_SYNTAX})") from None
    return list(value)


def get_profile(name: str, path: Optional[str] = None) -> LaunchProfile:
    profiles = load_profiles(path)
    if name not in profiles:
        raise ProfileError(f"{path or DEFAULT_PROFILES}: no profile {name!r} (have: {', '.join(profiles)})")
    return profiles[name]

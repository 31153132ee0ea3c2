"""`DistEnv`: who this process is in the job, read once from the launcher's environment.

torchrun and TorchX's ``dist.ddp`` export ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``. Without them (a plain
``python`` run, a unit test) the process is rank 0 of a world of 1, and `init_distributed`
still creates a one-rank process group, because DistributedModelParallel needs one.

This is the only module of the package that reads those variables; everything else takes a
`DistEnv` (see ARCHITECTURE.md: no layer re-reads the environment on its own).
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Mapping, Optional

import torch
import torch.distributed as dist

from muse_rec.lifetime import end_with_torchrun
from muse_rec.spec.schema import DEFAULT_COLLECTIVE_TIMEOUT_S

# Used only when the launcher set no rendezvous address (single process runs).
DEFAULT_MASTER_ADDR = "127.0.0.1"
# torchrun sets it in every worker: 0 in the first attempt, n after the n-th restart (--max-restarts).
RESTART_COUNT_VAR = "TORCHELASTIC_RESTART_COUNT"
# Slurm sets it in a requeued job: how many times the job was requeued. TorchX's Slurm script requeues a
# failed job up to the profile's max_retries; the requeued job's torchrun starts again at restart 0.
SCHEDULER_RETRY_VAR = "SLURM_RESTART_COUNT"


@dataclass(frozen=True)
class DistEnv:
    """The process's place in the job.

    Attributes:
        rank: global rank, ``0 <= rank < world_size``.
        world_size: number of processes in the job.
        local_rank: rank on this host (selects the GPU).
        local_world_size: processes on this host.
        device: the compute device of this rank (``cuda:<local_rank>`` or ``cpu``).
        backend: process-group backend, ``nccl`` with CUDA, ``gloo`` on CPU.
    """

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the rank that logs and writes shared files)."""
        return self.rank == 0

    @property
    def num_nodes(self) -> int:
        return max(1, self.world_size // max(1, self.local_world_size))

    @classmethod
    def from_environ(
        cls,
        environ: Optional[Mapping[str, str]] = None,
        device_type: Optional[str] = None,
    ) -> "DistEnv":
        """Read torchrun / TorchX variables; absent ones mean a single process.

        Args:
            environ: the variables to read (default ``os.environ``); tests pass a dict.
            device_type: ``"cpu"`` or ``"cuda"``; default ``cuda`` when available.
        """
        env = os.environ if environ is None else environ
        rank = _int_var(env, "RANK", 0)
        world_size = _int_var(env, "WORLD_SIZE", 1)
        local_rank = _int_var(env, "LOCAL_RANK", rank)
        local_world_size = _int_var(env, "LOCAL_WORLD_SIZE", world_size)
        if world_size < 1 or not 0 <= rank < world_size:
            raise LaunchEnvError(f"environment has RANK={rank}, WORLD_SIZE={world_size}: need 0 <= RANK < WORLD_SIZE")
        if not 0 <= local_rank < local_world_size:
            raise LaunchEnvError(
                f"environment has LOCAL_RANK={local_rank}, LOCAL_WORLD_SIZE={local_world_size}: "
                "need 0 <= LOCAL_RANK < LOCAL_WORLD_SIZE"
            )
        restart_count(env)  # checked with the others: a malformed one was a ValueError traceback of train
        if device_type is None:
            device_type = "cuda" if torch.cuda.is_available() else "cpu"
        check_device(device_type)
        if device_type == "cuda":
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
            backend = "nccl"
        elif device_type == "cpu":
            device = torch.device("cpu")
            backend = "gloo"
        else:
            raise ValueError(f"device_type must be 'cpu' or 'cuda', got {device_type!r}")
        return cls(rank, world_size, local_rank, local_world_size, device, backend)


class DeviceError(ValueError):
    """The device asked for is not on this machine (the user's input, not a bug: exit 2)."""


class LaunchEnvError(ValueError):
    """The launcher's variables (RANK, WORLD_SIZE, ...) are malformed or inconsistent: a hand-written job
    script's or a scheduler template's input, not a bug (exit 2, the line naming the variable)."""


def check_device(device_type: str) -> None:
    """DeviceError where ``device_type`` is "cuda" and torch sees no CUDA device here."""
    if device_type == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda: torch sees no CUDA device on this machine (torch.cuda.is_available() is "
                          "False); use --device cpu, or a machine and install with CUDA (README, \"CUDA\")")


def restart_count(environ: Optional[Mapping[str, str]] = None) -> int:
    """Which attempt of a torchrun job this process belongs to (`RESTART_COUNT_VAR`; 0: the first, or no
    torchrun); LaunchEnvError naming the variable unless it is an integer >= 0."""
    return _count_var(environ, RESTART_COUNT_VAR, "torchrun counts a job's restarts from 0")


def scheduler_retry_count(environ: Optional[Mapping[str, str]] = None) -> int:
    """How many times the scheduler re-ran this job (`SCHEDULER_RETRY_VAR`: Slurm's requeues, which TorchX's
    script makes up to ``max_retries``; 0: the first run, or a scheduler that counts none); LaunchEnvError
    naming the variable unless it is an integer >= 0."""
    return _count_var(environ, SCHEDULER_RETRY_VAR, "Slurm counts a job's requeues from 0")


def _count_var(environ: Optional[Mapping[str, str]], name: str, counts: str) -> int:
    """The count in environment variable ``name`` (0 where unset); LaunchEnvError unless an integer >= 0."""
    count = _int_var(os.environ if environ is None else environ, name, 0)
    if count < 0:
        raise LaunchEnvError(f"environment variable {name}={count} is negative ({counts})")
    return count


def _int_var(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise LaunchEnvError(f"environment variable {name}={raw!r} is not an integer") from None


def free_port(host: str = DEFAULT_MASTER_ADDR) -> int:
    """A TCP port that was free a moment ago (for single-host rendezvous in tests and demos)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def init_distributed(
    env: Optional[DistEnv] = None,
    timeout: timedelta = timedelta(seconds=DEFAULT_COLLECTIVE_TIMEOUT_S),
) -> DistEnv:
    """Create the default process group for `env` (read from the environment if None).

    Idempotent: when a group already exists it is checked against `env` and kept. A single
    process with no rendezvous variables gets a one-rank group over an in-memory store.

    Args:
        env: the process's place; default `DistEnv.from_environ()`.
        timeout: how long a collective (and the rendezvous) waits for every rank before this rank
            fails; a run passes its spec's ``train.collective_timeout_s``. Large tables take a while to
            initialise, a checkpoint a while to save, and a hung rank holds the job this long.

    Returns:
        The `DistEnv` in use.
    """
    env = env if env is not None else DistEnv.from_environ()
    end_with_torchrun()  # a rank whose torchrun was killed went on training, its job reported FAILED
    if dist.is_initialized():
        if dist.get_world_size() != env.world_size or dist.get_rank() != env.rank:
            raise RuntimeError(
                f"a process group already exists with rank {dist.get_rank()} of {dist.get_world_size()}, "
                f"but DistEnv says rank {env.rank} of {env.world_size}"
            )
        return env
    launched = "MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ
    if env.world_size > 1 and not launched:
        raise LaunchEnvError(
            f"WORLD_SIZE={env.world_size} but MASTER_ADDR/MASTER_PORT are not set: "
            "launch with torchrun or `torchx run ... dist.ddp`"
        )
    if env.device.type == "cuda":
        torch.cuda.set_device(env.device)
    restart = restart_count()
    if launched and restart:
        # A restarted attempt (torchrun --max-restarts): the rendezvous store can still hold the
        # failed attempt's keys (the dead ranks' gloo addresses), and a new rank that reads one
        # fails with "connectFullMesh ... Connection refused". Give every attempt its own key space.
        store, _, _ = next(dist.rendezvous("env://", rank=env.rank, world_size=env.world_size, timeout=timeout))
        dist.init_process_group(backend=env.backend, store=dist.PrefixStore(f"muse_rec/attempt-{restart}", store),
                                rank=env.rank, world_size=env.world_size, timeout=timeout)
    elif launched:
        dist.init_process_group(backend=env.backend, rank=env.rank, world_size=env.world_size, timeout=timeout)
    else:
        # A single process without a launcher: an in-memory store, no port, and nothing written
        # to os.environ (child processes would otherwise inherit a rendezvous address in use).
        dist.init_process_group(backend=env.backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    return env


def destroy_distributed() -> None:
    """Tear down the default process group if one exists (safe to call twice)."""
    if dist.is_initialized():
        dist.destroy_process_group()

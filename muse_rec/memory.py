"""Host memory as the commands' up-front checks see it, and how their one-line messages show a size.

Light on purpose (psutil and the standard library only): `muse-rec synth` asks before it generates
anything, without importing torch or TorchRec; the planner and the exporter use the same helpers.
"""
from __future__ import annotations

GiB = 1024**3


def format_gib(nbytes: float) -> str:
    """``12.3 GiB``: a byte count as the plan's one-line messages show it (under 0.1 GiB in MiB,
    ``15.4 MiB``, rather than a ``0.0 GiB`` that reads as nothing)."""
    if abs(nbytes) < 0.1 * GiB:
        return f"{nbytes / (1 << 20):.1f} MiB"
    return f"{nbytes / GiB:.1f} GiB"


def available_memory_bytes() -> int:
    """Bytes this process can still allocate: the host's available memory (psutil: what the kernel can
    give without swapping), or less when the process's address-space limit (``ulimit -v``) leaves less."""
    import resource

    import psutil

    available = psutil.virtual_memory().available
    limit, _ = resource.getrlimit(resource.RLIMIT_AS)
    if limit != resource.RLIM_INFINITY:
        available = min(available, max(0, limit - psutil.Process().memory_info().vms))
    return available

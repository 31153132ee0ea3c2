"""A process that works for another one ends when that one does (Linux's parent-death signal).

A SIGKILL (the OOM killer, ``kill -9``) reaches only the process it names; its children go on.
A training rank whose torchrun was killed went on training in the background, holding its run
directory, after `muse-rec launch` had reported the job FAILED; a killed `muse-rec reproduce`
left its torchrun job training OUT's runs. With the parent-death signal the kernel sends the
child SIGTERM when its parent dies, whatever killed it. Elsewhere than on Linux these do nothing.
"""
from __future__ import annotations

import os
import signal
import sys
from typing import Callable, Optional

_PR_SET_PDEATHSIG = 1  # prctl(2) option: the signal this process gets when its parent dies

# Whether a rank runs under a torchrun agent (which sets it for every worker it starts).
TORCHRUN_WORKER_ENV = "TORCHELASTIC_RUN_ID"


def _prctl() -> Optional[Callable[..., int]]:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    return ctypes.CDLL(None, use_errno=True).prctl


def _end_with(parent: int, prctl: Callable[..., int]) -> None:
    prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the call: no signal will come
        os.kill(os.getpid(), signal.SIGTERM)


def ending_with_this_process() -> Optional[Callable[[], None]]:
    """A ``preexec_fn`` for a subprocess that must end when this process does (None where the
    signal does not exist). libc's prctl is looked up here: the child, between fork and exec,
    only calls it."""
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()
    return lambda: _end_with(parent, prctl)


def end_with_torchrun() -> None:
    """In a rank that torchrun started: end when that torchrun ends (nothing in any other process)."""
    prctl = _prctl()
    if prctl is not None and TORCHRUN_WORKER_ENV in os.environ:
        _end_with(os.getppid(), prctl)

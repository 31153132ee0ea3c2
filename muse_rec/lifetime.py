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
import socket
import sys
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, List, Optional

_PR_SET_PDEATHSIG = 1  # prctl(2) option: the signal this process gets when its parent dies

# Whether a rank runs under a torchrun agent (which sets it for every worker it starts).
TORCHRUN_WORKER_ENV = "TORCHELASTIC_RUN_ID"


def _prctl() -> Optional[Callable[..., int]]:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    return ctypes.CDLL(None, use_errno=True).prctl


def _end_with(parent: int, prctl: Callable[..., int], sig: int = signal.SIGTERM) -> None:
    prctl(_PR_SET_PDEATHSIG, sig)
    if os.getppid() != parent:  # the parent died before the call: no signal will come
        os.kill(os.getpid(), sig)


def end_with_parent(parent: int, sig: int = signal.SIGTERM) -> None:
    """Have the kernel send ``sig`` to this process when its parent, pid ``parent``, dies (at once if
    it already has); nothing where the signal does not exist."""
    prctl = _prctl()
    if prctl is not None:
        _end_with(parent, prctl, sig)


def ending_with_this_process() -> Optional[Callable[[], None]]:
    """A ``preexec_fn`` for a subprocess that must end when this process does (None where the
    signal does not exist). libc's prctl is looked up here: the child, between fork and exec,
    only calls it."""
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()
    return lambda: _end_with(parent, prctl)


def torchrun_job() -> Optional[str]:
    """The torchrun job this process is a rank of, the same in each of its restarted attempts (None outside
    torchrun): its rendezvous run id (TorchX gives each submission its own), or where that is torchrun's
    default "none", shared by every job, the host and pid of the torchrun agent that started this rank."""
    run_id = os.environ.get(TORCHRUN_WORKER_ENV)
    if run_id is None or run_id != "none":
        return run_id
    return f"{socket.gethostname()}:{os.getppid()}"


def end_with_torchrun() -> None:
    """In a rank that torchrun started: end when that torchrun ends (nothing in any other process)."""
    if TORCHRUN_WORKER_ENV in os.environ:
        end_with_parent(os.getppid())


# The signals that Python turns into an exception where the program happens to be (KeyboardInterrupt,
# and SIGTERM in `muse_rec.cli.main`).
INTERRUPTS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """SIGINT / SIGTERM that arrive in the block take effect when it ends. For writes that must not be
    cut by an exception: raised inside torch's zip writer one aborted the process (std::terminate,
    exit 134), inside DCP's save it became the save's failure. Only signals with a Python handler are
    deferred (a default action ends the process at once, which the writers' staging survives); only
    on the main thread, the one Python's handlers run on."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: List[int] = []
    previous = {s: h for s in INTERRUPTS if callable(h := signal.getsignal(s))}
    for s in previous:
        signal.signal(s, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if caught:
            signal.raise_signal(caught[0])  # now to the handler it was meant for

"""`muse-rec <args>` in a process of its own that starts without ~3.5 s of imports: a fork of a server
that imported torch, TorchRec and the training stack once.

Why: after the reading commands moved in-process (tests/in_process.py), `muse-rec train` processes are
most of this suite's CPU: ~170 of them, each importing torch, TorchRec, FBGEMM and DCP before a training
of a few seconds. Training cannot run in the test's own process (it configures the root logger, seeds
torch's global generator and may leave threads), so it keeps a process of its own, forked from a server
that did the imports instead of starting from an empty interpreter. One server per test process
(pytest-xdist worker), started on first use, ended when that process exits.

What the child shares with a fresh `muse-rec` process:
- its own pid, module state, RNG state, signal handlers, threads, and exit: `sys.exit(main(args))`
  unwinds and finalises the interpreter as the console script does (atexit, non-daemon threads, an
  uncaught exception printed with exit code 1);
- stdout and stderr at file descriptors 1 and 2 (regular files, read back as text), stdin /dev/null;
- the environment of the suite's subprocesses (`subprocess_env()`) and the repository as its directory;
- what the imports printed (a library's import-time warning) starts the child's stdout and stderr, as a
  fresh process would print it before the command's own lines.

What it cannot give: an environment of its own (the imports already read it: callers pass environment
variables to a real subprocess) or the imports' own failures (a missing library fails the server, which
is reported as such). Tests of the console script itself (tests/launch, the CLI end-to-end tests) run
real processes and keep covering those.
"""
from __future__ import annotations

import atexit
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

# The modules a `train` run imports (its command module, the trainer, the model, TorchRec's sharding,
# FBGEMM's kernels and DCP): the server imports them once, each child starts with them.
PRELOAD = ("muse_rec.cli.train", "muse_rec.training.trainer", "muse_rec.models.ctr_model",
           "muse_rec.distributed.model_parallel", "torchrec", "fbgemm_gpu", "torch.distributed.checkpoint")
# The commands the helpers run here; the reading ones run in the test's process (tests/in_process.py).
FORKED_COMMANDS = frozenset({"train"})
_STARTUP_TIMEOUT_S = 300


def _serve(where: str, extra: List[str]) -> None:
    """The server: import PRELOAD (and ``extra``) with stdout and stderr in files under ``where``, say
    "ready", then per request line fork a child that runs the command and reply its pid and exit code.

    Nothing here may catch an exception around the fork: the child's `sys.exit` (or an uncaught
    exception of the command) must unwind to the interpreter's own exit, as in a fresh process."""
    import importlib

    channel_in, channel_out = os.dup(0), os.dup(1)  # the requests and the replies, kept off fds 0-2
    for fd, name in ((1, "stdout"), (2, "stderr")):  # what the imports print, for every child's output
        f = os.open(os.path.join(where, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(f, fd)
        os.close(f)
    for name in (*PRELOAD, *extra):
        importlib.import_module(name)
    sys.stdout.flush()
    sys.stderr.flush()
    requests = os.fdopen(channel_in, "r", encoding="utf-8")
    replies = os.fdopen(channel_out, "w", encoding="utf-8")
    replies.write("ready\n")
    replies.flush()
    for line in requests:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            requests.close()
            replies.close()
            _become_the_command(req)
            from muse_rec.cli import main

            sys.exit(main(req["args"]))
        replies.write(json.dumps({"pid": pid}) + "\n")
        replies.flush()
        _, status = os.waitpid(pid, 0)
        replies.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
        replies.flush()


def _become_the_command(req: dict) -> None:
    """In the child: stdin /dev/null, stdout and stderr the request's files, argv the console script's."""
    stdin = os.open(os.devnull, os.O_RDONLY)
    os.dup2(stdin, 0)
    os.close(stdin)
    for fd, key in ((1, "stdout"), (2, "stderr")):
        f = os.open(req[key], os.O_WRONLY | os.O_APPEND)
        os.dup2(f, fd)
        os.close(f)
    os.chdir(req["cwd"])
    sys.argv = [req["argv0"], *req["args"]]


class ForkServer:
    """The client's end of one server (`cli_forked` keeps one per test process). For tests of this helper:
    ``extra``, modules to import beside PRELOAD; ``env``, variables on top of the suite's environment."""

    def __init__(self, extra: Sequence[str] = (), env: Optional[Dict[str, str]] = None) -> None:
        from tests.conftest import REPO, subprocess_env

        self.repo = REPO
        self.where = tempfile.mkdtemp(prefix="muse_rec_fork_server_")
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.forked_cli", self.where, *extra], cwd=REPO,
                                     env=subprocess_env(**(env or {})), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE)
        self._pending = b""
        self.last_pid: Optional[int] = None  # the newest command's process
        ready = self._line(_STARTUP_TIMEOUT_S)
        if ready != "ready":
            raise RuntimeError(f"the fork server did not start ({ready!r}): {self._imports('stderr')[-3000:]}")
        self.import_output = {name: self._imports(name) for name in ("stdout", "stderr")}
        atexit.register(self.close)

    def _imports(self, name: str) -> str:
        return _read(Path(self.where) / name)

    def _line(self, timeout: Optional[float]) -> Optional[str]:
        """The server's next reply, None when `timeout` seconds pass first. Read from the pipe's fd with a
        buffer of its own: a buffered reader can hold the next reply where `select` cannot see it."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._pending:
            if deadline is not None and not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(f"the fork server ended ({self.proc.poll()}): {self._imports('stderr')[-3000:]}")
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        return line.decode()

    def run(self, args: Sequence[str], timeout: float) -> subprocess.CompletedProcess:
        """`muse-rec <args>` in a child: ``(returncode, stdout, stderr)``, or `subprocess.TimeoutExpired`
        after ``timeout`` seconds, the child killed and reaped first."""
        from tests.conftest import venv_bin

        assert self.proc.stdin is not None
        with tempfile.TemporaryDirectory(prefix="muse_rec_forked_") as d:
            out, err = Path(d) / "stdout", Path(d) / "stderr"
            out.write_text(self.import_output["stdout"])
            err.write_text(self.import_output["stderr"])
            request = {"args": list(args), "argv0": venv_bin("muse-rec"), "cwd": str(self.repo),
                       "stdout": str(out), "stderr": str(err)}
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            self.proc.stdin.flush()
            self.last_pid = pid = json.loads(self._line(None))["pid"]
            reply = self._line(timeout)
            if reply is None:  # as subprocess.run's timeout: kill the command, then say so
                os.kill(pid, signal.SIGKILL)
                self._line(None)  # its exit code: the server has reaped it
                raise subprocess.TimeoutExpired(["muse-rec", *args], timeout, _read(out), _read(err))
            code = json.loads(reply)["returncode"]
            return subprocess.CompletedProcess(["muse-rec", *args], code, _read(out), _read(err))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # type: ignore[union-attr]  # the server's loop ends at EOF
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.where, ignore_errors=True)


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


_server: Optional[ForkServer] = None
_lock = threading.Lock()


def cli_forked(*args: str, timeout: float) -> subprocess.CompletedProcess:
    """`muse-rec <args>` in a forked process (above): ``(returncode, stdout, stderr)``, or
    `subprocess.TimeoutExpired` after ``timeout`` seconds (the process killed)."""
    global _server
    with _lock:  # one command at a time per server: its replies are one stream
        if _server is None or _server.proc.poll() is not None:
            _server = ForkServer()
        return _server.run(args, timeout)


if __name__ == "__main__":
    _serve(sys.argv[1], sys.argv[2:])

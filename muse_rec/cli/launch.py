"""`muse-rec launch --profile P`: submit a training job where the launch profile says.

The profile (torchx.yaml) names the TorchX scheduler (local_cwd, slurm, kubernetes, ...) and
its options (Slurm partition/time, Volcano queue/namespace, ...); this command builds the same
AppDef as `torchx run components/train.py:train` and hands it to TorchX's runner API::

    muse-rec launch --profile cpu-demo --spec specs/demo/din.yaml --set train.seed=1
    muse-rec launch --profile multi-node --dryrun        # prints the sbatch script
    muse-rec launch --profile k8s-multi-node --dryrun    # prints the Volcano job

Local schedulers run in the foreground with the ranks' logs (like `torchx run`); remote ones
print the app handle and how to follow it.
"""
from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Dict, List, Optional

from muse_rec.cli.errors import report
from muse_rec.cli.flags import int64, optional_input_file
from muse_rec.exit_codes import BAD_INPUT, EXIT_CODES_ENV, recorded

HELP = "submit training to the launch profile's scheduler (local, Slurm, Kubernetes) via TorchX"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", required=True, help="launch profile in torchx.yaml, e.g. cpu-demo, multi-node")
    p.add_argument("--spec", type=optional_input_file, default="", help="spec file (default: the profile's spec)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec key, e.g. --set train.max_steps=20 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")
    p.add_argument("--dryrun", action="store_true",
                   help="print what would be submitted (sbatch script, Kubernetes job, local processes); submit nothing")
    p.add_argument("--scheduler-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="set or replace one of the profile's scheduler_args, e.g. partition=debug (repeatable)")
    p.add_argument("--rdzv-port", type=int64, default=0, help="c10d rendezvous port (default: the profile's)")
    p.add_argument("--profiles-file", type=optional_input_file, default="", help="another launch-profiles file instead of torchx.yaml")
    p.add_argument("--wait", action="store_true", help="remote schedulers: wait for the job and stream its logs")


def run(args: argparse.Namespace) -> int:
    from torchx.runner import get_runner
    from torchx.schedulers.local_scheduler import SignalException
    from torchx.specs import AppState

    from muse_rec.launch import (build_app, local_gpu_shortfall, local_rendezvous_problem, local_start_problem, preflight,
                                 scheduler_cfg)
    from muse_rec.launch_profiles import LOCAL_SCHEDULER, ProfileError, get_profile
    from muse_rec.spec import SpecError

    try:
        profile = get_profile(args.profile, args.profiles_file or None)
        from_flags = _pairs(args.scheduler_arg, "--scheduler-arg")
        profile.scheduler_args.update(from_flags)
        spec = args.spec or profile.spec
        # A bad spec, override or used run directory fails here, not on every rank later.
        preflight(profile, profile.scheduler, args.spec, args.set, args.resume, check_data=not args.dryrun)
        app = build_app(profile, spec=spec, overrides=args.set, resume=args.resume, rdzv_port=args.rdzv_port)
    except (ProfileError, SpecError, ValueError) as e:
        report("launch", e)
        return 2
    runner = get_runner()
    exit_codes: Optional[Path] = None
    try:
        if profile.scheduler not in runner.scheduler_backends():
            print(f"muse-rec launch: profiles.{profile.name}.scheduler: {profile.scheduler!r} is not a TorchX "
                  f"scheduler (have: {', '.join(runner.scheduler_backends())})", file=sys.stderr)
            return 2
        local = profile.scheduler.startswith("local")
        if local and not args.dryrun:  # its ranks run here: each one's exit code is read back (`exit_codes`)
            exit_codes = Path(tempfile.mkdtemp(prefix="muse-rec-launch-exit-codes-"))
            for role in app.roles:
                role.env[EXIT_CODES_ENV] = str(exit_codes)
        try:
            cfg = scheduler_cfg(profile, profile.scheduler, runner, given_by_flag=from_flags)
            info = runner.dryrun(app, profile.scheduler, cfg=cfg)
        except ProfileError as e:
            report("launch", e)
            return 2
        except ModuleNotFoundError as e:
            print(_missing_client_line(profile.scheduler, e), file=sys.stderr)
            return 2
        except FileNotFoundError as e:
            # TorchX runs a program to apply a scheduler option, e.g. `nvidia-smi` for local_cwd's
            # auto_set_cuda_visible_devices: where it is not installed that was a traceback (exit 1).
            program = e.filename or str(e)
            gpu_opt = "auto_set_cuda_visible_devices"
            if gpu_opt in profile.scheduler_args:
                origin = f"--scheduler-arg {gpu_opt}" if gpu_opt in from_flags \
                    else f"profiles.{profile.name}.scheduler_args.{gpu_opt}"
                print(f"muse-rec launch: {origin}: TorchX runs {program!r} for it, which is not on PATH here "
                      "(no NVIDIA driver on this machine?); leave the option out", file=sys.stderr)
            else:
                print(f"muse-rec launch: the {profile.scheduler} scheduler needs the program {program!r}, which is "
                      "not on PATH here", file=sys.stderr)
            return 2
        where = f"{profile.scheduler}, {profile.nodes} node(s) x {profile.procs_per_node} process(es)"
        shortfall = local_gpu_shortfall(profile)
        if shortfall:
            print(f"muse-rec launch: {shortfall}", file=sys.stderr)
        if args.dryrun:
            print(f"# muse-rec launch --profile {profile.name} --dryrun: {where}; spec {spec}")
            print(info)
            return 0
        if profile.scheduler == LOCAL_SCHEDULER:
            # A program that is not there fails the job at once, its reason lost with the
            # job's temporary logs, and a rendezvous port another program holds hangs it: said
            # here instead, before anything starts.
            problem = local_start_problem(app) or local_rendezvous_problem(profile, args.rdzv_port)
            if problem:
                print(f"muse-rec launch: {problem}", file=sys.stderr)
                return 2
        try:
            handle = runner.schedule(info)
        except ModuleNotFoundError as e:
            # aws_batch imports its client (boto3) only to submit: a dry run printed the job, the launch
            # said to submit from elsewhere (exit 1), where installing it here is what is needed.
            print(_missing_client_line(profile.scheduler, e), file=sys.stderr)
            return 2
        except Exception as e:  # noqa: BLE001 - the scheduler's client: any failure here was a traceback
            # A remote scheduler's client fails here: `sbatch` not on PATH (not a Slurm login node), a
            # Kubernetes API that cannot be reached (no kubeconfig), a rejected request.
            advice = _SUBMIT_ADVICE.get(profile.scheduler, "submit from where that scheduler can be reached")
            print(f"muse-rec launch: could not submit to the {profile.scheduler} scheduler ({type(e).__name__}: "
                  f"{' '.join(str(e).split())}); {advice}", file=sys.stderr)
            return 1
        print(f"muse-rec launch: submitted {handle} ({where})", file=sys.stderr)
        if not (local or args.wait):
            print(f"follow it with: torchx status {handle}  |  torchx log {handle}", file=sys.stderr)
            return 0
        stopped = threading.Event()
        logs = _stream_logs(runner, handle, stopped)
        try:
            status = runner.wait(handle, wait_interval=1)
        except SignalException as e:
            # The local scheduler turns SIGINT / SIGTERM into this exception (a traceback, exit 1, before).
            # Cancelled first, closed after: the log follower sees the job end (closing deletes the job's
            # log directory under a follower still reading it: its traceback came after the line below).
            # Closing stops whatever is left, so that line is true.
            stopped.set()
            runner.cancel(handle)
            logs.join(timeout=_LOG_FOLLOWER_GRACE_S)
            runner.close()
            print(f"muse-rec launch: interrupted ({e.sigval.name}); its ranks were stopped: the same command with "
                  "--resume continues the run from its last checkpoint (one every train.checkpoint_every steps; "
                  "without one, from step 0)", file=sys.stderr)
            return 128 + int(e.sigval)  # the shell's convention, as for Ctrl-C elsewhere
        logs.join(timeout=30)
        state = status.state if status else None
        refused = sorted(r for r, c in recorded(exit_codes).items() if c == BAD_INPUT) if exit_codes else []
        if state != AppState.SUCCEEDED and refused:
            # Bad input, said by the rank(s) above in one line each: --resume would be refused the same way.
            print(f"muse-rec launch: {handle} finished: {state}; rank(s) {', '.join(map(str, refused))} refused "
                  f"the input (exit {BAD_INPUT}): the lines above name it; fix it and run the same command",
                  file=sys.stderr)
            return BAD_INPUT
        # A failed job's own lines (a rank's error, torchrun's "Root Cause") say why; this one says how to go on,
        # as an interrupted launch's does: a killed rank (SIGKILL, the OOM killer) left its run to resume.
        how_to_continue = "" if state == AppState.SUCCEEDED else (
            "; the lines above say why (torchrun's 'Root Cause' names the rank that failed first). Where a rank was "
            "killed (SIGKILL, the OOM killer) or hung, or once the cause is fixed, the same command with --resume "
            "continues the run from its last checkpoint (one every train.checkpoint_every steps; without one, from "
            "step 0)")
        print(f"muse-rec launch: {handle} finished: {state}{how_to_continue}", file=sys.stderr)
        return 0 if state == AppState.SUCCEEDED else 1
    finally:
        runner.close()
        if exit_codes is not None:
            shutil.rmtree(exit_codes, ignore_errors=True)


def _missing_client_line(scheduler: str, e: ModuleNotFoundError) -> str:
    """One line: ``scheduler``'s TorchX client needs the module ``e`` names, and the pip command that installs it."""
    from muse_rec.launch import client_install_command

    return (f"muse-rec launch: the {scheduler} scheduler needs the Python package {e.name!r} "
            f"({client_install_command(scheduler, str(e.name))})")


def _pairs(items: List[str], flag: str) -> Dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag} {item!r}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


# What to do when a remote scheduler's client cannot submit (`muse-rec launch` calls it from this machine).
_SUBMIT_ADVICE = {
    "slurm": "submit from a Slurm login node, where `sbatch` is on PATH (docs/launch.md, Slurm)",
    "kubernetes": "submit from where `kubectl` reaches the cluster (its kubeconfig, or KUBECONFIG; docs/launch.md, "
                  "Kubernetes)",
}

# How long an interrupted launch waits for the log follower to see the cancelled job end.
_LOG_FOLLOWER_GRACE_S = 10.0


class _UntilStopped(io.TextIOBase):
    """``sys.stderr`` until ``stopped`` is set, then nothing. What the ranks' logs hold after an
    interrupt is torchrun's own report of the SIGTERM that cancelling sends it (a traceback from its
    agent) and the ranks' shutdown: the launch's one line says what happened and how to go on."""

    def __init__(self, stopped: threading.Event) -> None:
        super().__init__()
        self._stopped = stopped

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not self._stopped.is_set():
            sys.stderr.write(text)
        return len(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _stream_logs(runner, handle: str, stopped: threading.Event) -> threading.Thread:
    """Every rank's log lines on stderr while the job runs (TorchX's own log follower), none once
    ``stopped`` is set (`_UntilStopped`). A follower failure then is expected and not shown either;
    one while the job runs is one line."""
    from torchx.cli.cmd_log import get_logs

    def follow() -> None:
        try:
            get_logs(file=_UntilStopped(stopped), runner=runner, identifier=handle, regex=None, should_tail=True)
        except Exception as e:  # noqa: BLE001 - a thread's exception would be a traceback on stderr
            if not stopped.is_set():
                print(f"muse-rec launch: stopped following the ranks' logs ({type(e).__name__}: "
                      f"{' '.join(str(e).split())}); the job goes on: torchx log {handle}", file=sys.stderr)

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    return t

"""The TorchX AppDef that runs a spec on a launch profile, and the checks made before it starts.

A profile (`muse_rec.launch_profiles`, torchx.yaml) decides WHERE a job runs (TorchX scheduler +
its options, nodes x processes, resources, image, restarts); the spec decides WHAT runs. `components/train.py` (for
`torchx run`) and `muse-rec launch` (TorchX's runner API) both build their AppDef with
`build_app`, so the two entry points cannot drift apart.
"""
from __future__ import annotations

import os
import shlex
import shutil
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Collection, Dict, List, Optional, Sequence

from muse_rec.launch_profiles import LOCAL_SCHEDULER, MAX_PORT, LaunchProfile, ProfileError

if TYPE_CHECKING:  # for annotations only: torchx is imported where it is used, as in build_app
    from torchx.specs import AppDef, Role

# torchrun reads every option also from PET_<OPTION> (torch.distributed.argparse_util.env);
# TorchX 0.7's dist.ddp has no max_restarts argument, so the profile's value travels this way.
TORCHRUN_MAX_RESTARTS_ENV = "PET_MAX_RESTARTS"
ROLE_NAME = "trainer"
# Schedulers whose jobs run on the nodes' own filesystems: TorchX ignores a role's mounts there.
_NO_MOUNT_SCHEDULERS = (LOCAL_SCHEDULER, "slurm")


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


def preflight(profile: LaunchProfile, scheduler: str, spec: str = "", overrides: Sequence[str] = (),
              resume: bool = False, resume_flag: str = "--resume", check_data: bool = True) -> None:
    """What would fail on every rank once the job runs, refused before it is submitted: a spec or
    override that does not load (`SpecError`), and on `local_cwd`, whose ranks run in this directory
    on this machine, prepared data that is not there or lacks a split the spec uses (`SpecError`; not
    when ``check_data`` is False: a dry run, which submits nothing), a fresh run into a used run
    directory, or a resume into a directory in use, one holding no run, or with other training settings
    (`RunDirError`, as `muse-rec train` words it, with ``resume_flag`` as the caller's command spells
    it). Elsewhere (a container, a cluster) the data and directory may not be visible from here: the
    ranks check them."""
    from muse_rec.spec import SpecError, load_spec
    from muse_rec.training.run_dir import (RunDirError, check_not_inside_an_artifact, check_resumable,
                                           check_spec_names_its_run, previous_contents, used_run_dir_message)
    from muse_rec.training.run_record import RunError, check_resume_place, check_resume_settings, open_spec_data

    if not spec and not Path(profile.spec).is_file():
        # The profile's spec is a path relative to where the job is launched (and, on Slurm, run): the
        # repository root. From elsewhere it read "specs/demo/muse.yaml: spec file not found", a file the
        # user never named.
        raise ProfileError(f"profiles.{profile.name}.spec: {profile.spec} is not found from {Path.cwd()}: launch "
                           "from the repository root (a profile's spec, and a spec's output_dir and data.prepared, "
                           "are relative to the directory the job starts in), or give --spec")
    resolved = load_spec(spec or profile.spec, list(overrides))
    check_spec_names_its_run(spec or profile.spec, resolved.run_dir)
    if scheduler != "local_cwd":
        return
    run_dir = Path(resolved.run_dir)
    if not resume:
        check_not_inside_an_artifact(run_dir, f"output_dir {run_dir}")
        used = previous_contents(run_dir)
        if used:
            raise RunDirError(used_run_dir_message(run_dir, used, resume_flag, overwrite=False))
    else:
        # A resume's refusals, said once here as `muse-rec train` words them, not by every rank amid
        # torchrun's tracebacks: a directory in use or holding no run, other training settings than the
        # run's, a number of ranks that cannot continue the checkpoint's epoch (from its position.json and
        # the data's meta.json; a checkpoint or data that cannot be read is said as the ranks would).
        check_resumable(run_dir)
        try:
            check_resume_settings(run_dir / "spec.yaml", resolved, overwrite=False)  # neither command has --overwrite
        except RunError as e:  # a ValueError, as the callers expect of the user's input
            raise RunDirError(str(e)) from None
    if check_data:
        # Each rank refuses data that is not there in this same line (`training.run_record.open_spec_data`): said
        # once here, not by every rank above torchrun's ChildFailedError traceback.
        try:
            open_spec_data(resolved)
        except RunError as e:  # a RuntimeError: as the spec's error (a ValueError), what the callers expect
            raise SpecError(str(e)) from None
    if resume:
        try:
            check_resume_place(run_dir, resolved, profile.world_size)
        except RunError as e:
            raise RunDirError(str(e)) from None


def build_app(
    profile: LaunchProfile,
    spec: str = "",
    overrides: Sequence[str] = (),
    resume: bool = False,
    rdzv_port: int = 0,
    max_restarts: Optional[int] = None,
    scheduler: Optional[str] = None,
    rdzv_flag: str = "--rdzv-port",
):
    """The TorchX AppDef of `muse-rec train` on every rank of `profile` (torchrun via dist.ddp).

    Args:
        profile: where and how wide the job runs.
        spec: the spec file (default: the profile's).
        overrides: ``key=value`` spec overrides, passed on as ``--set``.
        resume: continue from the run directory's latest checkpoint.
        rdzv_port: c10d rendezvous port (0 = the profile's).
        max_restarts: torchrun worker-group restarts (None = the profile's).
        scheduler: the scheduler it is submitted to (None = the profile's); on local_cwd torchrun
            is this interpreter's, elsewhere the `torchrun` on the node's or image's PATH.
        rdzv_flag: how the caller's command spells ``rdzv_port`` (the component: ``--rdzv_port``).
    """
    from torchx.components import dist

    if not 0 <= rdzv_port <= MAX_PORT:
        raise ProfileError(f"{rdzv_flag} {rdzv_port}: must be a TCP port in [1, {MAX_PORT}] (0 = the profile's)")
    if profile.mounts and (scheduler or profile.scheduler) in _NO_MOUNT_SCHEDULERS:
        raise ProfileError(f"profiles.{profile.name}.mounts: the {scheduler or profile.scheduler} scheduler runs the "
                           "job on the nodes' own filesystems and ignores mounts; leave them out there")
    env = dict(profile.env)
    restarts = profile.max_restarts if max_restarts is None else max_restarts
    if restarts:
        env[TORCHRUN_MAX_RESTARTS_ENV] = str(restarts)
    app = dist.ddp(
        *train_args(spec or profile.spec, list(overrides), resume),
        m="muse_rec.cli",
        name="muse-rec-train",
        image=profile.image,
        j=profile.j,
        cpu=profile.cpu,
        gpu=profile.gpu,
        memMB=profile.memMB,
        env=env,
        max_retries=profile.max_retries,
        rdzv_port=rdzv_port or profile.rdzv_port,
        # TorchX takes one flat list of options; each mount begins at its type=.
        mounts=[opt for mount in profile.mounts for opt in mount.split(",")] or None,
    )
    # dist.ddp names the role after the module ("cli"); schedulers name jobs, pods and log
    # files after it (Slurm job "trainer-0", pod "trainer-0", local log "trainer/0").
    app.roles[0].name = ROLE_NAME
    if (scheduler or profile.scheduler) == LOCAL_SCHEDULER:
        _use_this_pythons_torchrun(app.roles[0])
    return app


def _use_this_pythons_torchrun(role: "Role") -> None:
    """Start torchrun as ``<this interpreter> -m torch.distributed.run`` instead of by name.

    dist.ddp runs ``bash -c "torchrun ..."``, so the ranks ran whichever torchrun the PATH held:
    none where the venv is not activated (`.venv/bin/muse-rec launch`), another environment's
    where one is. On local_cwd the ranks run here, and the interpreter building the app (that of
    `muse-rec` or `torchx`) is the one that has torch and muse_rec. A remote node or image cannot
    be assumed to have this path, so there the command keeps TorchX's `torchrun`.
    """
    prefix = "torchrun "
    if role.args[:1] != ["-c"] or len(role.args) != 2 or not role.args[1].startswith(prefix):
        raise RuntimeError(f"TorchX's dist.ddp no longer runs `bash -c 'torchrun ...'` (role args {role.args!r}): "
                           "muse_rec/launch.py:_use_this_pythons_torchrun needs updating")
    role.args[1] = f"{shlex.quote(sys.executable)} -m torch.distributed.run {role.args[1][len(prefix):]}"


def local_start_problem(app: "AppDef") -> Optional[str]:
    """Why local_cwd could not start `app` on this machine, in one line naming what to do, or None.

    The local scheduler starts each role's entrypoint found on the role's PATH, then this
    process's, then the working directory. A missing entrypoint is a traceback from TorchX, a
    missing program in its ``bash -c`` command a job FAILED with ``structured_error_msg: <NONE>``
    and the reason in logs TorchX deletes: both are looked up here, before submitting.
    """
    for role in app.roles:
        path = os.pathsep.join(p for p in (role.env.get("PATH"), os.environ.get("PATH"), os.getcwd()) if p)
        if shutil.which(role.entrypoint, path=path) is None:
            return (f"cannot start the {role.name} role: its entrypoint {role.entrypoint!r} is not found on PATH; "
                    f"install it or put its directory on PATH")
        if Path(role.entrypoint).name in ("bash", "sh") and role.args[:1] == ["-c"] and len(role.args) > 1:
            words = shlex.split(role.args[1])
            if words and shutil.which(words[0], path=path) is None:
                return (f"cannot start the {role.name} role: {words[0]!r}, which its command starts, is not found "
                        f"on PATH; put the bin directory of the Python environment holding torch and muse_rec "
                        f"first on PATH (e.g. PATH=$PWD/.venv/bin:$PATH)")
    return None


def local_rendezvous_problem(profile: LaunchProfile, rdzv_port: int = 0, rdzv_flag: str = "--rdzv-port") -> Optional[str]:
    """Why a local_cwd job of several nodes could not hold its rendezvous on this machine, in one line, or None.

    One node's torchrun picks a free port itself (TorchX passes ``localhost:0``); of several, the first hosts
    the c10d store at ``localhost:PORT`` (``rdzv_port``, 0 = the profile's) and the others join it. Where
    another program already listens there, the agents connect to it instead: measured with a silent listener,
    one agent failed after torch's 60 s connect timeout and the other waited on its connection for as long as
    the launch was left running (over 5 minutes).
    """
    if profile.scheduler != LOCAL_SCHEDULER or profile.nodes <= 1:
        return None
    port = rdzv_port or profile.rdzv_port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As the store's server binds: SO_REUSEADDR lets it reuse a port in TIME_WAIT, not one being listened on.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError as e:
            where = f"{rdzv_flag} {port}" if rdzv_port else f"profiles.{profile.name}.rdzv_port {port}"
            return (f"{where}: this port is in use on this machine ({e.strerror}), where the first of the job's "
                    f"{profile.nodes} nodes hosts the c10d rendezvous; the agents would connect to whatever holds "
                    f"it and wait: give a free port with {rdzv_flag}")
    return None


def local_gpu_shortfall(profile: LaunchProfile) -> Optional[str]:
    """A warning, where a local profile asks for GPUs that this machine's torch does not see, or None.

    The ranks then train on CPU (each rank's device falls back to it) and the job ends SUCCEEDED: only the
    first training line ("8 rank(s) on cpu") said so. A CPU-only torch is `scripts/setup.sh`'s default."""
    if profile.scheduler != LOCAL_SCHEDULER or profile.gpu <= 0:
        return None
    import torch

    if torch.cuda.is_available():
        return None
    return (f"warning: profile {profile.name} asks for {profile.gpu} GPU(s) per node, but this torch sees none "
            f"(torch {torch.__version__}; a CPU-only install? `muse-rec info` says, `MUSE_REC_PROFILE=cuda bash "
            f"scripts/setup.sh` installs the CUDA build): its {profile.world_size} rank(s) would train on CPU")


# Scheduler options that work only with a TorchX workspace (`torchx run` snapshots the working directory
# into them), which `muse-rec launch` does not build: its jobs start in the directory they are submitted from.
_WORKSPACE_ONLY_OPTIONS = {
    ("slurm", "job_dir"): "muse-rec launch starts the job in the directory it is submitted from (the repository "
                          "root, on a filesystem every node sees); with job_dir Slurm would start it in that other "
                          "directory, which holds neither the spec nor .venv (TorchX fills it only for `torchx run`'s "
                          "workspace); leave job_dir out (the logs go to slurm-JOBID-trainer-N.out where you submit)",
}


def client_install_command(scheduler: str, module: str) -> str:
    """The pip command that installs what TorchX's ``scheduler`` failed to import (``module``): TorchX's extra of
    that name where it has one (gcp_batch imports ``google.cloud``, which names no package: ``pip install
    google.cloud`` installs nothing that provides it), else the module's name (boto3 of aws_sagemaker)."""
    from importlib import metadata

    try:
        extras = metadata.metadata("torchx").get_all("Provides-Extra") or []
    except metadata.PackageNotFoundError:
        extras = []
    return f"pip install 'torchx[{scheduler}]'" if scheduler in extras else f"pip install {module}"


def scheduler_cfg(profile: LaunchProfile, scheduler: str, runner,
                  given_by_flag: Collection[str] = ()) -> Dict[str, object]:
    """The profile's ``scheduler_args`` typed by `scheduler`'s runopts; errors name the key.

    An option the scheduler does not know, or a required one the profile lacks (e.g. the
    Volcano ``queue`` of kubernetes), raises ProfileError naming ``profiles.NAME.scheduler_args``,
    or, for an option in ``given_by_flag``, the ``--scheduler-arg`` that set it; a scheduler whose TorchX
    module fails to import other than for a missing module (ModuleNotFoundError, raised as it is) raises
    ProfileError naming ``profiles.NAME.scheduler``.
    """
    try:
        opts = runner.scheduler_run_opts(scheduler)  # imports the scheduler's TorchX module
    except ModuleNotFoundError:
        raise  # the caller names the package to install
    except Exception as e:  # noqa: BLE001 - TorchX's module failing to import: any error was a traceback
        # TorchX 0.7's ray module, without `ray` installed, fails at its import with a NameError (an
        # annotation names a class its guarded import never defined), not a ModuleNotFoundError.
        raise ProfileError(f"profiles.{profile.name}.scheduler: TorchX cannot load its {scheduler} scheduler here "
                           f"({type(e).__name__}: {' '.join(str(e).split())}); install the Python client it needs "
                           f"(for ray: pip install 'ray[default]'), or choose another scheduler") from None
    key = f"profiles.{profile.name}.scheduler_args"
    known = {name: opt for name, opt in opts}
    cfg: Dict[str, object] = {}
    for name, text in profile.scheduler_args.items():
        # An option given on the command line is not in the profiles file: name the flag the user typed.
        where = f"--scheduler-arg {name}" if name in given_by_flag else f"{key}.{name}"
        if name not in known:
            raise ProfileError(f"{where}: not an option of the {scheduler} scheduler "
                               f"(it has: {', '.join(sorted(known))})")
        if (scheduler, name) in _WORKSPACE_ONLY_OPTIONS:
            raise ProfileError(f"{where}: {_WORKSPACE_ONLY_OPTIONS[scheduler, name]}")
        cfg[name] = _typed(text, known[name].opt_type, where)
    missing = [n for n, o in known.items() if o.is_required and n not in cfg]
    if missing:
        raise ProfileError(f"{key}.{missing[0]}: required by the {scheduler} scheduler "
                           f"({known[missing[0]].help})")
    return cfg


def _typed(text: str, opt_type, where: str) -> object:
    if opt_type is bool:
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ProfileError(f"{where}: expected true or false, got {text!r}")
    if opt_type in (int, float):
        try:
            return opt_type(text)
        except ValueError:
            raise ProfileError(f"{where}: expected {opt_type.__name__}, got {text!r}") from None
    if opt_type is list or getattr(opt_type, "__origin__", None) is list:
        return [t.strip() for t in text.split(",") if t.strip()]
    return text

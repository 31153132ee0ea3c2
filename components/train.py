"""TorchX components of muse_rec.

Run from the repository root (`.torchxconfig` makes local_cwd the default scheduler)::

    torchx run components/train.py:train --profile cpu-demo --spec specs/demo/muse.yaml
    torchx run -s slurm -cfg partition=gpu components/train.py:train --profile multi-node

The launch profile (torchx.yaml) fixes nodes x processes, resources, image, restarts and the
scheduler it is meant for; the spec fixes everything about the run itself. `torchx run` takes
the scheduler from `-s` (or .torchxconfig), so this component only warns when that differs
from the profile's; `muse-rec launch --profile P` submits to the profile's scheduler with the
profile's scheduler options.
"""
import sys
from pathlib import Path
from typing import List, Optional

import torchx.specs as specs

from muse_rec.launch import build_app, local_start_problem, preflight, split_overrides
from muse_rec.launch_profiles import LOCAL_SCHEDULER, ProfileError, get_profile

PROFILES_RESTARTS = -1  # `max_restarts` meaning "the profile's"


def train(
    spec: str = "",
    profile: str = "cpu-demo",
    set: str = "",
    resume: bool = False,
    rdzv_port: int = 0,
    max_restarts: int = PROFILES_RESTARTS,
    profiles_file: str = "",
) -> specs.AppDef:
    """Train and evaluate one muse_rec spec with DistributedModelParallel on every rank.

    Args:
        spec: the run's spec file (default: the profile's spec)
        profile: launch profile in torchx.yaml (cpu-demo, cpu-single, gpu-node, multi-node, k8s-multi-node)
        set: comma-separated spec overrides, e.g. "train.max_steps=20,model.tower_hidden=[64,32]"
        resume: continue from the run directory's latest checkpoint
        rdzv_port: c10d rendezvous port (0 = the profile's)
        max_restarts: torchrun restarts after a rank fails, each resuming from the last checkpoint (-1 = the profile's)
        profiles_file: another launch-profiles file instead of torchx.yaml
    """
    # Primitive arguments only (TorchX decodes the command line by the annotations).
    chosen = _scheduler_of_this_torchx_run(sys.argv)  # None: not `torchx run` (`muse-rec launch`, a test)
    try:
        if max_restarts < PROFILES_RESTARTS:  # -5 was taken for -1, the profile's, without a word
            raise ProfileError(f"--max_restarts {max_restarts}: must be >= 0, or {PROFILES_RESTARTS} for the "
                               "profile's max_restarts")
        p = get_profile(profile, profiles_file or None)
        if chosen is not None:
            if chosen != p.scheduler:
                print(
                    f"muse_rec: WARNING: profile {p.name!r} is meant for the {p.scheduler} scheduler, but this "
                    f"`torchx run` submits to {chosen} ({p.nodes} node(s) x {p.procs_per_node} process(es)); "
                    f"`muse-rec launch --profile {p.name}` uses the profile's scheduler and options",
                    file=sys.stderr,
                )
            # As `muse-rec launch` does: a bad spec, override or used run directory fails here, in one
            # line, not on every rank once the job runs.
            # (`torchx run --dryrun` submits nothing: the data need not be there yet.)
            preflight(p, chosen, spec, split_overrides(set), resume, resume_flag="--resume True",
                      check_data="--dryrun" not in sys.argv)
        # On local_cwd torchrun is this interpreter's (the one running `torchx`), not the PATH's.
        app = build_app(p, spec=spec, overrides=split_overrides(set), resume=resume, rdzv_port=rdzv_port,
                        max_restarts=None if max_restarts == PROFILES_RESTARTS else max_restarts, scheduler=chosen,
                        rdzv_flag="--rdzv_port")
    except ValueError as e:  # ProfileError, SpecError, RunDirError: the user's input
        if chosen is None:
            raise
        print(f"muse_rec: {' '.join(str(e).split())}", file=sys.stderr)
        raise SystemExit(2) from None
    # A local job whose program is missing fails with "structured_error_msg: <NONE>" and its
    # reason in logs that `torchx run` deletes: say it now, in one line.
    problem = local_start_problem(app) if chosen == LOCAL_SCHEDULER else None
    if problem:
        print(f"muse_rec: {problem}", file=sys.stderr)
        raise SystemExit(2)
    return app


def _scheduler_of_this_torchx_run(argv: List[str]) -> Optional[str]:
    """The scheduler `torchx run` was given (``-s X``, else .torchxconfig's, else TorchX's default).

    None when this process is not the `torchx run` CLI (e.g. `muse-rec launch` or a test
    calling the component), where the caller picks the scheduler itself.
    """
    if not argv or Path(argv[0]).name != "torchx" or "run" not in argv:
        return None
    args = argv[argv.index("run") + 1:]
    for i, a in enumerate(args):
        if a in ("-s", "--scheduler") and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--scheduler="):
            return a.split("=", 1)[1]
        if a.startswith("-s") and len(a) > 2 and not a.startswith("--"):
            return a[2:]
        if not a.startswith("-") and (i == 0 or args[i - 1] not in _RUN_OPTIONS_WITH_VALUE):
            break  # the component name: what follows are the component's own arguments
    from torchx.runner import config
    from torchx.schedulers import get_default_scheduler_name

    return config.get_config(prefix="cli", name="run", key="scheduler") or get_default_scheduler_name()


# `torchx run` options that take a value (0.7.0), so their value is not taken for the component.
_RUN_OPTIONS_WITH_VALUE = {"-cfg", "--scheduler_args", "--workspace", "--buck-target", "--parent_run_id"}

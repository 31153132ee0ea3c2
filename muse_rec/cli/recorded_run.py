"""A run's recorded spec.yaml read in a copy of the run: the copy's checkpoints are the ones meant.

A run writes its resolved spec into its directory (``spec.yaml``), whose ``output_dir`` names the run's
directory (absolute). After ``cp -r RUN COPY``, ``--spec COPY/spec.yaml`` read RUN's checkpoints, silently.
`evaluate`, `export` and `rank` read a checkpoint of the spec's run: each goes through `spec_of_own_run`.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Optional, Sequence

from muse_rec.spec import Spec

RECORDED_SPEC = "spec.yaml"  # the resolved spec a run writes into its directory (`training.trainer`)


def own_run_of_spec(spec_file: str, overrides: Sequence[str], run_dir: str) -> Optional[Path]:
    """The run directory ``spec_file`` was recorded in, where that is not ``run_dir`` (its ``output_dir``).

    A spec.yaml beside a run.json and a checkpoints/ folder is that run's record: its checkpoints are the
    ones meant, unless the user set ``output_dir`` (``--set``). None where the spec file is no run's record."""
    if "://" in spec_file or any(ov.split("=", 1)[0].strip() == "output_dir" for ov in overrides):
        return None
    here = Path(spec_file).absolute().parent
    if (Path(spec_file).name != RECORDED_SPEC or not (here / "run.json").is_file()
            or not (here / "checkpoints").is_dir()):
        return None
    return None if here.resolve() == Path(run_dir).absolute().resolve() else here


def spec_of_own_run(command: str, doing: str, spec_file: str, overrides: Sequence[str], spec: Spec) -> Spec:
    """``spec`` with ``output_dir`` the run whose record ``spec_file`` is (`own_run_of_spec`), said in one line on
    stderr (``muse-rec COMMAND: ... DOING its checkpoints ...``); ``spec`` itself where there is no such run.
    Call it only where the checkpoint comes from the spec's run (no ``--checkpoint``)."""
    own = own_run_of_spec(spec_file, overrides, spec.run_dir)
    if own is None:
        return spec
    print(f"muse-rec {command}: --spec {spec_file} is the record of run {own}: {doing} its checkpoints, not those "
          f"of its output_dir {spec.run_dir} (pass --checkpoint or --set output_dir=... for another's)",
          file=sys.stderr)
    # A literal brace of the path is no {name} placeholder.
    return dataclasses.replace(spec, output_dir=str(own).replace("{", "{{").replace("}", "}}"))

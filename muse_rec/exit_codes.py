"""Each rank's exit code, kept for the launcher: torchrun reports any failed rank as exit 1.

A rank that refuses its input exits 2 (README "Exit codes"), but torchrun, and so TorchX's job
state, says only that the job failed: `muse-rec launch` exited 1, as for a bug or a killed rank,
and told the user to --resume. A local launch names a directory in `EXIT_CODES_ENV`; each rank
that exits non-zero writes its code there (`record`), and the launcher reads them (`recorded`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict

EXIT_CODES_ENV = "MUSE_REC_EXIT_CODES_DIR"
BAD_INPUT = 2  # the exit code of a refused input (README "Exit codes")
_PREFIX = "rank-"


def record(code: int) -> None:
    """Write this process's non-zero exit ``code`` as ``rank-<RANK>`` under `EXIT_CODES_ENV`, where set."""
    where = os.environ.get(EXIT_CODES_ENV)
    if not where or code == 0:
        return
    try:
        (Path(where) / f"{_PREFIX}{int(os.environ.get('RANK', '0') or 0)}").write_text(f"{code}\n")
    except (OSError, ValueError):  # the code itself still ends the process; the launcher then says 1
        pass


def recorded(where: Path) -> Dict[int, int]:
    """``{rank: exit code}`` the ranks wrote under ``where`` (`record`); unreadable entries left out."""
    codes: Dict[int, int] = {}
    for f in where.glob(f"{_PREFIX}*"):
        try:
            codes[int(f.name[len(_PREFIX):])] = int(f.read_text().strip())
        except (OSError, ValueError):
            continue
    return codes

"""Train a list of runs one after another inside ONE distributed job (every rank runs this).

`muse-rec reproduce` launches ``torchrun ... -m muse_rec.reproduce.worker JOB.json`` once for
all pending runs instead of once per run: on a small CPU box the launch, the imports and the
process-group set-up cost ~20 s per process, as much as a whole demo training, so sharing them
halves the wall time of the reproduction. Each run still gets its own spec, seed, model,
optimizers and run directory (`muse_rec.training.trainer.train` is called per run).

JOB.json::

    {"device": "cpu" | "cuda" | null,
     "progress": "<path of the JSON-lines progress file rank 0 appends to>",
     "runs": [{"name": ..., "spec": <spec file>, "overrides": [key=value, ...]}, ...]}

Progress events (one JSON object per line): ``{"event": "start"|"done", "name", "time",
"seconds" (done only), "gauc" (done only)}``. A run that fails raises: the whole job stops
(the other ranks would hang in collectives otherwise) and the launcher decides what to do.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional


def _append(path: Optional[str], event: Dict) -> None:
    if not path:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(event) + "\n")
        f.flush()


def run_job(job: Dict) -> int:
    """Train every run of ``job`` in order on this rank; returns the number trained."""
    import torch.distributed as dist

    from muse_rec.distributed.env import DistEnv
    from muse_rec.spec import load_spec
    from muse_rec.training.trainer import train

    runs: List[Dict] = job["runs"]
    is_main = DistEnv.from_environ(device_type=job.get("device")).is_main
    progress = job.get("progress") if is_main else None
    for r in runs:
        start = time.time()
        _append(progress, {"event": "start", "name": r["name"], "time": start})
        spec = load_spec(r["spec"], list(r["overrides"]))  # a bad spec fails this run, not the job's start
        # resume=True: a run cut off after its final checkpoint (e.g. during evaluation) only
        # re-evaluates; one with no checkpoint starts from step 0.
        result = train(spec, resume=True, device_type=job.get("device"))
        if dist.is_initialized():
            dist.barrier()  # rank 0 has written metrics.json before anyone starts the next run
        _append(progress, {"event": "done", "name": r["name"], "time": time.time(),
                           "seconds": time.time() - start, "gauc": result.get("gauc")})
    return len(runs)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m muse_rec.reproduce.worker JOB.json", file=sys.stderr)
        return 2
    path = Path(argv[0])
    try:
        job = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        print(f"muse_rec.reproduce.worker: cannot read job file {path}: {e}", file=sys.stderr)
        return 2
    if not isinstance(job, dict) or not isinstance(job.get("runs"), list):
        print(f"muse_rec.reproduce.worker: {path}: expected an object with a 'runs' list", file=sys.stderr)
        return 2
    run_job(job)
    return 0


if __name__ == "__main__":
    sys.exit(main())

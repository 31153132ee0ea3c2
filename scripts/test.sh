#!/usr/bin/env bash
# Set up .venv (pinned CPU stack + test extras) and run the whole test suite.
#   scripts/test.sh [pytest args...]
#   MUSE_REC_TEST_WORKERS=N   pytest-xdist workers (default 2; 0 = all tests in this process)
set -euo pipefail
cd "$(dirname "$0")/.."
MUSE_REC_EXTRAS=test bash scripts/setup.sh
# One thread per process: two workers and their subprocesses already keep both cores busy, and two
# OpenMP threads per process on 2 cores spin in each other's way (19:32 -> 17:14 for the suite,
# consecutive runs on this 2-core box; the in-process tests' CPU time 450 s -> 201 s).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# worksteal: tests are spread one by one (a session fixture is built once per worker that needs it)
# and an idle worker takes over queued tests, so one long file does not finish alone at the end.
exec .venv/bin/python -m pytest -q -n "${MUSE_REC_TEST_WORKERS:-2}" --dist worksteal "$@"

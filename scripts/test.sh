#!/usr/bin/env bash
# Set up .venv (pinned CPU stack + test extras) and run the whole test suite.
#   scripts/test.sh [pytest args...]
#   MUSE_REC_TEST_WORKERS=N   pytest-xdist workers (default 2; 0 = all tests in this process)
set -euo pipefail
cd "$(dirname "$0")/.."
MUSE_REC_EXTRAS=test bash scripts/setup.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
# worksteal: tests are spread one by one (a session fixture is built once per worker that needs it)
# and an idle worker takes over queued tests, so one long file does not finish alone at the end.
exec .venv/bin/python -m pytest -q -n "${MUSE_REC_TEST_WORKERS:-2}" --dist worksteal "$@"

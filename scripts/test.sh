#!/usr/bin/env bash
# Set up .venv (pinned CPU stack + test extras) and run the whole test suite.
#   scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
MUSE_REC_EXTRAS=test bash scripts/setup.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
exec .venv/bin/python -m pytest -q "$@"

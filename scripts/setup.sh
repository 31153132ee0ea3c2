#!/usr/bin/env bash
# One set-up entry point: creates .venv with the pinned TorchRec stack and installs muse_rec.
#
#   scripts/setup.sh            CPU profile (torch 2.13.0 CPU + fbgemm-gpu-cpu 1.8.0)
#   MUSE_REC_PROFILE=cuda scripts/setup.sh
#                               CUDA profile: keeps the machine's torch, installs the
#                               fbgemm-gpu (CUDA) build matching it (see README, "CUDA")
#   MUSE_REC_VENV=path          where the venv goes (default .venv)
#   MUSE_REC_EXTRAS=test        extras of the project to install (comma separated)
#
# Why a script and not just `pip install -e .`: torchrec's metadata requires the CUDA package
# `fbgemm-gpu`; installing it with deps replaces fbgemm_gpu/ with the CUDA build. So torch is
# installed first, then the FBGEMM build that matches it, then torchrec with --no-deps.
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE="${MUSE_REC_PROFILE:-cpu}"
VENV="${MUSE_REC_VENV:-.venv}"
EXTRAS="${MUSE_REC_EXTRAS:-}"
PY="${PYTHON:-python3}"
# Checked before anything is written (a typo such as gpu made the venv, then was refused).
case "$PROFILE" in
  cpu|cuda) ;;
  *) echo "[setup] unknown MUSE_REC_PROFILE=$PROFILE (cpu|cuda)" >&2; exit 2 ;;
esac

# The pins live in one place: muse_rec/_versions.py (also read by the version guard).
pin() { "$PY" -c "import runpy,sys; v=runpy.run_path('muse_rec/_versions.py'); print(v['$1'])"; }
TORCH=$(pin TORCH_VERSION)
FBGEMM=$(pin FBGEMM_VERSION)
TORCHREC=$(pin TORCHREC_VERSION)
TORCHX=$(pin TORCHX_VERSION)
TENSORDICT=$(pin TENSORDICT_VERSION)

stamp="$VENV/.muse_rec_setup"
want="$PROFILE torch=$TORCH fbgemm=$FBGEMM torchrec=$TORCHREC torchx=$TORCHX extras=$EXTRAS $(sha1sum setup.cfg | cut -c1-12)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "[setup] $VENV is up to date ($want)"
  exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip install --disable-pip-version-check -q)
# pip install, minus the harmless "Location ... is ignored" lines this machine's pip config
# prints for every package its local mirrors do not carry.
pipq() {
  local rc
  "${PIP[@]}" "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  rc=${PIPESTATUS[0]}
  return "$rc"
}

case "$PROFILE" in
  cpu)
    echo "[setup] torch==$TORCH (CPU) + fbgemm-gpu-cpu==$FBGEMM"
    pipq "torch==$TORCH" "fbgemm-gpu-cpu==$FBGEMM"
    TORCHREC_REQ="torchrec==$TORCHREC"
    TENSORDICT_REQ="tensordict==$TENSORDICT"
    ;;
  cuda)
    # The CUDA machine brings its own torch; install the fbgemm-gpu release that matches its
    # minor version (table in muse_rec/_versions.py), e.g. torch 2.11 <-> fbgemm-gpu 1.6.
    tv=$("$VPY" -c "import torch; print(torch.__version__)" 2>/dev/null || true)
    [[ -n "$tv" ]] || { echo "[setup] CUDA profile: install torch (CUDA build) into $VENV first" >&2; exit 2; }
    # TorchRec and tensordict follow torch too (muse_rec/_versions.py: cuda_requirements); a
    # constraint on the installed torch stops pip from replacing it to satisfy any of them.
    mapfile -t REQS < <("$VPY" -c "import runpy; v=runpy.run_path('muse_rec/_versions.py'); print('\n'.join(v['cuda_requirements']('$tv')))")
    echo "[setup] torch $tv (CUDA) -> ${REQS[*]}"
    echo "torch==${tv}" > "$VENV/.torch-constraint.txt"
    PIP+=(-c "$VENV/.torch-constraint.txt")
    pipq "${REQS[0]}"
    TORCHREC_REQ="${REQS[1]}"
    TENSORDICT_REQ="${REQS[2]}"
    ;;
esac

echo "[setup] $TORCHREC_REQ (--no-deps) and its light dependencies"
pipq "torchmetrics==1.0.3" "$TENSORDICT_REQ" "pyre-extensions==0.0.32" "iopath==0.1.10" \
  "torchx==$TORCHX" tqdm
pipq --no-deps "$TORCHREC_REQ"

echo "[setup] muse_rec (editable)${EXTRAS:+ with [$EXTRAS]}"
pipq -e ".${EXTRAS:+[$EXTRAS]}"
echo "$want" > "$stamp"
echo "[setup] done: $("$VPY" -m muse_rec.cli info --short 2>&1 | tail -1)"

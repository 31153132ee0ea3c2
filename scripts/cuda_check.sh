#!/usr/bin/env bash
# What to run first on a CUDA machine, after `MUSE_REC_PROFILE=cuda bash scripts/setup.sh`:
# the stack, the CUDA-only tests (FBGEMM's fused Adam against torch SparseAdam, sync-free steps,
# metrics on CUDA tensors), then MUSE and SIM-soft trained end to end with the paper's embedding
# optimizer (`adam`: FBGEMM fused on CUDA) beside the same runs on CPU (RowSparseAdam), on a tiny
# synthetic release, and the first device's MUSE checkpoint evaluated and exported on CPU.
# Exit code != 0 if anything fails. CI never runs this (it has no GPU).
#   PYTHON=python3 bash scripts/cuda_check.sh      (default .venv/bin/python)
#   CHECK_DIR=/tmp/muse_rec_cuda_check             (where data and runs go; emptied first: a new or empty
#                                                   directory, or an earlier check's)
#   DEVICES="cuda cpu"                             (the end-to-end runs; DEVICES=cpu rehearses it anywhere)
#   METHODS="muse sim_soft"                        (specs/demo/<method>.yaml to train; "all" = every one)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
W="${CHECK_DIR:-/tmp/muse_rec_cuda_check}"
DEVICES="${DEVICES:-cuda cpu}"
METHODS="${METHODS:-muse sim_soft}"
if [[ "$METHODS" == all ]]; then METHODS=$(cd specs/demo && ls *.yaml | sed 's/\.yaml$//' | tr '\n' ' '); fi
# Checked before any work: a typo failed only at its training, minutes in (after the CUDA-only tests).
bad_input() { echo "scripts/cuda_check.sh: $*" >&2; exit 2; }
read -ra device_list <<< "$DEVICES"
read -ra method_list <<< "$METHODS"
[[ ${#device_list[@]} -gt 0 ]] || bad_input "DEVICES='$DEVICES': names no device (cuda, cpu)"
[[ ${#method_list[@]} -gt 0 ]] || bad_input "METHODS='$METHODS': names no method (specs/demo/<method>.yaml, or all)"
for device in "${device_list[@]}"; do
  [[ "$device" == cuda || "$device" == cpu ]] || bad_input "DEVICES='$DEVICES': '$device' is not cuda or cpu"
done
for method in "${method_list[@]}"; do
  [[ -f "specs/demo/$method.yaml" ]] || bad_input "METHODS='$METHODS': no spec specs/demo/$method.yaml"
done
# Emptied first, so only a new or empty directory or an earlier check's (its marker inside, or nothing
# but what the check writes, as before the marker): CHECK_DIR=. or $HOME would be deleted whole.
MARK=.muse_rec_cuda_check
earlier_check() {
  [[ -d "$1" && ! -L "$1" ]] || return 1
  [[ -f "$1/$MARK" ]] && return 0
  local entry
  for entry in "$1"/* "$1"/.[!.]*; do
    [[ -e "$entry" || -L "$entry" ]] || continue  # an unmatched glob
    case "${entry##*/}" in raw|prepared|runs|eval-cpu|export) ;; *) return 1 ;; esac
  done
}
if [[ -e "$W" || -L "$W" ]] && ! earlier_check "$W"; then
  echo "scripts/cuda_check.sh: CHECK_DIR=$W: holds what an earlier check did not write, and the check empties it first: name a new or empty directory" >&2
  exit 2
fi
rm -rf "$W" && mkdir -p "$W" && touch "$W/$MARK"
mr() { "$PY" -m muse_rec.cli "$@"; }
t0=$(date +%s)
step() { echo "== [$(( $(date +%s) - t0 )) s] $*"; }

step "stack"
mr info
if [[ " $DEVICES " == *" cuda "* ]]; then
  "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device: this check is for a CUDA machine'; print(torch.cuda.get_device_name(0))"
fi

step "CUDA-only tests"
failed=0  # a failing test does not stop the end-to-end runs below; the exit code reports it
"$PY" -m pytest -q -s -p no:cacheprovider tests/distributed/test_fused_adam_cuda.py \
  tests/distributed/test_fused_step_count.py tests/models/test_sync_free_step.py \
  tests/metrics/test_metrics_accumulator.py || failed=1

step "tiny synthetic release -> prepared"
mr synth "$W/raw" --preset tiny --quiet --no-diagnostics
mr prepare "$W/raw" "$W/prepared" --no-progress

# Same spec, seed and data on both devices; only the embedding optimizer's implementation differs.
# SIM-soft also looks its ID table up without grad (whole-sequence scoring) in every step.
# Every run's keys but its name: the evaluate / export below find the run with the same ones.
run_keys=(--set "output_dir=$W/runs/{name}" --set "data.prepared=$W/prepared"
          --set train.sparse_optimizer.name=adam --set train.sparse_optimizer.lr=0.002
          --set train.batch_size=500 --set train.eval_batch_size=512 --set train.epochs=2)
for method in $METHODS; do
  for device in $DEVICES; do
    step "train $method, sparse_optimizer adam, on $device"
    mr train --spec "specs/demo/$method.yaml" --device "$device" --set "name=$method-$device" "${run_keys[@]}"
  done
done

step "side by side (test split)"
for method in $METHODS; do
  for device in $DEVICES; do
    "$PY" -c "import json, sys; m = json.load(open(sys.argv[1]))
print(f'{sys.argv[2]:16s} GAUC {m[\"gauc\"]:.4f}  AUC {m[\"auc\"]:.4f}  logloss {m[\"logloss\"]:.4f}')" \
      "$W/runs/$method-$device/metrics.json" "$method $device"
  done
done
if [[ " $METHODS " == *" muse "* ]]; then
  first=${DEVICES%% *}
  step "the $first-trained MUSE checkpoint on CPU: evaluate, then export for serving"
  mr evaluate --spec specs/demo/muse.yaml --set "name=muse-$first" "${run_keys[@]}" --device cpu --out "$W/eval-cpu"
  "$PY" -c "import json, sys; a, b = (json.load(open(p)) for p in sys.argv[1:])
print(f'GAUC trained on $first {a[\"gauc\"]:.6f}, re-evaluated on cpu {b[\"gauc\"]:.6f}')" \
    "$W/runs/muse-$first/metrics.json" "$W/eval-cpu/metrics.json"
  mr export --spec specs/demo/muse.yaml --set "name=muse-$first" "${run_keys[@]}" --out "$W/export"
fi
step "done"
[[ $failed == 0 ]] || { echo "== the CUDA-only tests failed (above)"; exit 1; }

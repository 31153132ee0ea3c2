#!/usr/bin/env bash
# The README's demo: set up .venv, make the synthetic demo release, prepare it, train MUSE and DIN
# on 2 CPU ranks through TorchX (several seeds each), then print the comparison with the
# seed-to-seed spread.
#   SEEDS=3 bash scripts/demo.sh          (SEEDS: seeds per method, default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS="${SEEDS:-3}"
# Checked before any work: `seq 0 $((SEEDS - 1))` runs in a command substitution, whose errors set -e
# does not stop on (SEEDS=abc set up, prepared and trained nothing, then failed in compare).
if [[ ! "$SEEDS" =~ ^[1-9][0-9]*$ ]]; then
  echo "scripts/demo.sh: SEEDS=$SEEDS: must be a whole number >= 1 (seeds per method, default 3)" >&2
  exit 2
fi
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

RAW=data/demo/raw
PREPARED=data/demo/prepared
# Progress bars only on a terminal; in a log (CI, `| tee`) every bar update would be a line.
synth_quiet=(); prepare_quiet=()
if [[ ! -t 2 ]]; then synth_quiet=(--quiet); prepare_quiet=(--no-progress); fi
if [[ ! -f "$RAW/_synth_manifest.json" ]]; then
  echo "== synthetic Taobao-MM release (demo preset) -> $RAW"
  muse-rec synth "$RAW" --preset demo "${synth_quiet[@]}"
fi
echo "== prepare $RAW -> $PREPARED (skips finished steps)"
muse-rec prepare "$RAW" "$PREPARED" "${prepare_quiet[@]}"

runs=()
for seed in $(seq 0 $((SEEDS - 1))); do
  for method in din muse; do
    name="$method-seed$seed"
    runs+=("runs/demo/$name")
    if [[ -f "runs/demo/$name/metrics.json" ]]; then  # a second demo: its finished runs are kept, not refused
      echo "== $name: already trained (runs/demo/$name; delete it to train again)"
      continue
    fi
    resume=()  # an interrupted demo's run goes on from its last checkpoint
    if [[ -d "runs/demo/$name" ]]; then resume=(--resume True); fi
    echo "== train $name: 2 gloo ranks via torchx (profile cpu-demo, spec specs/demo/$method.yaml)"
    # --log_level WARNING: TorchX's own bookkeeping lines off; the ranks' progress lines stay.
    torchx --log_level WARNING run -s local_cwd components/train.py:train --profile cpu-demo --spec "specs/demo/$method.yaml" \
      --set "name=$name,train.seed=$seed,data.prepared=$PREPARED" "${resume[@]}"
  done
done

echo "== comparison (GAUC over the whole test split; mean and std over $SEEDS seeds)"
muse-rec compare "${runs[@]}" --baseline DIN --out runs/demo/comparison
echo "== TensorBoard: tensorboard --logdir runs/demo   |   table: runs/demo/comparison.md"

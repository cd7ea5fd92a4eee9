#!/usr/bin/env bash
# The main job on the built-in default, fully offline: train an MTA model on SmolLM2-135M
# and the built-in task mix (two stages), score it on the dev split, export every task to
# an int8 ONNX bundle, and run a few predictions through the torch-free runtime.
# Re-running continues an interrupted training run and reuses a finished one.
set -euo pipefail
cd "$(dirname "$0")/.."
# Passive OpenMP waiting: on a busy machine, spinning workers of two processes starve each
# other (a training step went from ~2 s to 7-10 s with another training job beside it).
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
OUT="${1:-runs/quickstart}"
AE=.venv/bin/alter-edge
CKPT="$OUT/checkpoint"
if [ -f "$CKPT/state.json" ] && grep -q '"complete": true' "$CKPT/state.json"; then
  echo "== training: $CKPT is complete, reusing it"
elif [ -f "$CKPT/state.json" ]; then
  echo "== training: resuming $CKPT"
  "$AE" train --out "$CKPT" --resume
else
  echo "== training (built-in base model and task mix)"
  "$AE" train --out "$CKPT"
fi
echo "== dev-split scores"
"$AE" eval "$CKPT" --quiet
if "$AE" export --help >/dev/null 2>&1; then
  echo "== export: every task, int8"
  # The int8 metric check runs on 16 held-out rows per task, where one changed answer is
  # 6.25 points, so the default 1-point budget fails any int8 graph that changes a single
  # greedy answer, for better or worse. 15 points = at most two rows in 16; the measured
  # drop per task is in bundle/validation.json (docs/export.md). The top-1 gate is lowered
  # from 0.85 to 0.75 as a margin: with blockwise int8 (the default method) this run's five
  # graphs agreed with fp32 on 0.85-0.98 of prompt positions, the answer graph exactly at
  # 0.85, and another CPU's int8 kernels may round differently (dynamic int8: 0.47-0.78).
  "$AE" export "$CKPT" --task all --int8 --int8-budget 15 --int8-min-top1 0.75 --out "$OUT/bundle" --overwrite --quiet
  "$AE" inspect "$OUT/bundle"
  echo "== predictions from the bundle (onnxruntime, no torch)"
  "$AE" run "$OUT/bundle" --task topic "who wrote the lord of the rings" "how do i write a for loop in python"
  "$AE" run "$OUT/bundle" --task question "are you coming to the party tonight" "i had pasta for dinner"
  "$AE" run "$OUT/bundle" --task answer "what is your favorite food"
fi

#!/usr/bin/env bash
# The main job on the built-in default, fully offline: train an MTA model on SmolLM2-135M and
# the built-in task mix (nli, question_gen, topic, question; two stages, the quickstart budget),
# export every task to an int8 ONNX bundle (scored on the dev split as it is checked), and answer
# a few questions through the torch-free runtime, one batch that mixes all four tasks, and 8 dev
# rows with their gold answers.
# Re-running continues an interrupted training run and reuses a finished one.
#
#   bash scripts/quickstart.sh [OUT]          # OUT defaults to runs/quickstart
#
# The full recipe (600 + 40 steps, docs/results.md) is `alter-edge train --out DIR`.
# QUICKSTART_TRAIN_ARGS adds train flags (tests/test_quickstart.py runs this script on a tiny
# model with it); AE and PY name the alter-edge command and the Python to use.
set -euo pipefail
cd "$(dirname "$0")/.."
# OpenMP's own waiting policy: on a quiet machine, OMP_WAIT_POLICY=PASSIVE made a training step
# 1.29x slower (docs/training.md). On a machine shared with other jobs, spinning workers of two
# processes starve each other: run with OMP_WAIT_POLICY=PASSIVE there.
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false
OUT="${1:-runs/quickstart}"
AE="${AE:-.venv/bin/alter-edge}"
PY="${PY:-.venv/bin/python}"
CKPT="$OUT/checkpoint"
# The quickstart budget (docs/results.md, "The quickstart budget", chosen from benchmarks/curve.py's
# curve): the default 12 adapted blocks, 300 + 20 steps of 16 rows, tasks sampled as often as the
# data has them (nli, the slowest task to learn, has the most rows); training's own checks after
# each stage score 20 dev rows; the export below scores the whole dev split.
BUDGET=(--stage1-steps 300 --stage2-steps 20 --sampling-temperature 1 --eval-rows 20)
# shellcheck disable=SC2206
EXTRA=(${QUICKSTART_TRAIN_ARGS:-})
if [ -f "$CKPT/state.json" ] && grep -q '"complete": true' "$CKPT/state.json"; then
  echo "== training: $CKPT is complete, reusing it"
elif [ -f "$CKPT/state.json" ]; then
  echo "== training: resuming $CKPT"
  $AE train --out "$CKPT" "${BUDGET[@]}" "${EXTRA[@]}" --resume
else
  echo "== training (built-in base model and task mix)"
  $AE train --out "$CKPT" "${BUDGET[@]}" "${EXTRA[@]}"
fi
echo "== export: every task, int8 (validated on the whole dev split under the default gates)"
rm -rf "$OUT/bundle"
$AE export "$CKPT" --task all --int8 --out "$OUT/bundle" --quiet
$AE inspect "$OUT/bundle"
echo "== dev-split scores (the export's validation: fp32 graph and int8 multi-task graph)"
$AE demo scores "$OUT/bundle"
echo "== predictions from the bundle (onnxruntime, no torch)"
# each task's input is written as its training rows are (the instruction is part of the input)
TOPICS="ai, coding, conversations, emotion, literature, movies, psychology, science, sports, trivia"
$AE run "$OUT/bundle" --task topic \
  "Which topic is this question about? Question: who wrote the lord of the rings Topics: $TOPICS" \
  "Which topic is this question about? Question: how do i write a for loop in python Topics: $TOPICS"
$AE run "$OUT/bundle" --task question \
  "Is this chat message a question? Message: are you coming to the party tonight Answer yes or no." \
  "Is this chat message a question? Message: i had pasta for dinner Answer yes or no."
echo "== one batch, four tasks (the multi-task graph: task_ids is an input)"
"$PY" - "$OUT/bundle" <<'EOF'
import sys

from alter_edge.runtime import EdgeModel

NLI = ("Determine the relationship between the following two sentences: Sentence1 :{} "
       "Sentence2 :{} choices: contradiction , entailment or neutral")
QGEN = "Ask a reasonable question based on the answer: {}. and the following sentence: {}"
TOPICS = ("ai, coding, conversations, emotion, literature, movies, psychology, science, "
          "sports, trivia")
rows = [
    ("nli", NLI.format("A man is playing a guitar on a stage.", "A man is performing music.")),
    ("nli", NLI.format("Two dogs run across a snowy field.", "The dogs are asleep indoors.")),
    ("question_gen", QGEN.format("Paris", "The Eiffel Tower, built in 1889, stands in Paris "
                                 "and is the most visited paid monument in the world.")),
    ("topic", f"Which topic is this question about? Question: who won the world cup in 2014 "
              f"Topics: {TOPICS}"),
    ("question", "Is this chat message a question? Message: do you want to get lunch "
                 "Answer yes or no."),
]
model = EdgeModel.load(sys.argv[1])
outs = model.generate([text for _, text in rows], tasks=[task for task, _ in rows],
                      max_new_tokens=24)
for (task, text), g in zip(rows, outs):
    print(f"[{task}] {text[:110]}{'...' if len(text) > 110 else ''}\n    -> {g.text.strip()}")
EOF
echo "== 8 dev rows training never saw (a seeded pick), gold and prediction"
$AE demo dev-rows "$OUT/bundle" "$CKPT" --rows 8 --seed 0

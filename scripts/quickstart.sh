#!/usr/bin/env bash
# The main job on the built-in default, fully offline: train an MTA model on SmolLM2-135M and
# the built-in task mix (nli, question_gen, topic, question; two stages, the quickstart budget),
# score it on the dev split, export every task to an int8 ONNX bundle, and answer a few
# questions through the torch-free runtime, ending with one batch that mixes all four tasks.
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
# The quickstart budget (docs/results.md, "The quickstart budget"): the default 12 adapted
# blocks, 100 + 20 steps of 16 rows; training's own dev checks after each stage score 40 rows
# (10 a task), `eval` below scores the whole dev split.
BUDGET=(--stage1-steps 100 --stage2-steps 20 --eval-rows 40)
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
echo "== dev-split scores"
$AE eval "$CKPT" --dtype auto --quiet
echo "== export: every task, int8"
rm -rf "$OUT/bundle"
$AE export "$CKPT" --task all --int8 --out "$OUT/bundle" --quiet
$AE inspect "$OUT/bundle"
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

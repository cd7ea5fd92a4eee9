"""The built-in task mix: four English tasks a user recognises, all offline.

- ``nli`` (classify: contradiction / entailment / neutral): SNLI sentence pairs, and
- ``question_gen`` (generate): a SQuAD passage and answer -> the question, both from the
  ALTER paper's own English mixture, shipped in ``alter_edge/corpora/`` (CC BY-SA 4.0);
- ``topic`` (classify): a ChatterBot corpus question -> its category (ai, coding, emotion,
  literature, movies, psychology, science, sports, trivia...; chatterbot-corpus, BSD-3-Clause);
- ``question`` (classify yes/no): a chit-chat turn -> whether it asks something (it ends with
  ``?``, the mark removed from the input; chitchat-dataset, MIT).

Licenses and why the paper's sentiment and question-type rows are not here: DATA-LICENSES.md.
Rows are chosen with a fixed seed, so the mix (and the split made from it) is the same on
every machine. Its dev split is 100 rows a task (half of a task with fewer than 200 rows:
question_gen has 171), see ``alter_edge.data.split_task_rows``.
"""

from __future__ import annotations

import importlib.util
import json
import random
from collections import Counter
from pathlib import Path

from .data import Example, load_jsonl
from .errors import DataError

TOPIC_PROMPT = "Which topic is this question about? Question: {q} Topics: {topics}"
QUESTION_PROMPT = "Is this chat message a question? Message: {m} Answer yes or no."
MIN_TOPIC_ROWS = 20
PER_TOPIC = 40
QUESTION_ROWS = 400  # half questions, half not
PAPER_ROWS = Path(__file__).with_name("corpora") / "alter-en-snli-squad.jsonl"
INSTALL_HINT = "pip install 'alter-edge[data]' (chatterbot-corpus==1.3.3 chitchat-dataset==0.9.0)"


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the built-in task mix needs the package {name}: {INSTALL_HINT}")
    return Path(list(spec.submodule_search_locations)[0])


def _chatterbot_pairs() -> dict[str, list[tuple[str, str]]]:
    """Per category, (question, answer) pairs with each question once (its first answer) and no
    question that two categories share. The corpus repeats questions (``humor`` is "Tell me a
    joke" 28 times, ``ai`` 105 pairs over 61 questions); kept, a repeat lands on both sides of
    the train/dev split (20 of 114 dev rows did), so part of the dev score was recall."""
    import yaml

    root = _package_dir("chatterbot_corpus") / "data" / "english"
    out: dict[str, dict[str, str]] = {}
    for f in sorted(root.glob("*.yml")):
        doc = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
        cat = f.stem
        for conv in doc.get("conversations", []):
            if len(conv) >= 2 and all(isinstance(x, str) for x in conv[:2]):
                q, a = " ".join(conv[0].split()), " ".join(conv[1].split())
                if 3 <= len(q) <= 200 and 1 <= len(a) <= 200:
                    out.setdefault(cat, {}).setdefault(q, a)
    seen = Counter(q for pairs in out.values() for q in pairs)
    return {c: [(q, a) for q, a in pairs.items() if seen[q] == 1] for c, pairs in out.items()}


def _chitchat_turns() -> list[tuple[str, str]]:
    path = _package_dir("chitchat_dataset") / "dataset.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    pairs = []
    for key in sorted(data):
        msgs = [" ".join(m["text"] for m in turn).strip() for turn in data[key]["messages"]]
        for a, b in zip(msgs, msgs[1:], strict=False):
            if 8 <= len(a) <= 160 and 2 <= len(b) <= 80:
                pairs.append((" ".join(a.split()), " ".join(b.split())))
    return pairs


def build_default_mix(seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    rows = [Example(r.task, r.input, r.target) for r in load_jsonl(PAPER_ROWS)]
    qa = _chatterbot_pairs()
    topics = sorted(c for c, pairs in qa.items() if len(pairs) >= MIN_TOPIC_ROWS and c != "tech_support")
    topic_list = ", ".join(topics)
    for c in topics:
        pairs = list(qa[c])
        rng.shuffle(pairs)
        rows.extend(Example("topic", TOPIC_PROMPT.format(q=q, topics=topic_list), c) for q, _ in pairs[:PER_TOPIC])
    chat = [m for m, _ in _chitchat_turns()]
    rng.shuffle(chat)
    asks = [m for m in chat if m.endswith("?")]
    says = [m for m in chat if not m.endswith("?")]
    half = QUESTION_ROWS // 2
    for m, label in [(m, "yes") for m in asks[:half]] + [(m, "no") for m in says[:half]]:
        rows.append(Example("question", QUESTION_PROMPT.format(m=m.rstrip("?").rstrip()), label))
    return rows

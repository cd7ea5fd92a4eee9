"""How a row becomes token ids, shared by training, export validation and the runtime.

The prompt and the target are tokenized separately and concatenated, so the runtime (which
only ever sees the prompt) gets exactly the ids the model was trained on. The target is
``" " + target`` followed by the end-of-sequence token.
"""

from __future__ import annotations

from collections.abc import Sequence

from .tasks import TaskSpec


def prompt_text(task: TaskSpec, text: str) -> str:
    return task.prompt_template.format(input=text)


def target_text(target: str) -> str:
    return " " + target.strip()


def encode_prompt(tokenizer, task: TaskSpec, text: str, max_prompt_tokens: int) -> tuple[list[int], int]:
    """(prompt ids, untruncated length); an over-long prompt is cut in the middle."""
    p = tokenizer.encode(prompt_text(task, text), add_special_tokens=False).ids
    return truncate_middle(p, max_prompt_tokens), len(p)


def encode_example(
    tokenizer, task: TaskSpec, text: str, target: str, eos_id: int, max_prompt_tokens: int
) -> tuple[list[int], list[int]]:
    """(prompt ids, target ids + eos); the prompt as :func:`encode_prompt` makes it."""
    p, _ = encode_prompt(tokenizer, task, text, max_prompt_tokens)
    t = tokenizer.encode(target_text(target), add_special_tokens=False).ids + [eos_id]
    return p, t


def truncate_middle(ids: list[int], max_tokens: int) -> list[int]:
    """Keep the first and last halves of an over-long prompt: instructions put the task's
    key facts at the start (the answer to ask about) and the answer cue at the end (the
    choices, "Answer:"), while the middle is passage text."""
    if len(ids) <= max_tokens:
        return ids
    head = max_tokens // 2
    return ids[:head] + ids[len(ids) - (max_tokens - head):]


def label_token_ids(tokenizer, labels: Sequence[str], eos_id: int) -> list[list[int]]:
    """Token ids of each label as the model emits it after the prompt (with the eos)."""
    return [tokenizer.encode(target_text(lab), add_special_tokens=False).ids + [eos_id] for lab in labels]

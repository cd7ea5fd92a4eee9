"""PyTorch-side inference for evaluation and as the reference that exports are checked
against: batched greedy generation with the KV cache, label scoring, per-task metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from alter_edge.base_model import kv_cache_kwarg, kv_cache_out
from alter_edge.data import Example
from alter_edge.inject import MTAModel
from alter_edge.metrics import overall_score, row_metric
from alter_edge.padding import length_mask, pad_rows
from alter_edge.prompts import encode_example, label_token_ids, prompt_text
from alter_edge.rouge import authors_row_metric
from alter_edge.tasks import TaskRegistry

from .memory import trim_heap

log = logging.getLogger(__name__)


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both int64 (B, T), padded on the left
    (:func:`alter_edge.padding.pad_rows`)."""
    ids, lengths = pad_rows(seqs, pad_id, "left")
    return torch.from_numpy(ids), torch.from_numpy(length_mask(lengths, ids.shape[1], "left"))


@torch.no_grad()
def greedy_generate(
    model: MTAModel,
    prompts: Sequence[Sequence[int]],
    task_ids: Sequence[int],
    eos_id: int,
    pad_id: int,
    max_new_tokens: int = 32,
) -> list[list[int]]:
    """Greedy decoding with the KV cache for a left-padded batch; each row stops at its eos
    (the eos is not returned). An encoder-decoder: :func:`greedy_generate_seq2seq`."""
    if model.seq2seq:
        return greedy_generate_seq2seq(model, prompts, task_ids, eos_id, pad_id, max_new_tokens)
    ids, mask = left_pad(prompts, pad_id)
    tids = torch.tensor(list(task_ids), dtype=torch.long)
    B = ids.shape[0]
    out: list[list[int]] = [[] for _ in range(B)]
    done = torch.zeros(B, dtype=torch.bool)
    past = None
    cache_kw = kv_cache_kwarg(model)
    cur = ids
    for _ in range(max_new_tokens):
        pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, -cur.shape[1]:]
        res = model(cur, mask, tids, position_ids=pos, use_cache=True, logits_to_keep=1,
                    **{cache_kw: past})  # only the last position: (B, 1, V), not (B, T, V)
        past, cur = _take(res, done, out, eos_id, pad_id)
        if cur is None:
            break
        mask = torch.cat([mask, torch.ones(B, 1, dtype=torch.long)], dim=1)
    return out


def _take(res, done: torch.Tensor, out: list[list[int]], eos_id: int, pad_id: int):
    """One greedy step's bookkeeping: append each unfinished row's token (an eos finishes the row
    instead). Returns the KV cache and the next input tokens (B, 1), or None for them when every
    row is done."""
    nxt = res.logits[:, -1].argmax(-1)  # (B,)
    for i in range(len(out)):
        if not done[i]:
            if int(nxt[i]) == eos_id:
                done[i] = True
            else:
                out[i].append(int(nxt[i]))
    if bool(done.all()):
        return kv_cache_out(res), None
    return kv_cache_out(res), torch.where(done, torch.full_like(nxt, pad_id), nxt)[:, None]


def _encode(model: MTAModel, prompts: Sequence[Sequence[int]], tids: torch.Tensor, pad_id: int):
    """An encoder-decoder's encoder output for right-padded prompts: (output, attention mask)."""
    from transformers.modeling_outputs import BaseModelOutput

    ids, lengths = pad_rows(prompts, pad_id, "right")
    ids, mask = torch.from_numpy(ids), torch.from_numpy(length_mask(lengths, ids.shape[1]))
    with model.tasks(tids):
        hidden = model.base.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    return BaseModelOutput(last_hidden_state=hidden), mask


@torch.no_grad()
def greedy_generate_seq2seq(model: MTAModel, prompts: Sequence[Sequence[int]], task_ids: Sequence[int], eos_id: int,
                            pad_id: int, max_new_tokens: int = 32) -> list[list[int]]:
    """Greedy decoding for an encoder-decoder (T5): the encoder runs once on the prompts, the
    decoder from its start token with its KV cache, one step per token; ``task_ids`` reach the
    blocks of both stacks. Each row stops at its eos (not returned)."""
    tids = torch.tensor(list(task_ids), dtype=torch.long)
    enc, mask = _encode(model, prompts, tids, pad_id)
    B = tids.shape[0]
    out: list[list[int]] = [[] for _ in range(B)]
    done = torch.zeros(B, dtype=torch.bool)
    cur = torch.full((B, 1), model.decoder_start_id(), dtype=torch.long)
    past = None
    cache_kw = kv_cache_kwarg(model)
    for _ in range(max_new_tokens):
        with model.tasks(tids):
            res = model.base(encoder_outputs=enc, attention_mask=mask, decoder_input_ids=cur, use_cache=True,
                             **{cache_kw: past})
        past, cur = _take(res, done, out, eos_id, pad_id)
        if cur is None:
            break
    return out


@torch.no_grad()
def _label_scores_seq2seq(model: MTAModel, prompt: Sequence[int], task_id: int,
                          label_ids: Sequence[Sequence[int]], pad_id: int) -> list[float]:
    """:func:`label_scores` for an encoder-decoder: each label (with eos) as the decoder's target."""
    n = len(label_ids)
    tids = torch.full((n,), task_id, dtype=torch.long)
    enc, mask = _encode(model, [list(prompt)] * n, tids, pad_id)
    start = model.decoder_start_id()
    dec, lengths = pad_rows([[start] + list(lab[:-1]) for lab in label_ids], pad_id, "right")
    dec = torch.from_numpy(dec)
    with model.tasks(tids):
        logits = model.base(encoder_outputs=enc, attention_mask=mask, decoder_input_ids=dec,
                            decoder_attention_mask=torch.from_numpy(length_mask(lengths, dec.shape[1])),
                            use_cache=False).logits
    logp = torch.log_softmax(logits.float(), -1)
    return [float(logp[i, : len(lab)].gather(-1, torch.tensor(list(lab))[:, None]).sum())
            for i, lab in enumerate(label_ids)]


@torch.no_grad()
def label_scores(
    model: MTAModel, prompt: Sequence[int], task_id: int, label_ids: Sequence[Sequence[int]], pad_id: int
) -> list[float]:
    """Sum of log-probabilities of each label's tokens (with eos) after ``prompt``."""
    if model.seq2seq:
        return _label_scores_seq2seq(model, prompt, task_id, label_ids, pad_id)
    seqs = [list(prompt) + list(lab) for lab in label_ids]
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):  # right padding: prompt positions line up
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    tids = torch.full((len(seqs),), task_id, dtype=torch.long)
    logp = torch.log_softmax(model(ids, mask, tids).logits.float(), -1)
    scores = []
    for i, lab in enumerate(label_ids):
        start = len(prompt)
        tok = torch.tensor(list(lab))
        scores.append(float(logp[i, start - 1 : start - 1 + len(lab)].gather(-1, tok[:, None]).sum()))
    return scores


def token_budget(tokenizer, task, max_new_tokens: int) -> int:
    if task.kind != "classify":
        return max_new_tokens
    longest = max(len(tokenizer.encode(" " + lab, add_special_tokens=False).ids) for lab in task.labels)
    return min(max_new_tokens, longest + 2)


@dataclass
class EvalResult:
    per_task: dict[str, float]
    overall: float
    counts: dict[str, int]
    seconds: float
    label_scoring: dict[str, float] | None = None
    predictions: list[str] | None = None  # greedy output per row, in the rows' order
    # the authors' metric (alter_edge.rouge): exact match for classify, ROUGE-L on characters for generate
    per_task_char: dict[str, float] | None = None
    overall_char: float | None = None

    def to_dict(self) -> dict:
        return {"per_task": self.per_task, "overall": self.overall, "counts": self.counts,
                "seconds": round(self.seconds, 2), "label_scoring": self.label_scoring,
                "per_task_char": self.per_task_char, "overall_char": self.overall_char}


def _label_accuracy(model: MTAModel, tokenizer, tasks: TaskRegistry, rows: Sequence[Example], enc: list,
                    counts: dict[str, int], eos_id: int, pad_id: int) -> dict[str, float]:
    """Per classify task: how often the best-scored label (``label_scores``) is the target."""
    label_acc = {}
    for t in sorted(counts):
        spec = tasks.get(t)
        if spec.kind != "classify":
            continue
        lab_ids = label_token_ids(tokenizer, spec.labels, eos_id)
        hits = [
            float(spec.labels[max(range(len(spec.labels)), key=lambda j, s=sc: s[j])] == r.target.strip())
            for i, r in enumerate(rows) if r.task == t
            for sc in [label_scores(model, enc[i][0], spec.id, lab_ids, pad_id)]
        ]
        label_acc[t] = sum(hits) / len(hits)
    return label_acc


def evaluate(
    model: MTAModel,
    tokenizer,
    tasks: TaskRegistry,
    rows: Sequence[Example],
    eos_id: int,
    pad_id: int,
    max_prompt_tokens: int = 320,
    max_new_tokens: int = 32,
    batch_size: int = 16,
    with_label_scoring: bool = False,
    progress: bool = True,
) -> EvalResult:
    """Greedy generation per row, scored the reference way (exact match for classify tasks,
    ROUGE-L F1 for generate tasks); overall = mean over task groups."""
    from tqdm.auto import tqdm

    tasks.check_names([r.task for r in rows])
    t0 = time.perf_counter()
    enc = []
    for r in rows:
        spec = tasks.get(r.task)
        p, _ = encode_example(tokenizer, spec, r.input, r.target, eos_id, max_prompt_tokens)
        enc.append((p, spec))
    # batches of one task and similar length; a classify task needs no more new tokens than
    # its longest label (+2 for slack): anything longer cannot be an exact match anyway
    order = sorted(range(len(rows)), key=lambda i: (enc[i][1].id, len(enc[i][0])))
    budget = {t.id: token_budget(tokenizer, t, max_new_tokens) for t in tasks}
    preds: dict[int, str] = {}
    bar = tqdm(total=len(rows), desc="eval", unit="row", disable=not progress, leave=False)
    batches = []
    for t in tasks:
        idx_t = [i for i in order if enc[i][1].id == t.id]
        batches += [idx_t[s : s + batch_size] for s in range(0, len(idx_t), batch_size)]
    for idx in batches:
        outs = greedy_generate(model, [enc[i][0] for i in idx], [enc[i][1].id for i in idx],
                               eos_id, pad_id, budget[enc[idx[0]][1].id])
        for i, o in zip(idx, outs, strict=True):
            preds[i] = tokenizer.decode(o, skip_special_tokens=True).strip()
        bar.update(len(idx))
        trim_heap()
    bar.close()
    per_task, counts = _scores(tasks, rows, preds, row_metric)
    per_task_char, _ = _scores(tasks, rows, preds, authors_row_metric)
    label_acc = _label_accuracy(model, tokenizer, tasks, rows, enc, counts, eos_id, pad_id) if with_label_scoring \
        else None
    groups = {g: [m for m in ms if m in per_task] for g, ms in tasks.groups().items()}
    return EvalResult(per_task, overall_score(per_task, groups), counts, time.perf_counter() - t0, label_acc,
                      [preds[i] for i in range(len(rows))], per_task_char, overall_score(per_task_char, groups))


def _scores(tasks: TaskRegistry, rows: Sequence[Example], preds: dict[int, str], metric_of) -> tuple[dict, dict]:
    """Mean of ``metric_of(kind)(prediction, target)`` per task, and the row counts."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for i, r in enumerate(rows):
        sums[r.task] = sums.get(r.task, 0.0) + metric_of(tasks.get(r.task).kind)(preds[i], r.target)
        counts[r.task] = counts.get(r.task, 0) + 1
    return {t: sums[t] / counts[t] for t in sorted(sums)}, counts


__all__ = ["evaluate", "greedy_generate", "greedy_generate_seq2seq", "label_scores", "left_pad", "prompt_text", "token_budget", "EvalResult"]

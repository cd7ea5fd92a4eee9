"""Validation of an encoder-decoder (T5) pair, as ``export.validate`` validates a decoder graph:
every pair runs through the runtime's own runner (``alter_edge.runtime.seq2seq.Seq2SeqRunner``).

1. ``fp32_vs_torch``: each fp32 pair (the multi-task pair on every task and on a mixed-task,
   differently padded batch; each per-task pair on its task) against the PyTorch MTA model: the
   cross cache at every valid encoder position, the decoder's logits at every step of a
   ``steps``-token greedy path (one-token steps on the self cache, and the whole path in one
   call: every position), all within ``atol``; and greedy tokens identical.
2. ``task_vs_multitask``: a quantized per-task pair against its precision's multi-task pair (the
   same tensors, the mixture folded), at ``atol``.
3. ``quantized_vs_fp32``: top-1 agreement with the fp32 multi-task pair on its greedy path
   (>= ``min_top1``) and, per task, the held-out metric drop within ``budget`` points (paired
   95% interval, as for decoders).
"""
from __future__ import annotations

import numpy as np

from alter_edge.runtime.seq2seq import Seq2SeqRunner, pad_prompts

from .validate import Case, HeldOut, quantized_record

__all__ = ["check_pair", "check_quantized_pair", "pair_outputs", "torch_pair_reference"]


def _first_mismatch(a: list[list[int]], b: list[list[int]]) -> int | None:
    found = [next((j for j in range(max(len(x), len(y))) if j >= len(x) or j >= len(y) or x[j] != y[j]), None)
             for x, y in zip(a, b, strict=True)]
    found = [j for j in found if j is not None]
    return min(found) if found else None


def torch_pair_reference(model, case: Case, pad_id: int, steps: int) -> dict:
    """The PyTorch model on a case: greedy tokens (``steps``, no eos), the cross cache
    (``[b, heads, enc_seq, d_kv]`` per decoder layer's key and value, in the contract's order)
    and the logits ``[b, steps, V]`` at each step of that path (teacher-forced)."""
    import torch

    from alter_edge.training.evaluate import greedy_generate_seq2seq

    tokens = greedy_generate_seq2seq(model, case.prompts, case.task_ids, -1, pad_id, steps)
    ids, mask = (torch.from_numpy(a) for a in pad_prompts(case.prompts, pad_id))
    start = model.decoder_start_id()
    dec = torch.tensor([[start] + t[:-1] for t in tokens])
    base, cfg = model.base, model.base.config
    with torch.no_grad(), model.tasks(torch.tensor(case.task_ids)):
        enc = base.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        cross = []
        for blk in base.decoder.block:
            a = blk.layer[1].EncDecAttention
            for proj in (a.k, a.v):
                cross.append(proj(enc).view(ids.shape[0], -1, cfg.num_heads, cfg.d_kv).transpose(1, 2).numpy())
        logits = base(encoder_outputs=(enc,), attention_mask=mask, decoder_input_ids=dec).logits.numpy()
    return {"tokens": tokens, "cross": cross, "logits": logits}


def pair_outputs(runner: Seq2SeqRunner, case: Case, pad_id: int, tokens: list[list[int]]) -> dict:
    """A pair on a case, teacher-forced on ``tokens``: its cross cache, its logits ``[b, steps, V]``
    from one-token steps on the self cache (``logits``) and from one call on the whole path
    (``logits_whole``)."""
    ids, mask = pad_prompts(case.prompts, pad_id)
    tids = case.task_ids
    cross = runner.encode(ids, mask, tids)
    dec = np.asarray([[runner.decoder_start_token_id] + t[:-1] for t in tokens], np.int64)
    b, n = dec.shape
    past, steps = runner.empty_past(b), []
    for k in range(n):
        lg, past = runner.step(dec[:, k:k + 1], np.ones((b, k + 1), np.int64), mask, cross, past, tids)
        steps.append(lg[:, 0])
    whole, _ = runner.step(dec, np.ones((b, n), np.int64), mask, cross, runner.empty_past(b), tids)
    return {"cross": cross, "logits": np.stack(steps, 1), "logits_whole": whole, "mask": mask}


def _cross_diff(a: list[np.ndarray], b: list[np.ndarray], mask: np.ndarray) -> float:
    """Max |diff| of two cross caches at valid encoder positions (padded ones are never read)."""
    valid = mask.astype(bool)
    return max(float(np.abs(x - y).transpose(0, 2, 1, 3)[valid].max()) for x, y in zip(a, b, strict=True))


def check_pair(check: str, ref: dict, runner: Seq2SeqRunner, name: str, cases: list[Case], pad_id: int,
               report) -> None:
    """``runner`` against references (``ref[case.name]``: :func:`torch_pair_reference`'s, or
    another pair's): cross cache, step and whole-path logits within ``report.atol``, greedy tokens
    equal; one record per case."""
    for case in cases:
        r = ref[case.name]
        got = pair_outputs(runner, case, pad_id, r["tokens"])
        cross = _cross_diff(r["cross"], got["cross"], got["mask"])
        steps = float(np.abs(r["logits"] - got["logits"]).max())
        # whole-path logits against the reference's own (a quantized pair's int8 activations round a
        # whole path and single steps apart; torch's reference is one whole path)
        whole = float(np.abs(r.get("logits_whole", r["logits"]) - got["logits_whole"]).max())
        tokens = runner.greedy(case.prompts, case.task_ids, report.steps, eos_id=-1)
        mismatch = _first_mismatch(r["tokens"], tokens)
        diff = max(cross, steps, whole)
        report.record({"check": check, "graph": name, "case": case.name, "rows": len(case.prompts),
                       "max_abs_diff": diff, "cross_max_abs_diff": cross, "step_max_abs_diff": steps,
                       "whole_max_abs_diff": whole, "atol": report.atol, "greedy_steps": report.steps,
                       "tokens_equal": mismatch is None, "first_token_mismatch": mismatch,
                       "passed": diff <= report.atol and mismatch is None})


def _predictions(runner: Seq2SeqRunner, h: HeldOut, tokenizer, new_tokens: int, batch: int = 16) -> list[str]:
    order = sorted(range(len(h.prompts)), key=lambda i: len(h.prompts[i]))
    preds = [""] * len(order)
    for s in range(0, len(order), batch):
        rows = order[s:s + batch]
        toks = runner.greedy([h.prompts[i] for i in rows], [h.task_id] * len(rows), new_tokens)
        for i, t in zip(rows, toks, strict=True):
            preds[i] = tokenizer.decode(t, skip_special_tokens=True).strip()
    return preds


def _top1(src: Seq2SeqRunner, q: Seq2SeqRunner, cases: list[Case], pad_id: int, steps: int):
    agree = total = 0
    by_case = {}
    for case in cases:
        ref = src.greedy(case.prompts, case.task_ids, steps, eos_id=-1)
        hits = pair_outputs(q, case, pad_id, ref)["logits"].argmax(-1) == np.asarray(ref)
        by_case[case.name] = round(float(hits.mean()), 4)
        agree, total = agree + int(hits.sum()), total + hits.size
    return agree / max(total, 1), total, by_case


def check_quantized_pair(src: Seq2SeqRunner, q: Seq2SeqRunner, name: str, precision: str, cases: list[Case],
                         heldout: list[HeldOut], tokenizer, pad_id: int, budget: float, min_top1: float,
                         new_tokens: dict[str, int], src_preds: dict[str, list[str]], steps: int) -> dict:
    """A quantized pair against the fp32 multi-task pair; the record (the caller decides if it
    is fatal). ``src_preds``: the fp32 pair's held-out answers per task, filled when missing."""
    top1, total, by_case = _top1(src, q, cases, pad_id, steps)
    return quantized_record(name, precision, top1, total, by_case, heldout, src_preds,
                            lambda h: _predictions(src, h, tokenizer, new_tokens[h.task]),
                            lambda h: _predictions(q, h, tokenizer, new_tokens[h.task]), budget, min_top1)

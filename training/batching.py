"""What one training step computes on: rows, their layout in tensors, and the loss.

Two layouts compute the same loss and the same gradients (a test holds them equal):

- ``packed`` (the default): rows are packed into *lanes* of up to ``lane_tokens`` tokens
  (first-fit decreasing, a row never split). Positions restart at 0 for every row, so the
  attention implementation builds a block-diagonal causal mask from the position ids
  (transformers' packed-sequence path: a row never sees another row's tokens), and every
  token carries its own row's task id (``task_ids`` of shape ``(lanes, T)``), so one lane may
  hold rows of several tasks. Padding is only each lane's tail, rounded up to
  :data:`PAD_MULTIPLE` tokens.
- ``padded``: one row per batch row, right-padded to the longest (rounded to
  :data:`PAD_MULTIPLE`). On the task mix a balanced batch of 16 rows is two-thirds padding
  here, because question_gen rows run to 300 tokens and the rest to about 45.

Logits are computed only at target positions in both.

An encoder-decoder (T5) lays a batch out its own way (:func:`seq2seq_loss`): the prompts
right-padded into the encoder, the decoder start token and the targets shifted right into the
decoder, the loss on the decoder's target. It has no packed layout yet: ``packed`` trains it
padded (the loss is the same).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from alter_edge.inject import MTAModel
from alter_edge.padding import length_mask, pad_rows, padded_length

from .memory import PAD_MULTIPLE
from .precision import autocast

LAYOUTS = ("packed", "padded")


@dataclass
class Encoded:
    task_id: int
    prompt: list[int]
    target: list[int]  # target tokens + eos (possibly truncated)

    @property
    def ids(self) -> list[int]:
        return self.prompt + self.target


def right_pad(seqs: Sequence[Sequence[int]], pad_id: int, multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) as torch tensors, padded on the right to the longest row
    rounded up to ``multiple`` tokens (:func:`alter_edge.padding.pad_rows`)."""
    ids, lengths = pad_rows(seqs, pad_id, "right", multiple)
    return torch.from_numpy(ids), torch.from_numpy(length_mask(lengths, ids.shape[1]))


def pack_lanes(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Row indices grouped into lanes of at most ``capacity`` tokens, first-fit decreasing
    (longest rows first, each into the first lane it fits); a row longer than ``capacity``
    gets a lane of its own. Deterministic: ties keep index order."""
    lanes: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        n = lengths[i]
        for k, free in enumerate(room):
            if n <= free:
                lanes[k].append(i)
                room[k] -= n
                break
        else:
            lanes.append([i])
            room.append(capacity - n)
    return lanes


def lane_capacity(lengths: Sequence[int], lane_tokens: int) -> int:
    """A lane holds ``lane_tokens`` tokens, or the longest row when that is longer."""
    return max(lane_tokens, max(lengths))


@dataclass
class StepBatch:
    """The tensors of one forward: ``ids`` (R, T); ``mask`` (R, T) or None (packed: the mask
    comes from ``position_ids``); ``task_ids`` (R,) or (R, T); ``starts[j]`` = (lane, offset)
    of the j-th row of the step."""

    ids: torch.Tensor
    mask: torch.Tensor | None
    position_ids: torch.Tensor | None
    task_ids: torch.Tensor
    starts: list[tuple[int, int]]


def layout_rows(examples: Sequence[Encoded], idx: Sequence[int], pad_id: int, layout: str,
                lane_tokens: int) -> StepBatch:
    """Lay rows ``idx`` out for one forward, in ``layout`` (:data:`LAYOUTS`)."""
    if layout == "padded":
        ids, mask = right_pad([examples[i].ids for i in idx], pad_id, PAD_MULTIPLE)
        task_ids = torch.tensor([examples[i].task_id for i in idx], dtype=torch.long)
        return StepBatch(ids, mask, None, task_ids, [(j, 0) for j in range(len(idx))])
    if layout != "packed":
        raise ValueError(f"layout {layout!r}: allowed are {', '.join(LAYOUTS)}")
    lengths = [len(examples[i].ids) for i in idx]
    lanes = pack_lanes(lengths, lane_capacity(lengths, lane_tokens))
    T = padded_length(max(sum(lengths[j] for j in lane) for lane in lanes), PAD_MULTIPLE)
    ids = torch.full((len(lanes), T), pad_id, dtype=torch.long)
    pos = torch.zeros((len(lanes), T), dtype=torch.long)
    tids = torch.zeros((len(lanes), T), dtype=torch.long)
    starts: list[tuple[int, int]] = [(0, 0)] * len(idx)
    for r, lane in enumerate(lanes):
        at = 0
        for j in lane:
            e, n = examples[idx[j]], lengths[j]
            ids[r, at : at + n] = torch.tensor(e.ids, dtype=torch.long)
            pos[r, at : at + n] = torch.arange(n)
            tids[r, at : at + n] = e.task_id
            starts[j] = (r, at)
            at += n
        pos[r, at:] = torch.arange(T - at)  # the tail: a segment of its own, never read
    return StepBatch(ids, None, pos, tids, starts)


def lay_out_hidden(hs: Sequence[torch.Tensor], batch: StepBatch) -> torch.Tensor:
    """Cached (len_i, H) hidden states placed where ``batch`` put their rows: float32 (R, T, H)."""
    R, T = batch.ids.shape
    out = torch.zeros(R, T, hs[0].shape[-1], dtype=torch.float32)
    for h, (r, at) in zip(hs, batch.starts, strict=True):
        out[r, at : at + h.shape[0]] = h.float()
    return out


def batch_loss(model: MTAModel, examples: Sequence[Encoded], idx: Sequence[int], pad_id: int,
               cache: Sequence[torch.Tensor] | None, layout: str = "packed",
               lane_tokens: int = 256) -> torch.Tensor:
    """Mean over rows of the mean target-token cross-entropy; logits only at target positions;
    with ``cache``, the blocks below the first adapted one are skipped."""
    if model.seq2seq:
        if cache is not None:
            raise ValueError("an encoder-decoder has no frozen-prefix cache yet")
        return seq2seq_loss(model, examples, idx, pad_id)
    batch = layout_rows(examples, idx, pad_id, layout, lane_tokens)
    b_idx, p_idx, labels, owner = [], [], [], []
    for j, i in enumerate(idx):
        e = examples[i]
        lane, at = batch.starts[j]
        first = at + len(e.prompt) - 1  # the position whose logits predict the first target token
        b_idx += [lane] * len(e.target)
        p_idx += range(first, first + len(e.target))
        labels += e.target
        owner += [j] * len(e.target)
    positions = (torch.tensor(b_idx), torch.tensor(p_idx))
    prefix = lay_out_hidden([cache[i] for i in idx], batch) if cache is not None else None
    logits = model.logits_at(batch.ids, batch.mask, batch.task_ids, positions, prefix_hidden=prefix,
                             position_ids=batch.position_ids)  # (N, V)
    tok_loss = F.cross_entropy(logits.float(), torch.tensor(labels), reduction="none")  # (N,)
    return _row_mean(tok_loss, owner, len(idx))


def _row_mean(tok_loss: torch.Tensor, owner: list[int], rows: int) -> torch.Tensor:
    """The mean over rows of each row's mean token loss (``owner``: each token's row)."""
    owner_t = torch.tensor(owner)
    per_row = torch.zeros(rows).index_add(0, owner_t, tok_loss)
    counts = torch.zeros(rows).index_add(0, owner_t, torch.ones_like(tok_loss))
    return (per_row / counts).mean()


def seq2seq_loss(model: MTAModel, examples: Sequence[Encoded], idx: Sequence[int], pad_id: int) -> torch.Tensor:
    """:func:`batch_loss` for an encoder-decoder: the prompt (as the decoder LMs get it) into the
    encoder, ``[decoder start] + target[:-1]`` into the decoder, the loss on ``target``."""
    start = model.decoder_start_id()
    ids, mask = right_pad([examples[i].prompt for i in idx], pad_id, PAD_MULTIPLE)
    dec, dec_mask = right_pad([[start] + examples[i].target[:-1] for i in idx], pad_id, PAD_MULTIPLE)
    task_ids = torch.tensor([examples[i].task_id for i in idx], dtype=torch.long)
    b_idx, p_idx, labels, owner = [], [], [], []
    for j, i in enumerate(idx):
        n = len(examples[i].target)
        b_idx += [j] * n
        p_idx += range(n)
        labels += examples[i].target
        owner += [j] * n
    logits = model.seq2seq_logits_at(ids, mask, dec, dec_mask, task_ids, (torch.tensor(b_idx), torch.tensor(p_idx)))
    tok_loss = F.cross_entropy(logits.float(), torch.tensor(labels), reduction="none")  # (N,)
    return _row_mean(tok_loss, owner, len(idx))


def micro_batches(examples: Sequence[Encoded], idx: Sequence[int], max_tokens: int, layout: str = "packed",
                  lane_tokens: int = 256) -> list[list[int]]:
    """One batch split into parts of at most ``max_tokens`` tokens as laid out (padded: rows x
    the part's padded length; packed: lanes x lane capacity); a part holds at least one row
    (padded) or one lane (packed). A batch that fits (or ``max_tokens`` 0) stays one part in
    its own order."""
    if layout == "packed":
        lengths = [len(examples[i].ids) for i in idx]
        cap = lane_capacity(lengths, lane_tokens)
        lanes = pack_lanes(lengths, cap)
        cap = padded_length(cap, PAD_MULTIPLE)
        if max_tokens <= 0 or len(lanes) * cap <= max_tokens:
            return [list(idx)]
        per_part = max(1, max_tokens // cap)
        return [[idx[j] for lane in lanes[s : s + per_part] for j in lane]
                for s in range(0, len(lanes), per_part)]

    def padded(i: int) -> int:
        return padded_length(len(examples[i].ids), PAD_MULTIPLE)

    if max_tokens <= 0 or len(idx) * max(padded(i) for i in idx) <= max_tokens:
        return [list(idx)]
    parts: list[list[int]] = []
    for i in sorted(idx, key=lambda i: len(examples[i].ids), reverse=True):
        if parts and (len(parts[-1]) + 1) * padded(parts[-1][0]) <= max_tokens:
            parts[-1].append(i)
        else:
            parts.append([i])
    return parts


def accumulate_batch(model: MTAModel, examples: Sequence[Encoded], idx: Sequence[int], pad_id: int,
                     cache: Sequence[torch.Tensor] | None, dtype: str, max_tokens: int,
                     batch_rows: int | None = None, layout: str = "packed", lane_tokens: int = 256) -> float:
    """``batch_loss(idx).backward()`` in micro-batches (:func:`micro_batches`): each part's loss
    is weighted by its share of the rows, so the gradients that accumulate in ``.grad`` are the
    whole batch's. ``batch_rows``: the rows of the whole batch when ``idx`` is one rank's share
    of it (default ``len(idx)``); the ranks' summed gradients are then the batch's. Returns the
    (share of the) batch's loss."""
    batch_rows = batch_rows or len(idx)
    if not idx:
        return 0.0
    if model.seq2seq:  # no packed layout for an encoder-decoder yet: its rows are padded
        layout = "padded"
    parts = micro_batches(examples, idx, max_tokens, layout, lane_tokens)
    total = 0.0
    for part in parts:
        with autocast(dtype):
            loss = batch_loss(model, examples, part, pad_id, cache, layout, lane_tokens)
        if len(parts) > 1 or batch_rows != len(idx):
            loss = loss * (len(part) / batch_rows)
        loss.backward()
        total += loss.item()
    return total

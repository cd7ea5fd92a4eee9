// Label scoring for classify tasks, as the Python runtime does it (runtime/scoring.py): the sum
// of log-probabilities of each label's tokens (" " + label, then eos) after the prompt. The
// prompt batch runs once; a label's first token is scored from the prompt's logits; its later
// tokens are teacher-forced one-token steps on copies of the prompt's KV cache, one copy per
// label (at most MAX_LABEL_ROWS rows per group), all labels of a group in one step.

import { checkAbort } from "./generate.js";

export const MAX_LABEL_ROWS = 64;

/** log_softmax of one logits row, in float64. */
function logSoftmax(logits, i, V) {
  const out = new Float64Array(V);
  let max = -Infinity;
  for (let v = 0; v < V; v++) if (logits[i * V + v] > max) max = logits[i * V + v];
  let sum = 0;
  for (let v = 0; v < V; v++) sum += Math.exp((out[v] = logits[i * V + v] - max));
  const lse = Math.log(sum);
  for (let v = 0; v < V; v++) out[v] -= lse;
  return out;
}

/**
 * (B x L) label log-likelihoods after each prompt.
 * @param {import("./session.js").GraphRunner} runner
 * @param {number[][]} prompts
 * @param {number} taskId
 * @param {number[][]} labelIds each label's token ids, eos included
 * @param {number} pad
 * @param {AbortSignal} [signal]
 * @returns {Promise<number[][]>}
 */
export async function scoreLabels(runner, prompts, taskId, labelIds, pad, signal) {
  const B = prompts.length;
  const T = Math.max(...prompts.map((p) => p.length));
  const lengths = prompts.map((p) => p.length);
  const tids = runner.takesTaskIds ? new Array(B).fill(taskId) : null;
  const longest = Math.max(...labelIds.map((l) => l.length));
  const cache = runner.newCache(B, T + longest);
  const ids = new BigInt64Array(B * T).fill(BigInt(pad));
  prompts.forEach((p, b) => p.forEach((t, j) => { ids[b * T + j] = BigInt(t); }));
  checkAbort(signal);
  const logits = await runner.step(ids, T, lengths, tids, cache);
  const V = runner.vocabSize;
  const scores = prompts.map((_, b) => {
    const first = logSoftmax(logits, b, V);
    return labelIds.map((lab) => first[lab[0]]);
  });
  const later = labelIds.map((lab, j) => j).filter((j) => labelIds[j].length > 1);
  const per = Math.max(1, Math.floor(MAX_LABEL_ROWS / B));
  for (let g = 0; g < later.length; g += per) {
    const group = later.slice(g, g + per);
    const J = group.length;
    const steps = Math.max(...group.map((j) => labelIds[j].length)) - 1;
    // row j * B + b: prompt b's cache for the group's label j
    const src = [];
    for (let j = 0; j < J; j++) for (let b = 0; b < B; b++) src.push(b);
    const rep = await cache.gather(src, T + steps, T);
    const repLengths = src.map((b) => lengths[b]);
    const repTids = tids && src.map(() => taskId);
    for (let k = 0; k < steps; k++) {
      checkAbort(signal);
      const feed = new BigInt64Array(J * B);
      for (let j = 0; j < J; j++) {
        const lab = labelIds[group[j]];
        for (let b = 0; b < B; b++) feed[j * B + b] = BigInt(k < lab.length ? lab[k] : pad);
      }
      const out = await runner.step(feed, 1, repLengths.map((n) => n + k + 1), repTids, rep);
      for (let j = 0; j < J; j++) {
        const lab = labelIds[group[j]];
        if (lab.length <= k + 1) continue; // this label has no token k + 1
        for (let b = 0; b < B; b++) scores[b][group[j]] += logSoftmax(out, j * B + b, V)[lab[k + 1]];
      }
    }
  }
  return scores;
}

/** Softmax over one row of label log-likelihoods. */
export function labelProbabilities(row) {
  const max = Math.max(...row);
  const e = row.map((s) => Math.exp(s - max));
  const sum = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / sum);
}

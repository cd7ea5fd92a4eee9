// The decode loop, token choice and incremental detokenization, as the Python runtime does them
// (runtime/generate.py): right-padded prompt rows of their own lengths and task ids run as one
// step into a KV cache allocated once for the longest prompt plus max_new_tokens; then one token
// per live row per step, written at that row's own position. A finished row's slot feeds pad
// at length 1; once a quarter or more of the slots are free, finished rows leave the batch
// (their cache rows with them), as SlotPool._compact does.

import { AbortError, ConfigError } from "./errors.js";

export const MIN_TEMPERATURE = 1e-3;
export const MAX_TEMPERATURE = 100;

const isInt = (v) => Number.isInteger(v);
const isReal = (v) => typeof v === "number" && Number.isFinite(v);

/**
 * Sampling options, checked as Python's SamplingParams checks them.
 * @typedef {{maxNewTokens: number, temperature: number, topK: number, topP: number,
 *            seed: number|null, stop: string[], ignoreEos: boolean}} SamplingParams
 */

/**
 * @param {object} o the caller's options
 * @param {number} defaultMaxNew the bundle's generation.max_new_tokens
 * @returns {SamplingParams}
 */
export function samplingParams(o, defaultMaxNew) {
  const maxNewTokens = o.maxNewTokens ?? defaultMaxNew;
  const { temperature = 0, topK = 0, topP = 1, seed = null, ignoreEos = false } = o;
  if (!isInt(maxNewTokens) || maxNewTokens < 1) {
    throw new ConfigError(`maxNewTokens must be an integer >= 1, got ${fmt(maxNewTokens)}`);
  }
  if (!isReal(temperature) || !(temperature === 0 || (temperature >= MIN_TEMPERATURE && temperature <= MAX_TEMPERATURE))) {
    throw new ConfigError(`temperature must be 0 (greedy) or a number in ${MIN_TEMPERATURE}..${MAX_TEMPERATURE}, ` +
                          `got ${fmt(temperature)}`);
  }
  if (!isInt(topK) || topK < 0) throw new ConfigError(`topK must be an integer >= 0 (0 = off), got ${fmt(topK)}`);
  if (!isReal(topP) || !(topP > 0 && topP <= 1)) throw new ConfigError(`topP must be a number in (0, 1], got ${fmt(topP)}`);
  if (seed !== null && (!isInt(seed) || seed < 0 || seed > Number.MAX_SAFE_INTEGER)) {
    throw new ConfigError(`seed must be an integer >= 0 or null, got ${fmt(seed)}`);
  }
  let stop = o.stop ?? [];
  if (typeof stop === "string") stop = [stop];
  if (!Array.isArray(stop)) throw new ConfigError(`stop must be a string or a list of strings, got ${fmt(stop)}`);
  if (stop.some((s) => typeof s !== "string" || !s)) {
    throw new ConfigError(`stop strings must be non-empty strings, got ${fmt(stop)}`);
  }
  if (typeof ignoreEos !== "boolean") throw new ConfigError(`ignoreEos must be true or false, got ${fmt(ignoreEos)}`);
  return { maxNewTokens, temperature, topK, topP, seed, stop: [...stop], ignoreEos };
}

function fmt(v) {
  try {
    return JSON.stringify(v) ?? String(v);
  } catch {
    return String(v);
  }
}

// -- random streams --------------------------------------------------------------------------
// numpy's default_rng([seed, row]): SeedSequence (numpy/random/bit_generator.pyx) feeding PCG64
// (XSL-RR 128/64), so a row draws the numbers the Python runtime's TokenPicker draws.

const INIT_A = 0x43b0d7e5, MULT_A = 0x931e8875, INIT_B = 0x8b51f9dd, MULT_B = 0x58f38ded;
const MIX_MULT_L = 0xca01f9dd, MIX_MULT_R = 0x4973f715;
const MASK64 = (1n << 64n) - 1n, MASK128 = (1n << 128n) - 1n;
const PCG_MULT = (2549297995355413924n << 64n) + 4865540595714422341n;

/** The little-endian 32-bit words of a non-negative integer (numpy's _int_to_uint32_array). */
function uint32Words(n) {
  if (n === 0) return [0];
  const out = [];
  for (let b = BigInt(n); b > 0n; b >>= 32n) out.push(Number(b & 0xffffffffn));
  return out;
}

/** SeedSequence(entropy).generate_state(n) for entropy words (pool size 4, no spawn key). */
function seedSequenceState(entropy, n) {
  let hashConst = INIT_A;
  const hashmix = (v) => {
    v = (v ^ hashConst) >>> 0;
    hashConst = Math.imul(hashConst, MULT_A) >>> 0;
    v = Math.imul(v, hashConst) >>> 0;
    return (v ^ (v >>> 16)) >>> 0;
  };
  const mix = (x, y) => {
    const r = (Math.imul(MIX_MULT_L, x) - Math.imul(MIX_MULT_R, y)) >>> 0;
    return (r ^ (r >>> 16)) >>> 0;
  };
  const pool = [0, 1, 2, 3].map((i) => hashmix(i < entropy.length ? entropy[i] : 0));
  for (let s = 0; s < 4; s++) for (let d = 0; d < 4; d++) if (s !== d) pool[d] = mix(pool[d], hashmix(pool[s]));
  for (let s = 4; s < entropy.length; s++) for (let d = 0; d < 4; d++) pool[d] = mix(pool[d], hashmix(entropy[s]));
  let c = INIT_B;
  return Array.from({ length: n }, (_, i) => {
    let v = (pool[i % 4] ^ c) >>> 0;
    c = Math.imul(c, MULT_B) >>> 0;
    v = Math.imul(v, c) >>> 0;
    return (v ^ (v >>> 16)) >>> 0;
  });
}

/**
 * A row's random stream: numpy's `default_rng([seed, row])`, so a seeded request repeats
 * itself row for row whatever else shares its batch, and draws the Python runtime's numbers.
 */
export class RowRandom {
  /** @param {number} seed an integer >= 0 @param {number} row */
  constructor(seed, row) {
    const w = seedSequenceState([...uint32Words(seed), ...uint32Words(row)], 8).map(BigInt);
    const v = [0, 1, 2, 3].map((k) => w[2 * k] | (w[2 * k + 1] << 32n)); // 4 x uint64
    this.inc = ((((v[2] << 64n) | v[3]) << 1n) | 1n) & MASK128;
    this.state = 0n;
    this.#step();
    this.state = (this.state + ((v[0] << 64n) | v[1])) & MASK128;
    this.#step();
  }

  #step() {
    this.state = (this.state * PCG_MULT + this.inc) & MASK128;
  }

  /** The next 64-bit output (PCG64's XSL-RR), as a BigInt. */
  next64() {
    this.#step();
    const x = ((this.state >> 64n) ^ this.state) & MASK64;
    const rot = this.state >> 122n;
    return ((x >> rot) | (x << ((64n - rot) & 63n))) & MASK64;
  }

  /** A uniform double in [0, 1) (numpy's Generator.random()). */
  random() {
    return Number(this.next64() >> 11n) / 9007199254740992;
  }
}

/** The first index of the largest value (numpy's argmax). */
export function argmax(x, from = 0, to = x.length) {
  let best = from;
  for (let i = from + 1; i < to; i++) if (x[i] > x[best]) best = i;
  return best - from;
}

/**
 * Chooses a row's next token from its logits as Python's TokenPicker does: greedy at
 * temperature 0; else softmax(logits / temperature) after top-k (ties at the k-th value kept)
 * and top-p (the smallest set of most likely tokens whose mass reaches topP), one uniform draw
 * from the row's own stream, the token where the running sum in vocabulary order passes it.
 */
export class TokenPicker {
  /** @param {SamplingParams} p */
  constructor(p) {
    this.p = p;
    this.seed = p.temperature === 0 ? null : (p.seed ?? randomSeed());
    this.streams = new Map();
  }

  /**
   * @param {Float32Array} logits all rows' logits, `vocab` each
   * @param {number} i the logits row
   * @param {number} vocab
   * @param {number} stream the request's row (its random stream)
   */
  pick(logits, i, vocab, stream) {
    if (this.seed === null) return argmax(logits, i * vocab, (i + 1) * vocab);
    const { temperature, topK, topP } = this.p;
    const x = new Float64Array(vocab);
    let max = -Infinity;
    for (let v = 0; v < vocab; v++) {
      x[v] = logits[i * vocab + v] / temperature;
      if (x[v] > max) max = x[v];
    }
    if (topK > 0 && topK < vocab) {
      const kth = kthLargest(x, topK);
      for (let v = 0; v < vocab; v++) if (x[v] < kth) x[v] = -Infinity;
    }
    let sum = 0;
    for (let v = 0; v < vocab; v++) sum += (x[v] = Math.exp(x[v] - max));
    for (let v = 0; v < vocab; v++) x[v] /= sum;
    let rng = this.streams.get(stream);
    if (!rng) this.streams.set(stream, (rng = new RowRandom(this.seed, stream)));
    const u = rng.random();
    const keep = topP < 1 ? nucleus(x, topP) : null;
    if (!keep) {
      let total = 0;
      for (let v = 0; v < vocab; v++) total += x[v];
      const target = u * total;
      let c = 0;
      for (let v = 0; v < vocab; v++) if ((c += x[v]) > target) return v;
      return vocab - 1;
    }
    let total = 0;
    for (const v of keep) total += x[v];
    const target = u * total;
    let c = 0;
    for (const v of keep) if ((c += x[v]) > target) return v;
    return vocab - 1;
  }
}

/** The k-th largest value of `x` (k >= 1), by quickselect on a copy: O(length) on average. */
export function kthLargest(x, k) {
  const a = Float64Array.from(x);
  let lo = 0, hi = a.length - 1;
  const want = k - 1; // index in descending order
  while (lo < hi) {
    const pivot = a[(lo + hi) >>> 1];
    let i = lo, j = hi;
    while (i <= j) {
      while (a[i] > pivot) i++;
      while (a[j] < pivot) j--;
      if (i <= j) { const t = a[i]; a[i] = a[j]; a[j] = t; i++; j--; }
    }
    if (want <= j) hi = j;
    else if (want >= i) lo = i;
    else break;
  }
  return a[want];
}

/**
 * The ids (ascending) of the smallest set of most likely tokens whose mass reaches `topP`: the
 * most likely always, then each next one (ties by id) while the mass before it is below topP,
 * as Python's _nucleus. Sorts only the `first` most likely tokens when the set ends among them.
 */
export function nucleus(p, topP, first = 1024) {
  const V = p.length;
  // Python: the first i whose running sum minus itself (the mass before it) reaches topP
  const take = (ids) => {
    ids.sort((a, b) => p[b] - p[a] || a - b);
    let c = 0;
    for (let i = 0; i < ids.length; i++) {
      c += p[ids[i]];
      if (c - p[ids[i]] >= topP) return ids.slice(0, i).sort((a, b) => a - b);
    }
    return ids.length === V ? ids.slice().sort((a, b) => a - b) : null;
  };
  let max = 0;
  for (let v = 0; v < V; v++) if (p[v] > max) max = p[v];
  if (first < V && max * first >= topP) { // else the `first` most likely cannot reach topP
    const threshold = kthLargest(p, first);
    const top = [];
    for (let v = 0; v < V; v++) if (p[v] >= threshold) top.push(v);
    const kept = take(top);
    if (kept) return kept;
  }
  return take(Array.from(p.keys()));
}

function randomSeed() {
  const a = new Uint32Array(2);
  if (globalThis.crypto?.getRandomValues) globalThis.crypto.getRandomValues(a);
  else { a[0] = Math.random() * 2 ** 32; a[1] = Math.random() * 2 ** 21; }
  return (a[1] & 0x1fffff) * 2 ** 32 + a[0];
}

// -- the decode loop ---------------------------------------------------------------------------

/**
 * Yield `[row, tokenId]` for every generated token in step order; a row's eos comes as
 * `[row, null]`. A caller may mark `done[row] = true` between yields (a stop string): that
 * row gets no more tokens.
 * @param {import("./session.js").GraphRunner} runner
 * @param {number[][]} prompts
 * @param {number[]} taskIds
 * @param {{eos: number, pad: number}} ids
 * @param {SamplingParams} params
 * @param {boolean[]} done
 * @param {AbortSignal} [signal]
 * @returns {AsyncGenerator<[number, number|null]>}
 */
export async function* decode(runner, prompts, taskIds, { eos, pad }, params, done, signal) {
  const n = prompts.length;
  if (!n) return;
  const picker = new TokenPicker(params);
  const T = Math.max(...prompts.map((p) => p.length));
  let cache = runner.newCache(n, T + params.maxNewTokens);
  // slot state: the request row each slot holds (-1: free), its valid tokens, task, last token
  let key = prompts.map((_, i) => i);
  let lengths = prompts.map((p) => p.length);
  let task = [...taskIds];
  let cur = new Array(n).fill(pad);
  const count = new Array(n).fill(0);
  const ids = new BigInt64Array(n * T).fill(BigInt(pad));
  prompts.forEach((p, b) => p.forEach((t, j) => { ids[b * T + j] = BigInt(t); }));
  checkAbort(signal);
  let logits = await runner.step(ids, T, lengths, runner.takesTaskIds ? task : null, cache);
  for (;;) {
    const V = runner.vocabSize;
    for (let j = 0; j < key.length; j++) {
      const r = key[j];
      if (r < 0) continue;
      if (done[r]) { key[j] = -1; continue; }
      const t = picker.pick(logits, j, V, r);
      if (t === eos && !params.ignoreEos) {
        key[j] = -1;
        yield [r, null];
        continue;
      }
      count[r] += 1;
      cur[j] = t;
      if (count[r] === params.maxNewTokens) key[j] = -1;
      yield [r, t];
      if (done[r]) key[j] = -1;
    }
    if (key.every((r) => r < 0 || done[r])) return;
    checkAbort(signal);
    // finished rows leave the batch once a quarter or more of the slots are free
    const live = key.map((r) => r >= 0 && !done[r]);
    const free = live.filter((x) => !x).length;
    if (4 * free >= key.length) {
      const keep = [...key.keys()].filter((j) => live[j]);
      cache = await cache.gather(keep);
      key = keep.map((j) => key[j]);
      lengths = keep.map((j) => lengths[j]);
      task = keep.map((j) => task[j]);
      cur = keep.map((j) => cur[j]);
    }
    const B = key.length;
    const step = new BigInt64Array(B);
    for (let j = 0; j < B; j++) {
      const on = key[j] >= 0 && !done[key[j]];
      lengths[j] = on ? lengths[j] + 1 : 1;
      step[j] = BigInt(on ? cur[j] : pad);
      if (!on) key[j] = -1;
    }
    logits = await runner.step(step, 1, lengths, runner.takesTaskIds ? task : null, cache);
  }
}

/** @param {AbortSignal} [signal] */
export function checkAbort(signal) {
  if (signal?.aborted) {
    const why = signal.reason;
    throw new AbortError(why instanceof Error ? `the request was aborted (${why.message})`
      : why === undefined ? "the request was aborted" : `the request was aborted (${String(why)})`);
  }
}

// -- text ----------------------------------------------------------------------------------------

const isSpace = (s) => /^\s*$/u.test(s);
const lstripLen = (s) => s.length - s.replace(/^\s+/u, "").length;

/**
 * Incremental detokenization of one row, with stop strings: Python's RowText (see
 * runtime/generate.py). `push` returns the text safe to show now: never a partial UTF-8
 * character (U+FFFD at the end of a decode), never a tail that may grow into a stop string;
 * leading whitespace is dropped, so the pieces add up to `text`. Each token decodes only the
 * ids after the last settled group (with that group as context), not the whole row.
 */
export class RowText {
  /**
   * @param {{decode: (ids: number[]) => string}} tokenizer
   * @param {string[]} stop
   */
  constructor(tokenizer, stop) {
    this.tok = tokenizer;
    this.stop = stop;
    this.ids = [];
    this.emitted = 0;
    this.stopped = false;
    this._keep = Math.max(1, ...stop.map((s) => s.length)) - 1;
    this._settled = [];
    this._settledLen = 0;
    this._recent = "";
    this._start = 0;
    this._end = 0;
    this._context = "";
    this._tail = "";
    this._lead = null;
    this._final = null;
  }

  get text() {
    if (this._final !== null) return this._final;
    return (this._settled.join("") + this._tail).slice(this._leadNow());
  }

  _decode(start) {
    return this.tok.decode(this.ids.slice(start));
  }

  _leadNow() {
    if (this._lead !== null) return this._lead;
    return this._settledLen + lstripLen(this._tail);
  }

  /** @param {number} tokenId @returns {string} */
  push(tokenId) {
    this.ids.push(tokenId);
    const fresh = this._decode(this._start);
    if (fresh.startsWith(this._context)) {
      this._tail = fresh.slice(this._context.length);
    } else { // not built left to right here: start over from the whole text
      this._settled = []; this._settledLen = 0; this._recent = "";
      this._start = this._end = 0;
      this._context = ""; this._tail = this._decode(0);
    }
    const lead = this._leadNow();
    const base = this._settledLen - this._recent.length;
    const window = this._recent + this._tail;
    const size = this._settledLen + this._tail.length - lead;
    const frm = Math.max(lead, this._settledLen - this._keep) - base;
    let cut = -1;
    for (const s of this.stop) {
      const k = window.indexOf(s, frm);
      if (k >= 0 && (cut < 0 || k < cut)) cut = k;
    }
    if (cut >= 0) {
      const end = base + cut - lead;
      const piece = this._slice(window, base, lead, end);
      this._final = this.text.slice(0, end);
      this.stopped = true;
      return piece;
    }
    const safe = size - (this._tail.length - this._tail.replace(/\ufffd+$/u, "").length);
    const limit = safe + lead - base; // window[0:limit] is safe text
    let hold = 0;
    for (const s of this.stop) {
      for (let n = 1; n < Math.min(s.length, safe + 1); n++) {
        if (n > hold && limit - n >= 0 && window.slice(limit - n, limit) === s.slice(0, n)) hold = n;
      }
    }
    const piece = this._slice(window, base, lead, safe - hold);
    if (this._tail && !this._tail.endsWith("\ufffd")) this._settle(lead);
    return piece;
  }

  _settle(lead) {
    const tail = this._tail;
    this._settled.push(tail);
    this._settledLen += tail.length;
    if (this._keep) this._recent = (this._recent + tail).slice(-this._keep);
    if (this._lead === null && !isSpace(tail)) this._lead = lead;
    this._start = this._end;
    this._end = this.ids.length;
    this._context = this._decode(this._start);
    this._tail = "";
  }

  _slice(window, base, lead, upto) {
    upto = Math.max(upto, this.emitted);
    const a = this.emitted + lead - base, b = upto + lead - base;
    const piece = a >= 0 ? window.slice(a, b) : this.text.slice(this.emitted, upto);
    this.emitted = upto;
    return piece;
  }

  /** The rest of the text, once the row has ended. */
  finish() {
    const text = this.text;
    const piece = text.length > this.emitted ? text.slice(this.emitted) : "";
    this.emitted = Math.max(this.emitted, text.length);
    return piece;
  }
}

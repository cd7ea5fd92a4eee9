// One graph in an onnxruntime session, and its KV cache (the graph contract: docs/bundle-format.md,
// runtime/contract.py). Written against onnxruntime-common's API only: the `ort` object comes
// from the backend the app passes (onnxruntime-node, onnxruntime-web, onnxruntime-react-native).
//
// Two ways to keep the KV cache, chosen per model (`kvMode`):
// - "shared" (the Python runtime's way, runtime/session.py): per layer one key and one value
//   buffer [batch, kv_heads, max_len, head_dim], allocated once and passed both as the past
//   input and as the pre-allocated present output of every step, so GroupQueryAttention writes
//   each row's new entries in place: no step allocates or copies the cache. The logits output
//   [batch, 1, vocab] is pre-allocated too.
// - "copy": past of `len` positions in, present of `len + new` positions out (onnxruntime
//   allocates it), which becomes the next step's past. For backends that do not write into
//   pre-allocated outputs.
// Both feed the same tokens, row lengths and task ids, and give the same logits.

import { BundleError, ConfigError } from "./errors.js";

export const KV_MODES = ["auto", "shared", "copy"];
// "auto": "shared" where the backend writes into pre-allocated outputs (checked once per graph
// at load, against a plain run), else "copy"; onnxruntime-web: "copy" without the check.

/**
 * A KV cache for `batch` rows.
 */
export class KVCache {
  /**
   * @param {GraphRunner} runner
   * @param {number} batch
   * @param {number} maxLen positions ("shared": the buffer; "copy": the most the cache may grow to)
   * @param {"shared"|"copy"} mode
   * @param {Float32Array[]} [arrays] "shared": buffers to adopt; "copy": current past data
   * @param {number} [len] "copy": positions the past holds now
   */
  constructor(runner, batch, maxLen, mode, arrays, len = 0) {
    const { numKvHeads: H, headDim: D, pastNames } = runner.kv;
    const T = runner.ort.Tensor;
    this.runner = runner;
    this.batch = batch;
    this.maxLen = maxLen;
    this.mode = mode;
    this.len = mode === "shared" ? maxLen : len;
    this.arrays = arrays ?? pastNames.map(() => new Float32Array(mode === "shared" ? batch * H * maxLen * D : 0));
    this.tensors = this.arrays.map((a) => new T("float32", a, [batch, H, this.len, D]));
    this.logits = null; // "shared": the pre-allocated logits output, made at the first step
  }

  /**
   * A new cache holding `rows` of this one (a row may repeat), positions [0, upto) copied;
   * "shared": a buffer of `maxLen` positions (default: this cache's).
   * @param {number[]} rows
   * @param {number} [maxLen]
   * @param {number} [upto]
   */
  async gather(rows, maxLen = this.maxLen, upto = this.len) {
    const { numKvHeads: H, headDim: D } = this.runner.kv;
    const newLen = this.mode === "shared" ? maxLen : this.len;
    const n = Math.min(upto, this.len, newLen) * D; // floats per (row, head) copied
    const arrays = [];
    for (let i = 0; i < this.tensors.length; i++) {
      const src = await this.data(i);
      const dst = new Float32Array(rows.length * H * newLen * D);
      rows.forEach((r, j) => {
        for (let h = 0; h < H; h++) {
          const s = (r * H + h) * this.len * D, d = (j * H + h) * newLen * D;
          dst.set(src.subarray(s, s + n), d);
        }
      });
      arrays.push(dst);
    }
    return new KVCache(this.runner, rows.length, maxLen, this.mode, arrays, newLen);
  }

  /**
   * Layer entry i's data on the CPU ("copy" mode may hold a backend's tensor elsewhere, e.g. a
   * GPU buffer with preferredOutputLocation).
   * @param {number} i
   * @returns {Promise<Float32Array>}
   */
  async data(i) {
    if (this.arrays[i]) return this.arrays[i];
    const t = this.tensors[i];
    return (this.arrays[i] = !t.location || t.location === "cpu" ? t.data : await t.getData());
  }
}

/**
 * One graph: `step(ids, width, lengths, taskIds, cache)` -> logits at each row's last valid
 * position.
 */
export class GraphRunner {
  /**
   * @param {any} ort the backend (onnxruntime-common's API)
   * @param {any} session an InferenceSession
   * @param {string} path the graph's name in the bundle
   * @param {ReturnType<import("./manifest.js").kvLayout>} kv
   * @param {"auto"|"shared"|"copy"} mode resolved by probe()
   */
  constructor(ort, session, path, kv, mode) {
    this.ort = ort;
    this.session = session;
    this.path = path;
    this.kv = kv;
    this.mode = mode;
    const inputs = new Set(session.inputNames);
    const outputs = new Set(session.outputNames);
    this.takesTaskIds = inputs.has("task_ids");
    const expected = ["input_ids", "attention_mask", ...kv.pastNames];
    const missing = [...expected.filter((n) => !inputs.has(n)),
                     ...["logits", ...kv.presentNames].filter((n) => !outputs.has(n))];
    if (missing.length) {
      throw new BundleError(`${path}: graph lacks input/output(s) ${missing.slice(0, 4).join(", ")} ` +
                            "that manifest.json's kv_cache layout names");
    }
    const extra = [...inputs].filter((n) => !expected.includes(n) && n !== "task_ids");
    if (extra.length) {
      throw new BundleError(`${path}: graph takes input(s) ${extra.slice(0, 4).join(", ")} that manifest.json's ` +
                            `kv_cache layout does not name (num_layers ${kv.numLayers})`);
    }
    this.vocabSize = 0; // set by probe()
    this.queue = Promise.resolve(); // runs on one session go one at a time (onnxruntime-web refuses overlap)
  }

  /** session.run, after every run queued before it has finished. */
  run(feeds, fetches) {
    const next = this.queue.then(() => (fetches ? this.session.run(feeds, fetches) : this.session.run(feeds)));
    this.queue = next.catch(() => {});
    return next;
  }

  /**
   * A one-token step with every task id 0..nTasks-1 (one row each; one row for a task's own
   * graph): learns the vocabulary size, and refuses a task table the graph does not have.
   * @param {number} nTasks
   */
  async probe(nTasks) {
    const B = this.takesTaskIds ? Math.max(1, nTasks) : 1;
    const tids = Array.from({ length: B }, (_, i) => i);
    let wanted = this.mode;
    // onnxruntime-web's WASM backend (1.30) leaves pre-allocated outputs unwritten: "auto" is
    // "copy" there without trying (each probe step costs a full step on a slow backend)
    if (wanted === "auto" && this.ort.env?.versions?.web) wanted = "copy";
    // a two-token prompt step, then a one-token step (tokens 1 and 2: a pad token's embedding
    // may be zero, which makes every output zero); one step when nothing is compared
    const steps = wanted === "copy" ? 1 : 2;
    const run = async (cache) => {
      const prompt = new BigInt64Array(2 * B).map((_, i) => BigInt(1 + (i % 2)));
      // Array.from, not push(...logits): a real vocabulary's logits overflow the call stack as arguments
      const first = Array.from(await this.step(prompt, 2, new Array(B).fill(2), tids, cache));
      if (steps === 1) return first;
      return first.concat(Array.from(await this.step(new BigInt64Array(B).fill(1n), 1, new Array(B).fill(3), tids, cache)));
    };
    let reference;
    try {
      this.mode = "copy"; // onnxruntime allocates every output: the reference logits and the vocabulary
      reference = await run(new KVCache(this, B, 3, "copy"));
    } catch (e) {
      if (!this.takesTaskIds) throw new BundleError(`${this.path}: onnxruntime cannot run this graph (${firstLine(e)})`);
      throw new BundleError(`${this.path}: the graph cannot run task ids 0..${B - 1} of tasks.json ` +
                            `(${firstLine(e)}): tasks.json does not belong to this graph`);
    }
    if (wanted === "copy") return;
    // "shared"/"auto": the same steps with the cache and logits in pre-allocated outputs must
    // give the same logits
    let same = false;
    let error = null;
    try {
      const got = await run(new KVCache(this, B, 4, "shared"));
      same = got.length === reference.length &&
        got.every((x, i) => Math.abs(x - reference[i]) <= 1e-4 * (1 + Math.abs(reference[i])));
    } catch (e) {
      error = e;
    }
    if (same) this.mode = "shared";
    else if (wanted === "shared") {
      throw new ConfigError("kvMode \"shared\": this backend does not write the KV cache into pre-allocated outputs " +
                            `(${error ? firstLine(error) : "the logits differ from a plain run"}); use kvMode "auto" or "copy"`);
    }
  }

  /**
   * A cache for `batch` rows and up to `maxLen` positions.
   * @param {number} batch
   * @param {number} maxLen
   */
  newCache(batch, maxLen) {
    const limit = this.kv.maxSequenceLength;
    if (limit && maxLen > limit) {
      throw new ConfigError(`${maxLen} tokens (prompt plus new tokens) exceed the ${limit} positions this ` +
                            "graph covers; ask for fewer new tokens or a shorter input");
    }
    return new KVCache(this, batch, maxLen, this.mode);
  }

  /**
   * Run the graph once on `ids` (B x S, right-padded, row-major int64); `lengths[b]`: row b's
   * valid tokens after this step's. Returns the logits [B, vocab] as a Float32Array: in
   * "shared" mode the cache's own output buffer, which the next step on this cache overwrites.
   * @param {BigInt64Array} ids
   * @param {number} S tokens per row in this step
   * @param {number[]} lengths
   * @param {number[]|null} taskIds
   * @param {KVCache} cache
   * @returns {Promise<Float32Array>}
   */
  async step(ids, S, lengths, taskIds, cache) {
    const { Tensor } = this.ort;
    const B = cache.batch;
    const longest = Math.max(...lengths);
    const width = cache.mode === "shared" ? Math.max(longest, S) : cache.len + S;
    if (width > cache.maxLen || longest > width) {
      throw new ConfigError(`sequence of ${Math.max(width, longest)} tokens exceeds the KV cache of ${cache.maxLen}`);
    }
    if (this.takesTaskIds && !taskIds) throw new ConfigError(`${this.path} is the multi-task graph: task ids are required`);
    const mask = new BigInt64Array(B * width);
    for (let b = 0; b < B; b++) mask.fill(1n, b * width, b * width + lengths[b]);
    const feeds = {
      input_ids: new Tensor("int64", ids, [B, S]),
      attention_mask: new Tensor("int64", mask, [B, width]),
    };
    if (this.takesTaskIds) feeds.task_ids = new Tensor("int64", BigInt64Array.from(taskIds, BigInt), [B]);
    const { pastNames, presentNames } = this.kv;
    pastNames.forEach((name, i) => { feeds[name] = cache.tensors[i]; });
    if (cache.mode === "shared") {
      if (!cache.logits && this.vocabSize) {
        cache.logits = new Tensor("float32", new Float32Array(B * this.vocabSize), [B, 1, this.vocabSize]);
      }
      const fetches = { logits: cache.logits };
      presentNames.forEach((name, i) => { fetches[name] = cache.tensors[i]; });
      const out = await this.run(feeds, fetches);
      if (!cache.logits) { // the probe step: the vocabulary is known from here on
        this.vocabSize = out.logits.dims[2];
        return out.logits.data;
      }
      return cache.logits.data;
    }
    const out = await this.run(feeds);
    cache.len = width;
    presentNames.forEach((name, i) => {
      const t = out[name];
      if (t.dims[2] !== width) {
        throw new BundleError(`${this.path}: ${name} has ${t.dims[2]} positions, expected ${width} (past plus new)`);
      }
      // present becomes the next past as it is: on the CPU, or where the session's
      // preferredOutputLocation keeps it (a GPU buffer stays there)
      const old = cache.tensors[i];
      if (old.location && old.location !== "cpu") old.dispose();
      cache.tensors[i] = t;
      cache.arrays[i] = null;
    });
    this.vocabSize ||= out.logits.dims[2];
    return out.logits.data;
  }
}

function firstLine(e) {
  return String(e?.message ?? e).split("\n")[0].slice(0, 160);
}

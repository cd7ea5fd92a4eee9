// EdgeModel: the JavaScript API of the runtime, mirroring the Python EdgeModel
// (runtime/model.py). A request whose rows share one task runs on that task's own graph when
// it is open (load with `tasks`) or the bundle has no multi-task graph; otherwise, and for a
// batch mixing tasks, on the multi-task graph, fed one task id per row.

import { AbortError, AlterEdgeError, BundleError, ConfigError, DataError, TaskError, show } from "./errors.js";
import { RowText, checkAbort, decode, samplingParams } from "./generate.js";
import {
  DEFAULT_MAX_NEW_TOKENS, DEFAULT_MAX_PROMPT_TOKENS, PRECISIONS, PRECISION_PREFERENCE, checkFormat, kvLayout,
  validateManifest,
} from "./manifest.js";
import { labelProbabilities, scoreLabels } from "./scoring.js";
import { GraphRunner, KV_MODES } from "./session.js";
import { sha256Hex } from "./sha256.js";
import { checkDigest, resolveSource } from "./sources.js";
import { parseTasks, renderPrompt, taskNamed, truncateMiddle } from "./tasks.js";
import { loadTokenizer } from "./tokenizer.js";

const LOAD_OPTIONS = ["backend", "precision", "tasks", "threads", "verify", "onProgress", "kvMode", "sessionOptions",
  "cache"];
const GENERATE_OPTIONS = ["task", "tasks", "maxNewTokens", "temperature", "topP", "topK", "seed", "stop", "signal",
  "truncate", "ignoreEos"];
const CLASSIFY_OPTIONS = ["task", "truncate", "signal"];

function checkKeys(options, allowed, what) {
  if (options === undefined || options === null) return {};
  if (typeof options !== "object" || Array.isArray(options)) {
    throw new ConfigError(`${what} options must be an object, got ${show(options)}`);
  }
  const unknown = Object.keys(options).filter((k) => !allowed.includes(k));
  if (unknown.length) {
    throw new ConfigError(`${what}: unknown option ${show(unknown[0])}; allowed: ${allowed.join(", ")}`);
  }
  return options;
}

const positiveInt = (v) => Number.isInteger(v) && v >= 1;

/** Why `text` cannot be a model input, or null (Python's input_problem). */
function inputProblem(text) {
  if (typeof text !== "string") return `must be a string, got ${text === null ? "null" : typeof text}`;
  if (!text.trim()) return "is empty";
  for (let i = 0; i < text.length; i++) { // a lone surrogate cannot be encoded as UTF-8
    const c = text.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff) {
      const d = text.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) { i++; continue; }
    }
    if (c >= 0xd800 && c <= 0xdfff) return `is not valid Unicode (a lone surrogate at character ${i})`;
  }
  return null;
}

function asTexts(texts) {
  if (typeof texts === "string") return [texts];
  if (!Array.isArray(texts)) throw new ConfigError(`texts must be a string or an array of strings, got ${show(texts)}`);
  texts.forEach((t, i) => {
    if (typeof t !== "string") throw new ConfigError(`texts[${i}] must be a string, got ${show(t)}`);
  });
  return texts;
}

function checkSignal(signal) {
  if (signal !== undefined && (typeof signal !== "object" || signal === null || typeof signal.aborted !== "boolean")) {
    throw new ConfigError(`signal must be an AbortSignal, got ${show(signal)}`);
  }
  return signal;
}

/**
 * @typedef {{text: string, tokenIds: number[], task: string, finishReason: "eos"|"stop"|"length",
 *            truncated: boolean}} Generation
 * @typedef {{row: number, tokenId: number|null, text: string, finishReason: null|"eos"|"stop"|"length"}} TokenEvent
 * @typedef {{label: string, probability: number, scores: Record<string, number>, task: string,
 *            truncated: boolean}} Classification
 */

export class EdgeModel {
  /** @private */
  constructor(init) {
    Object.assign(this, init);
    this._runners = new Map(); // graph path -> Promise<GraphRunner>
    this._labelIds = new Map();
  }

  /**
   * The directory reader of this platform, or undefined (the Node.js entry sets one).
   * @type {((path: string) => import("./sources.js").BundleSource) | undefined}
   */
  static directory = undefined;

  /**
   * Check and open a bundle.
   * @param {any} source a BundleSource, a base URL, a map of file names to Blob/ArrayBuffer,
   *   or (Node.js) a directory
   * @param {object} [options]
   * @returns {Promise<EdgeModel>}
   */
  static async load(source, options = {}) {
    const t0 = Date.now();
    const o = checkKeys(options, LOAD_OPTIONS, "EdgeModel.load");
    const backend = o.backend ?? (await this.defaultBackend?.());
    if (!backend || typeof backend.InferenceSession?.create !== "function" || typeof backend.Tensor !== "function") {
      throw new ConfigError("EdgeModel.load needs options.backend: the onnxruntime module of this platform " +
                            "(onnxruntime-node, onnxruntime-web or onnxruntime-react-native)");
    }
    const precision = o.precision ?? null;
    if (precision !== null && !PRECISIONS.includes(precision)) {
      throw new ConfigError(`precision ${show(precision)} is not one of ${PRECISIONS.join(", ")}`);
    }
    const verify = o.verify ?? true;
    if (typeof verify !== "boolean") throw new ConfigError(`verify must be true or false, got ${show(verify)}`);
    const threads = o.threads ?? null;
    if (threads !== null && !positiveInt(threads)) {
      throw new ConfigError(`threads must be an integer >= 1 (or null: the backend's default), got ${show(threads)}`);
    }
    const kvMode = o.kvMode ?? "auto";
    if (!KV_MODES.includes(kvMode)) throw new ConfigError(`kvMode ${show(kvMode)} is not one of ${KV_MODES.join(", ")}`);
    if (o.onProgress !== undefined && typeof o.onProgress !== "function") {
      throw new ConfigError(`onProgress must be a function, got ${show(o.onProgress)}`);
    }
    if (o.tasks !== undefined && (!Array.isArray(o.tasks) || o.tasks.some((t) => typeof t !== "string"))) {
      throw new ConfigError(`tasks must be an array of task names, got ${show(o.tasks)}`);
    }
    if (o.sessionOptions !== undefined && (typeof o.sessionOptions !== "object" || o.sessionOptions === null)) {
      throw new ConfigError(`sessionOptions must be an object (onnxruntime session options), got ${show(o.sessionOptions)}`);
    }
    if (o.cache !== undefined && typeof o.cache !== "boolean" && typeof o.cache?.open !== "function") {
      throw new ConfigError(`cache must be true, false or a CacheStorage (with open), got ${show(o.cache)}`);
    }
    const src = resolveSource(source, o, this.directory);
    const label = src.label.replace(/\/$/, "");
    const where = `${label}/manifest.json`;
    // one event per file read, unless the source reports its own (urlSource: as bytes arrive)
    const progress = (file, bytes) => src.reportsProgress || o.onProgress?.({ file, loaded: bytes, total: bytes, done: true });

    const mBytes = await src.read("manifest.json");
    if (mBytes === null) throw new BundleError(`${label} is not an alter-edge bundle: manifest.json is missing`);
    let m;
    try {
      m = JSON.parse(new TextDecoder().decode(mBytes));
    } catch (e) {
      throw new BundleError(`${where} is not valid JSON (${e.message})`);
    }
    progress("manifest.json", mBytes.length);
    checkFormat(m, where);
    validateManifest(m, where);
    const files = m.files;
    const graphs = m.graphs.map((g) => ({
      path: g.path, task: g.task ?? null, precision: g.precision ?? "fp32", sha256: g.sha256,
      externalData: g.external_data ?? [],
    }));
    if (src.locate) await src.locate("manifest.json"); // not a symlink leading out
    if (verify && src.list) {
      const have = new Set(await src.list());
      const listed = new Set([...Object.keys(files), ...graphs.map((g) => g.path)]);
      const missing = [...listed].filter((f) => !have.has(f)).sort();
      if (missing.length) throw new BundleError(`${label}: file ${missing[0]} listed in manifest.json is missing`);
      const unlisted = [...have].filter((f) => !listed.has(f) && f !== "manifest.json").sort();
      if (unlisted.length) {
        throw new BundleError(`${label}: file ${unlisted[0]} is not listed in manifest.json ` +
                              `(${unlisted.length} unlisted): the bundle was modified`);
      }
    }
    const readChecked = async (rel) => {
      const bytes = await readVerified(src, label, rel, verify ? files[rel] : null);
      progress(rel, bytes.length);
      return bytes;
    };
    const text = (b) => new TextDecoder().decode(b);
    let tasksJson;
    try {
      tasksJson = JSON.parse(text(await readChecked("tasks.json")));
    } catch (e) {
      if (e instanceof AlterEdgeError) throw e;
      throw new BundleError(`${label}/tasks.json is not valid JSON (${e.message})`);
    }
    const tasks = parseTasks(tasksJson, `${label}/tasks.json`);
    const names = tasks.map((t) => t.name);
    if (m.tasks !== undefined && JSON.stringify(m.tasks) !== JSON.stringify(names)) {
      throw new BundleError(`${label}: tasks.json has tasks ${names.join(", ")} (ids 0..${names.length - 1}) but the ` +
                            `graphs were exported for ${m.tasks.join(", ") || "none"} (manifest.json tasks): the task ` +
                            "registry does not belong to these graphs");
    }
    for (const g of graphs) {
      if (g.task !== null && !names.includes(g.task)) {
        throw new BundleError(`${label}: graph ${g.path} is for task ${show(g.task)}, which tasks.json lacks`);
      }
    }
    const tokenizer = loadTokenizer(text(await readChecked("tokenizer.json")), `${label}/tokenizer.json`);
    if (threads && backend.env?.wasm) backend.env.wasm.numThreads = threads;
    const gen = m.generation ?? {};
    const model = new this({
      backend, source: src, label, manifest: m, files, graphs, tasks: tasks.map((t) => ({ ...t, labels: [...t.labels] })),
      _tasks: tasks, tokenizer, precision, verify, threads, onProgress: o.onProgress,
      kv: kvLayout(m.kv_cache), kvMode, sessionOptions: o.sessionOptions ?? {},
      eosId: m.eos_token_id, padId: m.pad_token_id,
      maxNewTokens: gen.max_new_tokens ?? DEFAULT_MAX_NEW_TOKENS,
      maxPromptTokens: gen.max_prompt_tokens ?? DEFAULT_MAX_PROMPT_TOKENS,
    });
    if (o.tasks !== undefined) {
      for (const name of o.tasks) await model._runner(model._graphFor(taskNamed(tasks, name).name));
    } else {
      await model._runner(model._defaultGraph());
    }
    model.loadSeconds = (Date.now() - t0) / 1000;
    return model;
  }

  // -- graphs ------------------------------------------------------------------------------------

  get hasMultiTaskGraph() {
    return this.graphs.some((g) => g.task === null);
  }

  _pick(candidates) {
    const order = this.precision ? [this.precision] : PRECISION_PREFERENCE;
    for (const p of order) {
      const g = candidates.find((c) => c.precision === p);
      if (g) return g;
    }
    return null;
  }

  /** The task's own graph when the bundle has one, else the multi-task graph (task null). */
  _graphFor(task) {
    if (task !== null) {
      const own = this._pick(this.graphs.filter((g) => g.task === task));
      if (own) return own;
    }
    const multi = this._pick(this.graphs.filter((g) => g.task === null));
    if (!multi) {
      const have = this.graphs.map((g) => `${g.path} (${g.precision})`).join(", ");
      throw new BundleError(`${this.label}: no graph ${task ? `for task ${show(task)} ` : ""}at precision ` +
                            `${this.precision ?? "any"} and no multi-task graph; the bundle has: ${have}`);
    }
    return multi;
  }

  _defaultGraph() {
    return this.hasMultiTaskGraph ? this._graphFor(null) : this._graphFor(this.graphs[0].task);
  }

  /**
   * The graph serving a request of these tasks (Python's graph_for_request), or null when rows
   * must run task by task (mixed tasks, no multi-task graph).
   * @param {string[]} taskNames
   */
  graphForRequest(taskNames) {
    const set = new Set(taskNames);
    if (set.size === 1) {
      const own = this._graphFor([...set][0]);
      if (own.task === null || this._runners.has(own.path) || !this.hasMultiTaskGraph) return own;
    }
    return this.hasMultiTaskGraph ? this._graphFor(null) : null;
  }

  /** @returns {Promise<GraphRunner>} */
  _runner(graph) {
    let r = this._runners.get(graph.path);
    if (!r) {
      r = this._open(graph);
      this._runners.set(graph.path, r);
      r.catch(() => this._runners.delete(graph.path));
    }
    return r;
  }

  async _open(graph) {
    const { source: src, label, files, verify, backend } = this;
    const options = {
      graphOptimizationLevel: "all",
      executionMode: "sequential",
      interOpNumThreads: 1,
      ...(this.threads ? { intraOpNumThreads: this.threads } : {}),
      ...this.sessionOptions,
    };
    const progress = (file, bytes) => src.reportsProgress || this.onProgress?.({ file, loaded: bytes, total: bytes, done: true });
    let model;
    if (src.modelPath) { // the backend opens the graph by path and finds its weights beside it
      for (const rel of [graph.path, ...graph.externalData]) {
        const missing = () => new BundleError(`${label}: file ${rel} listed in manifest.json is missing`);
        if (verify) {
          let got = null;
          if (src.sha256) got = await src.sha256(rel);
          else {
            const bytes = await src.read(rel);
            got = bytes && (await sha256Hex(bytes));
          }
          if (got === null) throw missing();
          checkDigest(label, rel, got, rel === graph.path ? graph.sha256 : files[rel]);
        } else if (src.locate && (await src.locate(rel)) === null) {
          throw missing();
        }
        progress(rel, (await src.size?.(rel)) ?? 0);
      }
      model = src.modelPath(graph.path);
    } else {
      const bytes = await readVerified(src, label, graph.path, verify ? graph.sha256 : null);
      progress(graph.path, bytes.length);
      const externalData = [];
      for (const rel of graph.externalData) {
        const raw = !verify && src.raw ? await src.raw(rel) : null;
        const data = raw ?? (await readVerified(src, label, rel, verify ? files[rel] : null));
        if (data instanceof Uint8Array) progress(rel, data.length);
        externalData.push({ path: rel, data });
      }
      model = bytes;
      if (externalData.length) options.externalData = externalData;
    }
    let session;
    try {
      session = await backend.InferenceSession.create(model, options);
    } catch (e) {
      throw new BundleError(`${graph.path}: onnxruntime cannot load this graph (${String(e?.message ?? e).split("\n")[0]})`);
    }
    const runner = new GraphRunner(backend, session, graph.path, this.kv, this.kvMode);
    await runner.probe(this.tasks.length);
    if (this.tokenizer.vocabSize > runner.vocabSize) {
      throw new BundleError(`${label}: tokenizer.json has ${this.tokenizer.vocabSize} tokens but ${graph.path} has ` +
                            `${runner.vocabSize} logits: the tokenizer does not belong to this model`);
    }
    for (const [name, id] of [["eos_token_id", this.eosId], ["pad_token_id", this.padId]]) {
      if (id >= runner.vocabSize) {
        throw new BundleError(`${label}/manifest.json: ${name} ${id} is outside the vocabulary (0..${runner.vocabSize - 1})`);
      }
    }
    return runner;
  }

  /**
   * The graphs open now: path, task (null: the multi-task graph), precision, and how each keeps
   * its KV cache ("shared": written in place; "copy": a new present each step).
   * @returns {Promise<{path: string, task: string|null, precision: string, kvMode: string}[]>}
   */
  async openGraphs() {
    const out = [];
    for (const [path, r] of this._runners) {
      const g = this.graphs.find((x) => x.path === path);
      out.push({ path, task: g.task, precision: g.precision, kvMode: (await r).mode });
    }
    return out;
  }

  /** Release every open onnxruntime session. */
  async release() {
    const runners = [...this._runners.values()];
    this._runners.clear();
    for (const r of runners) await (await r).session.release?.();
  }

  // -- prompts -----------------------------------------------------------------------------------

  /**
   * The prompt's token ids (the task's template filled with the text, no special tokens), and
   * whether it was cut: over max_prompt_tokens is a DataError unless `truncate` cuts it in the
   * middle, as training did.
   * @param {string} text
   * @param {string} task
   * @param {{truncate?: boolean}} [options]
   * @returns {{ids: number[], truncated: boolean}}
   */
  promptIds(text, task, { truncate = false } = {}) {
    if (typeof truncate !== "boolean") throw new ConfigError(`truncate must be true or false, got ${show(truncate)}`);
    const spec = taskNamed(this._tasks, task);
    const problem = inputProblem(text);
    if (problem) throw new DataError(`input ${problem}`);
    const ids = this.tokenizer.encode(renderPrompt(spec.promptTemplate, text));
    const limit = this.maxPromptTokens;
    if (ids.length <= limit) return { ids, truncated: false };
    if (!truncate) {
      throw new DataError(`input is ${ids.length} tokens with its prompt, over the bundle's max_prompt_tokens ` +
                          `${limit} (truncate cuts it in the middle to ${limit} tokens, as training did)`);
    }
    return { ids: truncateMiddle(ids, limit), truncated: true };
  }

  _rowTasks(n, o) {
    if ((o.task === undefined) === (o.tasks === undefined)) {
      throw new TaskError(`pass task (one for all rows) or tasks (one per row); known tasks: ` +
                          this.tasks.map((t) => t.name).join(", "));
    }
    if (o.tasks !== undefined && !Array.isArray(o.tasks)) throw new TaskError(`tasks must be an array of task names, got ${show(o.tasks)}`);
    const names = o.tasks ?? new Array(n).fill(o.task);
    if (names.length !== n) throw new TaskError(`tasks has ${names.length} names for ${n} texts`);
    return names.map((name) => taskNamed(this._tasks, name));
  }

  // -- generation --------------------------------------------------------------------------------

  /**
   * Generate, yielding each row's text deltas as tokens come (rows interleaved); a row's last
   * event has its finishReason. Options are checked before the first event.
   * @param {string|string[]} texts
   * @param {object} options
   * @returns {AsyncGenerator<TokenEvent>}
   */
  stream(texts, options = {}) {
    const o = checkKeys(options, GENERATE_OPTIONS, "stream");
    const list = asTexts(texts);
    const specs = this._rowTasks(list.length, o);
    const params = samplingParams(o, this.maxNewTokens);
    const signal = checkSignal(o.signal);
    if (o.truncate !== undefined && typeof o.truncate !== "boolean") {
      throw new ConfigError(`truncate must be true or false, got ${show(o.truncate)}`);
    }
    const prompts = list.map((t, i) => this.promptIds(t, specs[i].name, { truncate: o.truncate ?? false }));
    for (const p of prompts) {
      const need = p.ids.length + params.maxNewTokens;
      if (this.kv.maxSequenceLength && need > this.kv.maxSequenceLength) {
        throw new ConfigError(`${need} tokens (prompt plus new tokens) exceed the ${this.kv.maxSequenceLength} ` +
                              "positions this graph covers; ask for fewer new tokens or a shorter input");
      }
    }
    const gen = this._events(prompts.map((p) => p.ids), specs, params, signal);
    gen.truncated = prompts.map((p) => p.truncated);
    return gen;
  }

  async *_events(prompts, specs, params, signal) {
    const rows = prompts.map(() => new RowText(this.tokenizer, params.stop));
    const done = new Array(prompts.length).fill(false);
    for await (const [i, tok] of this._decodeIds(prompts, specs, params, done, signal)) {
      if (tok === null) {
        yield { row: i, tokenId: null, text: rows[i].finish(), finishReason: "eos" };
        continue;
      }
      const piece = rows[i].push(tok);
      if (rows[i].stopped) {
        done[i] = true;
        yield { row: i, tokenId: tok, text: piece, finishReason: "stop" };
      } else if (rows[i].ids.length === params.maxNewTokens) {
        yield { row: i, tokenId: tok, text: piece, finishReason: null };
        yield { row: i, tokenId: null, text: rows[i].finish(), finishReason: "length" };
      } else {
        yield { row: i, tokenId: tok, text: piece, finishReason: null };
      }
    }
  }

  async *_decodeIds(prompts, specs, params, done, signal) {
    const graph = this.graphForRequest(specs.map((s) => s.name));
    if (graph === null) { // mixed tasks, per-task graphs only: one group per task
      for (const name of new Set(specs.map((s) => s.name))) {
        const rows = specs.map((s, i) => (s.name === name ? i : -1)).filter((i) => i >= 0);
        const sub = rows.map((i) => done[i]);
        const proxy = new Proxy(sub, { get: (t, k) => (typeof k === "string" && /^\d+$/.test(k) ? done[rows[+k]] : t[k]) });
        for await (const [i, tok] of this._decodeIds(rows.map((i) => prompts[i]), rows.map((i) => specs[i]), params, proxy, signal)) {
          yield [rows[i], tok];
        }
      }
      return;
    }
    const runner = await this._runner(graph);
    yield* decode(runner, prompts, specs.map((s) => s.id), { eos: this.eosId, pad: this.padId }, params, done, signal);
  }

  /**
   * Generate for each text; one batch (rows of different tasks share it on the multi-task graph).
   * @param {string|string[]} texts
   * @param {object} options
   * @returns {Promise<Generation[]>}
   */
  async generate(texts, options = {}) {
    const events = this.stream(texts, options);
    const names = this._rowTasks(asTexts(texts).length, options).map((s) => s.name);
    const out = names.map((task, i) => ({ text: "", tokenIds: [], task, finishReason: null, truncated: events.truncated[i] }));
    for await (const ev of events) {
      const r = out[ev.row];
      if (ev.tokenId !== null) r.tokenIds.push(ev.tokenId);
      r.text += ev.text;
      if (ev.finishReason) r.finishReason = ev.finishReason;
    }
    return out;
  }

  // -- classification ----------------------------------------------------------------------------

  /** Each label's token ids after the prompt (" " + label, then eos). */
  labelIds(task) {
    const spec = taskNamed(this._tasks, task);
    if (spec.kind !== "classify" || !spec.labels.length) {
      const classify = this.tasks.filter((t) => t.kind === "classify").map((t) => t.name);
      throw new TaskError(`task ${show(task)} has no label set (kind ${show(spec.kind)}); classify tasks: ` +
                          (classify.join(", ") || "none"));
    }
    let ids = this._labelIds.get(task);
    if (!ids) {
      ids = spec.labels.map((l) => [...this.tokenizer.encode(" " + l.trim()), this.eosId]);
      this._labelIds.set(task, ids);
    }
    return ids;
  }

  /**
   * Score every label of the task after each text's prompt; the best label wins.
   * @param {string|string[]} texts
   * @param {{task: string, truncate?: boolean, signal?: AbortSignal}} options
   * @returns {Promise<Classification[]>}
   */
  async classify(texts, options = {}) {
    const o = checkKeys(options, CLASSIFY_OPTIONS, "classify");
    const list = asTexts(texts);
    if (typeof o.task !== "string") throw new TaskError(`classify needs options.task, a task name; known tasks: ${this.tasks.map((t) => t.name).join(", ")}`);
    const spec = taskNamed(this._tasks, o.task);
    const labelIds = this.labelIds(o.task);
    const signal = checkSignal(o.signal);
    if (o.truncate !== undefined && typeof o.truncate !== "boolean") {
      throw new ConfigError(`truncate must be true or false, got ${show(o.truncate)}`);
    }
    const prompts = list.map((t) => this.promptIds(t, o.task, { truncate: o.truncate ?? false }));
    if (!prompts.length) return [];
    checkAbort(signal);
    const runner = await this._runner(this.graphForRequest([o.task]));
    const scores = await scoreLabels(runner, prompts.map((p) => p.ids), spec.id, labelIds, this.padId, signal);
    return scores.map((s, i) => {
      const probs = labelProbabilities(s);
      let j = 0;
      for (let k = 1; k < s.length; k++) if (s[k] > s[j]) j = k;
      return {
        label: spec.labels[j], probability: probs[j],
        scores: Object.fromEntries(spec.labels.map((l, k) => [l, s[k]])), task: o.task, truncated: prompts[i].truncated,
      };
    });
  }
}

/** A file's bytes, its sha256 checked against `expected` (null: not checked); a source's cached
 * copy that fails is evicted and read once more. */
async function readVerified(src, label, rel, expected) {
  for (let attempt = 0; ; attempt++) {
    const bytes = await src.read(rel);
    if (bytes === null) throw new BundleError(`${label}: file ${rel} listed in manifest.json is missing`);
    if (expected === null) return bytes;
    const got = await sha256Hex(bytes);
    if (got === expected) return bytes;
    if (attempt === 0 && src.evict) {
      await src.evict(rel);
      continue;
    }
    checkDigest(label, rel, got, expected);
  }
}

export { AbortError };

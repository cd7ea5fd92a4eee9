// Greedy generation from an alter-edge bundle (format 2) in Node.js: no Python, no torch.
//
//   node greedy.mjs BUNDLE_DIR --task NAME [--graph task|multi] [--precision fp32|int8|int4]
//                   [--max-new-tokens N] [--threads N] [--truncate] [--json] "input text"
//
// It does what the Python runtime (alter_edge.runtime.EdgeModel.generate at temperature 0) does
// for one row, and gives the same token ids (tests/test_node_example.py checks this):
//   1. read manifest.json, check the format and the sha256 of every file it uses;
//   2. build the prompt: the task's prompt_template filled with the input, tokenized without
//      special tokens (no bos), refused (or cut in the middle with --truncate) when it is
//      longer than generation.max_prompt_tokens;
//   3. run the graph once on the prompt, then once per new token, feeding the KV cache back
//      (a plain session.run: past of length past_len in, present of length total_seq out);
//   4. pick the argmax each step; stop at eos_token_id or after max_new_tokens.
// The graph contract is in docs/bundle-format.md (and alter_edge/runtime/contract.py).

import { createHash } from "node:crypto";
import { createReadStream, readFileSync, realpathSync } from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";

import * as ort from "onnxruntime-node";

import { loadTokenizer } from "./tokenizer.mjs";

const PRECISION_PREFERENCE = ["int8", "int4", "fp32"]; // the Python runtime's default order

class BundleError extends Error {}

// -- the bundle ----------------------------------------------------------------------------

// A path the manifest names, refused unless it stays inside the bundle directory.
function inside(root, rel, entry) {
  const parts = typeof rel === "string" ? rel.split("/") : [];
  if (!parts.length || rel.includes("\\") || rel.includes("\0") || path.isAbsolute(rel) ||
      parts.some((p) => p === "" || p === "." || p === "..")) {
    throw new BundleError(`manifest.json: ${entry} ${JSON.stringify(rel)} is not a plain relative path ` +
                          "inside the bundle");
  }
  const full = path.join(root, ...parts);
  const real = realpathSync(full); // symlinks followed (throws if the file is missing)
  if (!real.startsWith(realpathSync(root) + path.sep)) {
    throw new BundleError(`manifest.json: ${entry} ${JSON.stringify(rel)} leads outside the bundle`);
  }
  return full;
}

async function sha256(file) {
  const h = createHash("sha256");
  for await (const chunk of createReadStream(file)) h.update(chunk);
  return h.digest("hex");
}

async function checkHash(root, rel, expected, entry) {
  let file;
  try {
    file = inside(root, rel, entry);
  } catch (e) {
    if (e.code === "ENOENT") throw new BundleError(`file ${rel} listed in manifest.json is missing`);
    throw e;
  }
  const got = await sha256(file);
  if (got !== expected) {
    throw new BundleError(`file ${rel} does not match manifest.json (sha256 ${got.slice(0, 12)}..., ` +
                          `expected ${String(expected).slice(0, 12)}...)`);
  }
  return file;
}

function readJson(file) {
  return JSON.parse(readFileSync(file, "utf8"));
}

// manifest.json, tasks.json and tokenizer.json, checked as alter_edge.runtime.bundle does.
async function loadBundle(root) {
  const m = readJson(path.join(root, "manifest.json"));
  if (m.format !== "alter-edge-bundle") {
    throw new BundleError(`manifest.json: format is ${JSON.stringify(m.format)}, expected "alter-edge-bundle"`);
  }
  if (m.format_version !== 2) {
    throw new BundleError(`bundle format_version ${m.format_version} is not read here (only 2); ` +
                          "re-export the checkpoint with a current alter-edge");
  }
  if ((m.graph_contract ?? "gqa-right-pad") !== "gqa-right-pad") {
    throw new BundleError(`manifest.json: graph_contract ${JSON.stringify(m.graph_contract)} is not "gqa-right-pad"`);
  }
  const files = m.files ?? {};
  for (const rel of ["tasks.json", "tokenizer.json"]) {
    if (!(rel in files)) throw new BundleError(`manifest.json: files does not list ${rel}`);
    await checkHash(root, rel, files[rel], `files entry ${rel}`);
  }
  const tasks = readJson(path.join(root, "tasks.json")).tasks;
  const tokenizer = loadTokenizer(path.join(root, "tokenizer.json"));
  return { root, manifest: m, tasks, tokenizer };
}

// The graph to run: a task's own graph (no task_ids input) or the multi-task graph (task_ids);
// `kind` "auto" takes the task's graph when the bundle has one, as the Python runtime does.
function pickGraph(manifest, task, kind, precision) {
  const order = precision ? [precision] : PRECISION_PREFERENCE;
  const pick = (graphs) => order.map((p) => graphs.find((g) => g.precision === p)).find(Boolean);
  const own = manifest.graphs.filter((g) => g.task === task);
  const multi = manifest.graphs.filter((g) => g.task === null || g.task === undefined);
  const found = kind === "task" ? pick(own) : kind === "multi" ? pick(multi) : (pick(own) ?? pick(multi));
  if (!found) {
    const have = manifest.graphs.map((g) => `${g.path} (${g.precision})`).join(", ");
    throw new BundleError(`no ${kind === "auto" ? "" : kind + " "}graph for task ${JSON.stringify(task)} at ` +
                          `precision ${precision ?? "any"}; the bundle has: ${have}`);
  }
  return found;
}

async function openGraph(bundle, graph, threads) {
  const { root, manifest } = bundle;
  // The graph's own hash, then each weight file it reads through ONNX external data.
  const file = await checkHash(root, graph.path, graph.sha256, `graph ${graph.path}`);
  for (const ext of graph.external_data ?? []) {
    if (!(ext in manifest.files)) {
      throw new BundleError(`manifest.json: graph ${graph.path} reads ${ext}, which files does not list`);
    }
    await checkHash(root, ext, manifest.files[ext], `files entry ${ext}`);
  }
  const options = {
    executionProviders: ["cpu"], // the com.microsoft contrib operators the graphs use are CPU ones
    graphOptimizationLevel: "all",
    executionMode: "sequential",
    interOpNumThreads: 1,
    ...(threads ? { intraOpNumThreads: threads } : {}),
  };
  // From a path, so onnxruntime finds weights.<precision>.bin next to the graph.
  return ort.InferenceSession.create(file, options);
}

// -- the prompt ----------------------------------------------------------------------------

// prompt_template.format(input=text) as Python does it: {input} is the text, {{ and }} are
// literal braces (tasks.json templates hold no other field; the Python reader refuses others).
function renderPrompt(template, text) {
  return template.replace(/\{\{|\}\}|\{input\}/g, (m) => (m === "{input}" ? text : m[0]));
}

// alter_edge.prompts.truncate_middle: keep the first and last halves.
function truncateMiddle(ids, maxTokens) {
  if (ids.length <= maxTokens) return ids;
  const head = Math.floor(maxTokens / 2);
  return [...ids.slice(0, head), ...ids.slice(ids.length - (maxTokens - head))];
}

function promptIds(bundle, task, text, truncate) {
  if (!text.trim()) throw new BundleError("input is empty");
  const ids = bundle.tokenizer.encode(renderPrompt(task.prompt_template, text));
  const limit = bundle.manifest.generation?.max_prompt_tokens ?? 320;
  if (ids.length > limit && !truncate) {
    throw new BundleError(`input is ${ids.length} tokens with its prompt, over the bundle's ` +
                          `max_prompt_tokens ${limit} (--truncate cuts it in the middle, as training did)`);
  }
  return { ids: truncateMiddle(ids, limit), truncated: ids.length > limit };
}

// -- the decode loop -----------------------------------------------------------------------

const int64 = (values, dims) => new ort.Tensor("int64", BigInt64Array.from(values, BigInt), dims);

function argmax(row) {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i; // first of equal maxima
  return best;
}

async function greedy(session, manifest, prompt, taskId, maxNewTokens) {
  const kv = manifest.kv_cache;
  const names = (pattern) => Array.from({ length: kv.num_layers }, (_, i) => pattern.replaceAll("{i}", i));
  const pastKeys = names(kv.past_key ?? "past_key_values.{i}.key");
  const pastValues = names(kv.past_value ?? "past_key_values.{i}.value");
  const presentKeys = names(kv.present_key ?? "present.{i}.key");
  const presentValues = names(kv.present_value ?? "present.{i}.value");
  const multi = session.inputNames.includes("task_ids");

  // The KV cache starts empty: [1, kv_heads, 0, head_dim] per layer.
  const empty = () => new ort.Tensor("float32", new Float32Array(0), [1, kv.num_kv_heads, 0, kv.head_dim]);
  let past = [...pastKeys, ...pastValues].map((name) => [name, empty()]);

  let ids = prompt; // this step's new tokens
  let n = prompt.length; // valid tokens so far, past and new: the attention mask's width and sum
  const step = async () => {
    const feeds = Object.fromEntries(past);
    feeds.input_ids = int64(ids, [1, ids.length]);
    feeds.attention_mask = int64(new Array(n).fill(1), [1, n]);
    if (multi) feeds.task_ids = int64([taskId], [1]);
    const out = await session.run(feeds);
    // present (total_seq positions) becomes the next step's past
    past = pastKeys.map((name, i) => [name, out[presentKeys[i]]])
      .concat(pastValues.map((name, i) => [name, out[presentValues[i]]]));
    return out.logits; // [1, 1, vocab]: the last valid position only
  };

  const tokens = [];
  let logits = await step();
  for (let k = 0; k < maxNewTokens; k++) {
    const next = argmax(logits.data);
    if (next === manifest.eos_token_id) return { tokens, finish: "eos", vocab: logits.dims[2] };
    tokens.push(next);
    if (k + 1 === maxNewTokens) break;
    ids = [next];
    n += 1;
    logits = await step();
  }
  return { tokens, finish: "length", vocab: logits.dims[2] };
}

// -- the command line ----------------------------------------------------------------------

const USAGE = "usage: node greedy.mjs BUNDLE_DIR --task NAME [--graph auto|task|multi] " +
  "[--precision fp32|int8|int4] [--max-new-tokens N] [--threads N] [--truncate] [--json] TEXT";

function positiveInt(value, flag) {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new BundleError(`${flag} must be an integer >= 1, got ${value}`);
  return n;
}

async function main() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      task: { type: "string" },
      graph: { type: "string", default: "auto" },
      precision: { type: "string" },
      "max-new-tokens": { type: "string" },
      threads: { type: "string" },
      truncate: { type: "boolean", default: false },
      json: { type: "boolean", default: false },
    },
  });
  if (positionals.length !== 2 || !values.task) throw new BundleError(USAGE);
  if (!["auto", "task", "multi"].includes(values.graph)) throw new BundleError(USAGE);
  if (values.precision && !PRECISION_PREFERENCE.includes(values.precision)) throw new BundleError(USAGE);
  const [root, text] = positionals;

  const bundle = await loadBundle(root);
  const task = bundle.tasks.find((t) => t.name === values.task);
  if (!task) {
    throw new BundleError(`unknown task ${JSON.stringify(values.task)}; known tasks: ` +
                          bundle.tasks.map((t) => t.name).join(", "));
  }
  const maxNew = positiveInt(values["max-new-tokens"], "--max-new-tokens") ??
    bundle.manifest.generation?.max_new_tokens ?? 32;
  const graph = pickGraph(bundle.manifest, task.name, values.graph, values.precision);
  const prompt = promptIds(bundle, task, text, values.truncate);
  const limit = bundle.manifest.kv_cache.max_sequence_length ?? 0; // rotary positions the graph covers
  if (limit && prompt.ids.length + maxNew > limit) {
    throw new BundleError(`${prompt.ids.length + maxNew} tokens (prompt plus new tokens) exceed the ` +
                          `${limit} positions this graph covers`);
  }

  const session = await openGraph(bundle, graph, positiveInt(values.threads, "--threads"));
  const out = await greedy(session, bundle.manifest, prompt.ids, task.id, maxNew);
  if (bundle.tokenizer.vocabSize > out.vocab) {
    throw new BundleError(`tokenizer.json has ${bundle.tokenizer.vocabSize} tokens but ${graph.path} has ` +
                          `${out.vocab} logits: the tokenizer does not belong to this model`);
  }
  // The answer's text as the Python runtime gives it: special tokens skipped, leading space dropped.
  const answer = bundle.tokenizer.decode(out.tokens).trimStart();

  if (values.json) {
    console.log(JSON.stringify({
      task: task.name, graph: graph.path, precision: graph.precision, prompt_ids: prompt.ids,
      truncated: prompt.truncated, token_ids: out.tokens, text: answer, finish_reason: out.finish,
    }));
  } else {
    console.log(answer);
    console.error(`[${graph.path}] token ids: ${JSON.stringify(out.tokens)} (${out.finish})`);
  }
}

try {
  await main();
} catch (e) {
  // One line for a bad bundle or bad arguments; a full trace for anything unexpected.
  console.error(e instanceof BundleError || e?.code === "ERR_PARSE_ARGS_UNKNOWN_OPTION"
    ? `error: ${e.message}` : e);
  process.exit(1);
}

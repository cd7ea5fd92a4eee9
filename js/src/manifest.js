// The manifest's checks, as the Python runtime makes them (runtime/manifest.py): format and
// version, a schema of the fields a loader reads, path confinement of every file name. Each
// problem is one BundleError line naming the field and what is allowed.

import { BundleError, show } from "./errors.js";

export const BUNDLE_FORMAT = "alter-edge-bundle";
export const SUPPORTED_FORMAT_VERSIONS = [2];
export const CONTRACT = "gqa-right-pad";
export const PRECISIONS = ["fp32", "int8", "int4"];
/** The precision a request gets when the caller names none: int8, then int4, then fp32. */
export const PRECISION_PREFERENCE = ["int8", "int4", "fp32"];
export const REQUIRED_FILES = ["tasks.json", "tokenizer.json"];
export const DEFAULT_MAX_NEW_TOKENS = 32;
export const DEFAULT_MAX_PROMPT_TOKENS = 320;
export const DEFAULT_KV_NAMES = {
  past_key: "past_key_values.{i}.key",
  past_value: "past_key_values.{i}.value",
  present_key: "present.{i}.key",
  present_value: "present.{i}.value",
};
const MAX_LAYERS = 1024, MAX_HEADS = 1024, MAX_HEAD_DIM = 8192, MAX_TOKENS = 1 << 20;

const isInt = (v) => Number.isInteger(v);
const TYPES = {
  str: [(v) => typeof v === "string", "a string"],
  int: [isInt, "an integer"],
  list: [Array.isArray, "a list"],
  dict: [(v) => v !== null && typeof v === "object" && !Array.isArray(v), "an object"],
  null: [(v) => v === null, "null"],
};

const atLeast = (low) => (v) => (v >= low ? null : `must be >= ${low}`);
const between = (low, high) => (v) => (v >= low && v <= high ? null : `must be in ${low}..${high}`);
const oneOf = (allowed) => (v) => (allowed.includes(v) ? null : `must be one of ${allowed.join(", ")}`);
const sha256Hex = (v) => (/^[0-9a-f]{64}$/.test(v) ? null : "must be a sha256 (64 lowercase hex digits)");
const nonEmpty = (v) => (v.length ? null : "must not be empty");
function layerPattern(v) {
  if (!v.includes("{i}")) return "must contain {i} (the layer index)";
  if (/[{}]/.test(v.replaceAll("{i}", ""))) return "may hold only the field {i}";
  return null;
}

/**
 * @typedef {{types: string[], required?: boolean, check?: (v: any) => string|null, path?: boolean,
 *            fields?: Record<string, Field>, items?: Field, pathKeys?: boolean}} Field
 */
/** @returns {Field} */
const F = (types, extra = {}) => ({ types: types.split("|"), ...extra });

const GRAPH = {
  path: F("str", { required: true, path: true }),
  task: F("str|null"),
  precision: F("str", { check: oneOf(PRECISIONS) }),
  sha256: F("str", { required: true, check: sha256Hex }),
  bytes: F("int", { check: atLeast(0) }),
  inputs: F("list", { items: F("str") }),
  outputs: F("list", { items: F("str") }),
  ort: F("str|null", { path: true }),
  mode: F("str", { check: oneOf(["multitask", "task", "merged"]) }),
  external_data: F("list", { items: F("str", { path: true }) }),
};
const KV_CACHE = {
  num_layers: F("int", { required: true, check: between(1, MAX_LAYERS) }),
  num_kv_heads: F("int", { required: true, check: between(1, MAX_HEADS) }),
  head_dim: F("int", { required: true, check: between(1, MAX_HEAD_DIM) }),
  past_key: F("str", { check: layerPattern }),
  past_value: F("str", { check: layerPattern }),
  present_key: F("str", { check: layerPattern }),
  present_value: F("str", { check: layerPattern }),
  max_sequence_length: F("int", { required: true, check: between(2, MAX_TOKENS) }),
};
const GENERATION = {
  max_new_tokens: F("int", { check: between(1, MAX_TOKENS) }),
  max_prompt_tokens: F("int", { check: between(1, MAX_TOKENS) }),
};
const MANIFEST = {
  format: F("str", { required: true }),
  format_version: F("int", { required: true }),
  created: F("str"),
  checkpoint_sha256: F("str|null"),
  base_model: F("dict"),
  tasks: F("list", { items: F("str") }),
  opset: F("int"),
  graph_contract: F("str"),
  eos_token_id: F("int", { required: true, check: atLeast(0) }),
  pad_token_id: F("int", { required: true, check: atLeast(0) }),
  kv_cache: F("dict", { required: true, fields: KV_CACHE }),
  generation: F("dict", { fields: GENERATION }),
  graphs: F("list", { required: true, check: nonEmpty, items: F("dict", { fields: GRAPH }) }),
  files: F("dict", { required: true, items: F("str", { check: sha256Hex }), pathKeys: true }),
};

/**
 * Why `rel` is not a plain relative file name inside the bundle, or null: the checks that need
 * no file system (a platform layer with one also checks where symlinks lead).
 * @param {unknown} rel
 * @returns {string|null}
 */
export function pathProblem(rel) {
  if (typeof rel !== "string" || !rel) return "is not a path";
  if (rel.includes("\0") || rel.includes("\\")) return "holds a NUL or backslash";
  if (rel.startsWith("/") || /^[A-Za-z]:/.test(rel)) return "is absolute";
  if (/^[A-Za-z][A-Za-z0-9+.-]*:/.test(rel)) return "has a scheme (a URL)";
  if (rel.split("/").some((p) => p === "" || p === "." || p === "..")) return "has an empty, '.' or '..' part";
  return null;
}

/**
 * Throw a BundleError unless `rel` is a plain relative file name inside the bundle.
 * @param {string} where the manifest, as errors name it
 * @param {unknown} rel
 * @param {string} entry the field that holds it
 */
export function confine(where, rel, entry) {
  const problem = pathProblem(rel);
  if (problem) {
    throw new BundleError(`${where}: ${entry} ${show(rel)} ${problem}; a bundle may only name files ` +
                          "inside its own directory");
  }
}

/** `format` and `format_version` are ones this runtime reads. */
export function checkFormat(m, where) {
  if (m?.format !== BUNDLE_FORMAT) {
    throw new BundleError(`${where}: format is ${show(m?.format)}, expected ${show(BUNDLE_FORMAT)}`);
  }
  const v = m.format_version;
  if (v === 1) {
    throw new BundleError(`${where}: bundle format_version 1 (one traced graph per task) is no longer read; ` +
                          "re-export the checkpoint with a current alter-edge to get a format 2 bundle");
  }
  if (!SUPPORTED_FORMAT_VERSIONS.includes(v)) {
    throw new BundleError(`${where}: bundle format_version ${show(v)} is not supported; this runtime reads ` +
                          `${SUPPORTED_FORMAT_VERSIONS.join(", ")} (re-export, or upgrade alter-edge)`);
  }
}

function checkValue(value, f, where, name) {
  if (!f.types.some((t) => TYPES[t][0](value))) {
    const want = f.types.map((t) => TYPES[t][1]).join(" or ");
    throw new BundleError(`${where}: ${name} must be ${want}, got ${show(value)}`);
  }
  if (value === null) return;
  if (f.check) {
    const problem = f.check(value);
    if (problem) throw new BundleError(`${where}: ${name} ${problem}, got ${show(value)}`);
  }
  if (f.path) confine(where, value, name);
  if (f.fields) checkObject(value, f.fields, where, name + ".");
  if (f.pathKeys) for (const key of Object.keys(value)) confine(where, key, `${name} entry ${show(key)}`);
  if (f.items) {
    if (Array.isArray(value)) value.forEach((item, i) => checkValue(item, f.items, where, `${name}[${i}]`));
    else for (const [k, item] of Object.entries(value)) checkValue(item, f.items, where, `${name}[${show(k)}]`);
  }
}

function checkObject(obj, schema, where, prefix) {
  if (!TYPES.dict[0](obj)) {
    throw new BundleError(`${where}: ${prefix.replace(/\.$/, "") || "the manifest"} must be an object, got ${show(obj)}`);
  }
  for (const [key, f] of Object.entries(schema)) {
    if (!Object.hasOwn(obj, key)) {
      if (f.required) throw new BundleError(`${where} lacks the field ${show(prefix + key)}`);
      continue;
    }
    checkValue(obj[key], f, where, prefix + key);
  }
}

const layerNames = (pattern, n) => Array.from({ length: n }, (_, i) => pattern.replaceAll("{i}", String(i)));

function kvMismatch(names, kv, role) {
  const n = kv.num_layers;
  const have = new Set(names);
  for (const part of ["key", "value"]) {
    const pattern = kv[`${role}_${part}`] ?? DEFAULT_KV_NAMES[`${role}_${part}`];
    const missing = layerNames(pattern, n).filter((x) => !have.has(x));
    if (missing.length) return `lacks ${missing[0]} (kv_cache.num_layers is ${n}, ${role}_${part} ${show(pattern)})`;
    const rx = new RegExp("^" + pattern.split("{i}").map((s) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")).join("(\\d+)") + "$");
    const layers = names.map((x) => rx.exec(x)).filter(Boolean).map((m) => Number(m[1]));
    const last = Math.max(-1, ...layers);
    if (last >= n) {
      return `has ${pattern.replaceAll("{i}", String(last))}: the graph has ${last + 1} layers, ` +
             `kv_cache.num_layers says ${n}`;
    }
  }
  return null;
}

/**
 * The manifest's schema, path confinement, graph_contract, required files, prompt room and
 * each graph's listed KV names; one BundleError line for the first problem.
 * @param {any} m the parsed manifest.json
 * @param {string} where how errors name it (e.g. "bundle/manifest.json")
 */
export function validateManifest(m, where) {
  checkObject(m, MANIFEST, where, "");
  if ((m.graph_contract ?? CONTRACT) !== CONTRACT) {
    throw new BundleError(`${where}: graph_contract ${show(m.graph_contract)} is not ${show(CONTRACT)}, ` +
                          "the one this runtime runs");
  }
  const missing = REQUIRED_FILES.filter((f) => !Object.hasOwn(m.files, f));
  if (missing.length) throw new BundleError(`${where}: files does not list ${missing.join(", ")}`);
  const kv = m.kv_cache;
  const prompt = m.generation?.max_prompt_tokens ?? DEFAULT_MAX_PROMPT_TOKENS;
  if (prompt >= kv.max_sequence_length) {
    throw new BundleError(`${where}: generation.max_prompt_tokens ${prompt} leaves no room for a new token ` +
                          `in kv_cache.max_sequence_length ${kv.max_sequence_length} (it must be smaller)`);
  }
  m.graphs.forEach((g, i) => {
    for (const ext of g.external_data ?? []) {
      if (!Object.hasOwn(m.files, ext)) {
        throw new BundleError(`${where}: graphs[${i}] (${g.path}) reads ${ext}, which files does not list`);
      }
    }
    for (const [key, role] of [["inputs", "past"], ["outputs", "present"]]) {
      if (g[key] !== undefined) {
        const problem = kvMismatch(g[key], kv, role);
        if (problem) throw new BundleError(`${where}: graphs[${i}] (${g.path}) ${key}: ${problem}`);
      }
    }
  });
}

/**
 * The KV cache's layout from the manifest: names of each layer's past and present key/value.
 * @param {any} kv manifest.kv_cache
 */
export function kvLayout(kv) {
  const name = (k) => kv[k] ?? DEFAULT_KV_NAMES[k];
  const pastNames = [], presentNames = [];
  for (let i = 0; i < kv.num_layers; i++) {
    for (const part of ["key", "value"]) {
      pastNames.push(name(`past_${part}`).replaceAll("{i}", String(i)));
      presentNames.push(name(`present_${part}`).replaceAll("{i}", String(i)));
    }
  }
  return {
    numLayers: kv.num_layers, numKvHeads: kv.num_kv_heads, headDim: kv.head_dim,
    maxSequenceLength: kv.max_sequence_length ?? 0, pastNames, presentNames,
  };
}

// alter-edge for JavaScript: the platform-neutral core (browsers, Web Workers, Electron
// renderers, React Native, Node.js). It imports neither a backend nor a platform API: pass the
// onnxruntime module as `backend`, and a base URL, a map of files or a BundleSource as the
// source. In Node.js, "alter-edge" (or "alter-edge/node") adds directories and onnxruntime-node.

export { EdgeModel } from "./model.js";
export { AbortError, AlterEdgeError, BundleError, ConfigError, DataError, TaskError } from "./errors.js";
export { CACHE_PREFIX, fileMapSource, resolveSource, urlSource } from "./sources.js";
export { RowText, RowRandom, TokenPicker, samplingParams } from "./generate.js";
export { PRECISIONS, PRECISION_PREFERENCE, pathProblem } from "./manifest.js";
export { Sha256, sha256Hex } from "./sha256.js";
export { loadTokenizer } from "./tokenizer.js";

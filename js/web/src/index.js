// alter-edge in the browser: the core EdgeModel with onnxruntime-web as its backend, and bundles
// kept in Cache Storage (cachedSource). Import maps (or a bundler) resolve "onnxruntime-web" and
// "@huggingface/tokenizers"; the demo page (../page) shows one setup.

import * as ort from "onnxruntime-web";

import { EdgeModel as CoreEdgeModel } from "../../src/model.js";
import { cachedSource, clearBundleCache } from "./cache.js";

export * from "../../src/index.js";
export { cachedSource, clearBundleCache, ort };

/**
 * EdgeModel for browsers: onnxruntime-web (WASM) unless `backend` is given. `load(url)` with
 * `cache: true` (the default for a URL) reads the bundle through Cache Storage; the files are
 * checked against manifest.json once, when downloaded.
 */
export class EdgeModel extends CoreEdgeModel {
  static async defaultBackend() {
    return ort;
  }

  static async load(source, options = {}) {
    const { cache = true, wasmPaths, ...rest } = options;
    // onnxruntime-web copies outputs out of WASM memory: it does not write into pre-allocated
    // output tensors, so the KV cache goes past -> present ("copy")
    rest.kvMode ??= "copy";
    if (wasmPaths) ort.env.wasm.wasmPaths = wasmPaths;
    if (rest.threads) ort.env.wasm.numThreads = rest.threads;
    // a relative URL ("/bundle/") is the page's
    if (typeof source === "string" && globalThis.location && !/^[a-z][a-z0-9+.-]*:/i.test(source)) {
      source = new URL(source, globalThis.location.href).href;
    }
    if (cache && (typeof source === "string" || source instanceof URL)) {
      const src = cachedSource(source, { onProgress: rest.onProgress });
      const model = await super.load(src, { ...rest, verify: false });
      model.cacheStats = src.stats;
      return model;
    }
    return super.load(source, rest);
  }
}

// A bundle served over HTTP, kept in the browser's Cache Storage: the core's urlSource with a
// cache (../../src/sources.js says how the cache is named, filled and checked). manifest.json is
// fetched on every load, bypassing the HTTP cache, so a re-exported bundle is noticed; every
// other file is checked against manifest.json's sha256 once, when it is downloaded, and read
// from Cache Storage on later visits (load the model with `verify: false` to skip hashing it
// again: the browser build's EdgeModel does). The weights reach onnxruntime-web as a Blob read
// from the cache, not as a copy held by JavaScript.

import { BundleError } from "../../src/errors.js";
import { CACHE_PREFIX, urlSource } from "../../src/sources.js";

/**
 * @param {string|URL} base the bundle folder's URL (relative: the page's)
 * @param {{onProgress?: (e: {file: string, loaded: number, total: number|null, done: boolean,
 *           cached: boolean}) => void, fetch?: typeof fetch}} [options]
 * @returns {import("../../src/sources.js").BundleSource & {stats: {network: string[], cached: string[]}}}
 */
export function cachedSource(base, { onProgress, fetch: fetchFn = globalThis.fetch.bind(globalThis) } = {}) {
  let root = new URL(String(base), globalThis.location?.href).href;
  if (!root.endsWith("/")) root += "/";
  if (!globalThis.caches) throw new BundleError("Cache Storage is not available here (an insecure origin?): serve the page from https or localhost");
  return urlSource(root, { fetch: fetchFn, init: { cache: "no-store" }, onProgress, cache: globalThis.caches,
                           label: root.replace(/\/$/, "") });
}

/** Delete every bundle this origin cached (all alter-edge caches). */
export async function clearBundleCache() {
  for (const name of await caches.keys()) if (name.startsWith(CACHE_PREFIX)) await caches.delete(name);
}

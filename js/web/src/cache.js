// A bundle served over HTTP, kept in the browser's Cache Storage (browser-only: caches, fetch,
// crypto.subtle). The cache is named after the base URL and the sha256 of manifest.json, and
// the manifest lists every other file's sha256: a file found in that cache is the file the
// manifest names. So a second visit fetches manifest.json alone (a few kB, revalidated every
// time so a re-exported bundle is noticed) and reads every other file from the cache; a new
// manifest starts a new cache and deletes the bundle's older ones.
//
// Each file is checked against manifest.json's sha256 once, when it is downloaded, before it
// goes into the cache; load the model with `verify: false` to skip hashing it again on every
// visit. The weights are handed to onnxruntime-web as a Blob read from the cache (`raw`), not
// as a copy held by JavaScript.

import { BundleError } from "../../src/errors.js";

const PREFIX = "alter-edge ";

async function sha256Hex(bytes) {
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(d, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * @param {string|URL} base the bundle folder's URL
 * @param {{onProgress?: (e: {file: string, loaded: number, total: number|null, done: boolean,
 *           cached: boolean}) => void, fetch?: typeof fetch}} [options]
 * @returns {import("../../src/sources.js").BundleSource & {stats: {network: string[], cached: string[]}}}
 */
export function cachedSource(base, { onProgress, fetch: fetchFn = globalThis.fetch.bind(globalThis) } = {}) {
  let root = new URL(String(base), globalThis.location?.href).href;
  if (!root.endsWith("/")) root += "/";
  if (!globalThis.caches) throw new BundleError("Cache Storage is not available here (an insecure origin?): serve the page from https or localhost");
  const stats = { network: [], cached: [] };
  let state = null; // {cache, hashes, manifestBytes}

  async function get(url) {
    let res;
    try {
      res = await fetchFn(url, { cache: "no-store" });
    } catch (e) {
      throw new BundleError(`${url} cannot be fetched (${String(e?.message ?? e)})`);
    }
    return res;
  }

  async function open() {
    if (state) return state;
    const res = await get(root + "manifest.json");
    if (res.status === 404) throw new BundleError(`${root} is not an alter-edge bundle: manifest.json is missing`);
    if (!res.ok) throw new BundleError(`${root}manifest.json cannot be fetched (HTTP ${res.status})`);
    const manifestBytes = new Uint8Array(await res.arrayBuffer());
    stats.network.push("manifest.json");
    const hash = await sha256Hex(manifestBytes);
    const name = `${PREFIX}${root} ${hash}`;
    for (const old of await caches.keys()) {
      if (old.startsWith(`${PREFIX}${root} `) && old !== name) await caches.delete(old);
    }
    let manifest;
    try {
      manifest = JSON.parse(new TextDecoder().decode(manifestBytes));
    } catch (e) {
      throw new BundleError(`${root}manifest.json is not valid JSON (${e.message})`);
    }
    const hashes = new Map(Object.entries(manifest.files ?? {}));
    for (const g of manifest.graphs ?? []) if (g?.path) hashes.set(g.path, g.sha256);
    state = { cache: await caches.open(name), hashes, manifestBytes, manifest };
    return state;
  }

  // the file's cached Response, downloading (with progress) and checking it first if needed
  async function response(name) {
    const { cache, hashes } = await open();
    const url = new URL(name, root).href;
    if (!url.startsWith(root)) throw new BundleError(`${root}manifest.json: ${JSON.stringify(name)} leads outside the bundle`);
    const hit = await cache.match(url);
    if (hit) {
      stats.cached.push(name);
      const size = Number(hit.headers.get("content-length")) || null;
      onProgress?.({ file: name, loaded: size ?? 0, total: size, done: true, cached: true });
      return hit;
    }
    const res = await get(url);
    if (res.status === 404) return null;
    if (!res.ok) throw new BundleError(`${root}${name} cannot be fetched (HTTP ${res.status})`);
    stats.network.push(name);
    const total = Number(res.headers.get("content-length")) || null;
    const chunks = [];
    let loaded = 0;
    const reader = res.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks.push(value);
      loaded += value.length;
      onProgress?.({ file: name, loaded, total, done: false, cached: false });
    }
    const blob = new Blob(chunks, { type: "application/octet-stream" });
    chunks.length = 0;
    const expected = hashes.get(name);
    if (expected === undefined) throw new BundleError(`${root}${name} is not listed in manifest.json`);
    const got = await sha256Hex(await blob.arrayBuffer());
    if (got !== expected) {
      throw new BundleError(`${root}: file ${name} does not match manifest.json (sha256 ${got.slice(0, 12)}..., ` +
                            `expected ${String(expected).slice(0, 12)}...): the bundle was modified or is incomplete`);
    }
    await cache.put(url, new Response(blob, { headers: { "content-type": "application/octet-stream",
                                                         "content-length": String(blob.size) } }));
    onProgress?.({ file: name, loaded, total: loaded, done: true, cached: false });
    return (await cache.match(url)) ?? new Response(blob);
  }

  return {
    label: root.replace(/\/$/, ""),
    reportsProgress: true,
    stats,
    async read(name) {
      if (name === "manifest.json") return (await open()).manifestBytes;
      const res = await response(name);
      return res === null ? null : new Uint8Array(await res.arrayBuffer());
    },
    // a Blob from the cache: onnxruntime-web reads it straight into its own memory
    async raw(name) {
      const res = await response(name);
      return res === null ? null : res.blob();
    },
  };
}

/** Delete every bundle this origin cached (all alter-edge caches). */
export async function clearBundleCache() {
  for (const name of await caches.keys()) if (name.startsWith(PREFIX)) await caches.delete(name);
}

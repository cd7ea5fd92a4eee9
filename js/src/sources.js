// Where a bundle's files come from: the platform layer. The core reads files only through a
// BundleSource, so it holds no Node-only or DOM-only call:
// - urlSource(base): fetch (browsers, Web Workers, Electron renderers, Node.js 20+, React Native);
// - fileMapSource(files): file names mapped to Blob / ArrayBuffer / Uint8Array (files a user
//   picked, files an app shipped as assets);
// - nodeDirectory(dir) in ./platform/node.js: a directory on disk (Node.js, Electron main).
// An app may pass its own object with the same methods.

import { BundleError, ConfigError, show } from "./errors.js";
import { sha256Hex } from "./sha256.js";

/**
 * @typedef {Object} BundleSource
 * @property {string} label how errors name the bundle (a directory, a URL)
 * @property {(name: string) => Promise<Uint8Array|null>} read a file's bytes; null when it is missing
 * @property {(name: string) => Promise<string|null>} [sha256] the file's sha256 (hex) without
 *   keeping its bytes (a streamed hash); null when it is missing
 * @property {(name: string) => string} [modelPath] a path the backend opens itself (its weight
 *   files found next to it); sources without one hand the backend bytes
 * @property {() => Promise<string[]>} [list] every file name in the bundle ("/"-separated)
 * @property {(name: string) => Promise<number|null>} [size] a file's size in bytes (progress events)
 * @property {(name: string) => Promise<any>} [raw] what the backend may take as external data
 *   unread (a Blob, a URL) when hashes are not checked
 * @property {(name: string) => Promise<void>} [evict] drop a cached copy that failed its hash
 *   check (the file is then read once more)
 */

/**
 * @typedef {{file: string, loaded: number, total: number|null, done: boolean, cached?: boolean}} ProgressEvent
 * `cached`: read from a URL source's Cache Storage, not downloaded
 */

/** The prefix of every Cache Storage cache a URL source keeps (`${CACHE_PREFIX}${base} ${manifest sha256}`). */
export const CACHE_PREFIX = "alter-edge ";

const asBytes = async (v) => {
  if (v instanceof Uint8Array) return v;
  if (v instanceof ArrayBuffer) return new Uint8Array(v);
  if (ArrayBuffer.isView(v)) return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
  if (typeof v?.arrayBuffer === "function") return new Uint8Array(await v.arrayBuffer()); // Blob, File
  if (typeof v === "string") return new TextEncoder().encode(v);
  throw new ConfigError(`a bundle file must be a Blob, ArrayBuffer, Uint8Array or string, got ${typeof v}`);
};

/** A BundleError unless a file's sha256 (hex) is the one manifest.json lists for it. */
export function checkDigest(label, rel, got, expected) {
  if (got !== expected) {
    throw new BundleError(`${label}: file ${rel} does not match manifest.json (sha256 ${got.slice(0, 12)}..., ` +
                          `expected ${String(expected).slice(0, 12)}...): the bundle was modified or is incomplete`);
  }
}

/**
 * The bundle's files from a map of names to contents (a Map or a plain object).
 * @param {Map<string, any>|Record<string, any>} files
 * @param {{label?: string}} [options]
 * @returns {BundleSource}
 */
export function fileMapSource(files, { label = "bundle files" } = {}) {
  const map = files instanceof Map ? files : new Map(Object.entries(files));
  return {
    label,
    async read(name) {
      return map.has(name) ? asBytes(map.get(name)) : null;
    },
    async raw(name) {
      return map.get(name) ?? null;
    },
    // no list(): a map may hold only the files the app needs (one graph and its weights)
  };
}

/**
 * The bundle's files under a base URL, read with fetch.
 *
 * `cache`: keep the files in the browser's Cache Storage (`true`: `globalThis.caches`, or a
 * CacheStorage-like object with `open`, `keys` and `delete`), so a second load fetches only
 * `manifest.json`. Entries live in a cache named after the base URL and the manifest's sha256,
 * and each file is checked against the sha256 that manifest.json lists for it when it is
 * downloaded, before it goes into the cache: a file found in that cache is the file the manifest
 * names. `EdgeModel.load` checks the files again on every load unless `verify: false` (what
 * the browser build does: the check at download is the one that counts); a cached copy that
 * fails that check is dropped and fetched again. A new manifest at the same URL starts a new
 * cache and deletes the old one. With a cache, `raw` hands the backend a Blob read from the
 * cache, and `stats` lists the files downloaded and the files read from the cache.
 * @param {string|URL} base the bundle folder's URL (a trailing "/" is added when missing)
 * @param {{fetch?: typeof fetch, init?: RequestInit, onProgress?: (e: ProgressEvent) => void,
 *          cache?: boolean|any, label?: string}} [options]
 * @returns {BundleSource & {stats: {network: string[], cached: string[]}}}
 */
export function urlSource(base, { fetch: fetchFn = globalThis.fetch, init, onProgress, cache = false, label } = {}) {
  let root = String(base);
  if (!root.endsWith("/")) root += "/";
  if (typeof fetchFn !== "function") throw new ConfigError("urlSource needs fetch (pass options.fetch on this platform)");
  const storage = cache === true ? globalThis.caches : cache || null;
  if (cache && typeof storage?.open !== "function") {
    throw new ConfigError("urlSource cache: this platform has no Cache Storage (globalThis.caches); pass cache: false");
  }
  const prefix = `${CACHE_PREFIX}${root} `;
  const stats = { network: [], cached: [] };
  let opened = null; // {cache, hashes}: this manifest's Cache and the sha256 it lists for each file
  const url = (name) => {
    const u = new URL(name, root).href;
    if (!u.startsWith(root)) throw new BundleError(`${root}manifest.json: ${show(name)} leads outside the bundle`);
    return u;
  };

  async function body(res, name, cached) {
    const total = Number(res.headers.get("content-length")) || null;
    if (!onProgress || !res.body?.getReader) {
      const bytes = new Uint8Array(await res.arrayBuffer());
      onProgress?.({ file: name, loaded: bytes.length, total: bytes.length, done: true, cached });
      return bytes;
    }
    const reader = res.body.getReader();
    const chunks = [];
    let loaded = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks.push(value);
      loaded += value.length;
      onProgress?.({ file: name, loaded, total, done: false, cached });
    }
    const bytes = new Uint8Array(loaded);
    let at = 0;
    for (const c of chunks) { bytes.set(c, at); at += c.length; }
    onProgress?.({ file: name, loaded, total: loaded, done: true, cached });
    return bytes;
  }

  async function fetchBytes(name) {
    let res;
    try {
      res = await fetchFn(url(name), init);
    } catch (e) {
      if (e instanceof BundleError) throw e;
      throw new BundleError(`${root}: ${name} cannot be fetched (${String(e?.message ?? e)})`);
    }
    if (res.status === 404) return null;
    if (!res.ok) throw new BundleError(`${root}: ${name} cannot be fetched (HTTP ${res.status})`);
    stats.network.push(name);
    return body(res, name, false);
  }

  async function openCache(manifest) {
    const name = prefix + (await sha256Hex(manifest));
    for (const old of (await storage.keys?.()) ?? []) {
      if (old.startsWith(prefix) && old !== name) await storage.delete(old);
    }
    const hashes = new Map();
    try {
      const m = JSON.parse(new TextDecoder().decode(manifest));
      for (const [f, h] of Object.entries(m?.files ?? {})) hashes.set(f, h);
      for (const g of m?.graphs ?? []) if (g?.path) hashes.set(g.path, g.sha256);
    } catch {
      // not JSON: EdgeModel.load names the problem; nothing is cached for it
    }
    return { cache: await storage.open(name), hashes };
  }

  // a file through the cache: {hit} (its cached Response), or {bytes} downloaded, checked against
  // manifest.json and stored; null when the server has no such file
  async function throughCache(name) {
    const hit = await opened.cache.match(url(name));
    if (hit) {
      stats.cached.push(name);
      return { hit };
    }
    const bytes = await fetchBytes(name);
    if (bytes === null) return null;
    const expected = opened.hashes.get(name);
    if (expected === undefined) throw new BundleError(`${root}: file ${name} is not listed in manifest.json`);
    checkDigest(root, name, await sha256Hex(bytes), expected);
    const headers = { "content-type": "application/octet-stream", "content-length": String(bytes.length) };
    await opened.cache.put(url(name), new Response(bytes, { headers }));
    return { bytes };
  }

  return {
    label: label ?? root,
    reportsProgress: Boolean(onProgress),
    stats,
    async read(name) {
      if (!storage) return fetchBytes(name);
      if (name === "manifest.json") {
        const bytes = await fetchBytes(name);
        opened = bytes === null ? null : await openCache(bytes);
        return bytes;
      }
      if (!opened) return fetchBytes(name);
      const got = await throughCache(name);
      return got === null ? null : (got.bytes ?? body(got.hit, name, true));
    },
    async evict(name) { // a cached copy that failed its hash check: the next read fetches it
      await opened?.cache.delete?.(url(name));
    },
    // with a cache, a Blob read from it (the backend reads it straight into its own memory, and
    // JavaScript keeps no copy); else the file's URL
    async raw(name) {
      if (!opened) return url(name);
      const got = await throughCache(name);
      if (got === null) return null;
      const res = got.hit ?? (await opened.cache.match(url(name)));
      if (!res) return got.bytes;
      const blob = await res.blob();
      if (got.hit) onProgress?.({ file: name, loaded: blob.size, total: blob.size, done: true, cached: true });
      return blob;
    },
  };
}

/**
 * A BundleSource from what `EdgeModel.load` was given.
 * @param {any} source
 * @param {{onProgress?: (e: ProgressEvent) => void, cache?: boolean|any}} options (cache: a URL's, see urlSource)
 * @param {(path: string) => BundleSource} [directory] the platform's directory reader (Node.js)
 * @returns {BundleSource}
 */
export function resolveSource(source, { onProgress, cache } = {}, directory) {
  if (source && typeof source.read === "function") return source;
  if (source instanceof URL) return urlSource(source, { onProgress, cache });
  if (typeof source === "string") {
    if (/^https?:\/\//i.test(source) || /^blob:/i.test(source)) return urlSource(source, { onProgress, cache });
    if (directory) return directory(source);
    throw new ConfigError(`bundle source ${show(source)} is not an http(s) URL; a directory on disk needs ` +
                          "Node.js (import from \"alter-edge\" there, or \"alter-edge/node\"); elsewhere pass a " +
                          "base URL or a map of file names to Blob/ArrayBuffer");
  }
  if (source instanceof Map || (source && typeof source === "object" && Object.getPrototypeOf(source) === Object.prototype)) {
    return fileMapSource(source);
  }
  throw new ConfigError(`bundle source must be a directory (Node.js), a URL, a map of file names to ` +
                        `Blob/ArrayBuffer, or a BundleSource, got ${show(source)}`);
}

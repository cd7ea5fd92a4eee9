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
 * @typedef {{file: string, loaded: number, total: number|null, done: boolean}} ProgressEvent
 */

const asBytes = async (v) => {
  if (v instanceof Uint8Array) return v;
  if (v instanceof ArrayBuffer) return new Uint8Array(v);
  if (ArrayBuffer.isView(v)) return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
  if (typeof v?.arrayBuffer === "function") return new Uint8Array(await v.arrayBuffer()); // Blob, File
  if (typeof v === "string") return new TextEncoder().encode(v);
  throw new ConfigError(`a bundle file must be a Blob, ArrayBuffer, Uint8Array or string, got ${typeof v}`);
};

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
 * `manifest.json`. Entries live in a cache named after the base URL and the manifest's sha256
 * (each file's own hash is listed there and checked on every load, as on a first one); a new
 * manifest at the same URL starts a new cache and deletes the old one.
 * @param {string|URL} base the bundle folder's URL (a trailing "/" is added when missing)
 * @param {{fetch?: typeof fetch, init?: RequestInit, onProgress?: (e: ProgressEvent) => void,
 *          cache?: boolean|any}} [options]
 * @returns {BundleSource}
 */
export function urlSource(base, { fetch: fetchFn = globalThis.fetch, init, onProgress, cache = false } = {}) {
  let root = String(base);
  if (!root.endsWith("/")) root += "/";
  if (typeof fetchFn !== "function") throw new ConfigError("urlSource needs fetch (pass options.fetch on this platform)");
  const storage = cache === true ? globalThis.caches : cache || null;
  if (cache && typeof storage?.open !== "function") {
    throw new ConfigError("urlSource cache: this platform has no Cache Storage (globalThis.caches); pass cache: false");
  }
  const prefix = `alter-edge ${root} `;
  let opened = null; // the Cache of this manifest's files, once manifest.json is read
  const url = (name) => new URL(name, root).href;

  async function body(res, name) {
    const total = Number(res.headers.get("content-length")) || null;
    if (!onProgress || !res.body?.getReader) {
      const bytes = new Uint8Array(await res.arrayBuffer());
      onProgress?.({ file: name, loaded: bytes.length, total: bytes.length, done: true });
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
      onProgress({ file: name, loaded, total, done: false });
    }
    const bytes = new Uint8Array(loaded);
    let at = 0;
    for (const c of chunks) { bytes.set(c, at); at += c.length; }
    onProgress({ file: name, loaded, total: loaded, done: true });
    return bytes;
  }

  async function fetchBytes(name) {
    let res;
    try {
      res = await fetchFn(url(name), init);
    } catch (e) {
      throw new BundleError(`${root}: ${name} cannot be fetched (${String(e?.message ?? e)})`);
    }
    if (res.status === 404) return null;
    if (!res.ok) throw new BundleError(`${root}: ${name} cannot be fetched (HTTP ${res.status})`);
    return body(res, name);
  }

  async function openCache(manifest) {
    const name = prefix + (await sha256Hex(manifest));
    for (const old of (await storage.keys?.()) ?? []) {
      if (old.startsWith(prefix) && old !== name) await storage.delete(old);
    }
    return storage.open(name);
  }

  return {
    label: root,
    reportsProgress: Boolean(onProgress),
    async read(name) {
      if (!storage) return fetchBytes(name);
      if (name === "manifest.json") {
        const bytes = await fetchBytes(name);
        opened = bytes === null ? null : await openCache(bytes);
        return bytes;
      }
      const hit = opened && (await opened.match(url(name)));
      if (hit) return body(hit, name);
      const bytes = await fetchBytes(name);
      if (bytes !== null && opened) {
        await opened.put(url(name), new Response(bytes, { headers: { "content-length": String(bytes.length) } }));
      }
      return bytes;
    },
    async evict(name) { // a cached copy that failed its hash check: the next read fetches it
      await opened?.delete?.(url(name));
    },
    async raw(name) {
      return url(name);
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

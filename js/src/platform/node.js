// A bundle directory on disk (Node.js, Electron main process). Files are read, hashed (streamed,
// node:crypto) and handed to onnxruntime-node by path, so a graph's weights are memory-mapped
// or read by onnxruntime itself, never copied through JavaScript. Every name is confined to
// the directory after symlinks are followed.

import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { readdir, readFile, realpath, stat } from "node:fs/promises";
import path from "node:path";

import { BundleError } from "../errors.js";

/**
 * @param {string} dir
 * @returns {import("../sources.js").BundleSource}
 */
export function nodeDirectory(dir) {
  const root = path.resolve(dir);
  let realRoot = null;
  // the file's path after its real location is checked to lie inside the bundle; null if missing
  async function locate(name) {
    realRoot ??= await realpath(root).catch(() => {
      throw new BundleError(`bundle not found: ${dir} is not a directory`);
    });
    if (!(await stat(realRoot)).isDirectory()) throw new BundleError(`bundle not found: ${dir} is not a directory`);
    const full = path.join(root, ...name.split("/"));
    let real;
    try {
      real = await realpath(full);
    } catch (e) {
      if (e.code === "ENOENT") return null;
      throw new BundleError(`${dir}: ${name} cannot be resolved (${e.message})`);
    }
    if (!real.startsWith(realRoot + path.sep)) {
      throw new BundleError(`${dir}/manifest.json: ${JSON.stringify(name)} leads outside the bundle (through a ` +
                            "symlink); a bundle may only name files inside its own directory");
    }
    return full;
  }
  return {
    label: dir,
    async read(name) {
      const file = await locate(name);
      return file === null ? null : new Uint8Array(await readFile(file));
    },
    async sha256(name) {
      const file = await locate(name);
      if (file === null) return null;
      const h = createHash("sha256");
      for await (const chunk of createReadStream(file)) h.update(chunk);
      return h.digest("hex");
    },
    async size(name) {
      const file = await locate(name);
      return file === null ? null : (await stat(file)).size;
    },
    modelPath(name) {
      return path.join(root, ...name.split("/"));
    },
    async locate(name) {
      return locate(name);
    },
    async list() {
      const out = [];
      const walk = async (d, prefix) => {
        for (const e of await readdir(d, { withFileTypes: true })) {
          if (e.isDirectory()) await walk(path.join(d, e.name), prefix + e.name + "/");
          else out.push(prefix + e.name);
        }
      };
      await walk(root, "");
      return out;
    },
  };
}

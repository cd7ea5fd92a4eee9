// alter-edge in Node.js and Electron's main process: the core, plus directories on disk and
// onnxruntime-node as the default backend.

export * from "./index.js";
import type { BundleSource } from "./index.js";

/** A bundle directory on disk: files confined to it (symlinks followed), hashed streamed, graphs opened by path. */
export declare function nodeDirectory(dir: string): BundleSource;

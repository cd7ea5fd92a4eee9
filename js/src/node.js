// alter-edge in Node.js and Electron's main process: the core, plus bundle directories on disk
// (read, hashed and opened by path) and onnxruntime-node as the default backend.

import { EdgeModel as CoreEdgeModel } from "./model.js";
import { nodeDirectory } from "./platform/node.js";

export * from "./index.js";
export { nodeDirectory };

/** EdgeModel whose `load` also takes a directory path, and onnxruntime-node when no backend is given. */
export class EdgeModel extends CoreEdgeModel {
  static directory = nodeDirectory;

  static async defaultBackend() {
    try {
      return await import("onnxruntime-node");
    } catch (e) {
      return undefined; // load() then asks for options.backend
    }
  }
}

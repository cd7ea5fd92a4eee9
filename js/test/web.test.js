// The platform-neutral core on onnxruntime-web's WASM backend (run in Node.js): the bundle from
// a map of files and from a base URL (a local HTTP server), as a browser page would load it.

import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { createServer } from "node:http";
import path from "node:path";
import { after, before, describe, test } from "node:test";

import * as ort from "onnxruntime-web";

import { BundleError, ConfigError, EdgeModel, fileMapSource, urlSource } from "alter-edge/core";

import { bundle, expected, needs } from "../test-support/fixtures.js";

ort.env.wasm.numThreads = 1;

// a CacheStorage stand-in (Node.js has none): open(name) -> {match, put, delete}, keys(), delete(name)
function memoryCacheStorage() {
  const stores = new Map();
  const storage = {
    async open(name) {
      if (!stores.has(name)) stores.set(name, new Map());
      const entries = stores.get(name);
      return {
        async match(url) { return entries.has(url) ? new Response(entries.get(url)) : undefined; },
        async put(url, res) { entries.set(url, new Uint8Array(await res.arrayBuffer())); },
        async delete(url) { return entries.delete(url); },
      };
    },
    async keys() { return [...stores.keys()]; },
    async delete(name) { return stores.delete(name); },
  };
  return { stores, storage };
}

describe("onnxruntime-web (WASM) backend", needs, () => {
  let server, base;
  const requests = [];
  before(async () => {
    server = createServer((req, res) => {
      const name = decodeURIComponent(new URL(req.url, "http://x").pathname.slice(1));
      requests.push(name);
      try {
        const data = readFileSync(path.join(bundle, path.basename(name)));
        res.writeHead(200, { "content-length": data.length });
        res.end(data);
      } catch {
        res.writeHead(404).end();
      }
    });
    await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
    base = `http://127.0.0.1:${server.address().port}/`;
  });
  after(() => server.close());

  const files = () => new Map(readdirSync(bundle).map((f) => [f, new Blob([readFileSync(path.join(bundle, f))])]));

  for (const precision of ["fp32", "int8"]) {
    test(`${precision}: a mixed batch from a map of Blobs gives Python's greedy ids; label scores close`, async () => {
      const model = await EdgeModel.load(files(), { backend: ort, precision });
      assert.deepEqual((await model.openGraphs()).map((g) => g.kvMode), ["copy"]); // WASM ignores pre-allocated outputs
      const { texts, tasks, out } = expected.precisions[precision].mixed;
      const got = await model.generate(texts, { tasks, maxNewTokens: expected.max_new_tokens });
      assert.deepEqual(got.map((g) => g.tokenIds), out.map((g) => g.token_ids));
      assert.deepEqual(got.map((g) => g.text), out.map((g) => g.text));
      for (const [task, { texts: t, out: o }] of Object.entries(expected.precisions[precision].classify)) {
        const c = await model.classify(t, { task });
        c.forEach((x, i) => {
          assert.equal(x.label, o[i].label);
          // WASM kernels sum in another order than onnxruntime's CPU ones: ~5e-4 apart on fp32
          for (const [label, s] of Object.entries(o[i].scores)) assert.ok(Math.abs(x.scores[label] - s) < 1e-2);
        });
      }
    });
  }

  test("from a base URL: the files the graph needs are fetched, with progress, and hashed", async () => {
    requests.length = 0;
    const events = [];
    const model = await EdgeModel.load(base, { backend: ort, precision: "int8", onProgress: (e) => events.push(e) });
    assert.deepEqual(new Set(requests), new Set(["manifest.json", "tasks.json", "tokenizer.json", "model.int8.onnx", "weights.int8.bin"]));
    const done = events.filter((e) => e.done).map((e) => e.file);
    assert.ok(done.includes("weights.int8.bin") && done.includes("model.int8.onnx"));
    const w = events.filter((e) => e.file === "weights.int8.bin");
    assert.equal(w.at(-1).loaded, readFileSync(path.join(bundle, "weights.int8.bin")).length);
    const { alone } = expected.precisions.int8;
    const row = alone.find((r) => r.graph === "multi" && r.task === "echo");
    const [g] = await model.generate(row.input, { task: row.task, maxNewTokens: expected.max_new_tokens });
    assert.deepEqual(g.tokenIds, row.token_ids);
  });

  test("with a cache, a second load from the URL fetches only manifest.json, and gives the same tokens", async () => {
    const { stores, storage } = memoryCacheStorage();
    const row = expected.precisions.int8.alone.find((r) => r.graph === "multi" && r.task === "echo");
    const run = async () => {
      const model = await EdgeModel.load(base, { backend: ort, precision: "int8", cache: storage });
      return (await model.generate(row.input, { task: row.task, maxNewTokens: expected.max_new_tokens }))[0].tokenIds;
    };
    requests.length = 0;
    assert.deepEqual(await run(), row.token_ids);
    assert.ok(requests.includes("weights.int8.bin"));
    assert.equal(stores.size, 1);
    requests.length = 0;
    assert.deepEqual(await run(), row.token_ids);
    assert.deepEqual(requests, ["manifest.json"]);
    // a cached file that fails its hash check is dropped and fetched again
    const [entries] = stores.values();
    const w = [...entries.keys()].find((u) => u.endsWith("weights.int8.bin"));
    const bad = Uint8Array.from(entries.get(w));
    bad[5] ^= 1;
    entries.set(w, bad);
    requests.length = 0;
    assert.deepEqual(await run(), row.token_ids);
    assert.deepEqual(requests, ["manifest.json", "weights.int8.bin"]);
    assert.deepEqual(entries.get(w), new Uint8Array(readFileSync(path.join(bundle, "weights.int8.bin"))));
  });

  test("with a cache, each download is checked against manifest.json before it is stored (verify: false)", async () => {
    const { stores, storage } = memoryCacheStorage();
    // a server (or a proxy) that hands out a changed weight file
    const tampering = async (url, init) => {
      const res = await fetch(url, init);
      if (!String(url).endsWith("weights.int8.bin")) return res;
      const bytes = new Uint8Array(await res.arrayBuffer());
      bytes[7] ^= 1;
      return new Response(bytes, { status: 200, headers: { "content-length": String(bytes.length) } });
    };
    const load = (fetchFn) => EdgeModel.load(urlSource(base, { cache: storage, fetch: fetchFn }),
                                             { backend: ort, precision: "int8", verify: false });
    await assert.rejects(load(tampering), (e) => e instanceof BundleError &&
                         /file weights\.int8\.bin does not match manifest\.json/.test(e.message));
    const [entries] = stores.values();
    assert.ok(![...entries.keys()].some((u) => u.endsWith("weights.int8.bin"))); // nothing stored for it
    const first = urlSource(base, { cache: storage });
    const row = expected.precisions.int8.alone.find((r) => r.graph === "multi" && r.task === "echo");
    const model = await EdgeModel.load(first, { backend: ort, precision: "int8", verify: false });
    assert.deepEqual((await model.generate(row.input, { task: row.task, maxNewTokens: expected.max_new_tokens }))[0].tokenIds,
                     row.token_ids);
    assert.ok(first.stats.network.includes("weights.int8.bin") && first.stats.network.includes("manifest.json"));
    const events = [];
    const second = urlSource(base, { cache: storage, onProgress: (e) => events.push(e) });
    await EdgeModel.load(second, { backend: ort, precision: "int8", verify: false });
    assert.deepEqual(second.stats.network, ["manifest.json"]);
    assert.ok(second.stats.cached.includes("weights.int8.bin"));
    const w = events.filter((e) => e.file === "weights.int8.bin");
    assert.ok(w.length > 0 && w.every((e) => e.cached === true));
    assert.equal(w.at(-1).loaded, readFileSync(path.join(bundle, "weights.int8.bin")).length);
  });

  test("a map holding only what one task needs loads (no other file is asked for)", async () => {
    const need = ["manifest.json", "tasks.json", "tokenizer.json", "task-echo.int8.onnx", "weights.int8.bin"];
    const map = new Map(need.map((f) => [f, readFileSync(path.join(bundle, f))]));
    const model = await EdgeModel.load(map, { backend: ort, precision: "int8", tasks: ["echo"] });
    const row = expected.precisions.int8.alone.find((r) => r.graph === "task" && r.task === "echo");
    assert.equal(model.graphForRequest(["echo"]).path, row.path);
    const [g] = await model.generate(row.input, { task: "echo", maxNewTokens: expected.max_new_tokens });
    assert.deepEqual(g.tokenIds, row.token_ids);
  });

  test("a changed file in a map is refused by its hash (WebCrypto)", async () => {
    const map = files();
    const w = new Uint8Array(readFileSync(path.join(bundle, "weights.int8.bin")));
    w[10] ^= 1;
    map.set("weights.int8.bin", w);
    await assert.rejects(EdgeModel.load(fileMapSource(map, { label: "picked files" }), { backend: ort, precision: "int8" }),
                         (e) => e instanceof BundleError && /^picked files: file weights\.int8\.bin does not match manifest\.json/.test(e.message));
    map.delete("weights.int8.bin");
    await assert.rejects(EdgeModel.load(map, { backend: ort, precision: "int8" }),
                         (e) => e instanceof BundleError && /file weights\.int8\.bin listed in manifest\.json is missing/.test(e.message));
  });

  test("kvMode shared is refused: the WASM backend leaves pre-allocated outputs unwritten", async () => {
    await assert.rejects(EdgeModel.load(files(), { backend: ort, precision: "fp32", kvMode: "shared" }),
                         (e) => e instanceof ConfigError && /does not write the KV cache into pre-allocated outputs/.test(e.message));
  });

  test("a directory path is refused by the platform-neutral core, naming what to pass instead", async () => {
    await assert.rejects(EdgeModel.load(bundle, { backend: ort }), /needs Node\.js .* pass a base URL or a map of file names/);
  });
});

// Every refusal is one clear error: its class, one line, naming the file or field and what is
// allowed. Bundles are copied into a scratch folder and changed there.

import assert from "node:assert/strict";
import { cpSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import path from "node:path";
import { describe, test } from "node:test";

import { BundleError, ConfigError, DataError, EdgeModel, TaskError } from "alter-edge";

import { bundle, expected, needs, scratch } from "../test-support/fixtures.js";

/** Assert `promise` rejects with one line of class `cls` matching every pattern. */
async function refuses(promise, cls, ...patterns) {
  let error = null;
  try {
    await promise;
  } catch (e) {
    error = e;
  }
  assert.ok(error, "expected a refusal, got none");
  assert.ok(error instanceof cls, `expected ${cls.name}, got ${error?.constructor?.name}: ${error?.message}`);
  assert.ok(!error.message.includes("\n"), `not one line: ${error.message}`);
  for (const p of patterns) assert.match(error.message, p);
  return error;
}

function copyBundle(name) {
  const dir = path.join(scratch(name), "bundle");
  cpSync(bundle, dir, { recursive: true });
  return dir;
}

function editManifest(dir, edit) {
  const file = path.join(dir, "manifest.json");
  const m = JSON.parse(readFileSync(file, "utf8"));
  edit(m);
  writeFileSync(file, JSON.stringify(m));
}

describe("bundle refusals", needs, () => {
  test("a changed weight file: the file is named, the load stops", async () => {
    const dir = copyBundle("tampered");
    const w = path.join(dir, "weights.fp32.bin");
    const data = readFileSync(w);
    data[100] ^= 1;
    writeFileSync(w, data);
    await refuses(EdgeModel.load(dir, { precision: "fp32" }), BundleError,
                  /file weights\.fp32\.bin does not match manifest\.json \(sha256 [0-9a-f]{12}\.\.\., expected/);
    // verify: false skips the hashes (the opt-out), and then the bundle loads
    await EdgeModel.load(dir, { precision: "fp32", verify: false });
    // the int8 graph reads its own weight file, which is intact
    await EdgeModel.load(dir, { precision: "int8" });
  });

  test("a changed tokenizer.json or graph is refused", async () => {
    const dir = copyBundle("tampered-tok");
    writeFileSync(path.join(dir, "tokenizer.json"), readFileSync(path.join(dir, "tokenizer.json"), "utf8") + " ");
    await refuses(EdgeModel.load(dir), BundleError, /file tokenizer\.json does not match manifest\.json/);
    const dir2 = copyBundle("tampered-graph");
    const g = path.join(dir2, "model.int8.onnx");
    writeFileSync(g, Buffer.concat([readFileSync(g), Buffer.from([0])]));
    await refuses(EdgeModel.load(dir2, { precision: "int8" }), BundleError, /file model\.int8\.onnx does not match/);
  });

  for (const [bad, why] of [["../model.fp32.onnx", /empty, '\.' or '\.\.' part/], ["/etc/passwd", /is absolute/],
                            ["https://example.com/model.onnx", /has a scheme/], ["sub\\model.onnx", /backslash/],
                            ["C:/model.onnx", /is absolute/], ["./model.fp32.onnx", /empty, '\.' or '\.\.' part/]]) {
    test(`a graph path ${JSON.stringify(bad)} outside the bundle is refused`, async () => {
      const dir = copyBundle("outside");
      editManifest(dir, (m) => { m.graphs[0].path = bad; });
      const e = await refuses(EdgeModel.load(dir), BundleError, /graphs\[0\]\.path/, why,
                              /a bundle may only name files inside its own directory/);
      assert.ok(e.message.includes(JSON.stringify(bad)));
    });
  }

  test("a files entry with '..' and a weight file named by URL are refused", async () => {
    const dir = copyBundle("outside-files");
    editManifest(dir, (m) => { m.files["../secret.txt"] = "0".repeat(64); });
    await refuses(EdgeModel.load(dir), BundleError, /files entry "\.\.\/secret\.txt"/, /'\.\.' part/);
    const dir2 = copyBundle("outside-ext");
    editManifest(dir2, (m) => { m.graphs[0].external_data = ["http://x/weights.bin"]; });
    await refuses(EdgeModel.load(dir2), BundleError, /graphs\[0\]\.external_data\[0\]/, /has a scheme/);
  });

  test("a symlink leading out of the bundle is refused", async () => {
    const dir = copyBundle("symlink");
    const outside = path.join(path.dirname(dir), "tasks.json");
    cpSync(path.join(dir, "tasks.json"), outside);
    rmSync(path.join(dir, "tasks.json"));
    symlinkSync(outside, path.join(dir, "tasks.json"));
    await refuses(EdgeModel.load(dir, { verify: false }), BundleError, /"tasks\.json" leads outside the bundle/);
  });

  test("format and version, a missing or unlisted file, a bad field", async () => {
    const v1 = copyBundle("v1");
    editManifest(v1, (m) => { m.format_version = 1; });
    await refuses(EdgeModel.load(v1), BundleError, /format_version 1 .* no longer read/);
    const v3 = copyBundle("v3");
    editManifest(v3, (m) => { m.format_version = 3; });
    await refuses(EdgeModel.load(v3), BundleError, /format_version 3 is not supported; this runtime reads 2/);
    const fmt = copyBundle("fmt");
    editManifest(fmt, (m) => { m.format = "other"; });
    await refuses(EdgeModel.load(fmt), BundleError, /format is "other", expected "alter-edge-bundle"/);
    const missing = copyBundle("missing");
    rmSync(path.join(missing, "weights.int8.bin"));
    await refuses(EdgeModel.load(missing), BundleError, /file weights\.int8\.bin listed in manifest\.json is missing/);
    const extra = copyBundle("extra");
    writeFileSync(path.join(extra, "notes.txt"), "hi");
    await refuses(EdgeModel.load(extra), BundleError, /file notes\.txt is not listed in manifest\.json/);
    const field = copyBundle("field");
    editManifest(field, (m) => { m.kv_cache.num_layers = 10 ** 9; });
    await refuses(EdgeModel.load(field), BundleError, /kv_cache\.num_layers must be in 1\.\.1024/);
    const sha = copyBundle("sha");
    editManifest(sha, (m) => { m.graphs[1].sha256 = "abc"; });
    await refuses(EdgeModel.load(sha), BundleError, /graphs\[1\]\.sha256 must be a sha256/);
    await refuses(EdgeModel.load(path.join(missing, "nope")), BundleError, /not a directory|manifest\.json is missing/);
  });
});

describe("request refusals", needs, () => {
  test("an unknown task is refused, naming the known ones", async () => {
    const model = await EdgeModel.load(bundle, { threads: 1 });
    await refuses(model.generate("swap red blue", { task: "nope" }), TaskError,
                  /unknown task "nope"; known tasks: colour, echo, parity/);
    await refuses(model.generate(["a b", "c d"], { tasks: ["echo", "nope"] }), TaskError, /unknown task "nope"/);
    await refuses(model.classify("is red a colour", { task: "nope" }), TaskError, /unknown task "nope"/);
    await refuses(model.classify("swap red blue", { task: "echo" }), TaskError, /task "echo" has no label set.*classify tasks: colour, parity/);
    await refuses(EdgeModel.load(bundle, { tasks: ["nope"] }), TaskError, /unknown task "nope"/);
    await refuses(model.generate("swap red blue", {}), TaskError, /pass task .* or tasks/);
    await refuses(model.generate("swap red blue", { task: "echo", tasks: ["echo"] }), TaskError, /pass task .* or tasks/);
    await refuses(model.generate(["a", "b"], { tasks: ["echo"] }), TaskError, /tasks has 1 names for 2 texts/);
  });

  test("an over-long prompt is refused unless truncate, naming max_prompt_tokens", async () => {
    const model = await EdgeModel.load(bundle, { threads: 1 });
    const { input, task, max_prompt_tokens: limit } = expected.truncate;
    const e = await refuses(model.generate(input, { task }), DataError, /tokens with its prompt, over the bundle's max_prompt_tokens/);
    assert.ok(e.message.includes(String(limit)));
    await refuses(model.classify(input, { task: "colour" }), DataError, /max_prompt_tokens/);
    await refuses(model.generate("   ", { task }), DataError, /input is empty/);
    await refuses(model.generate("a\ud800b", { task }), DataError, /lone surrogate at character 1/);
    await refuses(model.generate("ab\udc00", { task }), DataError, /lone surrogate at character 2/);
    await model.generate("a \ud83d\ude00 b", { task, maxNewTokens: 1 }); // a pair is fine
  });

  const BAD = [
    [{ maxNewTokens: 0 }, /maxNewTokens must be an integer >= 1, got 0/],
    [{ maxNewTokens: 1.5 }, /maxNewTokens must be an integer >= 1/],
    [{ maxNewTokens: "3" }, /maxNewTokens must be an integer >= 1, got "3"/],
    [{ maxNewTokens: 5000 }, /exceed the 2048 positions this graph covers/, ConfigError],
    [{ temperature: -1 }, /temperature must be 0 \(greedy\) or a number in 0\.001\.\.100/],
    [{ temperature: 1e-5 }, /temperature must be 0/],
    [{ temperature: NaN }, /temperature must be 0/],
    [{ topP: 0 }, /topP must be a number in \(0, 1\]/],
    [{ topP: 1.5 }, /topP must be a number in \(0, 1\]/],
    [{ topK: -1 }, /topK must be an integer >= 0/],
    [{ seed: -1 }, /seed must be an integer >= 0 or null/],
    [{ seed: 0.5 }, /seed must be an integer >= 0/],
    [{ stop: [""] }, /stop strings must be non-empty strings/],
    [{ stop: 5 }, /stop must be a string or a list of strings/],
    [{ max_new_tokens: 4 }, /unknown option "max_new_tokens"; allowed: task, tasks, maxNewTokens/],
    [{ truncate: "yes" }, /truncate must be true or false/],
    [{ signal: "stop" }, /signal must be an AbortSignal/],
  ];
  for (const [opts, pattern, cls = ConfigError] of BAD) {
    test(`generate refuses ${JSON.stringify(opts)}`, async () => {
      const model = await EdgeModel.load(bundle, { threads: 1 });
      await refuses(model.generate("swap red blue", { task: "echo", ...opts }), cls, pattern);
      assert.throws(() => model.stream("swap red blue", { task: "echo", ...opts }), cls); // before the first event
    });
  }

  test("load refuses bad option values", async () => {
    await refuses(EdgeModel.load(bundle, { precision: "fp16" }), ConfigError, /precision "fp16" is not one of fp32, int8, int4/);
    await refuses(EdgeModel.load(bundle, { threads: 0 }), ConfigError, /threads must be an integer >= 1/);
    await refuses(EdgeModel.load(bundle, { verify: "yes" }), ConfigError, /verify must be true or false/);
    await refuses(EdgeModel.load(bundle, { kvMode: "fast" }), ConfigError, /kvMode "fast" is not one of auto, shared, copy/);
    await refuses(EdgeModel.load(bundle, { onProgress: 3 }), ConfigError, /onProgress must be a function/);
    await refuses(EdgeModel.load(bundle, { tasks: "echo" }), ConfigError, /tasks must be an array of task names/);
    await refuses(EdgeModel.load(bundle, { thread: 1 }), ConfigError, /unknown option "thread"/);
    await refuses(EdgeModel.load(bundle, { precision: "int4" }), BundleError,
                  /no graph at precision int4 .*the bundle has: model\.fp32\.onnx \(fp32\)/);
    await refuses(EdgeModel.load(bundle, { backend: {} }), ConfigError, /needs options\.backend/);
    await refuses(EdgeModel.load(42), ConfigError, /bundle source must be/);
    const model = await EdgeModel.load(bundle, { threads: 1 });
    await refuses(model.generate(42, { task: "echo" }), ConfigError, /texts must be a string or an array of strings/);
    await refuses(model.generate(["ok", 3], { task: "echo" }), ConfigError, /texts\[1\] must be a string/);
  });
});

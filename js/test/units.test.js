// The pieces without a model: SHA-256 in plain JavaScript, incremental detokenization against
// Python's RowText, file-name checks.

import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { test } from "node:test";

import { RowText, Sha256, pathProblem, sha256Hex } from "alter-edge";

import { expected, needs } from "../test-support/fixtures.js";

test("Sha256 (plain JavaScript) equals node:crypto at block edges and in uneven chunks", async () => {
  for (const n of [0, 1, 55, 56, 63, 64, 65, 119, 120, 1000, 70001]) {
    const data = randomBytes(n);
    const want = createHash("sha256").update(data).digest("hex");
    assert.equal(new Sha256().update(data).hex(), want, `${n} bytes`);
    const h = new Sha256();
    for (let i = 0; i < n; i += 37) h.update(data.subarray(i, i + 37));
    assert.equal(h.hex(), want, `${n} bytes in chunks`);
    assert.equal(await sha256Hex(data), want);
  }
});

test("file names: only plain relative paths inside the bundle", () => {
  for (const ok of ["model.int8.onnx", "sub/dir/weights.bin", "a..b"]) assert.equal(pathProblem(ok), null, ok);
  const bad = { "": "is not a path", "../x": "'..'", "a/../b": "'..'", "/etc/passwd": "absolute", "a\\b": "backslash",
                "C:x": "absolute", "https://h/x": "scheme", "blob:abc": "scheme", "a//b": "empty", "./a": "'.'",
                "a\0b": "NUL" };
  for (const [name, why] of Object.entries(bad)) assert.ok(pathProblem(name)?.includes(why), `${JSON.stringify(name)}: ${pathProblem(name)}`);
  assert.equal(pathProblem(3), "is not a path");
});

test("RowText gives Python's pieces on split UTF-8 and stop strings", needs, () => {
  const bytes = { decode: (ids) => new TextDecoder().decode(Uint8Array.from(ids)) }; // U+FFFD for a cut character
  for (const c of expected.detok) {
    const row = new RowText(bytes, c.stop);
    const pieces = [];
    for (const t of c.ids) {
      pieces.push(row.push(t));
      if (row.stopped) break;
    }
    pieces.push(row.finish());
    assert.deepEqual(pieces, c.pieces, JSON.stringify(c.stop));
    assert.equal(row.text, c.text);
    assert.equal(row.stopped, c.stopped);
    assert.ok(pieces.every((p) => !p.includes("\ufffd")), "no piece holds half a character");
  }
});

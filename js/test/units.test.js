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

test("top-k threshold and nucleus (top-p) set equal a full sort's, ties by id", async () => {
  const { kthLargest, nucleus } = await import("../src/generate.js");
  const full = (p, topP) => { // Python's rule: stop at the first token whose mass before it reaches topP
    const order = Array.from(p.keys()).sort((a, b) => p[b] - p[a] || a - b);
    let c = 0, n = order.length;
    for (let i = 0; i < order.length; i++) {
      c += p[order[i]];
      if (c - p[order[i]] >= topP) { n = i; break; }
    }
    return order.slice(0, n).sort((a, b) => a - b);
  };
  let seed = 7;
  const rand = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32);
  for (let t = 0; t < 200; t++) {
    const V = [5, 50, 3000][t % 3];
    // every 7th case: few distinct values, many ties
    const x = Float64Array.from({ length: V }, () => (t % 7 === 0 ? Math.round(rand() * 3) : rand() ** 8));
    const k = 1 + Math.floor(rand() * V);
    assert.equal(kthLargest(x, k), Float64Array.from(x).sort().reverse()[k - 1]);
    const sum = x.reduce((a, b) => a + b, 0) || 1;
    const p = x.map((v) => v / sum);
    for (const topP of [0.1, 0.5, 0.9, 0.999]) assert.deepEqual(nucleus(p, topP, 16), full(p, topP), `V ${V} topP ${topP}`);
  }
});

// What the Python runtime gave on the tiny bundles (written by tests/test_js_runtime.py, which
// runs these tests with ALTER_EDGE_JS_FIXTURES set). Without it every test that needs it is
// skipped with that reason: run `pytest tests/test_js_runtime.py` from the repository root.

import { mkdirSync, mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";

const file = process.env.ALTER_EDGE_JS_FIXTURES;

/** The expected outputs, or null when the tests run without them. */
export const expected = file ? JSON.parse(readFileSync(file, "utf8")) : null;

/** A test option that skips a test needing the fixtures when there are none. */
export const needs = expected ? {} : {
  skip: "ALTER_EDGE_JS_FIXTURES is not set: run `pytest tests/test_js_runtime.py` (it builds the tiny bundles " +
        "and the Python runtime's outputs, then runs these tests)",
};

/** A fresh scratch directory. */
export function scratch(name) {
  const base = process.env.ALTER_EDGE_JS_WORK ?? tmpdir();
  mkdirSync(base, { recursive: true });
  return mkdtempSync(path.join(base, `${name}-`));
}

export const bundle = expected?.bundle;

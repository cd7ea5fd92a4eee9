// A check tool: the package's tokenizer and RowText on a tokenizer.json, for a Python test to
// compare with the Python runtime (tests/test_js_runtime.py). stdin: one JSON object
// {"ids": [...], "stop": [...]} per line; stdout: one JSON object {"pieces": [...], "text": "..."}
// per line (push each id until a stop string ends the row, then finish).
//
//   node detok.mjs TOKENIZER_JSON < cases.jsonl

import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";

import { RowText, loadTokenizer } from "../src/index.js";

const [file] = process.argv.slice(2);
const tok = loadTokenizer(readFileSync(file, "utf8"), file);
for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  const { ids, stop } = JSON.parse(line);
  const row = new RowText(tok, stop);
  const pieces = [];
  for (const id of ids) {
    pieces.push(row.push(id));
    if (row.stopped) break;
  }
  pieces.push(row.finish());
  console.log(JSON.stringify({ pieces, text: row.text, stopped: row.stopped }));
}

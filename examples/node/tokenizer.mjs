// A check tool for the tokenizer the alter-edge package reads (@huggingface/tokenizers, pure
// JavaScript, set up to give the ids and text of the Python `tokenizers` library): one JSON
// string per stdin line in, one JSON object {"ids": [...], "text": "..."} per line out, so a
// test can compare it with Python on any tokenizer.json (tests/test_node_example.py does so on
// SmolLM2's when it is cached):
//
//   printf '"hello world"\n' | node tokenizer.mjs path/to/tokenizer.json

import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";

import { loadTokenizer } from "alter-edge";

const [path] = process.argv.slice(2);
if (!path) {
  console.error("usage: node tokenizer.mjs TOKENIZER_JSON < one JSON string per line");
  process.exit(2);
}
const tok = loadTokenizer(readFileSync(path, "utf8"), path);
for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  const ids = tok.encode(JSON.parse(line));
  console.log(JSON.stringify({ ids, text: tok.decode(ids) }));
}

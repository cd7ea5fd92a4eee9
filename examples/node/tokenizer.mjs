// The bundle's tokenizer.json in JavaScript (@huggingface/tokenizers, pure JS), set up to give
// the ids and text that the Python `tokenizers` library gives for the same file.
//
// Run on its own, it is a check tool: it reads one JSON string per stdin line and writes one
// JSON object {"ids": [...], "text": "..."} per line, so a test can compare it with Python on
// any tokenizer.json (tests/test_node_example.py does so on SmolLM2's when it is cached):
//
//   printf '"hello world"\n' | node tokenizer.mjs path/to/tokenizer.json

import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { pathToFileURL } from "node:url";

import { Tokenizer } from "@huggingface/tokenizers";

export function loadTokenizer(path) {
  const json = JSON.parse(readFileSync(path, "utf8"));
  const config = {
    // Python's Tokenizer.decode does no clean-up; the JS library's default would turn " ." into "."
    clean_up_tokenization_spaces: false,
  };
  if (json.model?.type === "WordLevel") {
    // The JS library reads a word-level model's unknown token from the config, not from the
    // model section (without this, an unknown word would get no id).
    config.unk_token = json.model.unk_token;
  }
  const tok = new Tokenizer(json, config);
  return {
    // Python: tokenizer.encode(text, add_special_tokens=False).ids
    encode: (text) => tok.encode(text, { add_special_tokens: false }).ids,
    // Python: tokenizer.decode(ids, skip_special_tokens=True) (the JS library refuses [])
    decode: (ids) => (ids.length ? tok.decode(ids, { skip_special_tokens: true }) : ""),
    vocabSize: tok.get_vocab(true).size,
  };
}

async function main() {
  const [path] = process.argv.slice(2);
  if (!path) {
    console.error("usage: node tokenizer.mjs TOKENIZER_JSON < one JSON string per line");
    process.exit(2);
  }
  const tok = loadTokenizer(path);
  for await (const line of createInterface({ input: process.stdin })) {
    if (!line.trim()) continue;
    const ids = tok.encode(JSON.parse(line));
    console.log(JSON.stringify({ ids, text: tok.decode(ids) }));
  }
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  await main();
}
